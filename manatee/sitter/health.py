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
from manatee.sitter.ports import Clock, Postgres


def first_line(text: str | None, limit: int = 200) -> str:
    """An error message fit for a one-sentence reason: its first line, at most `limit` characters."""
    line = (text or "no error").strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[:limit - 3] + "..."


class PgHealth:
    def __init__(self, pg: Postgres, log, clock: Clock, *, primary_start_timeout_s: float, interval_s: float):
        self.pg, self.log, self.clock = pg, log, clock
        self.primary_start_timeout = primary_start_timeout_s
        self.interval = interval_s
        self.unanswered_since: float | None = None
        self.hung_kills = 0
        self.sick_since: float | None = None
        self.healthy_since: float | None = None
        self.sick_why: str | None = None
        self.cannot_serve: str | None = None
        self.hb_withheld = False

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
        why, hard = self._why_sick(pgs, as_primary, target)
        if not (as_primary or role == STANDBY):
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
            (self.log.warning if hard else self.log.info)("pg_unhealthy", why=why, role=role)
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
        if withhold and sender is not None:  # at once: the cycle may then fail (PG cannot start) and
            sender.upstream_url = None       # never reach the end that points the sender (F19-sync)
