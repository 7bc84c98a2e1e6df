"""The sitter's imperative shell: observe, ask the pure core, carry out its answer.

Each cycle: gather an Observation (ZooKeeper session, election, persisted state, error node,
PostgreSQL status, heartbeats) → `decide()` → write the state by compare-and-set (on a lost
race, observe again) → `plan()` the local transition from the declarative table → run its
steps → record history. Every cycle that changes something logs one plain sentence of what
was decided and why (the decision's `reason`) and the transition's comment.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from manatee.core import pg as pgmod
from manatee.core import zk as zkmod
from manatee.core.restore import restore as restore_dataset
from manatee.core.zfs import Zfs
from manatee.sitter import slots
from manatee.shard import history, latches, transitions as T
from manatee.shard.decide import STEP_DOWN_BY, Decision, Observation, decide
from manatee.sitter.heartbeat import HeartbeatSender, HeartbeatTable
from manatee.sitter.hooks import RoleHooks
from manatee.sitter.pgmanager import PgConfigError, PgManager, PgStatus, RoleSpec
from manatee.shard.shardstore import ShardStore, StateUnreadable
from manatee.shard.state import (
    CONNECTED, LOST, PRIMARY, REBUILD, STANDBY, SUSPENDED, UNASSIGNED, ClusterState, Peer, Target,
)


class Sitter:
    # Why the state znode cannot be used (quarantined), or None: decide() then holds.
    state_unreadable: str | None = None

    def __init__(self, cfg, log, secret=None):
        self.cfg, self.log = cfg, log
        self.secret = secret  # the shard secret (manatee.core.auth.ShardSecret); None: insecure mode
        p = cfg.postgresMgrCfg
        self.me = Peer(id=cfg.peer_id, zone_id=cfg.zoneId, ip=cfg.ip, pg_url=cfg.pg_url,
                       backup_url=cfg.backup_url, status_url=cfg.status_url,
                       nofailover=cfg.tags.nofailover, nosync=cfg.tags.nosync, priority=cfg.tags.priority)
        self.session_timeout = cfg.zkCfg.sessionTimeout / 1000
        self.zk = zkmod.ZKClient(cfg.zkCfg.connStr, self.session_timeout,
                                 connect_timeout=cfg.zkCfg.connectTimeout / 1000, logger=log,
                                 **cfg.zkCfg.client_options())
        self.store = ShardStore(self.zk, cfg.shardPath, cfg.registrar_path, log)
        self.pg = PgManager(cfg, log)
        self.zfs = Zfs(zfs_path=p.zfsClientCfg.zfsPath, logger=log)
        self.heartbeats = HeartbeatTable(expiration_s=cfg.heartbeatCfg.expirationTime / 1000)
        # verifies https:// peers against tls.caFile and presents our certificate (None: no TLS)
        tls = getattr(cfg, "tls", None)
        self.tls_client = tls.client_context() if tls else None
        self.hb_sender = HeartbeatSender(
            me_id=self.me.id, pg_url=self.me.pg_url, interval_s=cfg.heartbeatCfg.heartbeatInterval / 1000,
            timeout_s=cfg.heartbeatCfg.requestTimeout / 1000, status=self._hb_status, log=log,
            source_ip=cfg.ip, secret=secret, ssl_context=self.tls_client)
        self.interval = p.healthChkInterval / 1000
        self.wake = asyncio.Event()
        self.zk_dirty = True
        self.zk_read_at = 0.0
        self.next_delay = self.interval
        self.role = UNASSIGNED
        self.target: Target | None = None
        self.last: Decision | None = None
        self.last_decided: Decision | None = None  # set before its steps run (they may fail)
        self.last_obs: Observation | None = None
        self.last_pg: PgStatus | None = None
        self.last_pg_at = 0.0  # monotonic time of last_pg (a hung and resumed sitter's is old)
        self.election: tuple[Peer, ...] = ()
        self.state: ClusterState | None = None
        self.state_version = -1
        self.error: dict | None = None
        self.zk_state = LOST
        self.need_join = True
        # My ZK view (election, state, error) predates my current session: set on LOST (and at
        # start), cleared by a complete read; until then decide() is told the session is LOST.
        self.view_stale = True
        self.caught_up_for: tuple[int, str] | None = None  # latch: (generation, sync id)
        self.restore_progress: dict | None = None
        # latch: (generation, switchover target, WAL) once PG was stopped for a switchover
        self.switchover_stopped: tuple[int, str, int] | None = None
        self.switchover_seen: tuple[tuple, float] | None = None  # (request key, first seen, monotonic)
        self.diverged = False
        self.restart_request: bool | None = None  # manatee-adm restart: None, or its force flag
        self.pg_restarts = 0  # requested restarts done (/state: the CLI waits for it to move)
        self.configured_upstream: Peer | None = None  # what primary_conninfo names now
        self.wal_from: str | None = None  # the upstream my received WAL was seen streaming from
        self.started = time.monotonic()
        self.transitions: dict[str, int] = dict.fromkeys(history.ACTIONS, 0)  # /metrics counter
        self.slots: tuple[slots.Slot, ...] | None = None  # replication slots as last observed (/metrics)
        # Gray failures (issue 8): since when my running PG has not answered in time (a hang),
        # since when it has failed to serve / been healthy (latches.failing_since), and why.
        self.pg_unanswered_since: float | None = None
        self.pg_hung_kills = 0
        self.sick_since: float | None = None
        self.healthy_since: float | None = None
        self.sick_why: str | None = None
        self.cannot_serve: str | None = None
        self.hb_withheld = False
        self.failures, self.failure_msg = 0, None  # consecutive failed cycles, the last error
        self.last_has_data: bool | None = None
        h = cfg.hooks
        self.hooks = RoleHooks(h.onRoleChange if h else None, (h.timeout if h else 30000) / 1000, cfg.shardPath, log)

    # ------------------------------------------------------------------ ZooKeeper plumbing

    def _on_zk_state(self, state) -> None:
        s = str(state).upper()
        self.zk_state = {"CONNECTED": CONNECTED, "SUSPENDED": SUSPENDED}.get(s, LOST)
        if self.zk_state == LOST:
            self.need_join = True
            self.view_stale = True
        self.log.info("zk_session", state=self.zk_state)
        self.zk_dirty = True
        self.wake.set()

    def _poke(self, *_a) -> None:
        """A watch fired: the election, state or error node changed."""
        self.zk_dirty = True
        self.wake.set()

    async def _connect(self, stop: asyncio.Event) -> bool:
        self.zk.add_state_listener(self._on_zk_state)
        if self.zk.auth is None:
            self.log.warning("zk_auth_off", note="no zkCfg.auth: anyone who reaches ZooKeeper can change this "
                                                 "shard's znodes (docs/security.md)")
        while not stop.is_set():
            try:
                await self.zk.start()  # a fresh kazoo client per attempt: retrying is fine
                self.zk_state = CONNECTED
                self._note_session_timeout()
                return True
            except zkmod.ZKError as e:
                self.log.warning("zk_unreachable", error=str(e))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2)
        return False

    @property
    def quarantined(self) -> tuple[str, ...]:
        """"<znode>: <why>" for each znode ignored because it cannot be parsed."""
        return self.store.quarantine.items()

    def _note_session_timeout(self) -> None:
        """ZooKeeper grants a session timeout within its [min, max]SessionTimeout, whatever
        we asked: every deadline derived from it must use the granted one (the fencing
        deadline does: ZKClient.session_expiry_deadline). Logged when it changes."""
        got = self.zk.negotiated_session_timeout
        if got is None or got == self.session_timeout:
            return
        configured = self.cfg.zkCfg.sessionTimeout / 1000
        self.session_timeout = got
        (self.log.warning if got != configured else self.log.info)(
            "zk_session_timeout_negotiated", configured_s=configured, negotiated_s=got,
            note="ZooKeeper's min/maxSessionTimeout changed the session timeout; the sitter uses the "
                 "negotiated one" if got != configured else "as configured")

    async def _refresh_zk(self) -> None:
        """Re-read what the decision needs from ZooKeeper (only while connected): when a watch
        fired, and every ZK_SAFETY_REFRESH_S anyway (watches are re-armed after reconnects,
        but a periodic read costs little and bounds the damage of a missed one)."""
        if self.zk_state != CONNECTED:
            return
        self._note_session_timeout()  # a reconnect (to another server) may grant another one
        now = time.monotonic()
        if not self.zk_dirty and not self.need_join and now - self.zk_read_at < ZK_SAFETY_REFRESH_S:
            return
        self.zk_dirty = False  # cleared before reading: a change during the read marks it again
        self.zk_read_at = now
        try:
            if self.need_join:
                await self.store.ensure_paths()
                await self.store.join(self.me)
                self.need_join = False
            self.election = await self.store.election()
            try:
                self.state, self.state_version = await self.store.read_state()
                self.state_unreadable = None
            except StateUnreadable as e:  # never "no state": keep the last one read, and hold
                self.state_unreadable = str(e)
            self.error = await self.store.read_error()
            self.view_stale = False
        except (zkmod.ZKError, zkmod.ConnectionLoss, zkmod.SessionExpiredError, asyncio.TimeoutError) as e:
            self.zk_dirty = True
            self.log.warning("zk_read_failed", error=str(e) or type(e).__name__)

    # ------------------------------------------------------------------ observation

    def _hb_status(self) -> dict:
        st = self.last_pg
        return {"wal": str(st.wal) if st and st.wal else None, "streaming": bool(st and st.streaming)}

    async def observe(self) -> Observation:
        zk_at_read = self.zk_state
        await self._refresh_zk()
        st = self.state
        i_am_primary = st is not None and st.primary.id == self.me.id
        sync = st.sync if st else None
        sync_app = sync.pg_url if sync and i_am_primary else None
        asked_at = time.monotonic()
        pgs = await self.pg.status(sync_app)
        pgs = await self._kill_if_hung(pgs, sync_app, asked_at)
        if self.cannot_serve is not None and not pgs.running:
            # about to release the primary role: no process of my data directory may be left,
            # not even one this sitter did not start (S1)
            await self.pg.kill()
        self.last_pg = pgs
        self.last_pg_at = time.monotonic()
        # diverged is latched until a restore succeeds (PG says it only once per attempt).
        self.diverged = self.diverged or pgs.diverged
        caught_up = False
        if i_am_primary and sync and not pgs.known:  # unknown: the latch holds as it was
            caught_up = self.caught_up_for == (st.generation, sync.id)
        elif i_am_primary and sync and pgs.running and pgs.in_recovery is False:
            was = self.caught_up_for
            caught_up, self.caught_up_for = latches.sync_caught_up(
                was, (st.generation, sync.id), pgs.sync_flush.value if pgs.sync_flush else None,
                pgs.wal.value if pgs.wal else None, st.init_wal)
            if caught_up and was != self.caught_up_for:
                self.log.info("sync_caught_up", sync=sync.id, flush=str(pgs.sync_flush))
        wal = pgs.wal.value if pgs.wal else None
        if pgs.in_recovery:
            wal, self.wal_from = latches.standby_wal(
                wal, streaming=pgs.streaming, sender_ip=pgs.sender[0] if pgs.sender else None,
                upstream=self.configured_upstream, wal_from=self.wal_from)
        if pgs.running:
            self.switchover_stopped = None
        sw = st.switchover if st else None
        stopped_wal = (self.switchover_stopped[2] if self.switchover_stopped and sw is not None
                       and self.switchover_stopped[:2] == (st.generation, sw.to) else None)
        sw_key = (st.generation, sw.to, sw.requested) if sw is not None and i_am_primary else None
        if sw_key is None:
            self.switchover_seen = None
        elif self.switchover_seen is None or self.switchover_seen[0] != sw_key:
            self.switchover_seen = (sw_key, time.monotonic())
        sw_expired = (self.switchover_seen is not None
                      and time.monotonic() - self.switchover_seen[1] > SWITCHOVER_LIMIT_S)
        others = [p.id for p in self.election if p.id != self.me.id]
        deadline = self.zk.session_expiry_deadline() if self.zk_state == SUSPENDED else None
        # The session state that goes with the view read above: a reconnect while PG was being
        # asked (e.g. right after SIGCONT: LOST, then a new session) must not make a view from
        # the expired session look current (a deposed primary would start PG as primary again).
        zk = LOST if self.view_stale else max(zk_at_read, self.zk_state, key=_ZK_BADNESS.index)
        # The primary's clock runs only while I try to serve (not in safe mode, fenced, ...).
        d = self.last_decided
        trying = d is not None and (d.target.role == PRIMARY or d.rule == "primary.step_down_stop")
        self._track_health(pgs, i_am_primary and trying and not (sw is not None and sw.released))
        return Observation(
            me=self.me, zk=zk, election=self.election, state=st,
            state_version=self.state_version, error=self.error, running=pgs.running,
            in_recovery=(pgs.in_recovery if pgs.known else None) if pgs.running else False,
            pg_known=pgs.known, wal=wal, streaming=pgs.streaming,
            upstream_id=(self.configured_upstream.id if pgs.in_recovery and self.configured_upstream else None),
            read_only=pgs.read_only if pgs.running and not pgs.in_recovery else None,
            diverged=self.diverged, sync_caught_up=caught_up,
            has_data=await self._has_data(),
            heartbeats=self.heartbeats.freshness(others),
            one_node_write_mode=self.cfg.postgresMgrCfg.oneNodeWriteMode,
            expiry_passed=deadline is not None and time.monotonic() >= deadline,
            sync_streaming=pgs.sync_flush is not None,
            sync_flush=pgs.sync_flush.value if pgs.sync_flush and i_am_primary else None,
            switchover_stopped_wal=stopped_wal, switchover_expired=sw_expired,
            state_unreadable=self.state_unreadable is not None,
            cannot_serve=self.cannot_serve)

    async def _has_data(self) -> bool:
        """Whether my data directory is initialised, read off the event loop with a deadline.
        Hung storage is no evidence of missing data (which would mean a rebuild): on a
        timeout the last answer stands, and with none the cycle fails."""
        try:
            self.last_has_data = await asyncio.wait_for(asyncio.to_thread(self.pg.has_data), FILE_CHECK_TIMEOUT_S)
        except asyncio.TimeoutError:
            if getattr(self, "last_has_data", None) is None:
                raise RuntimeError(f"cannot tell within {FILE_CHECK_TIMEOUT_S}s whether my data directory "
                                   f"{self.pg.data_dir} holds a database") from None
            self.log.warning("data_dir_check_timed_out", using=self.last_has_data)
        return self.last_has_data

    def _start_budget(self, target: Target) -> float | None:
        """How long a start of my PostgreSQL may wait for it to accept connections. A primary
        that has been sick already waits only for what is left of primaryStartTimeout (at least
        a few health checks), so that a PostgreSQL that hangs again at every start (F18, sticky)
        still lets the step-down rule run within its bound instead of after opsTimeout."""
        if target.role != PRIMARY or self.sick_since is None:
            return None
        left = self.primary_start_timeout - (time.monotonic() - self.sick_since)
        return min(self.pg.ops_timeout, max(left, 2 * self.pg.health_timeout, 1.0))

    @property
    def primary_start_timeout(self) -> float:
        """primaryStartTimeout (s); by default twice the session timeout."""
        ms = getattr(self.cfg, "primaryStartTimeout", None)
        return ms / 1000 if ms else 2 * self.session_timeout

    async def _kill_if_hung(self, pgs: PgStatus, sync_app: str | None, asked_at: float) -> PgStatus:
        """A running PostgreSQL that has not answered its status queries for healthChkTimeout
        (counted from when the first unanswered one was asked; timeouts only: a refusal is an
        answer) is hung: SIGKILL it (works on a stopped process) so that the usual rules
        restart it in its role. Returns the status to use."""
        now = time.monotonic()
        self.pg_unanswered_since = latches.unanswered_since(
            self.pg_unanswered_since, running=pgs.running, answered=pgs.healthy, timed_out=pgs.timed_out,
            now=asked_at)
        since = self.pg_unanswered_since
        if since is None or now - since < self.pg.health_timeout:
            return pgs
        self.log.error("pg_hung", seconds=round(now - since, 1), error=pgs.error, role=self.role,
                       reason=f"my PostgreSQL has not answered its status query for {now - since:.1f}s, "
                              f"so I kill it and start it again in its role")
        self.pg_hung_kills += 1
        self.pg_unanswered_since = None
        try:
            await self.pg.kill()
        except pgmod.PgError as e:  # e.g. a process stuck in the kernel: still unknown, decide anyway
            self.log.error("pg_kill_failed", error=str(e))
            return pgs
        self.configured_upstream = None
        return await self.pg.status(sync_app)

    def _track_health(self, pgs: PgStatus, as_primary: bool) -> None:
        """Whether my PostgreSQL serves its role (running, answering, its config writable, and
        out of recovery if I am the primary); for the primary, cannot_serve once it has failed
        for primaryStartTimeout (the core's step-down rule, S9)."""
        now = time.monotonic()
        why = None
        if self.pg.config_error is not None:
            why = f"I cannot write its config: {_first_line(self.pg.config_error)}"
        elif not pgs.running:
            why = "it is not running"
        elif not pgs.known:
            why = f"it did not answer its status query ({_first_line(pgs.error)})"
        elif as_primary and pgs.in_recovery:
            why = "it is still in recovery"
        hard = why is not None
        t = self.target
        if (not hard and not as_primary and t is not None and t.role == STANDBY and t.upstream is not None
                and not pgs.streaming):
            why = f"it does not stream from {t.upstream}"  # e.g. its walreceiver cannot write (full disk)
        tracked = as_primary or self.role == STANDBY
        if not tracked:
            self.sick_since = self.healthy_since = self.cannot_serve = self.sick_why = None
            return
        if why is not None and pgs.crowded and self.pg.config_error is None:
            # clients hold every slot (F20): busy, not sick — neither clock moves, and no
            # step-down or replacement is ever decided on a connection storm
            self.cannot_serve = None
            return
        was = self.sick_since
        self.sick_since, self.healthy_since = latches.failing_since(
            self.sick_since, self.healthy_since, healthy=why is None, now=now,
            stable_s=max(self.primary_start_timeout / 2, 2 * self.interval))
        if why is not None:
            self.sick_why = why
        if was is None and self.sick_since is not None:
            (self.log.warning if hard else self.log.info)("pg_unhealthy", why=why, role=self.role)
        elif was is not None and self.sick_since is None:
            self.log.info("pg_healthy_again", after_s=round(now - was, 1))
            self.sick_why = None
        # failing: sick now, and without stable health since primaryStartTimeout ago (a crash loop)
        failing = (why is not None and self.sick_since is not None
                   and now - self.sick_since >= self.primary_start_timeout)
        self.cannot_serve = (f"not healthy for {now - self.sick_since:.1f}s: {self.sick_why}"
                             if failing and as_primary else None)
        # A standby whose PostgreSQL is down, hung or unconfigurable for healthChkTimeout (or
        # has not streamed for primaryStartTimeout: an upstream's restart takes less) stops
        # heartbeating its upstream, so that a primary replaces a sync that cannot acknowledge
        # (and never steps down to it).
        sick_for = now - self.sick_since if self.sick_since is not None and why is not None else 0.0
        withhold = not as_primary and (failing or (hard and sick_for >= self.pg.health_timeout))
        if withhold != self.hb_withheld:
            self.log.warning("heartbeats_withheld" if withhold else "heartbeats_resumed", why=self.sick_why)
            self.hb_withheld = withhold

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> int:
        from manatee.sitter.status import StatusServer

        status = StatusServer(self, self.log)
        await status.start()
        if not await self._connect(stop):
            await status.stop()
            return 0
        self.zk.watch_children(self.store.election_path, self._poke)
        self.zk.watch_data(self.store.state_path, self._poke)
        self.zk.watch_data(self.store.error_path, self._poke)
        hb_task = asyncio.create_task(self.hb_sender.run(stop))
        try:
            while not stop.is_set():
                self.wake.clear()  # before the cycle: a watch firing during it is not lost
                self.next_delay = self.interval
                try:
                    await self.cycle()
                    self._cycle_ok()
                except asyncio.CancelledError:
                    raise
                except UpstreamNotReady as e:
                    self.log.info("waiting_for_upstream", reason=str(e))
                except PgConfigError as e:  # an observation (logged once per change), not a crash loop
                    self.log.debug("pg_config_write_failed", error=str(e))
                    self._cycle_failed()
                except Exception as e:  # never crash-loop with PG in an unknown role: log, retry
                    if self._cycle_failed(str(e)):
                        self.log.exception("cycle_failed", error=str(e), failures=self.failures)
                    else:
                        self.log.debug("cycle_failed", error=str(e), failures=self.failures)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_first(stop.wait(), self.wake.wait()), self.next_delay)
        finally:
            await self.shutdown()
            await self.hooks.close()
            hb_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hb_task
            await status.stop()
        return 0

    def _cycle_ok(self) -> None:
        if self.failures:
            self.log.info("cycle_ok_again", after_failures=self.failures)
        self.failures, self.failure_msg = 0, None

    def _cycle_failed(self, msg: str | None = None) -> bool:
        """Count a failed cycle and back off (bounded: well within the session timeout, so
        a step-down or a fence is never delayed much). True if `msg` is worth an error log:
        a new error, or the 10th, 100th, ... time in a row."""
        self.failures += 1
        cap = max(self.interval, min(MAX_FAILURE_BACKOFF_S, self.session_timeout / 4))
        self.next_delay = min(cap, self.interval * 2 ** min(self.failures - 1, 10))
        key = msg.split("; log tail", 1)[0].split("\n", 1)[0] if msg else None  # the same error, new log lines
        new = key != self.failure_msg
        self.failure_msg = key
        return new or self.failures in (10, 100) or self.failures % 1000 == 0

    async def cycle(self) -> None:
        obs = await self.observe()
        self.last_obs = obs
        dec = decide(obs)
        self.last_decided = dec
        if dec.write_error is not None and obs.zk == CONNECTED:
            await self.store.write_error(dec.write_error)
        if dec.write_state is not None:
            if obs.zk != CONNECTED or not await self.store.cas_state(dec.write_state, obs.state_version):
                self.wake.set()  # lost the race or the link: look again before acting
                return
            self.log.info("state_written", generation=dec.write_state.generation,
                          primary=dec.write_state.primary.id,
                          sync=dec.write_state.sync.id if dec.write_state.sync else None,
                          reason=dec.reason)
            self.state, self.state_version = await self.store.read_state()
            self.next_delay = FOLLOW_UP_S  # e.g. detach → takeover: the next step is due now
            sw = dec.write_state.switchover
            if dec.rule == "primary.step_down" and sw is not None and sw.by == STEP_DOWN_BY:
                self.log.warning("stepped_down", to=sw.to, reason=dec.reason)
                if dec.write_state.sync is not None:
                    await self._record_events([history.step_down_event(
                        self.me, dec.write_state.sync, dec.write_state.generation, int(time.time() * 1000))])
        changed = self.last is None or dec.target != self.target or dec.rule != self.last.rule
        if changed:
            self.log.info("decision", rule=dec.rule, target=dec.target.describe(), reason=dec.reason)
        else:
            self.log.debug("decision", rule=dec.rule, target=dec.target.describe(), reason=dec.reason)
        current = self.role
        if current in (PRIMARY, STANDBY) and not obs.running:
            current = UNASSIGNED  # PG died (or was never started by us): start it again
            (self.log.warning if not self.failures else self.log.debug)("pg_not_running", role=self.role)
        tr = T.plan(current, self.target if current == self.role else None, dec.target)
        if tr.steps:
            self.log.info("transition", frm=tr.frm, to=tr.to, change=tr.change, why=tr.comment,
                          steps=list(tr.steps))
            await self.execute(tr, dec.target)
            self.next_delay = FOLLOW_UP_S  # look at the result at once, not an interval later
            if dec.rule == "primary.switchover_stop" and obs.wal is not None and obs.state is not None \
                    and obs.state.switchover is not None:
                self.switchover_stopped = (obs.state.generation, obs.state.switchover.to, obs.wal)
        elif dec.target.role in (PRIMARY, STANDBY):
            await self._refresh_members()
            if self.restart_request is not None and obs.running:
                await self._restart_pg(dec.target)
        if not tr.steps and dec.target.role == PRIMARY and dec.target.read_only and dec.target.sync is not None:
            self.next_delay = min(self.next_delay, CATCH_UP_POLL_S)  # writes wait on this check
        old = self.target
        if old is None or old.role != dec.target.role:
            self.heartbeats.reset()  # standbys get one expiry period to find our new role
        elif dec.target.downstream is not None and (old.downstream is None
                                                    or old.downstream.id != dec.target.downstream.id):
            self.heartbeats.expect(dec.target.downstream.id)  # e.g. a new sync: one period to find me
        self.role, self.target, self.last = dec.target.role, dec.target, dec
        await self._reconcile_slots(dec.target)
        # role-change hook (in the background: never delays this cycle): my place, else my local role
        self.hooks.fire((self.state.place_of(self.me.id) if self.state else None) or self.role)
        self.hb_sender.upstream_url = (dec.target.upstream.status_url
                                       if dec.target.role == STANDBY and dec.target.upstream
                                       and not self.hb_withheld else None)
        if old is None or old != dec.target:
            await self._record_history(old, dec.target)

    async def _reconcile_slots(self, target: Target) -> None:
        """Keep the slot of my downstream on my PostgreSQL, drop stale ones (never fails a cycle)."""
        if target.role not in (PRIMARY, STANDBY) or not self.pg.running or not (self.last_pg and self.last_pg.healthy):
            self.slots = None
            return
        st = self.state
        self.slots = await slots.reconcile(self.pg.client, target.downstream.pg_url if target.downstream else None,
                                           self.me.pg_url, [p.pg_url for p in st.chain()] if st else [],
                                           [p.pg_url for p in st.deposed] if st else [], self.log)

    async def _record_history(self, old: Target | None, new: Target) -> None:
        gen = self.state.generation if self.state else None
        await self._record_events(history.events_for(self.me, old, new, gen, int(time.time() * 1000)))

    async def _record_events(self, events) -> None:
        for ev in events:
            self.transitions[ev.action] = self.transitions.get(ev.action, 0) + 1
            try:
                await self.store.record(ev)
            except Exception as e:  # history must not block failover; it is retried never
                self.log.warning("history_write_failed", action=ev.action, error=str(e))

    # ------------------------------------------------------------------ steps

    def _members(self) -> tuple[str, ...]:
        """Addresses pg_hba admits for replication: everyone in the election or the state."""
        ips = {p.ip for p in self.election} | ({p.ip for p in self.state.members()} if self.state else set())
        return tuple(sorted(ips | {self.cfg.ip}))

    async def execute(self, tr: T.Transition, target: Target) -> None:
        members = self._members()
        for step in tr.steps:
            await self._step(step, target, members)

    async def _refresh_members(self) -> None:
        """A node that joins behind us changes no role of ours, but pg_hba must admit it:
        rewrite it (a reload) whenever the shard's members change."""
        members = self._members()
        if self.pg.spec is not None and self.pg.running and (members != self.pg.members or self.pg.parameters_dirty):
            await self.pg.configure(self.pg.spec, members)
            await self.pg.apply_pending()

    def _primary_spec(self, target: Target) -> RoleSpec:
        """read-only is only a default a client can override (SET, BEGIN READ WRITE), so a
        primary without a sync also names a sync that never connects: a commit that slips
        past read-only then waits instead of being acknowledged without a sync (S5)."""
        if target.sync is not None:
            sync = target.sync.pg_url
        elif self.cfg.postgresMgrCfg.oneNodeWriteMode:
            sync = None
        else:
            sync = NO_SYNC_PLACEHOLDER
        return RoleSpec("primary", read_only=target.read_only, sync_app_name=sync)

    async def _step(self, step: str, target: Target, members: tuple[str, ...]) -> None:
        pg = self.pg
        if step == T.STOP_PG:
            await pg.kill()
            self.configured_upstream = None
        elif step == T.INITDB_IF_EMPTY:
            await self._ensure_dataset()
            if not pg.has_data():
                await pg.initdb()
        elif step in (T.RESTORE_IF_EMPTY, T.RESTORE_FROM_UPSTREAM):
            if step == T.RESTORE_FROM_UPSTREAM or not pg.has_data():
                await self._restore(target.upstream)
        elif step == T.CONFIGURE_PRIMARY:
            # A standby becomes primary by pg_promote (a new timeline, so that PostgreSQL
            # itself refuses to let a forked node follow us), never by a plain restart.
            if not pg.running and (pg.data_dir / "standby.signal").exists():
                await pg.start()
            if pg.running:
                st = await pg.status()
                if not st.known:
                    raise RuntimeError(f"cannot tell whether PostgreSQL is in recovery ({st.error}): "
                                       "not configuring it as the primary this cycle")
                if st.in_recovery:
                    await self._promote_if_still_primary(target, members)
            await pg.configure(self._primary_spec(target), members)
        elif step in (T.SET_SYNC, T.SET_READ_ONLY, T.SET_READ_WRITE):
            await pg.configure(self._primary_spec(target), members)
        elif step == T.CONFIGURE_STANDBY:
            up = target.upstream
            await pg.configure(RoleSpec("standby", upstream=(up.ip, _port(up.pg_url)) if up else None),
                               members)
            self.configured_upstream = up
        elif step == T.START_PG:
            if not pg.running:
                await pg.start(ready_timeout=self._start_budget(target))
        elif step == T.RELOAD_PG:
            await pg.apply_pending()
        elif step == T.PROMOTE:
            st = await pg.status() if pg.running else None
            if st is not None and not st.known:
                raise RuntimeError(f"cannot tell whether PostgreSQL is in recovery ({st.error}): not promoting "
                                   "it this cycle")
            if st is not None and st.in_recovery:
                await self._promote_if_still_primary(target, members)
        elif step == T.WRITE_REGISTRAR:
            await self.store.publish_registrar(self.me.pg_url, self.cfg.ttl)
        elif step == T.REMOVE_REGISTRAR:
            with contextlib.suppress(Exception):
                await self.store.remove_registrar(self.me.pg_url)
        else:
            raise ValueError(f"unknown step {step!r}")

    async def _promote_if_still_primary(self, target: Target, members: tuple[str, ...]) -> None:
        """Promote only if the state in ZooKeeper still names me primary: a sitter that was
        paused between writing its takeover and promoting (SIGSTOP, a stalled host) may find
        that another node took over meanwhile. A read that fails is unknown: no promotion.

        The detached standby names its new sync first (a reload; PostgreSQL ignores it until
        the promotion ends, and stays read-only): the promoted node then waits for that sync
        from its first moment, with no reload between the promotion and the first commit."""
        st, _ver = await self.store.read_state()
        if st is None or st.primary.id != self.me.id:
            raise RuntimeError(f"not promoting: the state now names {st.primary.id if st else 'no'} primary")
        pg = self.pg
        if pg.spec is not None and pg.spec.role == "standby" and pg.spec.upstream is None:
            sync = self._primary_spec(target).sync_app_name
            await pg.configure(RoleSpec("standby", upstream=None, sync_app_name=sync), members)
            await pg.apply_pending()  # a reload: only synchronous_standby_names changed
        await pg.promote()

    async def _ensure_dataset(self) -> None:
        z = self.cfg.postgresMgrCfg.zfsClientCfg
        # ZFS calls get a deadline too (a cancelled zfs child is killed and reaped)
        if not await asyncio.wait_for(self.zfs.exists(z.dataset), ZFS_TIMEOUT_S):
            await asyncio.wait_for(self.zfs.create(z.dataset, props={"mountpoint": z.mountpoint}, parents=True),
                                   ZFS_TIMEOUT_S)
        Path(self.pg.data_dir).parent.mkdir(parents=True, exist_ok=True)

    async def _restore(self, upstream: Peer | None) -> None:
        if upstream is None:
            raise RuntimeError("a restore needs an upstream to restore from")
        z = self.cfg.postgresMgrCfg.zfsClientCfg
        await self._check_upstream_ready(upstream)
        await self.pg.kill()
        self.log.info("restore_starting", source=upstream.backup_url, dataset=z.dataset)

        def progress(p):
            self.restore_progress = {"phase": p.phase, "completed": p.completed, "size": p.size,
                                     "source": upstream.backup_url, "path": p.path, "reason": p.reason}

        res = await restore_dataset(
            self.zfs, dataset=z.dataset, mountpoint=Path(z.mountpoint), backup_url=upstream.backup_url,
            listen_host=z.zfsHost or self.cfg.ip, listen_port=z.zfsPort,
            owner=self.cfg.postgresMgrCfg.dbUser, secret=self.secret, ssl_context=self.tls_client,
            poll_interval=z.pollInterval / 1000, progress=progress, logger=self.log)
        self.restore_progress = {"phase": "done", "completed": res.bytes, "size": res.bytes,
                                 "source": upstream.backup_url, "path": res.path, "reason": res.reason}
        self.diverged = False
        self.wal_from = None
        self.log.info("restore_done", bytes=res.bytes, seconds=round(res.seconds, 2), path=res.path, why=res.reason)

    async def _check_upstream_ready(self, upstream: Peer) -> None:
        """Restore only from an upstream whose PostgreSQL runs and answers: a snapshot taken
        while it is still being created (initdb) or restored is not a database."""
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
                async with http.get(f"{upstream.status_url}/state", ssl=self.tls_client or True) as resp:
                    body = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            raise UpstreamNotReady(f"cannot ask {upstream.status_url} whether it can be restored from: {e}") from None
        pg = body.get("pg") or {}
        if not (pg.get("running") and pg.get("healthy")):
            raise UpstreamNotReady(f"upstream {upstream.id} has no running, healthy PostgreSQL yet: "
                                   "waiting before restoring from it")

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self) -> None:
        """SIGTERM/SIGINT: a primary hands over fast. Leaving the election at once lets the sync
        see us gone now instead of after the session timeout (F2); PG is stopped with a fast
        shutdown only after that, so nothing is acknowledged that the sync lacks (its commits
        wait for the sync) and the sync is already taking over."""
        was_primary = self.role == PRIMARY
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.leave(), 3)
        if was_primary:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.remove_registrar(self.me.pg_url), 2)
        with contextlib.suppress(Exception):
            await self.pg.kill() if was_primary else await self.pg.stop(mode="fast")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.zk.close(), 5)

    def request_rebuild(self, force: bool = False) -> tuple[int, dict]:
        """An operator asks this node to restore its data from its upstream (manatee-adm
        rebuild). It is marked as diverged, so the core rebuilds it from its upstream (a
        deposed node: once the primary moved it back into the chain); the restore clears the
        mark. Refused for the primary, for a node not in the state, and for the sync unless
        forced (the primary cannot take writes while its sync rebuilds)."""
        st = self.state
        place = st.place_of(self.me.id) if st else None
        if place is None:
            return 409, {"code": "NotAMember", "message": f"{self.me.id} is not in the shard state"}
        if place == "primary":
            return 409, {"code": "IsPrimary",
                         "message": f"{self.me.id} is the primary: switch over first (manatee-adm switchover)"}
        if place == "sync" and not force:
            return 409, {"code": "IsSync",
                         "message": f"{self.me.id} is the sync: the primary cannot take writes until it names "
                                    f"another sync; use --force to rebuild it anyway"}
        if self.role == REBUILD:
            return 202, {"rebuild": "running", "restore": self.restore_progress}
        self.diverged = True
        self.restore_progress = {"phase": "requested", "completed": 0, "size": 0, "source": None}
        self.log.info("rebuild_requested", place=place)
        self.wake.set()
        return 202, {"rebuild": "requested", "place": place}

    def request_restart(self, force: bool = False) -> tuple[int, dict]:
        """manatee-adm restart: restart PostgreSQL in this node's current role (its next cycle
        does it, so it never races a transition). Refused for the primary unless forced (writes
        stop while it restarts: switch over first) and for a node not in the shard state."""
        st = self.state
        place = st.place_of(self.me.id) if st else None
        if place is None:
            return 409, {"code": "NotAMember", "message": f"{self.me.id} is not in the shard state"}
        if place == "primary" and not force:
            return 409, {"code": "IsPrimary",
                         "message": f"{self.me.id} is the primary: switch over first (manatee-adm switchover)"}
        self.restart_request = force
        self.wake.set()
        return 202, {"restart": "requested", "place": place, "restartsDone": self.pg_restarts}

    async def _restart_pg(self, target: Target) -> None:
        """The requested restart, in a cycle with no transition to make: a fast stop, then a
        start with the files of the role it has (standby.signal stays for a standby). A node
        that became the primary since the request is not restarted unless it was forced."""
        force, self.restart_request = self.restart_request, None  # once: a failure is not retried
        if target.role == PRIMARY and not force:
            self.log.warning("restart_dropped", reason="this node is the primary now")
            return
        t0 = time.monotonic()
        await self.pg.stop(mode="fast")
        await self.pg.start()
        self.pg_restarts += 1
        self.log.info("pg_restarted", role=target.role, seconds=round(time.monotonic() - t0, 3))

    def reload_config(self, new) -> tuple[str, ...]:
        """The daemon's reload hook (SIGHUP, POST /reload): apply what can change at run time
        — postgresMgrCfg.parameters, written and reloaded by the next cycle — and say which
        config keys were applied (the rest need a sitter restart)."""
        if self.pg.set_parameters(new.postgresMgrCfg.parameters):
            self.wake.set()
        return ("postgresMgrCfg.parameters",)

    def debug_state(self) -> dict:
        st, d, pgs = self.state, self.last, self.last_pg
        place = st.place_of(self.me.id) if st else None
        return {
            "id": self.me.id, "zoneId": self.me.zone_id, "ip": self.me.ip, "pgUrl": self.me.pg_url,
            "role": place or self.role, "target": self.target.describe() if self.target else None,
            "localRole": self.role, "generation": st.generation if st else None,
            "zk": self.zk_state, "reason": d.reason if d else None, "rule": d.rule if d else None,
            "pg": None if pgs is None else {
                "running": pgs.running, "healthy": pgs.healthy, "inRecovery": pgs.in_recovery,
                "wal": str(pgs.wal) if pgs.wal else None, "streaming": pgs.streaming,
                "diverged": pgs.diverged, "syncFlush": str(pgs.sync_flush) if pgs.sync_flush else None,
                "known": pgs.known, "error": pgs.error, "configError": self.pg.config_error,
                "unhealthyFor": round(time.monotonic() - self.sick_since, 1) if self.sick_since else None,
                "unhealthyWhy": self.sick_why, "cannotServe": self.cannot_serve,
                "hungKills": self.pg_hung_kills, "heartbeatsWithheld": self.hb_withheld,
                "pendingRestart": list(pgs.pending_restart), "parametersPending": pgs.parameters_gen != self.pg.parameters_gen},
            "readOnly": self.target.read_only if self.target else True,
            "state": st.to_json() if st else None, "error": self.error,
            "restore": self.restore_progress, "restartsDone": self.pg_restarts,
            "restartRequested": self.restart_request is not None,
            "election": [p.id for p in self.election],
            "insecure": self.cfg.insecure,
            "zkAuth": self.cfg.zkCfg.auth is not None, "tls": getattr(self.cfg, "tls", None) is not None,
            "quarantined": list(self.quarantined), "stateUnreadable": self.state_unreadable,
            "zkSessionTimeout": {"configured": self.cfg.zkCfg.sessionTimeout / 1000,
                                 "negotiated": self.zk.negotiated_session_timeout},
            "pgObservedAgo": round(time.monotonic() - self.last_pg_at, 3) if self.last_pg else None,
        }


NO_SYNC_PLACEHOLDER = "manatee-no-sync-standby"
FOLLOW_UP_S = 0.01        # after a state write or a transition: look again at once (failures wait an interval)
CATCH_UP_POLL_S = 0.02    # a read-only primary waiting for its sync polls this often (writes wait on it)
SWITCHOVER_LIMIT_S = 20.0  # a switchover request not completed by then is withdrawn by the primary
ZK_SAFETY_REFRESH_S = 5.0  # re-read ZooKeeper at least this often even without a watch
ZFS_TIMEOUT_S = 30.0  # a zfs list/create in the cycle
FILE_CHECK_TIMEOUT_S = 2.0  # a stat of the data directory in the cycle
MAX_FAILURE_BACKOFF_S = 5.0  # repeated cycle failures back off up to this (and half the session timeout)
_ZK_BADNESS = (CONNECTED, SUSPENDED, LOST)  # order for "the worse of two session states"


class UpstreamNotReady(RuntimeError):
    """The node to restore from cannot serve a usable copy yet; the next cycle tries again."""


def _first_line(text: str | None, limit: int = 200) -> str:
    """An error message fit for a one-sentence reason: its first line, at most `limit` characters."""
    line = (text or "no error").strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _port(pg_url: str) -> int:
    hostport = pg_url.split("@", 1)[-1].split("/", 1)[0]
    return int(hostport.rsplit(":", 1)[1])


async def _first(*aws) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
