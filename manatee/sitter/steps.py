"""The steps of a local transition (manatee.shard.transitions), carried out on this node's
PostgreSQL, dataset and the shard's registrar. Every step is idempotent: what is already
true is skipped, so re-running a plan after a failure is safe."""

from __future__ import annotations

import contextlib
from typing import Callable

from manatee.shard import latches
from manatee.shard import transitions as T
from manatee.shard.pgurl import PgUrl
from manatee.shard.rebuildpath import PHASE_STARTING, RESTORE_FINISHED
from manatee.shard.state import PRIMARY, STANDBY, Peer, Target
from manatee.sitter.dataset import UpstreamNotReady
from manatee.sitter.pgmanager import RoleSpec
from manatee.sitter.ports import Clock, Dataset, Postgres, Store

NO_SYNC_PLACEHOLDER = "manatee-no-sync-standby"


class RestoreHeld(UpstreamNotReady):
    """The next rebuild waits: the last ones failed in a row (latches.restore_failed). Said
    once per failure (log `restore_held`), then the cycle goes on without it."""


class StepRunner:
    def __init__(self, *, me: Peer, pg: Postgres, store: Store, dataset: Dataset, log, clock: Clock,
                 one_node_write_mode: bool, ttl: int, on_restored: Callable[[], None]):
        self.me, self.pg, self.store, self.dataset, self.log, self.clock = me, pg, store, dataset, log, clock
        self.one_node_write_mode, self.ttl = one_node_write_mode, ttl
        self.on_restored = on_restored  # the observer's latches (diverged, wal_from) start over
        self.configured_upstream: Peer | None = None  # what primary_conninfo names now
        self.restore_progress: dict | None = None
        self.start_budget: Callable[[Target], float | None] = lambda _t: None
        # publish now, not at the cycle's end: a restore moved on, or PostgreSQL was stopped
        # for a step that runs on (/replica must not answer from the look before the stop)
        self.on_progress: Callable[[], None] = lambda: None
        self.on_start: Callable[[], None] = lambda: None  # a start of PostgreSQL is attempted
        # why the next rebuild is needed (manatee.shard.rebuildpath CAUSE_*; None: missing data
        # or not known): only a WAL divergence may be rewound. Set by the loop, cleared by a restore.
        self.rebuild_cause: str | None = None
        self.restore_tries = latches.RestoreTries()  # failed rebuilds in a row (back-off)

    async def run(self, tr: T.Transition, target: Target, members: tuple[str, ...]) -> None:
        for step in tr.steps:
            await self.step(step, target, members)

    def primary_spec(self, target: Target) -> RoleSpec:
        """read-only is only a default a client can override (SET, BEGIN READ WRITE), so a
        primary without a sync also names a sync that never connects: a commit that slips
        past read-only then waits instead of being acknowledged without a sync (S5)."""
        if target.sync is not None:
            sync = target.sync.pg_url
        elif self.one_node_write_mode:
            sync = None
        else:
            sync = NO_SYNC_PLACEHOLDER
        return RoleSpec("primary", read_only=target.read_only, sync_app_name=sync)

    def standby_spec(self, target: Target) -> RoleSpec:
        """A detached standby about to take over (target.then) also names its coming sync and
        mode now, in the same reload as the detach: the promotion then needs none."""
        up = target.upstream
        if up is None and target.then is not None:
            spec = self.primary_spec(target.then)
            return RoleSpec("standby", upstream=None, sync_app_name=spec.sync_app_name, read_only=spec.read_only)
        return RoleSpec("standby", upstream=(up.ip, PgUrl.parse(up.pg_url).port) if up else None)

    async def step(self, step: str, target: Target, members: tuple[str, ...]) -> None:
        pg = self.pg
        if step == T.STOP_PG:
            await pg.kill()
            self.configured_upstream = None
            self.on_progress()  # a step-down's start (or restore) may take long: /primary says 503 now
        elif step == T.INITDB_IF_EMPTY:
            await self.dataset.ensure()
            if not pg.has_data():
                await pg.initdb()
        elif step in (T.RESTORE_IF_EMPTY, T.RESTORE_FROM_UPSTREAM):
            if step == T.RESTORE_FROM_UPSTREAM or not pg.has_data():
                await self.restore(target.upstream)
        elif step == T.CONFIGURE_PRIMARY:
            await self._configure_primary(target, members)
        elif step in (T.SET_SYNC, T.SET_READ_ONLY, T.SET_READ_WRITE):
            await pg.configure(self.primary_spec(target), members)
        elif step == T.CONFIGURE_STANDBY:
            up = target.upstream
            await pg.configure(self.standby_spec(target), members)
            self.configured_upstream = up
        elif step == T.START_PG:
            if not pg.running:
                self.on_start()
                await pg.start(ready_timeout=self.start_budget(target))
        elif step == T.RELOAD_PG:
            await pg.apply_pending()
        elif step == T.SAFE_READ_ONLY:
            await self._safe_read_only(target, members)
        elif step == T.PROMOTE:
            st = await pg.status() if pg.running else None
            if st is not None and not st.known:
                raise RuntimeError(f"cannot tell whether PostgreSQL is in recovery ({st.error}): not promoting "
                                   "it this cycle")
            if st is not None and st.in_recovery:
                await self.promote_if_still_primary(target, members)
        elif step == T.WRITE_REGISTRAR:
            await self.store.publish_registrar(self.me.pg_url, self.ttl)
        elif step == T.REMOVE_REGISTRAR:
            with contextlib.suppress(Exception):
                await self.store.remove_registrar(self.me.pg_url)
        else:
            raise ValueError(f"unknown step {step!r}")

    async def _safe_read_only(self, target: Target, members: tuple[str, ...]) -> None:
        """Safe mode: a PostgreSQL out of recovery takes no writes (read-only, a sync that never
        connects). One in recovery is a standby and keeps its configuration: a primary's would
        remove its standby.signal, and its next start would fork it (the random simulation: a
        sync forked as it detached for a switchover stayed read-write through safe mode)."""
        pg = self.pg
        in_recovery = None
        if not pg.running:
            # one this sitter did not start (its predecessor's, whose kill failed: pg_orphan_check_failed)
            # runs with whatever configuration it had, perhaps read-write: every process of the data
            # directory is killed, as its next start would (the random simulation, seed 608855)
            await pg.kill()
        if pg.running:
            st = await pg.status()
            in_recovery = st.in_recovery if st.known else None
        if in_recovery is None:  # stopped, or it did not answer (a storm): its files say what it runs as
            in_recovery = pg.has_standby_signal() or not pg.has_data()
        if in_recovery:
            return
        await pg.configure(self.primary_spec(target), members)  # a stopped one's files, should anyone start it
        if pg.running:
            await pg.apply_pending()

    async def _configure_primary(self, target: Target, members: tuple[str, ...]) -> None:
        # A standby becomes primary by pg_promote (a new timeline, so that PostgreSQL
        # itself refuses to let a forked node follow us), never by a plain restart.
        pg = self.pg
        if not pg.running and pg.has_standby_signal():
            await pg.start()
        if pg.running:
            st = await pg.status()
            if not st.known:
                raise RuntimeError(f"cannot tell whether PostgreSQL is in recovery ({st.error}): "
                                   "not configuring it as the primary this cycle")
            if st.in_recovery:
                await self.promote_if_still_primary(target, members)
        await pg.configure(self.primary_spec(target), members)

    async def promote_if_still_primary(self, target: Target, members: tuple[str, ...]) -> None:
        """Promote only if the state in ZooKeeper still names me primary: a sitter that was
        paused between writing its takeover and promoting (SIGSTOP, a stalled host) may find
        that another node took over meanwhile. A read that fails is unknown: no promotion.

        The detached standby names its new sync first, and whether it will take writes (a
        reload; PostgreSQL ignores both until the promotion ends): the promoted node then waits
        for that sync from its first moment and, after a switchover, takes writes at once, with
        no reload between the promotion and the first commit. Usually the detach already
        configured both (target.then) and nothing is reloaded here. When something is, the state
        is read again after the reload, right before the promotion: a sitter stopped during it (a
        config write waiting on a slow disk) must not promote on a state read before it (the
        random simulation: a node hung there promoted after the next two takeovers)."""
        await self._still_primary()
        pg = self.pg
        if pg.spec is not None and pg.spec.role == "standby" and pg.spec.upstream is None:
            await pg.configure(self.standby_spec(Target(STANDBY, upstream=None, then=target)), members)
            await pg.apply_pending()  # a reload: synchronous_standby_names, default_transaction_read_only
            await self._still_primary()
        await pg.promote()

    async def _still_primary(self) -> None:
        st, _ver = await self.store.read_state()
        if st is None or st.primary.id != self.me.id:
            raise RuntimeError(f"not promoting: the state now names {st.primary.id if st else 'no'} primary")

    async def restore(self, upstream: Peer | None) -> None:
        if upstream is None:
            raise RuntimeError("a restore needs an upstream to restore from")
        t = self.restore_tries
        held = latches.restore_held_s(t, self.clock.monotonic())
        if held is not None:
            raise RestoreHeld(f"my last {t.failures} rebuilds failed in a row (the last: {t.last_error}), "
                              f"so the next one waits {held:.0f}s more")
        await self.dataset.check_upstream(upstream)  # not ready yet: no attempt, no failure
        try:
            await self._restore(upstream)
        except Exception as e:
            self.restore_tries = t = latches.restore_failed(t, f"{type(e).__name__}: {e}"[:300],
                                                            self.clock.monotonic())
            if (self.restore_progress or {}).get("phase") not in RESTORE_FINISHED:  # not left "starting"
                self.restore_progress = {**(self.restore_progress or {}), "phase": "failed", "reason": t.last_error}
            if t.retry_at is not None:
                self.log.warning("restore_held", failures=t.failures, wait_s=round(t.retry_at - self.clock.monotonic(), 1),
                                 error=t.last_error)
            raise
        self.restore_tries = latches.RestoreTries()

    async def _restore(self, upstream: Peer) -> None:
        also = await self._ahead_of(upstream)
        # begun (an operator's request no longer lapses: rebuildpath.withdrawn_request)
        self.restore_progress = {"phase": PHASE_STARTING, "completed": 0, "size": 0, "source": upstream.backup_url}
        await self.pg.kill()
        self.on_progress()  # publish it: /replica and /primary stop answering from the look before
        self.log.info("restore_starting", source=upstream.backup_url, also=[p.backup_url for p in also])

        def progress(p):
            self.restore_progress = {"phase": p.phase, "completed": p.completed, "size": p.size,
                                     "source": getattr(p, "source", None) or upstream.backup_url,
                                     "path": p.path, "reason": p.reason, "snapshot": p.snapshot}
            self.on_progress()

        res = await self.dataset.rewind(upstream, self.rebuild_cause, progress, ahead=also)
        if isinstance(res, str):  # not rewound (the data is as it was): why, beside the stream's reason
            no_rewind = res
            self.log.info("rewind_not_used", why=no_rewind)
            res = await self.dataset.restore(upstream, progress, also=also)
            reason = f"{res.reason} (no pg_rewind: {no_rewind})" if res.reason else f"no pg_rewind: {no_rewind}"
        else:
            reason = res.reason
        self.restore_progress = {"phase": "done", "completed": res.bytes, "size": res.bytes,
                                 "source": getattr(res, "source", None) or upstream.backup_url,
                                 "path": res.path, "reason": reason, "snapshot": getattr(res, "snapshot", None)}
        self.rebuild_cause = None
        self.on_restored()
        self.log.info("restore_done", bytes=res.bytes, seconds=round(res.seconds, 2), path=res.path, why=reason)

    async def _ahead_of(self, upstream: Peer) -> list[Peer]:
        """The members ahead of my upstream in the chain, nearest first, that run a healthy
        PostgreSQL: they may send my rebuild when my upstream shares no snapshot with me
        (manatee.core.restore.source; docs/design.md). A state that cannot be read: none."""
        try:
            st, _ver = await self.store.read_state()
        except Exception as e:  # noqa: BLE001 - unknown: restore from the upstream alone, as before
            self.log.warning("restore_sources_unknown", error=f"{type(e).__name__}: {e}")
            return []
        chain = [p.id for p in st.chain()] if st is not None else []
        if upstream.id not in chain:
            return []
        ready = []
        for p in reversed(st.chain()[: chain.index(upstream.id)]):
            with contextlib.suppress(Exception):  # UpstreamNotReady: not a source now
                if p.id != self.me.id:
                    await self.dataset.check_upstream(p)
                    ready.append(p)
        return ready

    async def restart_in_role(self, target: Target, force: bool) -> bool:
        """The requested restart (manatee-adm restart): a fast stop, then a start with the
        files of the role it has (standby.signal stays for a standby). A node that became the
        primary since the request is not restarted unless it was forced. True if restarted:
        stopped, and started or its start failed (e.g. a standby below its primary's settings:
        the next cycle starts it as any stopped PostgreSQL, primaryfloors.py raises them, and
        manatee-adm restart waits for it to stream)."""
        if target.role == PRIMARY and not force:
            self.log.warning("restart_dropped", reason="this node is the primary now")
            return False
        t0 = self.clock.monotonic()
        await self.pg.stop(mode="fast")
        self.on_progress()
        try:
            await self.pg.start()
        except Exception as e:  # noqa: BLE001 - the next cycle's start is the supervision's
            self.log.error("pg_restart_start_failed", role=target.role, error=str(e)[:2000],
                           note="stopped for the requested restart, but its start failed: the next cycle starts it again")
            return True
        self.log.info("pg_restarted", role=target.role, seconds=round(self.clock.monotonic() - t0, 3))
        return True
