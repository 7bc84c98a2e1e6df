"""A standby's promotion, and the queries on it that hold its replay back.

A standby does not replay a WAL record that conflicts with a query running on it (a lock that
an ALTER or a TRUNCATE needs, rows a VACUUM removed that a snapshot still sees, a pinned
buffer) for up to `max_standby_streaming_delay` (30 s by default; -1 waits forever). A
standby being promoted must replay everything it received before it leaves recovery, so one
reporting query on the sync held a failover that long (sandbox trial 2026-12-06: an open
transaction on the sync that had read a table, an `ALTER TABLE` of it on the primary, then
the primary killed: writes were out for 24.8 s at T = 6 s, the promotion waiting out the
30 s). A takeover does not wait for reads: while the node promotes and its startup process
waits on such a conflict, the sessions with an open transaction are ended (manatee's own
connections are not), and the sitter says so.
"""

from __future__ import annotations

import asyncio
import time

from manatee.core import pg as pgmod

#: Asked each poll while a node promotes: still in recovery?
RECOVERY_SQL = "select pg_is_in_recovery() as r"
#: ... and every CONFLICT_LOOK_S of a promotion that has not ended: what its startup process waits on.
CONFLICT_LOOK_S = 0.1
#: What the startup process waits on, as 'type/event' (None: no startup process, or no wait).
STARTUP_WAIT_SQL = ("(select wait_event_type || '/' || coalesce(wait_event, '')"
                    " from pg_stat_activity where backend_type = 'startup' limit 1)")
PROMOTION_SQL = f"select pg_is_in_recovery() as r, {STARTUP_WAIT_SQL} as w"

#: The waits of a startup process held by queries (PostgreSQL 15's wait event names).
CONFLICT_EVENTS = frozenset({"IPC/RecoveryConflictSnapshot", "IPC/RecoveryConflictTablespace",
                             "BufferPin/BufferPin"})

#: The sessions that can hold a conflict: clients' with an open transaction, never manatee's.
_END_SQL = ("select pid, application_name as app, pg_terminate_backend(pid) as ended from pg_stat_activity"
            " where backend_type = 'client backend' and pid <> pg_backend_pid() and xact_start is not null"
            " and application_name not like %s")
_MANATEES = ("manatee%",)


def holds_replay(wait: str | None) -> bool:
    """Whether a startup process's wait ('type/event' of pg_stat_activity) is a conflict with
    queries: a lock wait (an AccessExclusiveLock that standby sessions hold) or one of
    CONFLICT_EVENTS. Unknown (None, empty) is not a conflict."""
    if not wait:
        return False
    return wait.startswith("Lock/") or wait in CONFLICT_EVENTS


PROMOTION_NOTE = ("queries on this node held back the replay that its promotion needs "
                  "(max_standby_streaming_delay); a takeover does not wait for reads: their sessions are ended")


class ReplayUnblocker:
    """Ends the sessions that hold a node's replay; each session is named once. `what` names
    the log events (`<what>_replay_unblocked`, `<what>_unblock_failed`), `note` says why."""

    def __init__(self, log, what: str = "promotion", note: str = PROMOTION_NOTE):
        self.log, self.what, self.note = log, what, note
        self.ended: set[int] = set()

    async def unblock(self, client, wait: str, timeout: float) -> list[int]:
        """End the client sessions with an open transaction; the pids newly ended. A query that
        fails is logged: the promotion's own deadline bounds the wait."""
        try:
            rows = await client.query(_END_SQL, _MANATEES, timeout=timeout)
        except pgmod.PgError as e:
            self.log.warning(f"{self.what}_unblock_failed", wait=wait, error=str(e)[:300])
            return []
        new = [r for r in rows if r.get("ended") and r.get("pid") not in self.ended]
        self.ended.update(r["pid"] for r in new)
        if new:
            self.log.warning(f"{self.what}_replay_unblocked", wait=wait, sessions=len(new),
                             pids=sorted(r["pid"] for r in new), apps=sorted({str(r.get("app") or "") for r in new}),
                             note=self.note)
        return [r["pid"] for r in new]


async def promote(client, log, *, deadline_s: float, poll_s: float, query_timeout: float) -> None:
    """pg_promote without waiting, then ask every `poll_s` whether recovery has ended (pg_promote's
    own wait checks only every 100 ms, which a switchover's write gap would pay in full) and,
    every CONFLICT_LOOK_S, whether queries hold the replay back (then their sessions are ended);
    PgError once `deadline_s` has passed."""
    deadline = time.monotonic() + deadline_s
    await client.promote(wait=False, timeout=deadline_s)
    unblocker = ReplayUnblocker(log)
    look_at = time.monotonic() + CONFLICT_LOOK_S  # a promotion that ends at once never reads pg_stat_activity
    while True:
        look = time.monotonic() >= look_at
        rows = await client.query(PROMOTION_SQL if look else RECOVERY_SQL, timeout=query_timeout)
        if not rows[0]["r"]:
            return
        if look:
            look_at = time.monotonic() + CONFLICT_LOOK_S
            if holds_replay(rows[0].get("w")):
                await unblocker.unblock(client, rows[0]["w"], timeout=query_timeout)
        if time.monotonic() >= deadline:
            raise pgmod.PgError(f"promotion did not finish within {deadline_s:g}s")
        await asyncio.sleep(poll_s)
