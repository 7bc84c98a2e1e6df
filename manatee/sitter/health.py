"""Gray failures of this node's PostgreSQL (issue 8), as the shell measures them.

A running PostgreSQL that has not answered its status query for healthChkTimeout is hung
(killed, so that the usual rules restart it in its role); one that has failed to serve for
primaryStartTimeout while I am the primary cannot serve (the core's step-down rule, S9); a
standby that is down or does not stream withholds its heartbeats. The pure rules are in
manatee.shard.latches; this keeps their clocks between cycles.
"""

from __future__ import annotations

from manatee.core import pg as pgmod
from manatee.shard import latches
from manatee.shard.state import PRIMARY, STANDBY, Target
from manatee.sitter.pglog import CROWDED, wraparound_refusal
from manatee.sitter.ports import Clock, Postgres

# The write probe: a tiny transaction that must write and flush WAL locally to commit (a
# transactional logical-decoding message: no table in the operator's database, no dead
# tuples, and it replicates as nothing but WAL). synchronous_commit is local for it alone,
# so a missing or slow sync never makes it fail; statement_timeout is the call's deadline.
WRITE_PROBE_SQL = ("select set_config('synchronous_commit', 'local', true) as sc,"
                   " pg_logical_emit_message(true, 'manatee_write_probe', '')::text as lsn")

# The space probe, added to the write probe while my dataset is nearly full (free below
# latches.SPACE_PROBE_BELOW): a sort too big for a 64 kB work_mem, so PostgreSQL writes a
# temporary file of a few hundred kB in its data directory. A dataset that cannot take new
# blocks fails it ("could not write to file base/pgsql_tmp/...: Disk quota exceeded") even
# while WAL, written into segments that exist already, still commits: the write probe alone
# passed while every client insert that had to extend a table failed (a soak, 2026-12-04:
# two primaries with full disks served no write for 29 and 40 s and never gave way).
SPACE_PROBE_SQL = ("select count(*) as n from (select g from generate_series(1, 20000) g"
                   " order by g desc) s")
SPACE_PROBE_WORK_MEM_SQL = "select set_config('work_mem', '64kB', false) as wm"


def first_line(text: str | None, limit: int = 200) -> str:
    """An error message fit for a one-sentence reason: its first line, at most `limit` characters."""
    line = (text or "no error").strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[:limit - 3] + "..."


LEAVING_WHY_MAX = 200  # characters of the reason a standby's leaving heartbeat gives


class PgHealth:
    def __init__(self, pg: Postgres, log, clock: Clock, *, primary_start_timeout_s: float, interval_s: float,
                 hb_expiration_s: float = 0.0):
        self.pg, self.log, self.clock = pg, log, clock
        self.primary_start_timeout = primary_start_timeout_s
        self.interval = interval_s
        self.hb_expiration = hb_expiration_s
        self.stall: tuple | None = None  # latches.sync_flush_stall: my sync's flush, while it trails my WAL
        self.probe_failures = 0  # consecutive failed write probes (latches.write_probe)
        self.probe_error: str | None = None
        self.probe_at: float | None = None  # monotonic time of the last probe
        self.wraparound_since: float | None = None  # my primary refuses new XIDs (wraparound) since
        self.wraparound_error: str | None = None
        self.starts = latches.StartTries()
        self.disk_full_line: str | None = None  # latches.new_disk_full_crash: the last disk-full PANIC counted
        self.disk_full_at: float | None = None  # when my disk was last found full while PG failed
        self.disk_full_why: str | None = None
        self.space_at: float | None = None      # monotonic time of the last free-space check
        self.free: int | None = None            # bytes free on my dataset at that check (None: unknown)
        self.unanswered_since: float | None = None
        self.hung_kills = 0
        self.sick_since: float | None = None
        self.healthy_since: float | None = None
        self.sick_why: str | None = None
        self.hard_why: str | None = None  # the last hard fault (down, hung, unconfigurable) of this sickness
        self.hard_at: float | None = None  # when it was last seen (monotonic)
        self.hard_since: float | None = None  # the first hard fault of this sickness (monotonic)
        self.relapsed = False  # a hard fault came back after a moment of health (a crash loop)
        self.cannot_serve: str | None = None
        self.hb_withheld = False
        self.judged_as_primary: bool | None = None  # the role the sickness clock above was kept for

    def start_budget(self, target: Target) -> float | None:
        """How long a start of my PostgreSQL may wait for it to accept connections. A primary
        that has been sick already waits only for what is left of primaryStartTimeout (at least
        a few health checks), so that a PostgreSQL that hangs again at every start (F18, sticky)
        still lets the step-down rule run within its bound instead of after opsTimeout."""
        if target.role != PRIMARY or self.sick_since is None:
            return None
        left = self.primary_start_timeout - (self.clock.monotonic() - self.sick_since)
        return min(self.pg.ops_timeout, max(left, 2 * self.pg.health_timeout, 1.0))

    async def kill_if_hung(self, pgs, sync_app: str | None, asked_at: float, role: str):
        """A running PostgreSQL that has not answered its status queries for healthChkTimeout
        (counted from when the first unanswered one was asked; timeouts only: a refusal is an
        answer) is hung: SIGKILL it (works on a stopped process) so that the usual rules
        restart it in its role. Returns (the status to use, whether it was killed)."""
        now = self.clock.monotonic()
        self.unanswered_since = latches.unanswered_since(
            self.unanswered_since, running=pgs.running, answered=pgs.healthy, timed_out=pgs.timed_out,
            now=asked_at)
        since = self.unanswered_since
        if since is None or now - since < self.pg.health_timeout:
            return pgs, False
        self.log.error("pg_hung", seconds=round(now - since, 1), error=pgs.error, role=role,
                       reason=f"my PostgreSQL has not answered its status query for {now - since:.1f}s, "
                              f"so I kill it and start it again in its role")
        self.hung_kills += 1
        self.unanswered_since = None
        try:
            await self.pg.kill()
        except pgmod.PgError as e:  # e.g. a process stuck in the kernel: still unknown, decide anyway
            self.log.error("pg_kill_failed", error=str(e))
            return pgs, False
        return await self.pg.status(sync_app), True

    @property
    def unwell(self) -> str | None:
        """Why my PostgreSQL is not healthy, for my heartbeats: a hard fault (down, hung,
        unconfigurable) seen since it was last stably healthy (latches.failing_since); None
        when healthy, or only not streaming (the upstream sees that itself). A switchover to a
        sync that says so waits: a PostgreSQL that hung a moment ago may hang again."""
        return self.hard_why if self.sick_since is not None else None

    def _why_sick(self, pgs, as_primary: bool, target: Target | None) -> tuple[str | None, bool]:
        """(why my PostgreSQL does not serve its role or None, whether that is a hard failure)."""
        why = None
        if self.pg.config_error is not None:
            why = f"I cannot write its config: {first_line(self.pg.config_error)}"
        elif not pgs.running:
            why = "it is not running"
        elif not pgs.known:
            why = f"it did not answer its status query ({first_line(pgs.error)})"
        elif as_primary and pgs.in_recovery:
            why = "it is still in recovery"
        elif as_primary and self.probe_failures >= latches.WRITE_PROBE_FAILURES:
            why = (f"it cannot commit: {self.probe_failures} write probes in a row failed "
                   f"({first_line(self.probe_error)})")
        hard = why is not None
        t = target
        if (not hard and not as_primary and t is not None and t.role == STANDBY and t.upstream is not None
                and not pgs.streaming):
            why = f"it does not stream from {t.upstream}"  # e.g. its walreceiver cannot write (full disk)
        return why, hard

    def track(self, pgs, *, as_primary: bool, role: str, target: Target | None, sender=None) -> None:
        """Whether my PostgreSQL serves its role (running, answering, its config writable, and
        out of recovery if I am the primary); for the primary, cannot_serve once it has failed
        for primaryStartTimeout (the core's step-down rule, S9)."""
        now = self.clock.monotonic()
        if as_primary != self.judged_as_primary:
            # A new role starts a new clock: a sync that took over must not carry its "does not
            # stream from the dead primary" into its tenure (two slow write probes would then
            # make it step down at once: a second failover, seen in CI under load).
            self.sick_since = self.healthy_since = self.sick_why = self.hard_why = self.hard_at = None
            self.hard_since = None
            self.relapsed = False
            self.judged_as_primary = as_primary
        full = self._disk_full(pgs, now, as_primary=as_primary)
        if full is not None:
            self.cannot_serve = full
            return
        why, hard = self._why_sick(pgs, as_primary, target)
        if not (as_primary or role == STANDBY):
            self.sick_since = self.healthy_since = self.cannot_serve = None
            self.sick_why = self.hard_why = self.hard_at = self.hard_since = None
            self.relapsed = False
            return
        if why is not None and pgs.crowded and self.pg.config_error is None:
            # clients hold every slot (F20): busy, not sick — neither clock moves, and no
            # step-down or replacement is ever decided on a connection storm
            self.cannot_serve = None
            return
        was = self.sick_since
        # a hard fault after a moment of health within one sickness: a crash loop
        relapse = hard and was is not None and self.healthy_since is not None
        self.sick_since, self.healthy_since = latches.failing_since(
            self.sick_since, self.healthy_since, healthy=why is None, now=now,
            stable_s=max(self.primary_start_timeout / 2, 2 * self.interval))
        if why is not None:
            self.sick_why = why
        self.hard_why = (why if hard else self.hard_why) if self.sick_since is not None else None
        self.hard_at = (now if hard else self.hard_at) if self.sick_since is not None else None
        self.relapsed = (self.relapsed or relapse) if self.sick_since is not None else False
        if was is None and self.sick_since is not None:
            (self.log.warning if hard else self.log.info)("pg_unhealthy", why=why, role=role)
        elif was is not None and self.sick_since is None:
            self.log.info("pg_healthy_again", after_s=round(now - was, 1))
            self.sick_why = None
        # failing: sick now, and without stable health since primaryStartTimeout ago (a crash loop)
        failing = (why is not None and self.sick_since is not None
                   and now - self.sick_since >= self.primary_start_timeout)
        self.cannot_serve = (f"not healthy for {now - self.sick_since:.1f}s: {self.sick_why}"
                             if failing and as_primary else None)
        # A standby whose PostgreSQL is down, hung or unconfigurable for healthChkTimeout (or in
        # a crash loop) stops heartbeating its upstream, so that a primary replaces a sync that
        # cannot acknowledge (and never steps down to it); not streaming alone does not
        # (latches.standby_gives_way).
        hard_for = self._hard_for(hard, now)
        # A standby whose disk is full cannot write the WAL it receives: no waiting, it is a fact
        # (its sync flush would block every commit on the primary until the expiry).
        if not as_primary and why is None:
            self.disk_full_at = None  # a standby that serves again has room (and may be promoted)
        full = (not as_primary and why is not None
                and latches.disk_full_recent(self.disk_full_at, now, self.primary_start_timeout))
        if full:
            self.sick_why = f"{why}, and {self.disk_full_why}"
        withhold, tell = (False, False) if as_primary else latches.standby_gives_way(
            full=full, hard=hard, hard_for=hard_for,
            health_timeout=self.pg.health_timeout,
            withheld=self.hb_withheld, hold_s=self.primary_start_timeout,
            relapsed=self.relapsed,
            hard_ago=None if self.hard_at is None else now - self.hard_at)
        if withhold != self.hb_withheld:
            if withhold:
                self.log.warning("heartbeats_withheld", why=self.sick_why)
            else:
                self.log.warning("heartbeats_resumed", why=why or "my PostgreSQL serves again")
            self.hb_withheld = withhold
            if tell and sender is not None:  # the last word (the disk first: it is the fault)
                sender.leave("my PostgreSQL cannot serve: "
                             + first_line(self.disk_full_why if full else self.sick_why, LEAVING_WHY_MAX))
        if withhold and sender is not None:  # at once: the cycle may then fail (PG cannot start) and
            sender.upstream_url = None       # never reach the end that points the sender (F19-sync)

    def _hard_for(self, hard: bool, now: float) -> float:
        """How long this sickness has been hard (since its first hard fault; a crash loop's
        moments of health do not restart it), not how long it has lasted: a standby that did not
        stream (its upstream died: not its fault), then missed one status query while it caught
        up, was counted sick for 7 s and withheld its heartbeats at that first miss (sandbox
        trial 2026-12-06). 0 while the fault is not hard."""
        if self.sick_since is None:
            self.hard_since = None
        elif hard and self.hard_since is None:
            self.hard_since = now
        return now - self.hard_since if hard and self.hard_since is not None else 0.0

    def _disk_full(self, pgs, now: float, *, as_primary: bool) -> str | None:
        """Why my primary cannot serve because its disk is full, or None: its PostgreSQL
        PANICked for lack of space (its log says so) or failed while its dataset had less than
        latches.DISK_FULL_BELOW free (check_space), less than primaryStartTimeout ago. That is a
        fact, not a blip: the postmaster restarts it, and a restart that frees a little space
        makes it look healthy until its next WAL segment, so the primary gives way to a
        healthy sync at once (F19). A standby's is only logged (its walreceiver cannot write:
        it stops streaming and withholds its heartbeats)."""
        if latches.new_disk_full_crash(self.disk_full_line, pgs.disk_full):
            said = latches.disk_full_recent(self.disk_full_at, now, self.primary_start_timeout)
            self.disk_full_line, self.disk_full_at = pgs.disk_full, now
            state = "is read-only" if "Read-only file system" in pgs.disk_full else "is full"
            what = "crashed" if "PANIC:" in pgs.disk_full else "cannot write its WAL"
            self.disk_full_why = f"it {what} because its disk {state} ({pgs.disk_full})"
            if not said:  # a walreceiver fails each second: one line per episode
                self.log.warning("pg_disk_full_crash", line=first_line(self.disk_full_line, 300), role="primary"
                                 if as_primary else None, reason=f"my PostgreSQL {what} because its disk {state}"
                                 + (", so I give way to my sync" if as_primary else ""))
        if not (as_primary and latches.disk_full_recent(self.disk_full_at, now, self.primary_start_timeout)):
            return None
        return first_line(self.disk_full_why, 300)

    async def check_space(self, dataset, pgs, *, as_primary: bool, target: Target | None = None) -> None:
        """Ask ZFS how much room my dataset has (within the status deadline): at most once per
        healthChkInterval when my PostgreSQL fails (not running, a status query failed other
        than for a connection storm, a write probe failed, its config could not be written, or — my
        `target` a standby with an upstream — it does not stream: a walreceiver that cannot
        write its WAL may fail again and again without PostgreSQL ever crashing) or the
        dataset is nearly full, else once per latches.SPACE_WATCH_S. The primary's space probe needs to know; a
        standby tells its upstream in its heartbeats (a primary that cannot serve does not
        step down to a sync whose disk is full too). Less than latches.DISK_FULL_BELOW while
        PostgreSQL fails is a full disk (_disk_full; a standby gives way, track); at least
        latches.SPACE_PROBE_BELOW ends it. A check that fails or times out is no evidence (free
        unknown)."""
        stream_expected = (not as_primary and target is not None and target.role == STANDBY
                           and target.upstream is not None)
        failing = (not pgs.running or (not pgs.known and not pgs.crowded) or self.probe_failures > 0
                   or self.pg.config_error is not None or (stream_expected and not pgs.streaming))
        now = self.clock.monotonic()
        every = self.interval if failing or latches.space_low(self.free) else latches.SPACE_WATCH_S
        if self.space_at is not None and now - self.space_at < every:
            return
        self.space_at = now
        try:
            free = self.free = await dataset.available(self.pg.status_timeout)
        except Exception as e:  # noqa: BLE001 - zfs failed or hung: unknown, not full
            self.free = None
            self.log.debug("dataset_space_unknown", error=str(e) or type(e).__name__)
            return
        if self.disk_full_at is not None and free is not None and not latches.space_low(free):
            # room again (the operator freed space or lifted a quota), measured, not a blip: a
            # primary that serves again no longer gives way for the disk it had
            self.disk_full_at = None
            self.log.info("pg_disk_room_again", free=free, role="primary" if as_primary else "standby")
        if failing and latches.disk_full(free):
            known = latches.disk_full_recent(self.disk_full_at, now, self.primary_start_timeout)
            self.disk_full_at = now
            if known:  # still full: said already
                return
            self.disk_full_why = f"its disk is full: {free} bytes free on its dataset while it fails"
            gives = "I give way to my sync" if as_primary else "I stop heartbeating my upstream"
            self.log.warning("pg_disk_full", free=free, role="primary" if as_primary else "standby",
                             reason=f"my PostgreSQL fails and its dataset has only {free} bytes free, so {gives}")

    # -- issue 8: a sync that does not flush, a primary that cannot commit, starts that fail

    @property
    def sync_stall_bound(self) -> float:
        """How long my sync may leave my WAL unflushed without advancing before I replace it:
        primaryStartTimeout (writes are blocked either way, as by a primary that cannot serve),
        and never less than its own sitter needs to judge its PostgreSQL sick and its
        heartbeats to expire (healthChkTimeout + heartbeatCfg.expirationTime)."""
        return max(self.primary_start_timeout, self.pg.health_timeout + self.hb_expiration)

    def sync_stalled(self, pgs, key, *, i_am_primary: bool) -> float | None:
        """Observation.sync_stalled_s: for how long my sync has not flushed WAL I have, once
        that is at least sync_stall_bound (key: the assignment, (generation, sync id))."""
        if not (i_am_primary and key is not None and pgs.running and pgs.in_recovery is False):
            self.stall = None
            return None
        now = self.clock.monotonic()
        was = self.stall
        self.stall = latches.sync_flush_stall(
            was, key, known=pgs.known and not pgs.sync_flush_failed, wal=pgs.wal.value if pgs.wal else None,
            sync_flush=pgs.sync_flush.value if pgs.sync_flush else None, now=now)
        return latches.stalled_for(self.stall, now, self.sync_stall_bound)

    async def probe_writes(self, pgs, *, as_primary: bool) -> None:
        """Prove that my primary can commit locally, at most once per healthChkInterval. Only a
        read-write primary is probed: a read-only one (waiting for its sync, frozen, in safe
        mode, stepping down or switching over) must not grow its WAL — the sync is compared
        with it, and a step-down or switchover needs it to stop — and a commit would bypass
        read-only, so it is not probed and counts as no evidence (the count starts over)."""
        now = self.clock.monotonic()
        if not (as_primary and pgs.running and pgs.known and pgs.in_recovery is False and pgs.read_only is False):
            self.probe_failures = latches.write_probe(self.probe_failures, ok=None)
            if not as_primary:
                self._wraparound(None, now)
            return
        if self.probe_at is not None and now - self.probe_at < self.interval:
            return
        self.probe_at = now
        try:
            await self.pg.client.query(WRITE_PROBE_SQL, timeout=self.pg.status_timeout)
            if latches.space_low(self.free):  # nearly full: can it still take new blocks?
                await self.pg.client.query(SPACE_PROBE_WORK_MEM_SQL, timeout=self.pg.status_timeout)
                await self.pg.client.query(SPACE_PROBE_SQL, timeout=self.pg.status_timeout)
        except pgmod.PgError as e:
            if CROWDED.search(str(e)):  # clients hold every slot (F20): busy, not unable to commit
                self.probe_failures = latches.write_probe(self.probe_failures, ok=None)
                return
            if wraparound_refusal(e.pgcode, str(e)):  # the shard's condition: a failover cannot help
                self.probe_failures = latches.write_probe(self.probe_failures, ok=None)
                text = str(e)  # PostgreSQL's own words (they name the database), not the probe's SQL
                self._wraparound(text[text.find("ERROR:"):] if "ERROR:" in text else text, now)
                return
            self.probe_failures = latches.write_probe(self.probe_failures, ok=False)
            self.probe_error = str(e)
            self.log.warning("pg_write_probe_failed", failures=self.probe_failures, error=first_line(str(e)))
            return
        if self.probe_failures:
            self.log.info("pg_write_probe_ok_again", after_failures=self.probe_failures)
        self.probe_failures = latches.write_probe(self.probe_failures, ok=True)
        self._wraparound(None, now)

    def _wraparound(self, error: str | None, now: float) -> None:
        """Keep the episode of my primary refusing new transaction IDs for wraparound (error:
        the probe's error; None: it committed, or I am not the primary). It stays the primary:
        its sync has the same transaction IDs, so a failover would only move the refusal and
        cut the reads; the operator must let VACUUM freeze (docs/operators-guide.md)."""
        if error is not None and self.wraparound_since is None:
            self.wraparound_since = now
            self.log.error("pg_xid_wraparound_refusal", error=first_line(error),
                           why="PostgreSQL refuses new transaction IDs to avoid wraparound: no write can "
                               "commit on this shard, and a failover would not help (every standby has the "
                               "same transaction IDs), so I stay the primary; end what holds the oldest xmin "
                               "and VACUUM (FREEZE)")
        elif error is None and self.wraparound_since is not None:
            self.log.info("pg_xid_wraparound_refusal_over", lasted_s=round(now - self.wraparound_since, 1))
            self.wraparound_since = None
        if error is not None:
            self.wraparound_error = error

    def start_attempted(self) -> None:
        self.starts = latches.start_attempted(self.starts)

    def start_result(self, pgs, killed: bool) -> None:
        """What this observation says of the last start attempt (latches.start_outcome): the
        back-off starts after a few failed starts in a row, from healthChkTimeout doubling up
        to primaryStartTimeout."""
        was = self.starts
        now = self.clock.monotonic()
        self.starts = latches.start_outcome(
            was, running=pgs.running, answered=pgs.running and pgs.known, killed=killed, now=now,
            base_s=self.pg.health_timeout, max_s=max(self.primary_start_timeout, self.pg.health_timeout))
        if self.starts.failures > was.failures:
            held = latches.start_held_s(self.starts, now)
            self.log.warning("pg_start_failed", failures=self.starts.failures,
                             reason=f"my PostgreSQL failed to start {self.starts.failures} time(s) in a row"
                                    + (f", so I wait {held:.0f}s before the next start" if held else ""))
        elif was.failures and self.starts.failures == 0:
            self.log.info("pg_start_ok_again", after_failures=was.failures)

    def start_held(self) -> str | None:
        """Observation.start_held: why my PostgreSQL is not started now, or None."""
        held = latches.start_held_s(self.starts, self.clock.monotonic())
        if held is None:
            return None
        return (f"failed to start {self.starts.failures} times in a row, so its next start waits "
                f"{held:.0f}s more (a bounded back-off)")
