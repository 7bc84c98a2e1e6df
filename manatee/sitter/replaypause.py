"""A standby's WAL replay paused by hand (`select pg_wal_replay_pause()`).

A paused standby still receives and flushes WAL, so its primary's commits go on and nothing
looks wrong (sandbox trial 2026-12-06: `show` and `verify` said "ok" with the sync's replay
paused for 20 s). But its replay falls behind: reads on it go stale, the WAL it has not
replayed stays in its pg_wal (a restartpoint cannot pass the replay), and a takeover must
replay all of it before it takes writes. On the sync that is the shard's next failover (S9)
and its disk (F19), so its sitter resumes the replay at once and says so loudly, unless the
shard is frozen (an operator who holds the shard still may keep it paused). An async's
replay is the operator's (e.g. paused to salvage rows before a mistaken DELETE replays): it
is reported (/state, `manatee-adm show`) and resumed only once that node is the sync.

`replay_action()` is the pure decision; `ReplayGuard` asks PostgreSQL, with a deadline, and
never fails a cycle: a failed resume is logged once per error and tried again next cycle.
"""

from __future__ import annotations

from manatee.core import pg as pgmod

RESUME, REPORT = "resume", "report"
RESUME_SQL = "select pg_wal_replay_resume()"


def replay_action(paused: bool | None, place: str | None, frozen: bool) -> str | None:
    """RESUME the replay of the shard's sync (unless frozen), REPORT any other paused one,
    None when it is not paused or that is unknown (a status that failed decides nothing)."""
    if not paused:
        return None
    return RESUME if place == "sync" and not frozen else REPORT


class ReplayGuard:
    """Remembers since when the replay is paused (an episode) and the last failed resume."""

    def __init__(self, log, clock):
        self.log, self.clock = log, clock
        self.paused_since: float | None = None  # monotonic; None: not paused (or never seen so)
        self.last_error: str | None = None

    async def check(self, client, paused: bool | None, place: str | None, frozen: bool, timeout: float) -> None:
        """`paused`: PgStatus.replay_paused (None: unknown, which changes nothing)."""
        if paused is False:
            self.paused_since = None
        action = replay_action(paused, place, frozen)
        if action is None:
            return
        now = self.clock.monotonic()
        first = self.paused_since is None
        if first:
            self.paused_since = now
        if action == REPORT:
            if first:
                self.log.warning("pg_replay_paused", place=place, frozen=frozen,
                                 reason="my WAL replay is paused (pg_wal_replay_pause()): reads here go stale "
                                        "and the WAL received piles up in pg_wal until "
                                        "`select pg_wal_replay_resume()`; I resume it myself only as the sync "
                                        "of a shard that is not frozen")
            return
        try:
            await client.query(RESUME_SQL, timeout=timeout)
        except pgmod.PgError as e:
            if self.last_error != str(e):
                self.log.warning("pg_replay_resume_failed", error=str(e)[:300])
            self.last_error = str(e)
            return
        self.last_error = None
        self.log.error("pg_replay_resumed", paused_s=round(now - self.paused_since, 1),
                       reason="my WAL replay was paused (pg_wal_replay_pause()) while I am the sync: a "
                              "takeover would first replay everything received since, and the WAL kept for "
                              "it fills my disk, so I resumed it (freeze the shard to keep a sync's replay "
                              "paused)")
        self.paused_since = None
