"""Pure rules the shell applies to what PostgreSQL reports before the core sees it.

Some observations only mean something over time: a sync that caught up once stays caught
up until it disconnects, and a standby's received WAL counts only once it has been seen
streaming from the upstream it is configured for. These are decisions, so they live here,
tested without PostgreSQL; the shell keeps the latched values between cycles.
"""

from __future__ import annotations

from typing import Hashable

from manatee.shard.state import Peer


def sync_caught_up(latched_for: Hashable | None, key: Hashable, sync_flush: int | None,
                   wal: int | None, init_wal: int) -> tuple[bool, Hashable | None]:
    """Whether the primary's sync has caught up, and the new latch.

    key identifies the sync assignment, e.g. (generation, sync id). Caught up means its
    flush position reached both the primary's WAL and initWal once; it then stays so (a busy
    primary's sync always trails by a few bytes, so no flapping read-only) until the sync
    disconnects (sync_flush None), which clears the latch.
    """
    if sync_flush is None:
        return False, None
    if latched_for == key:
        return True, latched_for
    if wal is not None and sync_flush >= wal and sync_flush >= init_wal:
        return True, key
    return False, latched_for


def standby_wal(wal: int | None, *, streaming: bool, sender_ip: str | None,
                upstream: Peer | None, wal_from: str | None) -> tuple[int | None, str | None]:
    """The WAL position a standby may claim, and the upstream it was streamed from.

    pg_last_wal_receive_lsn survives a change of primary_conninfo, so a position counts only
    once the walreceiver has been seen streaming from the configured upstream. Detaching
    (upstream None, before a takeover) keeps the position from the last upstream: it is
    final, not void.
    """
    if streaming and sender_ip is not None and upstream is not None and sender_ip == upstream.ip:
        wal_from = upstream.id
    valid = wal_from is not None and (upstream is None or wal_from == upstream.id)
    return (wal if valid else None), wal_from


def unanswered_since(since: float | None, *, running: bool, answered: bool, timed_out: bool,
                     now: float) -> float | None:
    """Since when my running PostgreSQL has not answered its status query in time, or None.

    Only a timeout counts (a hang: SIGSTOP, stuck I/O); a refusal such as "too many clients"
    is an answer, and so is PostgreSQL not running. The shell declares it hung once this is
    healthChkTimeout old, and kills and restarts it in its role.
    """
    if not running or answered or not timed_out:
        return None
    return now if since is None else since


def failing_since(bad_since: float | None, good_since: float | None, *, healthy: bool, now: float,
                  stable_s: float) -> tuple[float | None, float | None]:
    """(bad_since, good_since): since when my PostgreSQL has failed to serve, and since when it
    has been healthy without a break.

    It counts as recovered only after `stable_s` of uninterrupted health, so a crash loop
    (killed every second, restarted by the sitter in between) keeps failing instead of
    resetting the clock with every restart; a single crash that is restarted at once is
    forgotten after stable_s.
    """
    if not healthy:
        return (now if bad_since is None else bad_since), None
    good_since = now if good_since is None else good_since
    if bad_since is not None and now - good_since >= stable_s:
        bad_since = None
    return bad_since, good_since
