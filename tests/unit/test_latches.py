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
