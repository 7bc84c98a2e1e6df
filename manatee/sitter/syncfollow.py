"""The sync reaching its upstream: queries that hold its replay back are ended.

PostgreSQL starts a standby's walreceiver again (a new primary_conninfo, or its upstream
gone) only when its startup process has replayed everything received and asks for more. A
query that holds the replay back (a lock that an ALTER or a TRUNCATE needs, rows a VACUUM
removed that a snapshot still sees, a pinned buffer: up to `max_standby_streaming_delay`, 30 s
by default, for ever at -1) therefore keeps the standby streaming from its old upstream, or
from none. On the sync that stops the shard's writes: the primary's commits wait for its
flush, and a sync just named (the one before it died or stalled) is not caught up until it
streams from the primary, which keeps the primary read-only.

Sandbox trial 2026-12-06, T = 6 s: a report's open transaction on the async that had read a
table, an `ALTER TABLE` of it on the primary, then the sync killed. The primary named the
async its sync and stayed read-only until it had the primary's WAL: 26 s without writes,
until the 30 s delay ran out and PostgreSQL cancelled the report itself.

Writes do not wait for reads (as in a promotion, `promotion.py`): while I am the shard's sync,
my walreceiver does not stream from the upstream I am configured for, and my startup process
waits on such a conflict, the sessions with an open transaction are ended (manatee's own are
not) and the sitter says so. An async's reads are left alone: only its lag grows.

`must_look()` is the pure decision; `SyncFollower` asks PostgreSQL, with a deadline, and never
fails a cycle.
"""

from __future__ import annotations

from manatee.core import pg as pgmod
from manatee.sitter.promotion import STARTUP_WAIT_SQL, ReplayUnblocker, holds_replay
from manatee.sitter.replaypause import ReplayGuard

WAIT_SQL = f"select {STARTUP_WAIT_SQL} as w"
NOTE = ("queries on this node held back its replay, so its walreceiver could not connect to its upstream "
        "(PostgreSQL restarts it only once the replay asks for more WAL): as the shard's sync, every commit "
        "waits for me, and writes do not wait for reads: their sessions are ended")


def must_look(place: str | None, upstream_ip: str | None, sender_ip: str | None) -> bool:
    """Whether to ask what my startup process waits on: I am the shard's sync, configured to
    stream from `upstream_ip`, and my walreceiver streams from another node (`sender_ip`) or
    from none (None). A detached sync (no upstream: about to take over) is the promotion's."""
    return place == "sync" and upstream_ip is not None and sender_ip != upstream_ip


class SyncFollower:
    """Looks at the startup process of a sync that does not stream from its upstream."""

    def __init__(self, log):
        self.log = log
        self.unblocker = ReplayUnblocker(log, "sync", NOTE)
        self.failed: str | None = None  # the last failed look (logged once per error)

    async def check(self, client, place: str | None, upstream_ip: str | None, sender_ip: str | None,
                    timeout: float) -> list[int]:
        """The pids of the sessions ended this time (none unless they held my replay)."""
        if not must_look(place, upstream_ip, sender_ip):
            self.unblocker.ended.clear()  # an episode is over: pids may be reused
            return []
        try:
            rows = await client.query(WAIT_SQL, timeout=timeout)
        except pgmod.PgError as e:
            if self.failed != str(e):
                self.log.warning("sync_replay_look_failed", error=str(e)[:300])
            self.failed = str(e)
            return []
        self.failed = None
        wait = rows[0].get("w") if rows else None
        if not holds_replay(wait):
            return []
        return await self.unblocker.unblock(client, wait, timeout)


class SyncReplay:
    """A sync's replay kept moving, each cycle: resumed if paused by hand (replaypause.py), and
    the queries that hold it ended while it must reach its upstream (SyncFollower)."""

    def __init__(self, log, clock):
        self.guard = ReplayGuard(log, clock)
        self.follower = SyncFollower(log)

    @property
    def paused_since(self) -> float | None:
        return self.guard.paused_since

    async def check(self, client, pgs, place: str | None, frozen: bool, upstream, timeout: float) -> None:
        """`pgs` my PostgreSQL's status (PgStatus), `upstream` the Peer my target streams from."""
        # paused by PostgreSQL for a setting below the primary's: a resume would shut it down
        # (primaryfloors.py: its sitter restarts it with the primary's value instead)
        await self.guard.check(client, None if pgs.below_primary else pgs.replay_paused, place, frozen, timeout)
        await self.follower.check(client, place, upstream.ip if upstream else None,
                                  pgs.sender[0] if pgs.sender else None, timeout)
