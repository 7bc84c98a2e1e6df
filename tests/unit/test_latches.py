import pytest

from manatee.shard import latches
from manatee.shard.latches import standby_wal, sync_caught_up
from manatee.shard.state import Peer

A = Peer(id="10.0.0.1:5432:10002:5433", zone_id="a", ip="10.0.0.1", pg_url="tcp://postgres@10.0.0.1:5432/postgres",
         backup_url="http://10.0.0.1:10002")
B = Peer(id="10.0.0.2:5432:10002:5433", zone_id="b", ip="10.0.0.2", pg_url="tcp://postgres@10.0.0.2:5432/postgres",
         backup_url="http://10.0.0.2:10002")
K1, K2 = (3, B.id), (4, B.id)


def test_caught_up_needs_flush_at_wal_and_init_wal():
    assert sync_caught_up(None, K1, sync_flush=90, wal=100, init_wal=50) == (False, None)
    assert sync_caught_up(None, K1, sync_flush=100, wal=100, init_wal=150) == (False, None)
    assert sync_caught_up(None, K1, sync_flush=100, wal=100, init_wal=50) == (True, K1)


def test_caught_up_latches_until_disconnect():
    # once caught up, a trailing flush on a busy primary keeps it caught up
    assert sync_caught_up(K1, K1, sync_flush=90, wal=200, init_wal=50) == (True, K1)
    # the sync disconnects: the latch clears, and a reconnect must catch up again
    assert sync_caught_up(K1, K1, sync_flush=None, wal=200, init_wal=50) == (False, None)
    assert sync_caught_up(None, K1, sync_flush=150, wal=200, init_wal=50) == (False, None)


def test_new_assignment_must_catch_up_again():
    assert sync_caught_up(K1, K2, sync_flush=90, wal=200, init_wal=50) == (False, K1)
    assert sync_caught_up(K1, K2, sync_flush=200, wal=200, init_wal=50) == (True, K2)


def test_standby_wal_counts_only_after_streaming_from_configured_upstream():
    assert standby_wal(500, streaming=False, sender_ip=None, upstream=A, wal_from=None) == (None, None)
    assert standby_wal(500, streaming=True, sender_ip=A.ip, upstream=A, wal_from=None) == (500, A.id)


def test_standby_wal_void_after_repointing_until_new_upstream_streams():
    # primary_conninfo now names B, but the receive position still comes from A
    assert standby_wal(500, streaming=False, sender_ip=None, upstream=B, wal_from=A.id) == (None, A.id)
    assert standby_wal(600, streaming=True, sender_ip=B.ip, upstream=B, wal_from=A.id) == (600, B.id)


def test_running_as_a_primary_ends_the_claim_and_unknown_keeps_it():
    assert standby_wal(900, streaming=False, sender_ip=None, upstream=A, wal_from=A.id, in_recovery=False) == (None, None)
    # not running, or no answer: nothing claimed now, the upstream remembered (a restart keeps it)
    assert standby_wal(None, streaming=False, sender_ip=None, upstream=A, wal_from=A.id, in_recovery=None) == (None, A.id)
    assert standby_wal(700, streaming=False, sender_ip=None, upstream=A, wal_from=A.id) == (700, A.id)


def test_detaching_keeps_the_last_upstream_position():
    assert standby_wal(500, streaming=False, sender_ip=None, upstream=None, wal_from=A.id) == (500, A.id)
    assert standby_wal(500, streaming=False, sender_ip=None, upstream=None, wal_from=None) == (None, None)


# -- issue 8: hung and failing PostgreSQL ----------------------------------------------------
from manatee.shard.latches import failing_since, unanswered_since  # noqa: E402


def test_only_timeouts_of_a_running_pg_count_as_unanswered():
    assert unanswered_since(None, running=True, answered=False, timed_out=True, now=5) == 5
    assert unanswered_since(3, running=True, answered=False, timed_out=True, now=5) == 3
    assert unanswered_since(3, running=True, answered=False, timed_out=False, now=5) is None  # refused
    assert unanswered_since(3, running=True, answered=True, timed_out=False, now=5) is None
    assert unanswered_since(3, running=False, answered=False, timed_out=False, now=5) is None


def test_failing_since_survives_a_crash_loop_but_forgets_one_crash():
    bad = good = None
    t = 0.0
    for _ in range(20):  # killed every second, healthy for half a second in between
        bad, good = failing_since(bad, good, healthy=False, now=t, stable_s=2)
        bad, good = failing_since(bad, good, healthy=True, now=t + 0.5, stable_s=2)
        t += 1
    assert bad == 0.0
    bad, good = failing_since(bad, good, healthy=True, now=t + 1.0, stable_s=2)
    assert bad == 0.0
    bad, good = failing_since(bad, good, healthy=True, now=t + 1.6, stable_s=2)
    assert bad is None and good is not None


# -- issue 8: a sync that does not flush, a primary that cannot commit, a start that keeps failing --
from manatee.shard.latches import (  # noqa: E402
    START_FAILURES_BEFORE_BACKOFF, StartTries, start_attempted, start_held_s, start_outcome, stalled_for,
    sync_flush_stall, write_probe,
)


def _stall(seq, key=K1, bound=5.0):
    """Feed (now, wal, flush[, known]) observations; return stalled_for after each."""
    latch, out = None, []
    for now, wal, flush, *known in seq:
        latch = sync_flush_stall(latch, key, known=known[0] if known else True, wal=wal, sync_flush=flush, now=now)
        out.append(stalled_for(latch, now, bound))
    return out


def test_a_flush_stuck_behind_my_wal_stalls_after_the_bound():
    assert _stall([(0, 200, 100), (3, 210, 100), (5, 220, 100), (9, 230, 100)]) == [None, None, 5, 9]


def test_a_sync_that_does_not_stream_at_all_stalls_too():
    assert _stall([(0, 200, None), (6, 200, None)]) == [None, 6]


def test_a_slow_sync_that_keeps_advancing_never_stalls():
    seq = [(t, 100 + 10 * t, 100 + 5 * t) for t in range(60)]  # half the primary's rate: it falls behind
    assert _stall(seq) == [None] * 60


def test_a_reconnect_at_an_old_position_is_no_advance():
    assert _stall([(0, 200, 100), (2, 200, None), (4, 200, 100), (6, 200, None)]) == [None, None, None, 6]


def test_caught_up_unknown_or_a_new_sync_starts_the_clock_again():
    # the sync has everything (an idle shard): no clock
    assert _stall([(0, 200, 200), (9, 200, 200)]) == [None, None]
    # my PostgreSQL did not answer: unknown is not "not advancing"
    assert _stall([(0, 200, 100), (4, 200, 100, False), (8, 200, 100), (12, 200, 100)]) == [None, None, None, None]
    assert _stall([(0, None, 100), (9, 200, 100), (14, 200, 100)]) == [None, None, 5]
    latch = sync_flush_stall(None, K1, known=True, wal=200, sync_flush=100, now=0)
    assert sync_flush_stall(latch, K2, known=True, wal=200, sync_flush=100, now=9) == (K2, 100, 9)


def test_write_probe_counts_consecutive_failures_only():
    n = 0
    for ok, want in ((False, 1), (False, 2), (True, 0), (False, 1), (None, 0)):
        n = write_probe(n, ok=ok)
        assert n == want


def _start(t, now, **kw):
    return start_outcome(start_attempted(t), now=now, base_s=2, max_s=10, **kw)


def test_start_failures_back_off_exponentially_and_bounded_after_the_cap():
    t, held = StartTries(), []
    for i in range(8):
        t = _start(t, float(i * 100), running=False, answered=False, killed=False)
        held.append(start_held_s(t, float(i * 100)))
    n = START_FAILURES_BEFORE_BACKOFF
    assert held[:n - 1] == [None] * (n - 1)
    assert held[n - 1:] == [2, 4, 8, 10, 10, 10][:8 - n + 1]
    assert t.failures == 8 and start_held_s(t, 700 + 10) is None  # waited long enough: may try again


def test_a_start_hung_and_killed_counts_a_start_still_recovering_does_not():
    t = _start(StartTries(), 0, running=True, answered=False, killed=False)
    assert t.pending and t.failures == 0  # no verdict yet
    t = start_outcome(t, running=True, answered=False, killed=True, now=2, base_s=2, max_s=10)
    assert not t.pending and t.failures == 1


def test_a_start_that_answers_ends_the_back_off():
    t = StartTries(failures=5, retry_at=50.0)
    assert start_held_s(t, 10) == 40
    t = _start(t, 60, running=True, answered=True, killed=False)
    assert t == StartTries()
    # an observation with no start pending changes nothing (a standby killed as hung after running fine)
    assert start_outcome(StartTries(failures=1), running=False, answered=False, killed=True, now=1,
                         base_s=2, max_s=10) == StartTries(failures=1)


def test_a_disk_full_crash_counts_once_per_new_line():
    assert not latches.new_disk_full_crash(None, None)
    assert latches.new_disk_full_crash(None, "PANIC a")
    assert not latches.new_disk_full_crash("PANIC a", "PANIC a")
    assert not latches.new_disk_full_crash("PANIC a", None)  # PG restarted by the sitter: the log starts over
    assert latches.new_disk_full_crash("PANIC a", "PANIC b")
    assert not latches.disk_full_recent(None, 9.0, 8.0)
    assert latches.disk_full_recent(5.0, 12.9, 8.0) and not latches.disk_full_recent(5.0, 13.0, 8.0)
    assert latches.disk_full(0) and latches.disk_full((16 << 20) - 1)
    assert not latches.disk_full(16 << 20) and not latches.disk_full(None)  # unknown is not full


@pytest.mark.parametrize("full, hard, hard_for, expected", [
    (False, False, 0.0, (False, False)),   # healthy
    (False, True, 1.0, (False, False)),    # down for less than healthChkTimeout
    (False, True, 2.0, (True, True)),      # down, hung, unconfigurable: withhold and say why
    (True, True, 0.0, (True, True)),       # a full disk: at once
    # only "does not stream", however long: no withholding, or a hung primary finds no sync
    # to step down to (CI 2026-12-05: F18-primary-sticky never stepped down) (S9)
    (False, False, 9.0, (False, False)),
    (False, True, 9.0, (True, True)),      # a crash loop (its hard-fault clock runs on): its own fault
])
def test_a_sick_standby_gives_way_and_says_why_only_for_its_own_fault(full, hard, hard_for, expected):
    assert latches.standby_gives_way(full=full, hard=hard, hard_for=hard_for, health_timeout=2.0) == expected


@pytest.mark.parametrize("withheld, relapsed, hard_ago, expected", [
    (True, True, 3.0, (True, False)),     # a crash loop's moment of health: still silent, no new word
    (True, True, 8.0, (False, False)),    # no fault of its own for primaryStartTimeout: heartbeats (S9)
    (True, False, 1.0, (False, False)),   # a first cure (a full disk lifted): heartbeats at once
    (False, True, 1.0, (False, False)),   # never silent: the hold does not start a silence
    (True, True, None, (False, False)),   # no hard fault known: no hold
])
def test_a_crash_loop_keeps_a_standby_silent_between_its_crashes_for_a_bounded_time(
        withheld, relapsed, hard_ago, expected):
    assert latches.standby_gives_way(full=False, hard=False, hard_for=0.0, health_timeout=2.0,
                                     withheld=withheld, relapsed=relapsed, hard_ago=hard_ago,
                                     hold_s=8.0) == expected
