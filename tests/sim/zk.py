"""A simulated ZooKeeper server and, per sitter, a fake session and ShardStore over it.

Znodes with versions; ephemeral election nodes tied to sessions that expire SESSION_TIMEOUT
after the server last heard from them; compare-and-set on the state, checked for S3 and the
generation discipline on every write; watches that fire on every change."""

from __future__ import annotations

import itertools
from typing import Callable

from manatee.core import zk as zkmod
from manatee.shard import history
from manatee.shard.shardstore import Quarantine, StateUnreadable
from manatee.shard.state import CONNECTED, LOST, SUSPENDED, ClusterState, Peer, StateError


class Violation(AssertionError):
    pass


class SimZK:
    def __init__(self, session_timeout: float) -> None:
        self.session_timeout = session_timeout
        self.up = True
        self.state_raw: bytes | None = None
        self.version = -1
        self._error: dict | None = None
        self.election: dict[int, tuple[Peer, int]] = {}  # seq -> (peer, session)
        self.seq = itertools.count()
        self.sids = itertools.count(1)
        self.last_heard: dict[int, float] = {}
        self.expired: set[int] = set()
        self.history: list = []
        self.writes: list[ClusterState] = []
        self.registrar: str | None = None
        self.watchers: dict[object, set[Callable]] = {}
        self._parsed: tuple = (None, None)
        self.lost: ClusterState | None = None  # the state as it was when its znode was deleted

    def poke(self) -> None:
        for fns in list(self.watchers.values()):
            for fn in list(fns):
                fn()

    @property
    def error(self) -> dict | None:
        return self._error

    @error.setter
    def error(self, value: dict | None) -> None:  # an operator (or a sitter) writes the error node
        self._error = value
        self.poke()

    def tick(self, now: float) -> None:
        if not self.up:
            return
        for sid, t in list(self.last_heard.items()):
            if now - t > self.session_timeout:
                self.expire(sid)

    def expire(self, sid: int) -> None:
        self.expired.add(sid)
        self.last_heard.pop(sid, None)
        for seq, (_p, s) in list(self.election.items()):
            if s == sid:
                del self.election[seq]
        self.poke()

    def restart_clock(self, now: float) -> None:  # ZooKeeper came back: session timeouts restart
        for sid in self.last_heard:
            self.last_heard[sid] = now

    def new_session(self, now: float) -> int:
        sid = next(self.sids)
        self.last_heard[sid] = now
        return sid

    def join(self, sid: int, peer: Peer) -> int:
        seq = next(self.seq)
        self.election[seq] = (peer, sid)
        self.poke()
        return seq

    def peers(self) -> tuple[Peer, ...]:
        return tuple(p for _s, (p, _sid) in sorted(self.election.items()))

    def state(self) -> ClusterState | None:
        """The stored bytes, parsed once per version (every write goes through JSON)."""
        if self.state_raw is None:
            return None
        if self._parsed[0] != self.version:
            self._parsed = (self.version, ClusterState.loads(self.state_raw))
        return self._parsed[1]

    def set_raw(self, raw: bytes) -> None:
        """Someone writes bytes that may not parse (an operator's mistake)."""
        self.state_raw = raw
        self.version += 1
        self.poke()

    def garble(self) -> None:
        """The state znode overwritten with bytes that do not parse (F21). The state it held is
        kept as `lost`: what the sitters remember and `manatee-adm state-restore` writes back."""
        self.lost = self.state()
        self.set_raw(b'{"generation": "not a number"')

    def delete_state(self) -> None:
        """The state znode is deleted (an operator's mistake, or ZooKeeper lost its data)."""
        self.lost = self.state() or self.lost
        self.state_raw, self.version = None, -1
        self.poke()

    def wipe(self) -> None:
        """ZooKeeper comes back with no data: every znode and every session is gone."""
        self.delete_state()
        self.history, self.election, self._error, self.registrar = [], {}, None, None
        self.expired.update(self.last_heard)
        self.last_heard.clear()
        self.poke()

    def cas_state(self, new: ClusterState, expected: int) -> bool:
        if expected != self.version:
            return False
        old = self.state()
        if old is not None:  # S3 and generation discipline
            changed = old.primary.id != new.primary.id or getattr(old.sync, "id", None) != getattr(new.sync, "id", None)
            if old.primary.id != new.primary.id:
                allowed = {old.primary.id, *([old.sync.id] if old.sync else [])}
                if new.primary.id not in allowed:
                    raise Violation(f"S3: {new.primary.id} made primary; previous primary/sync {allowed}")
            if new.generation != old.generation + (1 if changed else 0):
                raise Violation(f"generation {old.generation} -> {new.generation} (primary/sync changed: {changed})")
        elif self.lost is not None:
            if new != self.lost:  # after a loss only the lost state itself may come back
                raise Violation(f"the state was lost at generation {self.lost.generation}; "
                                f"{new.primary.id} wrote generation {new.generation} instead of re-creating it")
        elif new.generation != 1:
            raise Violation("the first state must be generation 1")
        self.state_raw = new.dumps()
        self.version += 1
        self.writes.append(new)
        self.poke()
        return True


class FakeSession:
    """A sitter's ZooKeeper session (the ZKClient port). The simulation calls poll() each tick
    the node runs, as kazoo's thread would deliver session events."""

    auth = "sim"  # the shard's znodes are protected (no zk_auth_off warning)
    negotiated_session_timeout = None

    def __init__(self, zk: SimZK, reachable: Callable[[], bool]):
        self.zk, self.reachable = zk, reachable
        self.sid: int | None = None
        self.state = LOST
        self.last_heard = 0.0
        self.listeners: list[Callable] = []

    def add_state_listener(self, fn) -> None:
        self.listeners.append(fn)

    def watch_children(self, _path: str, fn) -> None:
        self.zk.watchers.setdefault(self, set()).add(fn)

    watch_data = watch_children

    async def start(self) -> None:  # the simulation connects by poll()
        pass

    async def close(self) -> None:
        self.zk.watchers.pop(self, None)

    def session_expiry_deadline(self) -> float | None:
        return self.last_heard + self.zk.session_timeout

    def _fire(self, state: str) -> None:
        self.state = state
        for fn in self.listeners:
            fn(state)

    def poll(self, now: float) -> None:
        if not self.reachable():
            if self.state == CONNECTED:
                self._fire(SUSPENDED)
            return
        if self.sid is not None and self.sid in self.zk.expired:
            self.sid = None
            if self.state != LOST:
                self._fire(LOST)
                return
        if self.sid is None:
            self.sid = self.zk.new_session(now)
        self.zk.last_heard[self.sid] = self.last_heard = now
        if self.state != CONNECTED:
            self._fire(CONNECTED)

    def check(self) -> None:
        if not self.reachable() or self.sid is None or self.sid in self.zk.expired or self.state != CONNECTED:
            raise zkmod.ConnectionLoss("simulated: not connected")

    def drop(self) -> None:
        """The process died: its watches go (its session expires on the server in time)."""
        self.zk.watchers.pop(self, None)


class FakeStore:
    """The ShardStore port over the simulated server, through one session."""

    election_path, state_path, error_path = "/sim/election", "/sim/state", "/sim/error"

    def __init__(self, zk: SimZK, session: FakeSession, log):
        self.zk, self.session = zk, session
        self.quarantine = Quarantine(log)
        self.my_seq: int | None = None

    async def ensure_paths(self) -> None:
        self.session.check()

    async def join(self, me: Peer) -> str:
        self.session.check()
        for seq, (p, _sid) in list(self.zk.election.items()):
            if p.id == me.id:  # a node of ours left by a previous run
                del self.zk.election[seq]
        self.my_seq = self.zk.join(self.session.sid, me)
        return f"{self.election_path}/{me.id}-{self.my_seq:010d}"

    async def update_me(self, me: Peer) -> None:
        self.session.check()
        if self.my_seq not in self.zk.election:
            raise zkmod.NoNodeError()
        self.zk.election[self.my_seq] = (me, self.zk.election[self.my_seq][1])

    async def leave(self) -> None:
        if self.my_seq is not None:
            self.zk.election.pop(self.my_seq, None)
            self.zk.poke()

    async def election(self) -> tuple[Peer, ...]:
        self.session.check()
        return self.zk.peers()

    async def read_state(self) -> tuple[ClusterState | None, int]:
        self.session.check()
        if self.zk.state_raw is None:
            self.quarantine.update("state", {})
            return None, -1
        try:
            st = self.zk.state()
        except (StateError, ValueError) as e:
            self.quarantine.update("state", {self.state_path: str(e)})
            raise StateUnreadable(f"{self.state_path}: {e}", self.zk.version) from None
        self.quarantine.update("state", {})
        return st, self.zk.version

    async def cas_state(self, new: ClusterState, version: int) -> bool:
        self.session.check()
        return self.zk.cas_state(new, version)

    async def read_error(self) -> dict | None:
        self.session.check()
        return self.zk.error

    async def write_error(self, record: dict) -> None:
        self.session.check()
        if self.zk.error is None:
            self.zk.error = record

    async def record(self, event) -> None:
        self.session.check()
        self.zk.history.append(event)

    async def reaped(self) -> frozenset[str]:
        self.session.check()
        return history.reaped_addresses(f"{history.znode_prefix(e)}{i:010d}" for i, e in enumerate(self.zk.history))

    async def publish_registrar(self, pg_url: str, ttl: int) -> None:
        self.session.check()
        self.zk.registrar = pg_url

    async def remove_registrar(self, pg_url: str) -> None:
        self.session.check()
        if self.zk.registrar == pg_url:
            self.zk.registrar = None
