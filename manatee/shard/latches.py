"""Pure rules the shell applies to what PostgreSQL reports before the core sees it.

Some observations only mean something over time: a sync that caught up once stays caught
up until it disconnects, and a standby's received WAL counts only once it has been seen
streaming from the upstream it is configured for. These are decisions, so they live here,
tested without PostgreSQL; the shell keeps the latched values between cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
                upstream: Peer | None, wal_from: str | None,
                in_recovery: bool | None = True) -> tuple[int | None, str | None]:
    """The WAL position a standby may claim, and the upstream it was streamed from.

    The received (and replayed) position survives a change of primary_conninfo, so a position
    counts only once the walreceiver has been seen streaming from the configured upstream; a
    restart of PostgreSQL keeps it (the WAL on disk came from that upstream), running as a
    primary (in_recovery False) ends it: the WAL from then on is my own, perhaps to be forked.
    in_recovery None (not running, or it did not answer) keeps what was known. Detaching
    (upstream None, before a takeover) keeps the position from the last upstream: it is
    final, not void.
    """
    if in_recovery is False:
        return None, None
    if in_recovery is None:
        return None, wal_from
    if streaming and sender_ip is not None and upstream is not None and sender_ip == upstream.ip:
        wal_from = upstream.id
    valid = wal_from is not None and (upstream is None or wal_from == upstream.id)
    return (wal if valid else None), wal_from


def streamed_record(record: tuple[int, str] | None, generation: int,
                    flushed_acks: bool) -> tuple[str | None, str | None]:
    """After a restart: (the upstream my WAL on disk counts as streamed from, why not).

    record is (generation, upstream) from my dataset's memory: the upstream my PostgreSQL was
    seen streaming from in that generation. Within one generation the primary's WAL does not
    fork and a standby's WAL is a prefix of its upstream's; a sync that acknowledged a commit
    only once flushed (synchronous_commit on or remote_apply) has every acknowledged write on
    disk. So it stands for streaming only for the generation of the state read now, and not
    with remote_write (F12)."""
    if record is None:
        return None, (f"my dataset does not say that I streamed in generation {generation} "
                      f"(not yet, or restored since)")
    if not flushed_acks:
        return None, ("synchronousCommit is remote_write: a commit the sync acknowledged from its "
                      "operating system's cache may not be on its disk")
    if record[0] != generation:
        return None, f"my dataset says that I streamed in generation {record[0]}, not {generation}"
    return record[1], None


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


def sync_flush_stall(latch: tuple | None, key: Hashable, *, known: bool, wal: int | None,
                     sync_flush: int | None, now: float) -> tuple | None:
    """The primary's clock of a sync that does not flush: (key, best flush seen, since), or None.

    It runs while my WAL is ahead of what the sync has flushed (or the sync is not streaming
    from me at all) and its flush position has not gone past the best one seen since then;
    any advance starts it again, so a sync that is merely slow never stalls. A reconnect that
    reports an old position is no advance (a flapping connection does not reset it). Unknown
    is not "not advancing": when my own PostgreSQL did not answer (known False, or no WAL
    position) the clock is cleared, and so it is when the sync has everything (idle shard)
    or the assignment changes (key: e.g. (generation, sync id)).
    """
    if not known or wal is None or (sync_flush is not None and sync_flush >= wal):
        return None
    if latch is None or latch[0] != key:
        return key, sync_flush, now
    best = latch[1]
    if sync_flush is not None and (best is None or sync_flush > best):
        return key, sync_flush, now
    return latch


def stalled_for(latch: tuple | None, now: float, bound_s: float) -> float | None:
    """How long the sync's flush has been stuck behind my WAL, once that is at least `bound_s`."""
    if latch is None or now - latch[2] < bound_s:
        return None
    return now - latch[2]


#: consecutive failed write probes after which the primary counts as unable to commit
WRITE_PROBE_FAILURES = 2


def write_probe(failures: int, *, ok: bool | None) -> int:
    """Consecutive failed write probes of my primary. ok None: no probe was made (not the
    primary, read-only, my PostgreSQL unknown or not running): no evidence, so the count
    starts over; a success resets it too."""
    return failures + 1 if ok is False else 0


def new_disk_full_crash(seen: str | None, line: str | None) -> bool:
    """Whether `line`, the newest PANIC for lack of space in PostgreSQL's log since the sitter
    last started it, is a crash not seen before (`seen`: the last one counted). It writes no
    WAL, so it crashed; the postmaster restarts it, and a restart that frees a little space
    makes it look healthy until the next WAL segment. The same line again, or none, is not."""
    return line is not None and line != seen


#: a dataset with less room than this (bytes; a default WAL segment) is full: PostgreSQL
#: cannot start a new WAL segment, so a primary that fails with so little room gives way
DISK_FULL_BELOW = 16 << 20


def disk_full(free: int | None) -> bool:
    """Whether a dataset with `free` bytes available is full (None: unknown, so not full)."""
    return free is not None and free < DISK_FULL_BELOW


#: Below this many bytes free on a primary's dataset its write probe also proves that the
#: dataset takes new blocks (health.SPACE_PROBE_SQL), and its free space is read every
#: health check instead of every SPACE_WATCH_S.
SPACE_PROBE_BELOW = 64 << 20
SPACE_WATCH_S = 3.0


def space_low(free: int | None) -> bool:
    """Unknown room is not low (a broken zfs is no reason to probe harder)."""
    return free is not None and free < SPACE_PROBE_BELOW


def standby_gives_way(*, full: bool, hard: bool, hard_for: float,
                      health_timeout: float, withheld: bool = False, relapsed: bool = False,
                      hard_ago: float | None = None, hold_s: float = 0.0) -> tuple[bool, bool]:
    """(withhold my heartbeats, tell my upstream why) for a standby whose PostgreSQL is sick.

    Only for a fault of its own, and then it says why: at once when its disk is full (`full`: a
    fact), after healthChkTimeout of a hard fault (`hard`: down, hung, unconfigurable; `hard_for`
    counts from the first check that saw it within the sickness, not from a sickness that
    began softer, and a crash loop's moments of health do not restart it, so a fault that keeps
    coming back counts too). "Does not stream" alone never: it may be the
    upstream's fault, and a primary that hangs must still find its sync heartbeating to step
    down to (S9). (Until 2026-12-05 it withheld silently after primaryStartTimeout; in CI the
    sync's clock had started with a blip before the primary hung, it fell silent first, and
    the hung primary never stepped down.) A primary replaces a sync that does not flush by its
    own stall rule (PgHealth.sync_stall_bound).

    Once withheld, a crash loop's moments of health do not resume them (`relapsed`: a hard
    fault came back after a moment of health, before it was stably healthy): it stays silent
    while its last hard fault is less than `hold_s` (primaryStartTimeout) old. A first cure
    (a full disk lifted) resumes them at once. Before, a standby killed every second stopped and
    resumed its heartbeats with every crash, and its upstream logged a "gave way" each time
    (sandbox, 2026-12-05: 10 of each in 10 s). The hold is bounded, so a standby whose own
    PostgreSQL recovered but does not stream (its upstream hung) heartbeats again (S9)."""
    withhold = full or (hard and hard_for >= health_timeout)
    if not withhold and withheld and relapsed and hard_ago is not None and hard_ago < hold_s:
        return True, False
    return withhold, withhold


def primary_start_timeout(explicit_s: float | None, session_s: float, health_s: float) -> float:
    """primaryStartTimeout (s): as configured, else twice the session timeout and at least
    healthChkTimeout, as a configured value must be: a primary whose PostgreSQL does not
    answer is not judged unable to serve before it is judged hung. (Until 2026-12-05 the
    default was 2 x T alone, 2 s at T = 1 s against the 5 s healthChkTimeout: in a loaded soak
    the primary's write probes timed out for 2.5 s in a storage stall and it stepped down.)"""
    return explicit_s if explicit_s else max(2 * session_s, health_s)


def disk_full_recent(at: float | None, now: float, window_s: float) -> bool:
    """Whether my disk was found full (a disk-full crash, or little room while PostgreSQL
    failed) less than `window_s` ago: a primary gives way to a healthy sync now rather than
    wait to crash again (F19)."""
    return at is not None and now - at < window_s


#: consecutive failed starts of a standby's PostgreSQL before its sitter backs off
START_FAILURES_BEFORE_BACKOFF = 3


@dataclass(frozen=True)
class StartTries:
    """A standby's failed starts in a row. pending: a start was attempted and has not yet
    proved itself (answered a status query); retry_at: before this (monotonic) time no
    start is attempted."""

    failures: int = 0
    pending: bool = False
    retry_at: float | None = None


def start_attempted(t: StartTries) -> StartTries:
    return replace(t, pending=True)


def start_outcome(t: StartTries, *, running: bool, answered: bool, killed: bool, now: float,
                  base_s: float, max_s: float) -> StartTries:
    """What the observation after a start attempt says about it.

    Answered: it started, the count starts over. Not running, or killed as hung before it
    ever answered: one more failed start; from START_FAILURES_BEFORE_BACKOFF on, the next
    attempt waits base_s, doubling with every further failure up to max_s. Running but not
    answering yet (a long recovery refuses connections; a hang is not judged before
    healthChkTimeout): no verdict yet."""
    if not t.pending:
        return t
    if running and answered and not killed:
        return StartTries()
    if running and not killed:
        return t
    failures = t.failures + 1
    over = failures - START_FAILURES_BEFORE_BACKOFF
    retry_at = now + min(max_s, base_s * 2 ** min(over, 20)) if over >= 0 else None
    return StartTries(failures, False, retry_at)


def start_held_s(t: StartTries, now: float) -> float | None:
    """Seconds until the next start may be attempted (None: it may be attempted now)."""
    if t.retry_at is None or now >= t.retry_at:
        return None
    return t.retry_at - now


# -- rebuilds that fail in a row --------------------------------------------------------
#: A rebuild that failed is tried again at once the first time (an upstream restarting, a
#: stream cut); from the second failure in a row on, the next waits this long, doubling up to
#: RESTORE_RETRY_MAX_S. Each attempt costs its upstream a snapshot and a stream (a full one
#: when no snapshot is shared), so a rebuild that cannot succeed (its own disk too small) must
#: not repeat every cycle: 2026-12-05 sandbox trial, every disk of the shard full, a node
#: retried every 3 s.
RESTORE_RETRY_BASE_S = 2.0
RESTORE_RETRY_MAX_S = 120.0


@dataclass(frozen=True)
class RestoreTries:
    """A node's failed rebuilds in a row: how many, the last one's error, and before which
    (monotonic) time the next is not started (None: it may start now)."""

    failures: int = 0
    last_error: str | None = None
    retry_at: float | None = None


def restore_failed(t: RestoreTries, error: str, now: float, base_s: float = RESTORE_RETRY_BASE_S,
                   max_s: float = RESTORE_RETRY_MAX_S) -> RestoreTries:
    failures = t.failures + 1
    wait = None if failures < 2 else min(max_s, base_s * 2 ** min(failures - 2, 20))
    return RestoreTries(failures, error, None if wait is None else now + wait)


def restore_held_s(t: RestoreTries, now: float) -> float | None:
    """Seconds until the next rebuild may start (None: now)."""
    if t.retry_at is None or now >= t.retry_at:
        return None
    return t.retry_at - now
