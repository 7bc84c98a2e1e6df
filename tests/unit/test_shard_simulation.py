"""A simulated shard driving the real decision core (Manatee v2's sim-zk/sim-pg idea).

Simulated ZooKeeper: znodes with versions, ephemeral election nodes tied to sessions that
expire `SESSION_TIMEOUT` ticks after the server last heard from them, compare-and-set on
the state. Simulated PostgreSQL per node: the WAL is a list of record ids (a position is a
length); a standby streams from its upstream only while its WAL is a prefix of the
upstream's (otherwise it is diverged, or waits when it is ahead on the same history); a
promotion appends a timeline-switch record, so an old primary holding unreplicated WAL can
no longer follow anyone; a commit is acknowledged only when the primary's configured sync
has received it (an empty synchronous_standby_names acknowledges at once, as PostgreSQL
does). Each node runs the sitter's loop: observe → decide() → CAS the state → plan() →
run the steps on its simulated PG.

Checked after every tick: S1 (at most one node acknowledges in a tick, and every node that
acknowledges holds every write acknowledged before), S2/S4 (a promoted node holds every
acknowledged write and is not diverged), S3 (every state write that changes the primary
names the previous primary or sync; generation bumps exactly when primary/sync change),
and liveness (S6): once faults heal the shard returns to primary + sync + asyncs, all
streaming and writable, unless it is in safe mode.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest

from manatee.shard.decide import Observation, decide
from manatee.shard.history import events_for
from manatee.shard.latches import failing_since
from manatee.shard.state import (
    CONNECTED, LOST, PRIMARY, REBUILD, STANDBY, SUSPENDED, UNASSIGNED, ClusterState, Freeze, Peer, Target,
)
from manatee.shard import transitions as T
from tests.factories import peer

SESSION_TIMEOUT = 6
HB_TIMEOUT = 4
SETTLE = 120  # ticks allowed to converge after faults heal
HUNG_TICKS = 2  # healthChkTimeout: a PG unanswered this long is killed and restarted
PST_TICKS = 2 * SESSION_TIMEOUT  # primaryStartTimeout: a primary failing this long steps down
SW_LIMIT_TICKS = 3 * SESSION_TIMEOUT  # the shell's SWITCHOVER_LIMIT_S: a pending switchover is withdrawn


class Violation(AssertionError):
    pass


class StepFailed(Exception):
    pass


def mkpeer(i: int) -> Peer:
    return peer(f"127.0.0.{10 + i}", f"zone-{i}")


# ---------------------------------------------------------------------------------------
class SimZK:
    def __init__(self) -> None:
        self.up = True
        self.state_raw: bytes | None = None
        self.version = -1
        self.error: dict | None = None
        self.election: dict[int, tuple[Peer, int]] = {}  # seq -> (peer, session)
        self.seq = itertools.count()
        self.sids = itertools.count(1)
        self.last_heard: dict[int, int] = {}
        self.expired: set[int] = set()
        self.history: list = []
        self.writes: list[ClusterState] = []
        self.registrar: str | None = None
        self._parsed: tuple = (None, None)

    def tick(self, now: int) -> None:
        if not self.up:
            return
        for sid, t in list(self.last_heard.items()):
            if now - t > SESSION_TIMEOUT:
                self.expire(sid)

    def expire(self, sid: int) -> None:
        self.expired.add(sid)
        self.last_heard.pop(sid, None)
        for seq, (_p, s) in list(self.election.items()):
            if s == sid:
                del self.election[seq]

    def restart_clock(self, now: int) -> None:  # ZooKeeper came back: session timeouts restart
        for sid in self.last_heard:
            self.last_heard[sid] = now

    def new_session(self, now: int) -> int:
        sid = next(self.sids)
        self.last_heard[sid] = now
        return sid

    def join(self, sid: int, peer: Peer) -> None:
        self.election[next(self.seq)] = (peer, sid)

    def peers(self) -> tuple[Peer, ...]:
        return tuple(p for _s, (p, _sid) in sorted(self.election.items()))

    def state(self) -> ClusterState | None:
        """The stored bytes, parsed once per version (every write goes through JSON)."""
        if self.state_raw is None:
            return None
        if self._parsed[0] != self.version:
            self._parsed = (self.version, ClusterState.loads(self.state_raw))
        return self._parsed[1]

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
        elif new.generation != 1:
            raise Violation("the first state must be generation 1")
        self.state_raw = new.dumps()
        self.version += 1
        self.writes.append(new)
        return True


@dataclass
class Conf:
    standby_signal: bool = False
    upstream: str | None = None
    sync: str | None = None
    read_only: bool = True


@dataclass
class Node:
    i: int
    peer: Peer
    alive: bool = True
    hung: bool = False
    # PostgreSQL alone (issue 8): None | "hang" (this process hangs; a kill cures it) |
    # "hang_sticky" (every new process hangs too: stuck storage) | "no_start" (crash loop, full disk)
    pg_fault: str | None = None
    pg_hung: bool = False
    unanswered_since: int | None = None
    sick_since: int | None = None
    good_since: int | None = None
    sw_seen: tuple | None = None
    zk_cut: bool = False
    peers_cut: bool = False
    # shell
    sid: int | None = None
    cache: tuple = (None, -1, (), None)  # state, version, election, error
    role: str = UNASSIGNED
    target: Target | None = None
    last_decision: object = None
    pending_apply: tuple | None = None
    last_connected: int = 0
    # postgres
    has_data: bool = False
    log: list = field(default_factory=list)
    running: bool = False
    mode: str = "standby"
    conf: Conf = field(default_factory=Conf)
    applied: Conf = field(default_factory=Conf)
    streamed: int | None = None
    streamed_from: str | None = None
    streaming: bool = False
    diverged: bool = False
    pending: list = field(default_factory=list)
    caught_up: dict = field(default_factory=dict)
    hb_last: dict = field(default_factory=dict)
    sync_since: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.peer.id

    def up(self) -> bool:
        return self.alive and not self.hung


class Shard:
    def __init__(self, n: int = 3, seed: int = 0, onwm: bool = False, commits_per_tick: int = 1) -> None:
        self.commits_per_tick = commits_per_tick
        self.rng = random.Random(seed)
        self.zk = SimZK()
        self.nodes = [Node(i, mkpeer(i)) for i in range(n)]
        self.now = 0
        self.onwm = onwm
        self.rec = itertools.count(1)
        self.acked: list = []
        self.acked_set: set = set()
        self.ackers: list[str] = []
        self.promotions: list[tuple[int, str]] = []
        self.restores: list[tuple[int, str]] = []
        self.trace: list[str] = []

    # -- lookups --------------------------------------------------------------------------
    def node(self, key) -> Node:
        if isinstance(key, Node):
            return key
        if isinstance(key, int):
            return self.nodes[key]
        return next(n for n in self.nodes if n.id == key)

    def by_role(self, place: str) -> Node | None:
        st = self.zk.state()
        if st is None:
            return None
        p = {"primary": st.primary, "sync": st.sync}.get(place)
        return self.node(p.id) if p else None

    def reach(self, a: Node, b: Node) -> bool:
        return a.up() and b.up() and not a.peers_cut and not b.peers_cut

    def zk_ok(self, n: Node) -> bool:
        return self.zk.up and not n.zk_cut and n.up()

    # -- faults ---------------------------------------------------------------------------
    def kill(self, k) -> None:
        n = self.node(k)
        n.alive = False
        self._pg_stop(n)

    def start(self, k) -> None:
        n = self.node(k)
        if n.alive:
            return
        n.alive, n.hung, n.sid = True, False, None
        n.cache = (None, -1, (), None)
        n.role, n.target, n.pending_apply = UNASSIGNED, None, None
        n.hb_last, n.sync_since, n.caught_up = {}, {}, {}

    def kill_pg(self, k) -> None:
        self._pg_stop(self.node(k))

    def pg_fault(self, k, fault: str | None) -> None:
        """F18/F19/F22: the node's sitter runs on, its PostgreSQL is sick (None: cured)."""
        n = self.node(k)
        n.pg_fault = fault
        n.pg_hung = n.running and fault in ("hang", "hang_sticky")
        if fault == "no_start":  # it crashes (a full disk makes PostgreSQL PANIC) and cannot start again
            self._pg_stop(n)

    def hang(self, k) -> None:
        self.node(k).hung = True

    def resume(self, k) -> None:
        self.node(k).hung = False

    def partition(self, k, zk: bool = True, peers: bool = True) -> None:
        n = self.node(k)
        n.zk_cut, n.peers_cut = n.zk_cut or zk, n.peers_cut or peers

    def heal(self, k) -> None:
        n = self.node(k)
        n.zk_cut = n.peers_cut = False

    def zk_down(self) -> None:
        self.zk.up = False

    def zk_up(self) -> None:
        if not self.zk.up:
            self.zk.up = True
            self.zk.restart_clock(self.now)

    def fork(self, k) -> None:
        """F16: a standby started without standby.signal: it runs as a primary of its own timeline."""
        n = self.node(k)
        assert n.running
        n.mode = "primary"
        n.log.append(("fork", next(self.rec)))
        n.streaming = False

    def destroy_data(self, k) -> None:
        n = self.node(k)
        self._pg_stop(n)
        n.has_data, n.log = False, []

    def heal_all(self) -> None:
        self.zk_up()
        for n in self.nodes:
            self.heal(n)
            self.resume(n)
            self.start(n)
            self.pg_fault(n, None)

    # -- postgres -------------------------------------------------------------------------
    def _pg_stop(self, n: Node) -> None:
        n.running = n.pg_hung = False
        n.streaming = False
        n.streamed = n.streamed_from = None
        n.pending = []

    def _restore(self, n: Node, up: Peer | None) -> None:
        src = self.node(up.id) if up else None
        if src is None or not self.reach(n, src) or not src.has_data:
            raise StepFailed(f"cannot restore from {up}")
        self._pg_stop(n)
        n.log, n.has_data, n.diverged = list(src.log), True, False

    def run_step(self, n: Node, step: str, t: Target) -> None:
        c = n.conf
        if step == T.STOP_PG:
            self._pg_stop(n)
        elif step == T.INITDB_IF_EMPTY:
            if not n.has_data:
                n.has_data, n.log = True, []
        elif step == T.RESTORE_IF_EMPTY:
            if not n.has_data:
                self._restore(n, t.upstream)
        elif step == T.RESTORE_FROM_UPSTREAM:
            self.restores.append((self.now, n.id))
            self._restore(n, t.upstream)
        elif step == T.CONFIGURE_PRIMARY:
            c.sync, c.read_only = (t.sync.id if t.sync else None), t.read_only
        elif step == T.CONFIGURE_STANDBY:
            c.standby_signal, c.upstream, c.sync, c.read_only = True, (t.upstream.id if t.upstream else None), None, True
        elif step == T.START_PG:
            if not n.running:
                if not n.has_data:
                    raise StepFailed("no data directory")
                if n.pg_fault == "no_start":
                    raise StepFailed("PostgreSQL exited before accepting connections")
                n.pg_hung = n.pg_fault == "hang_sticky"
                n.running, n.mode = True, ("standby" if c.standby_signal else "primary")
                n.applied = Conf(**vars(c))
                n.streamed = n.streamed_from = None
                n.streaming, n.pending = False, []
        elif step == T.RELOAD_PG:
            if n.running:
                if c.upstream is not None and c.upstream != n.streamed_from:
                    n.streamed = n.streamed_from = None  # wal counts only what came from this upstream
                n.applied = Conf(**vars(c))
        elif step == T.PROMOTE:
            if n.running and n.mode == "standby":
                st = self.zk.state()
                if st is None or st.primary.id != n.id:  # the shell reads the state before it promotes
                    raise StepFailed(f"not promoting: the state names {st and st.primary.id}")
                if n.diverged:
                    raise Violation(f"S4: diverged {n.id} promoted")
                missing = self.acked_set - set(n.log)
                if missing:
                    raise Violation(f"S2: {n.id} promoted without acknowledged writes {sorted(missing)[:5]}")
                n.mode = "primary"
                n.log.append(("timeline", next(self.rec)))
                c.standby_signal = False
                n.applied = Conf(**vars(c))
                n.streaming = False
                self.promotions.append((self.now, n.id))
        elif step == T.SET_SYNC:
            c.sync = t.sync.id if t.sync else None
        elif step == T.SET_READ_ONLY:
            c.read_only = True
        elif step == T.SET_READ_WRITE:
            c.read_only = False
        elif step == T.WRITE_REGISTRAR:
            if self.zk_ok(n):
                self.zk.registrar = n.id
        elif step == T.REMOVE_REGISTRAR:
            if self.zk_ok(n) and self.zk.registrar == n.id:
                self.zk.registrar = None
        else:  # pragma: no cover
            raise AssertionError(f"unknown step {step}")

    # -- the tick -------------------------------------------------------------------------
    def writable(self, n: Node) -> bool:
        return n.up() and n.running and not n.pg_hung and n.mode == "primary" and not n.applied.read_only

    def sync_connected(self, n: Node) -> Node | None:
        """The node named in n's synchronous_standby_names if it is streaming from n now."""
        if n.applied.sync is None:
            return None
        s = self.node(n.applied.sync)
        if (s.running and not s.pg_hung and s.mode == "standby" and s.applied.upstream == n.id and s.streaming
                and self.reach(n, s)):
            return s
        return None

    def tick(self) -> None:
        self.now += 1
        self.zk.tick(self.now)
        # clients commit on every node that takes writes (a stale primary included)
        for n in self.nodes:
            for _ in range(self.commits_per_tick if self.writable(n) else 0):
                r = next(self.rec)
                n.log.append(r)
                n.pending.append((r, len(n.log)))
        # streaming replication (random order: cascades take a few ticks)
        for n in self.rng.sample(self.nodes, len(self.nodes)):
            self._stream(n)
        # acknowledgements
        ackers = set()
        for n in self.nodes:
            if not (n.up() and n.running and not n.pg_hung and n.mode == "primary" and n.pending):
                continue
            s = self.sync_connected(n)
            keep = []
            for r, pos in n.pending:
                if n.applied.sync is None or (s is not None and len(s.log) >= pos and s.log[pos - 1] == r):
                    missing = self.acked_set - set(n.log)
                    if missing:
                        raise Violation(f"S1/S2: {n.id} acknowledged {r} but lacks acknowledged {sorted(missing)[:5]}")
                    self.acked.append(r)
                    self.acked_set.add(r)
                    ackers.add(n.id)
                else:
                    keep.append((r, pos))
            n.pending = keep
        if len(ackers) > 1:
            raise Violation(f"S1: {sorted(ackers)} acknowledged writes in the same tick")
        self.ackers.extend(ackers)
        # heartbeats: standbys to their upstream's sitter
        for n in self.nodes:
            t = n.target
            if n.up() and t is not None and t.role in (STANDBY, REBUILD) and t.upstream is not None:
                u = self.node(t.upstream.id)
                if self.reach(n, u):
                    u.hb_last[n.id] = self.now
        # sitters
        for n in self.rng.sample(self.nodes, len(self.nodes)):
            if n.up():
                self._sitter(n)

    def _stream(self, n: Node) -> None:
        if not (n.up() and n.running and not n.pg_hung and n.mode == "standby" and n.applied.upstream):
            n.streaming = False
            return
        u = self.node(n.applied.upstream)
        if not (self.reach(n, u) and u.running and not u.pg_hung and u.has_data):
            n.streaming = False
            return
        mine, theirs = n.log, u.log
        if theirs[:len(mine)] == mine:
            n.log = list(theirs[:len(mine) + self.rng.choice((1, 2, 3, 5))])  # replication lag
            n.streaming = True
            if n.streamed_from != u.id:
                n.streamed_from = u.id
            n.streamed = len(n.log)
        elif mine[:len(theirs)] == theirs and not any(isinstance(r, tuple) for r in mine[len(theirs):]):
            n.streaming = False  # ahead on the same timeline: waits for the upstream to catch up
        else:
            n.streaming, n.diverged = False, True

    def _observe(self, n: Node) -> Observation:
        zk = SUSPENDED
        if self.zk_ok(n):
            if n.sid is not None and n.sid in self.zk.expired:
                zk = LOST
            else:
                if n.sid is None:
                    n.sid = self.zk.new_session(self.now)
                    self.zk.join(n.sid, n.peer)
                self.zk.last_heard[n.sid] = self.now
                n.last_connected = self.now
                zk = CONNECTED
                n.cache = (self.zk.state(), self.zk.version, self.zk.peers(), self.zk.error)
        st, ver, election, error = n.cache
        # the shell's hang detection: unanswered for HUNG_TICKS → killed (restarted by the rules)
        if n.running and n.pg_hung:
            n.unanswered_since = self.now if n.unanswered_since is None else n.unanswered_since
            if self.now - n.unanswered_since >= HUNG_TICKS:
                self.trace.append(f"{self.now} {n.peer.ip} hung PostgreSQL killed")
                self._pg_stop(n)
        if not (n.running and n.pg_hung):
            n.unanswered_since = None
        known = not (n.running and n.pg_hung)
        if known and n.running and n.mode == "primary" and (st is None or st.primary.id != n.id):
            n.diverged = True  # the shell latches it: a PG out of recovery that is not the primary forked
        # the primary's latched "sync caught up" and heartbeat freshness for its state sync
        caught, hbs = False, {}
        if st is not None and st.primary.id == n.id and st.sync is not None:
            sid = st.sync.id
            s = self.sync_connected(n) if n.running and n.mode == "primary" else None
            if n.running and n.pg_hung:
                pass  # unknown: the shell's latch holds as it was
            elif s is None or s.id != sid:
                n.caught_up.pop(sid, None)
            elif s.log == n.log:
                n.caught_up[sid] = True
            caught = n.caught_up.get(sid, False)
            since = n.sync_since.setdefault((st.generation, sid), self.now)
            hbs = {sid: self.now - max(n.hb_last.get(sid, -10**9), since) <= HB_TIMEOUT}
        if not known:
            wal = None
        elif n.running and n.mode == "primary":
            wal = len(n.log)
        elif n.running:
            wal = n.streamed
        else:
            wal = None
        # the shell's serve tracking (latches.failing_since): cannot_serve after PST_TICKS
        last = n.last_decision  # the clock runs only while I try to serve (not in safe mode, fenced ...)
        trying = last is not None and (last.target.role == PRIMARY or last.rule == "primary.step_down_stop")
        as_primary = (st is not None and st.primary.id == n.id and trying
                      and not (st.switchover is not None and st.switchover.released))
        cannot_serve = None
        if as_primary:
            healthy = n.running and known and n.mode == "primary"
            n.sick_since, n.good_since = failing_since(n.sick_since, n.good_since, healthy=healthy,
                                                       now=self.now, stable_s=PST_TICKS / 2)
            if not healthy and n.sick_since is not None and self.now - n.sick_since >= PST_TICKS:
                cannot_serve = f"not healthy for {self.now - n.sick_since} ticks"
        else:
            n.sick_since = n.good_since = None
        sw = st.switchover if st is not None else None
        key = (st.generation, sw.to, sw.requested) if sw is not None and st.primary.id == n.id else None
        if key is None:
            n.sw_seen = None
        elif n.sw_seen is None or n.sw_seen[0] != key:
            n.sw_seen = (key, self.now)
        return Observation(
            switchover_expired=n.sw_seen is not None and self.now - n.sw_seen[1] > SW_LIMIT_TICKS,
            me=n.peer, zk=zk, election=election, state=st, state_version=ver, error=error,
            running=n.running, in_recovery=(n.running and n.mode == "standby") if known else None,
            pg_known=known, wal=wal, cannot_serve=cannot_serve,
            streaming=n.streaming and known, upstream_id=n.conf.upstream if n.conf.standby_signal else None,
            read_only=n.applied.read_only if (known and n.running and n.mode == "primary") else None,
            diverged=n.diverged, sync_caught_up=caught, has_data=n.has_data, heartbeats=hbs,
            one_node_write_mode=self.onwm,
            expiry_passed=zk == SUSPENDED and self.now - n.last_connected > SESSION_TIMEOUT,
            sync_streaming=st is not None and st.sync is not None and n.running and known and n.mode == "primary"
            and getattr(self.sync_connected(n), "id", None) == st.sync.id)

    def _sitter(self, n: Node) -> None:
        """One sitter cycle. Applying the decision happens now or on the next tick (the world
        moves on between observing and acting, as it does for the real shell)."""
        if n.pending_apply is not None:
            d, obs = n.pending_apply
            n.pending_apply = None
            self._apply(n, d, obs)
            return
        obs = self._observe(n)
        d = decide(obs)
        n.last_decision = d
        assert d.reason and d.reason.strip(), d
        if (d.write_state is not None or d.write_error is not None) and obs.zk != CONNECTED:
            raise Violation(f"{n.id} wants to write while {obs.zk}: {d.reason}")
        if d.write_error is not None and self.zk.error is None:
            self.zk.error = d.write_error
        if d.write_state is not None:
            if not self.zk.cas_state(d.write_state, obs.state_version):
                self.trace.append(f"{self.now} {n.peer.ip} CAS failed: {d.reason}")
                return
            # the shell's contract: what it wrote is its view until it reads again
            n.cache = (d.write_state, obs.state_version + 1, n.cache[2], n.cache[3])
        if d.write_state is not None or d.rule != getattr(n, "_last_rule", None):
            self.trace.append(f"{self.now} {n.peer.ip} {d.rule}: {d.reason}")
        n._last_rule = d.rule
        if self.rng.random() < 0.5:
            n.pending_apply = (d, obs)
        else:
            self._apply(n, d, obs)

    def _apply(self, n: Node, d, obs: Observation) -> None:
        current = n.role
        if current in (PRIMARY, STANDBY, REBUILD) and not n.running:
            current = UNASSIGNED  # the shell's convention: PG died, start over
        try:
            tr = T.plan(current, n.target if current == n.role else None, d.target)
        except T.ImpossibleTransition as e:
            raise Violation(f"{n.id}: {e}")
        try:
            for step in tr.steps:
                self.run_step(n, step, d.target)
        except StepFailed as e:
            self.trace.append(f"{self.now} {n.peer.ip} step failed: {e}")
            return
        gen = (d.write_state or obs.state).generation if (d.write_state or obs.state) else None
        if obs.zk == CONNECTED:
            self.zk.history.extend(events_for(n.peer, n.target, d.target, gen, self.now * 1000))
        n.role, n.target = d.target.role, d.target
        if obs.zk == LOST:  # the shell opens a new session next cycle
            n.sid = None

    # -- drivers and checks ---------------------------------------------------------------
    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick()

    def healthy(self) -> bool:
        st = self.zk.state()
        if st is None or self.zk.error is not None:
            return False
        live = [n for n in self.nodes if n.up()]
        chain = st.chain()
        if {p.id for p in chain} != {n.id for n in live}:
            return False
        p = self.node(st.primary.id)
        if not (self.writable(p) and st.sync is not None and p.applied.sync == st.sync.id
                and self.sync_connected(p) is not None):
            return False
        for prev, cur in zip(chain, chain[1:]):
            c = self.node(cur.id)
            if not (c.running and c.mode == "standby" and c.applied.upstream == prev.id and c.streaming):
                return False
        return True

    def settle(self, limit: int = SETTLE) -> int:
        for i in range(limit):
            if self.healthy():
                return i
            self.tick()
        if self.healthy():
            return limit
        raise Violation("did not converge to primary + sync + asyncs:\n" + self.describe())

    def describe(self) -> str:
        st = self.zk.state()
        lines = [f"tick {self.now} zk_up={self.zk.up} error={self.zk.error}",
                 f"state: {st and st.to_json()}"]
        for n in self.nodes:
            d = n.last_decision
            lines.append(f"  {n.peer.ip} alive={n.alive} hung={n.hung} cut={n.zk_cut},{n.peers_cut} role={n.role} "
                         f"pg={'up' if n.running else 'down'}/{n.mode} log={len(n.log)} streamed={n.streamed} "
                         f"streaming={n.streaming} div={n.diverged} conf={vars(n.conf)} "
                         f"rule={getattr(d, 'rule', None)} reason={getattr(d, 'reason', None)}")
        lines += self.trace[-25:]
        return "\n".join(lines)

    def bootstrap(self) -> Shard:
        for n in self.nodes:  # join the election in index order: node 0 leads
            if n.up() and n.sid is None and self.zk_ok(n):
                n.sid = self.zk.new_session(self.now)
                self.zk.join(n.sid, n.peer)
        self.settle()
        return self


def new_shard(n: int = 3, seed: int = 0, onwm: bool = False) -> Shard:
    return Shard(n, seed, onwm).bootstrap()


def acked_count_grows(sh: Shard, ticks: int = 10) -> bool:
    before = len(sh.acked)
    sh.run(ticks)
    return len(sh.acked) > before


# =======================================================================================
# Scripted scenarios
# =======================================================================================

def test_bootstrap_declares_generation_1_and_takes_writes():
    sh = new_shard()
    st = sh.zk.state()
    assert st.generation == 1 and st.primary.id == sh.nodes[0].id
    assert st.sync.id == sh.nodes[1].id and [p.id for p in st.async_] == [sh.nodes[2].id]
    assert acked_count_grows(sh)
    actions = [e.action for e in sh.zk.history]
    assert "AssumeLeader" in actions and "NewLeader" in actions and "NewStandby" in actions


def test_F1_kill_primary_sync_takes_over_async_becomes_sync_old_primary_rejoins():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.run(5)
    sh.kill(p)
    sh.run(SESSION_TIMEOUT + 6)
    st = sh.zk.state()
    assert st.primary.id == s.id and st.sync.id == a.id and st.generation == 2
    assert [d.id for d in st.deposed] == [p.id]
    assert acked_count_grows(sh)
    sh.start(p)
    sh.settle()
    st = sh.zk.state()
    assert st.async_[-1].id == p.id and not st.deposed
    assert sh.nodes[0].diverged or sh.nodes[0].streaming


def test_F1_old_primary_with_unreplicated_wal_is_rebuilt():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.partition(s, zk=False, peers=True)  # the sync stops receiving: the primary's commits hang
    sh.tick()
    assert p.pending, "the primary holds WAL its sync never received"
    sh.heal(s)
    sh.kill(p)
    sh.run(SESSION_TIMEOUT + 6)
    assert sh.zk.state().primary.id == s.id
    sh.start(p)
    sh.settle()
    assert any("rebuild" in line for line in sh.trace), sh.describe()


def test_F3_kill_sync_async_becomes_sync_old_sync_rejoins_at_tail():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.kill(s)
    sh.run(SESSION_TIMEOUT + 6)
    st = sh.zk.state()
    assert st.primary.id == p.id and st.sync.id == a.id and st.generation == 2
    assert acked_count_grows(sh)
    sh.start(s)
    sh.settle()
    assert sh.zk.state().async_[-1].id == s.id


def test_F4_kill_async_is_dropped_primary_never_blocks_rejoins():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.kill(a)
    for _ in range(SESSION_TIMEOUT + 4):
        before = len(sh.acked)
        sh.tick()
        assert len(sh.acked) > before, "the primary blocked while the async died"
    st = sh.zk.state()
    assert st.generation == 1 and not st.async_
    sh.start(a)
    sh.settle()
    assert [x.id for x in sh.zk.state().async_] == [a.id] and sh.zk.state().generation == 1


def test_F5_kill_postgres_alone_on_primary_is_restarted_in_place():
    sh = new_shard()
    p = sh.nodes[0]
    sh.kill_pg(p)
    sh.settle()
    assert sh.zk.state().primary.id == p.id and sh.zk.state().generation == 1
    assert acked_count_grows(sh)


def test_F18_hung_postgres_on_the_primary_is_killed_and_restarted_in_place():
    sh = new_shard()
    p = sh.nodes[0]
    sh.pg_fault(p, "hang")
    sh.run(HUNG_TICKS + 2)
    assert any("hung PostgreSQL killed" in t for t in sh.trace)
    sh.settle()
    assert sh.zk.state().primary.id == p.id and sh.zk.state().generation == 1 and not sh.promotions
    assert acked_count_grows(sh)


@pytest.mark.parametrize("fault", ["hang_sticky", "no_start"])
def test_F18_F19_F22_primary_that_cannot_serve_steps_down_to_its_sync(fault):
    sh = new_shard()
    p, s, a = sh.nodes
    acked = len(sh.acked)
    sh.pg_fault(p, fault)
    t0 = sh.now
    for _ in range(PST_TICKS + 3 * SESSION_TIMEOUT):
        sh.tick()
        if sh.zk.state().primary.id == s.id:
            break
    st = sh.zk.state()
    assert st.primary.id == s.id, sh.describe()
    # within the bound: primaryStartTimeout, plus a few ticks to kill, release, detach and take over
    assert sh.now - t0 <= PST_TICKS + HUNG_TICKS + 8, sh.describe()
    assert [pid for _, pid in sh.promotions] == [s.id]  # nothing promoted twice
    assert any(e.action == "AssumeLeader" and e.ip == s.peer.ip for e in sh.zk.history)
    assert p.id not in {q.id for q in st.deposed}  # it stopped cleanly for the release: it rejoins
    sh.run(PST_TICKS)
    assert [pid for _, pid in sh.promotions] == [s.id]  # no flapping while it is still sick
    sh.pg_fault(p, None)
    sh.settle()
    st = sh.zk.state()
    assert st.primary.id == s.id and p.id in {q.id for q in st.chain()}
    assert acked_count_grows(sh) and len(sh.acked) > acked


def test_primary_that_cannot_serve_without_a_healthy_sync_keeps_trying():
    sh = new_shard(2)
    p, s = sh.nodes
    sh.kill(s)
    sh.pg_fault(p, "no_start")
    sh.run(PST_TICKS + 3 * SESSION_TIMEOUT)
    st = sh.zk.state()
    assert st.primary.id == p.id and st.switchover is None and not sh.promotions
    assert p.last_decision.rule == "primary.cannot_serve" and "keep trying" in p.last_decision.reason
    sh.pg_fault(p, None)
    sh.start(s)
    sh.settle()
    assert sh.zk.state().primary.id == p.id


@pytest.mark.parametrize("place", [1, 2])
@pytest.mark.parametrize("fault", ["hang", "hang_sticky"])
def test_F18_hung_postgres_on_a_standby_is_never_rebuilt_and_never_safe_mode(place, fault):
    sh = new_shard()
    n = sh.nodes[place]
    restores = len(sh.restores)  # the bootstrap's
    sh.pg_fault(n, fault)
    sh.run(3 * SESSION_TIMEOUT)
    assert len(sh.restores) == restores and sh.zk.error is None and not sh.promotions
    assert sh.zk.state().primary.id == sh.nodes[0].id
    sh.pg_fault(n, None)
    sh.settle()
    assert len(sh.restores) == restores and sh.zk.error is None


def test_F18_unknown_pg_on_the_sync_when_its_primary_dies_is_not_safe_mode():
    sh = new_shard()
    p, s, a = sh.nodes
    restores = len(sh.restores)
    sh.pg_fault(s, "hang")
    sh.tick()
    sh.kill(p)
    sh.run(SESSION_TIMEOUT + 6)
    assert sh.zk.error is None and len(sh.restores) == restores


@pytest.mark.parametrize("zk_only", [False, True])
def test_F6_F7_hang_or_partition_primary_past_session_timeout(zk_only):
    sh = new_shard()
    p, s, a = sh.nodes
    sh.run(3)
    if zk_only:
        sh.partition(p, zk=True, peers=False)  # still streaming to its sync: the detach matters
    else:
        sh.hang(p)
    sh.run(SESSION_TIMEOUT + 8)
    st = sh.zk.state()
    assert st.primary.id == s.id and st.generation == 2
    acked_by_p = sh.ackers.count(p.id)
    sh.heal(p)
    sh.resume(p)
    sh.run(5)
    assert sh.ackers.count(p.id) == acked_by_p, "the old primary acknowledged a write after it was replaced"
    sh.settle()
    assert sh.zk.state().primary.id == s.id


def test_F8_partition_sync_gets_new_sync_and_rejoins_as_async():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.partition(s)
    sh.run(SESSION_TIMEOUT + 8)
    st = sh.zk.state()
    assert st.sync.id == a.id and st.primary.id == p.id
    assert acked_count_grows(sh)
    sh.heal(s)
    sh.settle()
    assert sh.zk.state().async_[-1].id == s.id


def test_sync_cut_from_peers_only_is_replaced_by_heartbeat_expiry():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.partition(s, zk=False, peers=True)
    sh.run(HB_TIMEOUT + 6)
    st = sh.zk.state()
    assert st.sync.id == a.id and [x.id for x in st.async_] == [s.id]
    assert acked_count_grows(sh)
    sh.heal(s)
    sh.settle()


def test_sync_cut_from_zookeeper_only_keeps_acking_until_replaced_safely():
    """The race the primary's read-only-first step closes: the old sync still acknowledges."""
    sh = new_shard()
    p, s, a = sh.nodes
    sh.partition(s, zk=True, peers=False)
    sh.run(SESSION_TIMEOUT + 8)
    st = sh.zk.state()
    assert st.sync.id == a.id
    sh.heal(s)  # it rejoins at the tail, so that the new sync has a sync of its own to take over with
    sh.run(4)
    assert [x.id for x in sh.zk.state().async_] == [s.id]
    sh.kill(p)  # the new sync must hold everything acknowledged, including via the old sync
    sh.run(SESSION_TIMEOUT + 8)
    assert sh.zk.state().primary.id == a.id
    sh.heal_all()
    sh.settle()


def test_F9_partition_async_is_dropped_and_rejoins():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.partition(a)
    sh.run(SESSION_TIMEOUT + 4)
    assert not sh.zk.state().async_ and acked_count_grows(sh)
    sh.heal(a)
    sh.settle()
    assert sh.zk.state().generation == 1


def test_F10_zookeeper_down_no_topology_change_primary_keeps_serving():
    sh = new_shard()
    writes = len(sh.zk.writes)
    sh.zk_down()
    for _ in range(2 * SESSION_TIMEOUT + 2):
        before = len(sh.acked)
        sh.tick()
        assert len(sh.acked) > before, "the primary stopped serving while ZooKeeper was down"
    assert len(sh.zk.writes) == writes
    sh.zk_up()
    sh.run(SESSION_TIMEOUT + 4)
    assert len(sh.zk.writes) == writes and sh.healthy()


def test_F11_zookeeper_down_then_primary_killed_then_back():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.zk_down()
    sh.run(3)
    sh.kill(p)
    sh.run(2 * SESSION_TIMEOUT)
    assert not sh.promotions, "promoted while ZooKeeper was down"
    sh.zk_up()
    sh.run(SESSION_TIMEOUT + 8)
    st = sh.zk.state()
    assert st.primary.id == s.id and [x.id for x in st.deposed] == [p.id]
    sh.start(p)
    sh.settle()


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("gap", [0, 2, SESSION_TIMEOUT + 2])
def test_F12_all_restart_in_every_order(order, gap):
    sh = new_shard()
    old = sh.zk.state()
    sh.run(3)
    for n in sh.nodes:
        sh.kill(n)
    sh.tick()
    for k in order:
        sh.start(k)
        sh.run(gap)
    sh.settle()
    new = sh.zk.state()
    assert new.primary.id in (old.primary.id, old.sync.id), "the async led after a full restart"
    assert not sh.zk.error


@pytest.mark.parametrize("missing", [0, 1, 2])
@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_F12_all_restart_one_never_returns(order, missing):
    sh = new_shard()
    old = sh.zk.state()
    for n in sh.nodes:
        sh.kill(n)
    sh.tick()
    for k in order:
        if k != missing:
            sh.start(k)
            sh.run(1)
    sh.run(3 * SESSION_TIMEOUT)
    st = sh.zk.state()
    assert st.primary.id in (old.primary.id, old.sync.id)
    if missing == 0:
        # The sync restarted: it has not streamed since, so it cannot show it holds every
        # acknowledged write, and nobody may take writes (the design's documented limit).
        s = sh.nodes[1]
        assert st.primary.id == old.primary.id and not sh.promotions
        assert s.last_decision.rule == "sync.no_wal", s.last_decision
    else:
        live = [n for n in sh.nodes if n.alive]
        assert st.primary.id == old.primary.id
        assert {st.sync.id} | {x.id for x in st.async_} == {n.id for n in live} - {st.primary.id}
        assert sh.healthy(), sh.describe()
        assert acked_count_grows(sh)


def test_F13_back_to_back_failovers_converge():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.kill(p)
    for _ in range(3 * SESSION_TIMEOUT):
        sh.tick()
        if sh.zk.state().primary.id == s.id:
            break
    assert sh.zk.state().primary.id == s.id
    sh.kill(s)  # kill the newly promoted primary at once
    sh.run(3 * SESSION_TIMEOUT)
    st = sh.zk.state()
    assert st.primary.id in (s.id, a.id)
    sh.heal_all()
    sh.settle()


def test_F14_fourth_node_joins_and_is_appended():
    sh = Shard(4, seed=1)
    sh.kill(3)
    sh.bootstrap()
    assert len(sh.zk.state().chain()) == 3
    sh.start(3)
    sh.settle()
    st = sh.zk.state()
    assert st.async_[-1].id == sh.nodes[3].id and st.generation == 1
    d, p = sh.nodes[3], sh.nodes[0]
    assert d.log and p.log[:len(d.log)] == d.log


def test_F15_standby_dataset_destroyed_is_restored():
    sh = new_shard()
    a = sh.nodes[2]
    sh.destroy_data(a)
    sh.settle()
    assert a.has_data and a.streaming


def test_F16_divergence_with_primary_alive_rebuilds():
    sh = new_shard()
    s = sh.nodes[1]
    sh.fork(s)
    sh.settle()
    assert not sh.zk.error and not s.diverged


def test_F16_divergence_with_primary_gone_enters_safe_mode():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.fork(s)
    sh.kill(p)
    sh.run(SESSION_TIMEOUT + 6)
    assert sh.zk.error is not None and "diverged" in sh.zk.error["reason"]
    assert sh.zk.error["standby"] == s.peer.ip and sh.zk.error["primary"] == p.peer.ip
    writes = len(sh.zk.writes)
    sh.start(p)
    sh.run(10)
    assert len(sh.zk.writes) == writes and not any(sh.writable(n) for n in sh.nodes)
    assert all(n.role == "safe_mode" for n in sh.nodes if n.alive)
    # the operator clears the error node: the shard resumes from the persisted state
    sh.zk.error = None
    sh.settle()
    assert sh.zk.state().primary.id == p.id


def test_freeze_stops_all_state_writes():
    sh = new_shard()
    p, s, a = sh.nodes
    st = sh.zk.state()
    assert sh.zk.cas_state(st.evolve(freeze=Freeze(reason="maintenance", by="op")), sh.zk.version)
    writes = len(sh.zk.writes)
    sh.kill(p)
    sh.run(3 * SESSION_TIMEOUT)
    assert len(sh.zk.writes) == writes and not sh.promotions
    assert "frozen" in s.last_decision.reason


def test_one_node_write_mode_single_node():
    sh = Shard(1, seed=3, onwm=True)
    sh.run(10)
    st = sh.zk.state()
    assert st.one_node_write_mode and st.sync is None
    assert acked_count_grows(sh)
    sh.zk_down()  # nobody fences a lone writer: it stops itself
    sh.run(2)
    assert not sh.nodes[0].running


# =======================================================================================
# Random fault sequences
# =======================================================================================

FAULTS = ("kill", "start", "hang", "resume", "partition", "partition_zk", "partition_peers", "heal",
          "zk_down", "zk_up", "kill_pg", "pg_hang", "pg_hang_sticky", "pg_no_start", "pg_cure",
          "destroy_standby", "fork_standby")


def _random_fault(sh: Shard, rng: random.Random, allow_fork: bool) -> None:
    f = rng.choice(FAULTS if allow_fork else FAULTS[:-1])
    n = rng.choice(sh.nodes)
    if f == "kill":
        sh.kill(n)
    elif f == "start":
        sh.start(n)
    elif f == "hang":
        sh.hang(n)
    elif f == "resume":
        sh.resume(n)
    elif f == "partition":
        sh.partition(n)
    elif f == "partition_zk":
        sh.partition(n, zk=True, peers=False)
    elif f == "partition_peers":
        sh.partition(n, zk=False, peers=True)
    elif f == "heal":
        sh.heal(n)
    elif f == "zk_down":
        sh.zk_down()
    elif f == "zk_up":
        sh.zk_up()
    elif f == "kill_pg":
        sh.kill_pg(n)
    elif f in ("pg_hang", "pg_hang_sticky", "pg_no_start"):
        sh.pg_fault(n, f[3:])
    elif f == "pg_cure":
        sh.pg_fault(n, None)
    elif f == "destroy_standby":
        st = sh.zk.state()
        if st is not None and st.primary.id != n.id and n.role != PRIMARY:
            sh.destroy_data(n)
    elif f == "fork_standby":
        if n.running and n.mode == "standby":
            sh.fork(n)


@pytest.mark.parametrize("batch", range(8))
def test_random_fault_sequences(batch):
    runs = 40
    for seed in range(batch * runs, (batch + 1) * runs):
        rng = random.Random(seed)
        n = 3 if seed % 4 else 4
        sh = Shard(n, seed=seed)
        try:
            sh.bootstrap()
            for _ in range(rng.randint(20, 80)):
                if rng.random() < 0.3:
                    _random_fault(sh, rng, allow_fork=seed % 5 == 0)
                sh.tick()
            sh.heal_all()
            if sh.zk.error is None:
                for _ in range(SETTLE):
                    if sh.healthy() or sh.zk.error is not None:
                        break
                    sh.tick()
            if sh.zk.error is None:
                sh.settle()
                assert acked_count_grows(sh, 5)
            else:
                assert not any(sh.writable(x) for x in sh.nodes if x.role == "safe_mode")
        except (Violation, AssertionError) as e:
            raise AssertionError(f"seed {seed}: {e}\n{sh.describe()}") from None


# =======================================================================================
# Targeted races: a second failure inside the window each two-phase step closes
# =======================================================================================

def _promotion_tick(sh: Shard, node: Node, limit: int) -> bool:
    for _ in range(limit):
        sh.tick()
        if any(pid == node.id for _t, pid in sh.promotions):
            return True
    return False


@pytest.mark.parametrize("seed", range(12))
def test_race_new_sync_named_while_old_sync_still_acknowledges(seed):
    """The old sync lost ZooKeeper but still streams and acknowledges; the primary names a
    new sync and dies soon after. The new sync must hold every acknowledged write when it
    takes over: this needs the primary to go read-only before it records initWal."""
    for sub in range(6):
        sh = Shard(4, seed=seed * 10 + sub, commits_per_tick=4)
        p, s, a, b = sh.nodes
        sh.bootstrap()
        sh.partition(s, zk=True, peers=False)
        for _ in range(3 * SESSION_TIMEOUT):
            sh.tick()
            st = sh.zk.state()
            if st.sync.id == a.id:
                break
        assert st.sync.id == a.id
        for _ in range(20):  # the primary dies as soon as its new sync has reached initWal
            if a.streamed is not None and a.streamed >= st.init_wal:
                break
            sh.tick()
        sh.kill(p)
        sh.kill(s)
        sh.run(3 * SESSION_TIMEOUT)  # S2 is checked when a takes over
        assert sh.zk.state().primary.id in (p.id, a.id)


@pytest.mark.parametrize("seed", range(12))
def test_race_takeover_while_old_primary_still_streams(seed):
    """The primary lost ZooKeeper but still streams to its sync and commits; the sync takes
    over and dies soon after. Its own sync must hold every acknowledged write: this needs
    the sync to detach before it records its WAL position as initWal."""
    for kill_after in range(0, 6):
        sh = Shard(4, seed=seed * 10 + kill_after, commits_per_tick=4)
        p, s, a, b = sh.nodes
        sh.bootstrap()
        sh.partition(p, zk=True, peers=False)
        assert _promotion_tick(sh, s, 4 * SESSION_TIMEOUT), sh.describe()
        sh.run(kill_after)
        sh.kill(s)
        sh.kill(p)
        sh.run(3 * SESSION_TIMEOUT)  # S2 is checked when a takes over
        assert sh.zk.state().primary.id in (s.id, a.id)
