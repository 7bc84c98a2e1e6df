"""The sitter's imperative shell: observe, ask the pure core, carry out its answer.

Each cycle: gather an Observation (ZooKeeper session, election, persisted state, error node, PostgreSQL
status, heartbeats) → `decide()` → write the state by compare-and-set (on a lost race, observe again) →
carry out the decision's effects → `plan()` the local transition from the declarative table → run its
steps → record history → publish a frozen SitterSnapshot. Every cycle that changes something logs one
plain sentence of what was decided and why (the decision's `reason`) and the transition's comment.

The loop builds none of its I/O: it is given its store, ZooKeeper session, PostgreSQL, dataset and clock
(manatee.sitter.ports); main.py wires the real ones, tests/sim fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Callable

from manatee.sitter import slots, syncfollow
from manatee.shard import history, latches, transitions as T
from manatee.shard.decide import decide
from manatee.shard.decision import Decision, Effect, Observation
from manatee.sitter.health import PgHealth
from manatee.sitter.heartbeat import Heartbeat, HeartbeatSender, HeartbeatTable, beat_status
from manatee.sitter.hooks import RoleHooks
from manatee.sitter.pgmanager import PgConfigError, PgStatus
from manatee.sitter.ports import Clock, Dataset, Postgres, Session, Store, SystemClock
from manatee.sitter.snapshot import SitterSnapshot, snapshot_of
from manatee.shard.rebuildpath import next_cause
from manatee.sitter.operator_requests import OperatorRequests
from manatee.sitter.steps import RestoreHeld, StepRunner
from manatee.sitter.synclatch import SyncLatch
from manatee.sitter.dataset import UpstreamNotReady, UpstreamUnknown
from manatee.sitter.statememory import StateMemory
from manatee.sitter.zkview import ZkView, worse
from manatee.shard.state import CONNECTED, FENCED, LOST, PRIMARY, STANDBY, UNASSIGNED, Peer, Target

FOLLOW_UP_S = 0.01        # after a state write or a transition: look again at once (failures wait an interval)
CATCH_UP_POLL_S = 0.02    # a read-only primary waiting for its sync polls this often (writes wait on it)
SWITCHOVER_LIMIT_S = 20.0  # a switchover request not completed by then is withdrawn by the primary
FILE_CHECK_TIMEOUT_S = 2.0  # a stat of the data directory in the cycle
MAX_FAILURE_BACKOFF_S = 5.0  # repeated cycle failures back off up to this (and half the session timeout)


class Sitter(OperatorRequests):
    def __init__(self, cfg, log, *, store: Store, session: Session, pg: Postgres, dataset: Dataset,
                 clock: Clock | None = None, secret=None, tls_client=None):
        self.cfg, self.log = cfg, log
        self.secret = secret  # the shard secret (manatee.core.auth.ShardSecret); None: insecure mode
        self.store, self.session, self.pg, self.dataset = store, session, pg, dataset
        self.clock = clock or SystemClock()
        p = cfg.postgresMgrCfg
        self.me = Peer(id=cfg.peer_id, zone_id=cfg.zoneId, ip=cfg.ip, pg_url=cfg.pg_url,
                       backup_url=cfg.backup_url, status_url=cfg.status_url,
                       nofailover=cfg.tags.nofailover, nosync=cfg.tags.nosync, priority=cfg.tags.priority)
        self.interval = p.health_interval_s
        self.wake = asyncio.Event()
        self.view = ZkView(session, store, self.me, cfg.zkCfg.session_timeout_s, log, self.clock, self.wake)
        self.memory = self.view.memory = StateMemory(dataset, log, self.clock,  # what my data belongs to
                                                     flushed_acks=p.synchronousCommit != "remote_write")
        self.heartbeats = HeartbeatTable(expiration_s=cfg.heartbeatCfg.expiration_s, started=self.clock.monotonic())
        self.hb_sender = HeartbeatSender(
            me_id=self.me.id, pg_url=self.me.pg_url, interval_s=cfg.heartbeatCfg.interval_s,
            timeout_s=cfg.heartbeatCfg.request_timeout_s, log=log, source_ip=cfg.ip, secret=secret,
            status=lambda: beat_status(self.last_pg, self.health.free, self.claimed_wal, self.health.unwell),
            ssl_context=tls_client)
        self.health = PgHealth(pg, log, self.clock, primary_start_timeout_s=self.primary_start_timeout,
                               interval_s=self.interval, hb_expiration_s=cfg.heartbeatCfg.expiration_s)
        self.steps = StepRunner(me=self.me, pg=pg, store=store, dataset=dataset, log=log, clock=self.clock,
                                one_node_write_mode=p.oneNodeWriteMode, ttl=cfg.ttl, on_restored=self._restored)
        self.steps.start_budget = self.health.start_budget
        self.steps.on_start, self.steps.on_progress = self.health.start_attempted, self.publish
        self.next_delay, self.role = self.interval, UNASSIGNED
        self.target: Target | None = None
        self.last: Decision | None = None
        self.last_decided: Decision | None = None  # set before its steps run (they may fail)
        self.last_pg: PgStatus | None = None
        self.last_pg_at = 0.0  # monotonic time of last_pg (a hung and resumed sitter's is old)
        self.sync_latch = SyncLatch()  # has my sync caught up / flushed initWal (as the primary)
        self.switchover_stopped: tuple[int, str, int] | None = None  # (generation, to, WAL) once PG stopped for it
        self.switchover_seen: tuple[tuple, float] | None = None  # (request key, first seen, monotonic)
        self.diverged = False
        self.restart_request: bool | None = None  # manatee-adm restart: None, or its force flag
        self.pg_restarts = 0  # requested restarts done (/state: the CLI waits for it to move)
        self.wal_from: str | None = None  # the upstream my received WAL was seen streaming from
        self.claimed_wal: int | None = None  # (standby) the WAL position I may claim: my heartbeats say it
        self.started = self.clock.monotonic()
        self.transitions: dict[str, int] = dict.fromkeys(history.ACTIONS, 0)  # /metrics counter
        self.slots: tuple[slots.Slot, ...] | None = None  # replication slots as last observed (/metrics)
        self.reaped = slots.ReapedAddresses(store.reaped, self.clock)  # slots of reaped nodes are dropped
        self.replay = syncfollow.SyncReplay(log, self.clock)  # a sync's replay paused by hand or held by queries
        self.failures, self.failure_msg = 0, None  # consecutive failed cycles, the last error
        self.last_has_data: bool | None = None
        self.config_unknown = False  # the last transition failed half-way (see _reach)
        self.on_listening: Callable[[], object] | None = None  # called once the status server listens
        h = cfg.hooks
        self.hooks = RoleHooks(h.onRoleChange if h else None, h.timeout_s if h else 30.0, cfg.shardPath, log)
        self.snapshot: SitterSnapshot = self.publish()
        self.view.on_change = self.publish  # /readiness and /state see a session change at once

    # ------------------------------------------------------------------ what others see

    def publish(self) -> SitterSnapshot:
        """Replace the snapshot the status server and the metrics read."""
        self.snapshot = snapshot_of(self)
        return self.snapshot

    @property
    def primary_start_timeout(self) -> float:
        """primaryStartTimeout (s), from the negotiated session timeout (latches.primary_start_timeout)."""
        ms = getattr(self.cfg, "primaryStartTimeout", None)
        return latches.primary_start_timeout(ms / 1000 if ms else None, self.view.session_timeout,
                                             self.pg.health_timeout)

    def heartbeat_received(self, hb: Heartbeat) -> None:
        """POST /heartbeat: a standby's heartbeat (validated by the status server)."""
        news = self.heartbeats.record(hb)
        if news == "leaving":  # it counts as gone at once: decide now
            self.log.warning("standby_gave_way", standby=hb.peer_id, why=hb.leaving)
        elif news == "new":
            self.log.info("heartbeat_new_standby", standby=hb.peer_id)
        if news:
            self.wake.set()

    # ------------------------------------------------------------------ observation

    async def observe(self) -> Observation:
        view, zk_at_read = self.view, self.view.zk_state
        await self.memory.load()  # before my first election node, which says what I remember
        await view.refresh()
        st = view.state
        i_am_primary = st is not None and st.primary.id == self.me.id
        sync = st.sync if st else None
        sync_app = sync.pg_url if sync and i_am_primary else None
        pgs = await self._observe_pg(sync_app, st)
        caught_up, holds_init_wal = self.sync_latch.observe(pgs, st, i_am_primary, self.log)
        wal = pgs.wal.value if pgs.wal else None
        up = self.steps.configured_upstream
        claimed, self.wal_from = latches.standby_wal(  # after a restart: what my dataset says I streamed
            wal, streaming=pgs.streaming, sender_ip=pgs.sender[0] if pgs.sender else None, upstream=up,
            wal_from=self.wal_from or self.memory.streamed_before(st if view.session_unbroken else None),
            in_recovery=pgs.in_recovery if pgs.running and pgs.known else None)
        if pgs.in_recovery:
            wal = claimed
        self.claimed_wal = claimed if pgs.in_recovery else None
        stopped_wal, sw_expired = self._switchover_clock(pgs, st, i_am_primary)
        others = [p.id for p in view.election if p.id != self.me.id]
        # The session state that goes with the view read above: a reconnect while PG was being
        # asked (e.g. right after SIGCONT: LOST, then a new session) must not make a view from
        # the expired session look current (a deposed primary would start PG as primary again).
        zk = LOST if view.view_stale else worse(zk_at_read, view.zk_state)
        # The primary's clock runs only while I try to serve (not in safe mode, fenced, ...).
        d = self.last_decided
        trying = d is not None and (d.target.role == PRIMARY or Effect.STOP_TO_STEP_DOWN in d.effects)
        sw = st.switchover if st else None
        serving = i_am_primary and trying and not (sw is not None and sw.released)
        self.health.primary_start_timeout = self.primary_start_timeout
        await self.health.probe_writes(pgs, as_primary=serving)
        await self.health.check_space(self.dataset, pgs, as_primary=serving, target=self.target)
        self.health.track(pgs, as_primary=serving, role=self.role, target=self.target, sender=self.hb_sender)
        pending = self.rebuild_pending()  # an operator's request not begun: no divergence (yet)
        return Observation(
            me=self.me, zk=zk, election=view.election, state=st,
            state_version=view.state_version, error=view.error, running=pgs.running,
            in_recovery=(pgs.in_recovery if pgs.known else None) if pgs.running else False,
            pg_known=pgs.known, wal=wal, streaming=pgs.streaming,
            upstream_id=(up.id if pgs.in_recovery and up else None),
            read_only=pgs.read_only if pgs.running and not pgs.in_recovery else None,
            diverged=self.diverged and not pending, rebuild_requested=pending,
            wal_gone=pgs.wal_gone, sync_caught_up=caught_up,
            sync_holds_init_wal=holds_init_wal,
            has_data=await self._has_data(),
            **self.heartbeats.observed(others, self.clock.monotonic()),
            one_node_write_mode=self.cfg.postgresMgrCfg.oneNodeWriteMode,
            expiry_passed=view.expiry_passed(), fenced=self.role == FENCED,
            sync_streaming=pgs.sync_flush is not None,
            sync_flush=pgs.sync_flush.value if pgs.sync_flush and i_am_primary else None,
            switchover_stopped_wal=stopped_wal, switchover_expired=sw_expired,
            state_unreadable=view.state_unreadable is not None,
            state_lost=self.memory.lost(st) if view.state_missing else None, state_older=view.state_older,
            session_unbroken=view.session_unbroken,
            cannot_serve=self.health.cannot_serve, start_held=self.health.start_held(),
            sync_stalled_s=self.health.sync_stalled(pgs, (st.generation, sync.id) if sync else None,
                                                    i_am_primary=i_am_primary))

    async def _observe_pg(self, sync_app: str | None, st) -> PgStatus:
        """My PostgreSQL's status (a hung one killed first), with the latches that follow it."""
        asked_at = self.clock.monotonic()
        pgs = await self.pg.status(sync_app)
        pgs, killed = await self.health.kill_if_hung(pgs, sync_app, asked_at, self.role)
        self.health.start_result(pgs, killed)
        if killed:
            self.steps.configured_upstream = None
        if self.health.cannot_serve is not None and not pgs.running:
            # about to release the primary role: no process of my data directory may be left,
            # not even one this sitter did not start (S1)
            await self.pg.kill()
        self.last_pg = pgs
        self.last_pg_at = self.clock.monotonic()
        # diverged is latched until a restore succeeds (PG says it only once per attempt). So is
        # a fork: a standby of the state whose PostgreSQL runs out of recovery (F16). decide()
        # rebuilds it, and the rebuild's first step stops PostgreSQL: if the restore then fails
        # (its upstream died), the fork must not be forgotten (a sync would rejoin as if sound).
        forked = (pgs.known and pgs.running and pgs.in_recovery is False and st is not None
                  and st.place_of(self.me.id) in ("sync", "async"))
        self.diverged = self.diverged or pgs.diverged or forked
        self.steps.rebuild_cause = next_cause(self.steps.rebuild_cause, diverged=pgs.diverged or forked,
                                              wal_gone=pgs.wal_gone is not None, streaming=pgs.streaming)
        self._withdraw_lapsed_rebuild(st, pgs.diverged or forked)
        if pgs.running:
            self.switchover_stopped = None
        self.publish()
        return pgs

    def _switchover_clock(self, pgs: PgStatus, st, i_am_primary: bool) -> tuple[int | None, bool]:
        """(the WAL my PG stopped at for the state's switchover, or None; whether the request
        has been pending longer than SWITCHOVER_LIMIT_S)."""
        sw = st.switchover if st else None
        stopped_wal = (self.switchover_stopped[2] if self.switchover_stopped and sw is not None
                       and self.switchover_stopped[:2] == (st.generation, sw.to) else None)
        sw_key = (st.generation, sw.to, sw.requested) if sw is not None and i_am_primary else None
        now = self.clock.monotonic()
        if sw_key is None:
            self.switchover_seen = None
        elif self.switchover_seen is None or self.switchover_seen[0] != sw_key:
            self.switchover_seen = (sw_key, now)
        expired = self.switchover_seen is not None and now - self.switchover_seen[1] > SWITCHOVER_LIMIT_S
        return stopped_wal, expired

    async def _has_data(self) -> bool:
        """Whether my data directory is initialised, read off the event loop with a deadline.
        Hung storage is no evidence of missing data (which would mean a rebuild): on a
        timeout the last answer stands, and with none the cycle fails."""
        try:
            self.last_has_data = await self.pg.check_data(FILE_CHECK_TIMEOUT_S)
        except asyncio.TimeoutError:
            if self.last_has_data is None:
                raise RuntimeError(f"cannot tell within {FILE_CHECK_TIMEOUT_S}s whether my data directory "
                                   "holds a database") from None
            self.log.warning("data_dir_check_timed_out", using=self.last_has_data)
        return self.last_has_data

    def _restored(self) -> None:
        self.diverged, self.rebuild_forced = False, None
        self.wal_from = None
        self.memory.dataset_replaced()

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> int:
        from manatee.sitter.status import StatusServer

        status = StatusServer(self, self.log)
        await status.start()
        if self.on_listening is not None:
            self.on_listening()
        self.view.listen()
        if not await self.view.connect(stop):
            await status.stop()
            return 0
        self.view.watch()
        await self.pg.kill_orphan()  # once ZooKeeper answers: it says in which role to start it again
        hb_task = asyncio.create_task(self.hb_sender.run(stop))
        try:
            while not stop.is_set():
                await self.cycle_once()
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

    async def cycle_once(self) -> None:
        """One cycle as the loop runs it: never raises (but for cancellation); a failure is
        logged and backs off."""
        self.wake.clear()  # before the cycle: a watch firing during it is not lost
        self.next_delay = self.interval
        try:
            await self.cycle()
            self._cycle_ok()
        except asyncio.CancelledError:
            raise
        except RestoreHeld:  # said once per failure by the step runner (restore_held)
            pass
        except UpstreamNotReady as e:
            self.log.info("waiting_for_upstream", reason=str(e))
            self.upstream_unready = None if isinstance(e, UpstreamUnknown) else str(e)  # unknown is not a fact
        except PgConfigError as e:  # an observation (logged once per change), not a crash loop
            self.log.debug("pg_config_write_failed", error=str(e))
            self._cycle_failed(str(e))  # /state cycles.lastError says why (verify: "last: ...")
        except Exception as e:  # never crash-loop with PG in an unknown role: log, retry
            msg = str(e) or type(e).__name__  # kazoo's errors may carry no message at all
            (self.log.exception if self._cycle_failed(msg) else self.log.debug)(
                "cycle_failed", error=msg, failures=self.failures)
        finally:
            self.publish()

    def _cycle_ok(self) -> None:
        if self.failures:
            self.log.info("cycle_ok_again", after_failures=self.failures)
        self.failures, self.failure_msg = 0, None

    def _cycle_failed(self, msg: str | None = None) -> bool:
        """Count a failed cycle and back off (bounded: well within the session timeout, so
        a step-down or a fence is never delayed much). True if `msg` is worth an error log:
        a new error, or the 10th, 100th, ... time in a row."""
        self.failures += 1
        cap = max(self.interval, min(MAX_FAILURE_BACKOFF_S, self.view.session_timeout / 4))
        self.next_delay = min(cap, self.interval * 2 ** min(self.failures - 1, 10))
        key = msg.split("; log tail", 1)[0].split("\n", 1)[0] if msg else None  # the same error, new log lines
        new = key != self.failure_msg
        self.failure_msg = key
        return new or self.failures in (10, 100) or self.failures % 1000 == 0

    async def cycle(self) -> None:
        obs = await self.observe()
        dec = decide(obs)
        self.last_decided = dec
        if not await self._write(obs, dec):
            self.wake.set()  # lost the race or the link: look again before acting
            return
        changed = self.last is None or dec.target != self.target or dec.rule != self.last.rule
        (self.log.info if changed else self.log.debug)("decision", rule=dec.rule, target=dec.target.describe(),
                                                       reason=dec.reason)
        self.heartbeats.follow(dec.target.role, dec.target.downstream.id if dec.target.downstream else None,
                               self.clock.monotonic())
        self.hb_sender.follow(dec.target, self.health.hb_withheld)  # before a slow step (HeartbeatSender.follow)
        await self._reach(obs, dec)
        old = self.target
        self.role, self.target, self.last = dec.target.role, dec.target, dec
        await self._tend_replication(dec.target)
        streamed = self.wal_from if obs.streaming and obs.upstream_id == self.wal_from else None
        await self.memory.keep(None if self.view.state_missing else self.view.state, has_data=obs.has_data,
                               streaming_from=streamed)  # with the upstream I stream from now (F12)
        # role-change hook (in the background: never delays this cycle): my place, else my local role
        st = self.view.state
        self.hooks.fire((st.place_of(self.me.id) if st else None) or self.role)
        self.hb_sender.follow(dec.target, self.health.hb_withheld)
        if old is None or old != dec.target:
            await self._record_history(old, dec.target)

    async def _write(self, obs: Observation, dec: Decision) -> bool:
        """The decision's writes to ZooKeeper; False if the state write was lost (or not made)."""
        if dec.write_error is not None and obs.zk == CONNECTED:
            await self.store.write_error(dec.write_error)
        new = dec.write_state
        if new is None:
            return True
        if obs.zk != CONNECTED or not await self.store.cas_state(new, obs.state_version):
            return False
        self.log.info("state_written", generation=new.generation, primary=new.primary.id,
                      sync=new.sync.id if new.sync else None, reason=dec.reason)
        self.view.note_state(*await self.store.read_state())
        self.next_delay = FOLLOW_UP_S  # e.g. detach → takeover: the next step is due now
        sw = new.switchover
        if Effect.STEP_DOWN in dec.effects and sw is not None:
            self.log.warning("stepped_down", to=sw.to, reason=dec.reason)
            if new.sync is not None:
                await self._record_events([history.step_down_event(
                    self.me, new.sync, new.generation, int(self.clock.time() * 1000))])
        return True

    async def _reach(self, obs: Observation, dec: Decision) -> None:
        """Run the transition from my current role to the decision's target."""
        stop = Effect.STOP_TO_STEP_DOWN in dec.effects
        current = T.plan_from(self.role, dec.target.role, running=obs.running, step_down_stop=stop,
                              out_of_recovery=obs.pg_known and obs.in_recovery is False)
        if current == UNASSIGNED != self.role:  # PG died (or was never started by us): start it again
            (self.log.warning if not self.failures else self.log.debug)("pg_not_running", role=self.role)
        known = self.target if current == self.role and not self.config_unknown else None
        tr = T.plan(current, known, dec.target)
        if tr.steps:
            self.log.info("transition", frm=tr.frm, to=tr.to, change=tr.change, why=tr.comment,
                          steps=list(tr.steps))
            # A plan that fails half-way leaves PostgreSQL's files and process as its steps left
            # them (e.g. configured read-only, started, then the promotion failed): until one
            # succeeds, the next plan treats the configuration as unknown and applies it all.
            self.config_unknown = True
            await self.steps.run(tr, dec.target, self.view.members(self.cfg.ip))
            self.config_unknown = False
            self.next_delay = FOLLOW_UP_S  # look at the result at once, not an interval later
            if T.PROMOTE in tr.steps and dec.target.role == PRIMARY and not dec.target.read_only:
                await self._observe_promoted(dec.target)
            sw = obs.state.switchover if obs.state is not None else None
            if Effect.RELEASE_THEN_STOP in dec.effects and obs.wal is not None and sw is not None:
                self.switchover_stopped = (obs.state.generation, sw.to, obs.wal)
        elif dec.target.role in (PRIMARY, STANDBY):
            await self._refresh_members()
            if self.restart_request is not None and obs.running:
                await self._restart_pg(dec.target)
        if not tr.steps and dec.target.role == PRIMARY and dec.target.read_only and dec.target.sync is not None:
            self.next_delay = min(self.next_delay, CATCH_UP_POLL_S)  # writes wait on this check

    async def _observe_promoted(self, target: Target) -> None:
        """After a read-write promotion /primary says so from this cycle's end, not a cycle later."""
        pgs = await self.pg.status(target.sync.pg_url if target.sync else None)
        if pgs.known:
            self.last_pg, self.last_pg_at = pgs, self.clock.monotonic()

    async def _restart_pg(self, target: Target) -> None:
        """The requested restart, in a cycle with no transition to make (once: never retried)."""
        force, self.restart_request = self.restart_request, None
        if await self.steps.restart_in_role(target, force):
            self.pg_restarts += 1

    async def _refresh_members(self) -> None:
        """A node that joins behind us changes no role of ours, but pg_hba must admit it:
        rewrite it (a reload) whenever the shard's members change."""
        members = self.view.members(self.cfg.ip)
        if self.pg.spec is not None and self.pg.running and (members != self.pg.members or self.pg.parameters_dirty):
            await self.pg.configure(self.pg.spec, members)
            await self.pg.apply_pending()

    async def _tend_replication(self, target: Target) -> None:
        """My downstream's slot kept, stale ones dropped, a sync's replay kept moving (never fails)."""
        if target.role not in (PRIMARY, STANDBY) or not self.pg.running or not (self.last_pg and self.last_pg.healthy):
            self.slots = None
            return
        st = self.view.state
        await self.replay.check(self.pg.client, self.last_pg, st.place_of(self.me.id) if st else None,
                                bool(st and st.frozen), target.upstream, self.pg.status_timeout)
        self.slots = await slots.reconcile(self.pg.client, target.downstream.pg_url if target.downstream else None,
                                           self.me.pg_url, [p.pg_url for p in st.chain()] if st else [],
                                           [p.pg_url for p in st.deposed] if st else [], self.log, self.reaped)

    async def _record_history(self, old: Target | None, new: Target) -> None:
        st = self.view.state
        await self._record_events(history.events_for(self.me, old, new, st.generation if st else None,
                                                     int(self.clock.time() * 1000)))

    async def _record_events(self, events) -> None:
        for ev in events:
            self.transitions[ev.action] = self.transitions.get(ev.action, 0) + 1
            try:
                await self.store.record(ev)
            except Exception as e:  # history must not block failover; it is retried never
                self.log.warning("history_write_failed", action=ev.action, error=str(e))

    # ------------------------------------------------------------------ shutdown (operator requests: the mixin)

    async def shutdown(self) -> None:
        """SIGTERM/SIGINT: a primary hands over fast. Leaving the election at once lets the sync see us gone
        now instead of after the session timeout (F2); PG is stopped with a fast shutdown only after that, so
        nothing is acknowledged that the sync lacks (its commits wait for the sync) and it is taking over."""
        was_primary = self.role == PRIMARY
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.leave(), 3)
        if was_primary:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.remove_registrar(self.me.pg_url), 2)
        with contextlib.suppress(Exception):
            await self.pg.kill() if was_primary else await self.pg.stop(mode="fast")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.session.close(), 5)


async def _first(*aws) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
