"""The sitter's view of its shard in ZooKeeper: the session's state, and the election, state
and error node as last read — re-read when a watch fires, after a reconnect, and every
ZK_SAFETY_REFRESH_S anyway. The view is marked stale when the session is lost (and at
start) until a complete read: decide() is then told the session is LOST."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Callable

from manatee.core import zk as zkmod
from manatee.shard.shardstore import StateUnreadable
from manatee.shard.state import CONNECTED, LOST, SUSPENDED, ClusterState, Peer
from manatee.sitter.ports import Clock, Session, Store
from manatee.sitter.statememory import SAID, not_following, to_say

ZK_SAFETY_REFRESH_S = 5.0  # re-read ZooKeeper at least this often even without a watch
_ZK_BADNESS = (CONNECTED, SUSPENDED, LOST)  # order for "the worse of two session states"


def worse(a: str, b: str) -> str:
    """The worse of two session states."""
    return max(a, b, key=_ZK_BADNESS.index)


class ZkView:
    def __init__(self, session: Session, store: Store, me: Peer, configured_timeout_s: float, log, clock: Clock,
                 wake: asyncio.Event):
        self.session, self.store, self.me, self.log, self.clock, self.wake = session, store, me, log, clock, wake
        self.configured_timeout = configured_timeout_s
        self.session_timeout = configured_timeout_s
        self.zk_state = LOST
        self.need_join = True
        self.view_stale = True  # my view predates my current session
        self.dirty = True
        self.read_at = 0.0
        self.election: tuple[Peer, ...] = ()
        self.state: ClusterState | None = None
        self.state_version = -1
        self.error: dict | None = None
        self.state_unreadable: str | None = None  # why the state znode cannot be used, or None
        self.state_missing = False  # the state znode does not exist (`state` is then the last one read)
        self.state_older: str | None = None  # the znode does not follow from what I remember: why
        self.sessions = 0           # sessions lost so far: a new one starts after each
        self.state_session = -1     # `sessions` when `state` was last read from the znode
        self.memory = None  # the sitter's StateMemory: what my election node says I remember
        self.said: int | None | str = None  # what my election node says I remember (remembers)
        self.say_retry_at = 0.0  # a failed rewrite of it is tried again from then
        self.on_change: Callable[[], object] = lambda: None  # the session's state changed: publish it

    @property
    def quarantined(self) -> tuple[str, ...]:
        """"<znode>: <why>" for each znode ignored because it cannot be parsed."""
        return self.store.quarantine.items()

    def listen(self) -> None:
        """Listen to the session's state (before it starts)."""
        self.session.add_state_listener(self.on_state)
        if self.session.auth is None:
            self.log.warning("zk_auth_off", note="no zkCfg.auth: anyone who reaches ZooKeeper can change this "
                                                 "shard's znodes (docs/security.md)")

    def watch(self) -> None:
        """Watch the shard's znodes (once the session has started)."""
        self.session.watch_children(self.store.election_path, self.poke)
        self.session.watch_data(self.store.state_path, self.poke)
        self.session.watch_data(self.store.error_path, self.poke)

    def on_state(self, state) -> None:
        s = str(state).upper()
        self.zk_state = {"CONNECTED": CONNECTED, "SUSPENDED": SUSPENDED}.get(s, LOST)
        if self.zk_state == LOST:
            self.need_join = True
            self.view_stale = True
            self.sessions += 1
        self.log.info("zk_session", state=self.zk_state)
        self.on_change()
        self.poke()

    def poke(self, *_a) -> None:
        """A watch fired (or the session changed): read again."""
        self.dirty = True
        self.wake.set()

    async def connect(self, stop: asyncio.Event) -> bool:
        """Start the session, retrying until it is up or `stop` is set."""
        while not stop.is_set():
            try:
                await self.session.start()  # a fresh kazoo client per attempt: retrying is fine
                self.zk_state = CONNECTED
                self.note_session_timeout()
                return True
            except zkmod.ZKError as e:
                self.log.warning("zk_unreachable", error=str(e))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2)
        return False

    def note_session_timeout(self) -> None:
        """ZooKeeper grants a session timeout within its [min, max]SessionTimeout, whatever
        we asked: every deadline derived from it must use the granted one (the fencing
        deadline does: ZKClient.session_expiry_deadline). Logged when it changes."""
        got = self.session.negotiated_session_timeout
        if got is None or got == self.session_timeout:
            return
        configured = self.configured_timeout
        self.session_timeout = got
        (self.log.warning if got != configured else self.log.info)(
            "zk_session_timeout_negotiated", configured_s=configured, negotiated_s=got,
            note="ZooKeeper's min/maxSessionTimeout changed the session timeout; the sitter uses the "
                 "negotiated one" if got != configured else "as configured")

    async def refresh(self) -> None:
        """Re-read what the decision needs (only while connected): when a watch fired, and
        every ZK_SAFETY_REFRESH_S anyway (watches are re-armed after reconnects, but a
        periodic read costs little and bounds the damage of a missed one)."""
        if self.zk_state != CONNECTED:
            return
        self.note_session_timeout()  # a reconnect (to another server) may grant another one
        now = self.clock.monotonic()
        if (not self.dirty and not self.need_join and now - self.read_at < ZK_SAFETY_REFRESH_S
                and self.to_say() is SAID):
            return
        self.dirty = False  # cleared before reading: a change during the read marks it again
        self.read_at = now
        try:
            if self.need_join:
                await self.join()
            self.election = await self.store.election()
            if all(p.id != self.me.id for p in self.election):  # deleted or overwritten by hand
                self.log.warning("election_node_gone", note="my election node is gone or unreadable while my "
                                                            "session lives; I join the election again")
                await self.join()
                self.election = await self.store.election()
            try:
                self.note_state(*await self.store.read_state())
                self.state_unreadable = None
            except StateUnreadable as e:  # never "no state": keep the last one read, and hold
                self.state_unreadable = str(e)
            self.error = await self.store.read_error()
            await self.say_remembers()
            self.view_stale = False
        except (zkmod.ZKError, zkmod.ConnectionLoss, zkmod.SessionExpiredError, asyncio.TimeoutError) as e:
            self.dirty = True
            self.log.warning("zk_read_failed", error=str(e) or type(e).__name__)

    async def join(self) -> None:
        await self.store.ensure_paths()
        self.said = self.memory.remembers(self.state) if self.memory else None
        await self.store.join(replace(self.me, remembers=self.said))
        self.need_join = False

    def to_say(self) -> int | None | str:
        """What my election node should say I remember now, or SAID when it says so already
        (or a failed rewrite is less than ZK_SAFETY_REFRESH_S old)."""
        if self.clock.monotonic() < self.say_retry_at:
            return SAID
        return to_say(self.said, self.memory.remembers(self.state) if self.memory is not None else None)

    async def say_remembers(self) -> None:
        """My election node says what I remember now, not only what I knew when I joined: a
        node that joined knowing nothing (a new one) and then read the state or received the
        shard's data must not go on saying null (a peer heading the election would declare
        generation 1 once the state is lost, and the tools would show it as empty); one whose
        dataset's memory could not be read at its join says so once it can."""
        now = self.to_say()
        if now is SAID:
            return
        try:
            await self.store.update_me(replace(self.me, remembers=now))
        except zkmod.NoNodeError:  # gone since I read the election: the next read joins again
            self.dirty = True
            return
        except Exception as e:  # noqa: BLE001 - never fatal to the refresh (an ACL changed by hand...)
            self.say_retry_at = self.clock.monotonic() + ZK_SAFETY_REFRESH_S
            self.log.warning("election_node_not_updated", remembers=now, error=f"{type(e).__name__}: {e}"[:300])
            return
        self.log.info("election_node_updated", remembers=now, was=self.said)
        self.said = now

    def note_state(self, state: ClusterState | None, version: int) -> None:
        """The state znode as just read (or written). A missing znode does not erase the
        last state read: decide() must hear that the shard had one (Observation.state_lost)."""
        self.state_missing = state is None
        self.state_version = version
        newest = self.memory.newest(self.state) if self.memory is not None else None
        self.state_older = not_following(state, newest) if state is not None and newest is not None else None
        if self.state_older:  # older than I know of, or other leaders: hold what I remember (never "unbroken")
            self.state = newest.state
        elif state is not None:
            self.state, self.state_session = state, self.sessions
        elif self.state is None and self.memory is not None:  # restarted since: what my dataset
            self.state = self.memory.remembered_state()       # remembers (never "unbroken")

    @property
    def session_unbroken(self) -> bool:
        """My session has not been lost since I last read `state` from its znode."""
        return (self.state is not None and self.state_session == self.sessions and not self.view_stale
                and self.zk_state == CONNECTED)

    def expiry_passed(self) -> bool:
        """Suspended, and the session-expiry deadline has passed: it may have expired."""
        deadline = self.session.session_expiry_deadline() if self.zk_state == SUSPENDED else None
        return deadline is not None and self.clock.monotonic() >= deadline

    def members(self, my_ip: str) -> tuple[str, ...]:
        """Addresses pg_hba admits for replication: everyone in the election or the state."""
        ips = {p.ip for p in self.election} | ({p.ip for p in self.state.members()} if self.state else set())
        return tuple(sorted(ips | {my_ip}))
