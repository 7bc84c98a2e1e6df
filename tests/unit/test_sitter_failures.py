"""A cycle that keeps failing (e.g. F19: a full disk) backs off, bounded, and logs an error
once per distinct error instead of every half second (issue 8)."""

from __future__ import annotations

from manatee.sitter.sitter import Sitter


def _sitter(interval=0.5, session_timeout=8.0) -> Sitter:
    s = Sitter.__new__(Sitter)
    s.interval, s.session_timeout, s.next_delay = interval, session_timeout, interval
    s.failures, s.failure_msg = 0, None
    return s


def test_repeated_failures_back_off_within_a_quarter_of_the_session_timeout():
    s = _sitter()
    delays = []
    for _ in range(8):
        s._cycle_failed("boom")
        delays.append(s.next_delay)
    assert delays[:3] == [0.5, 1.0, 2.0] and max(delays) == 2.0  # 8 s / 4


def test_the_same_error_is_worth_an_error_log_once_then_at_10_and_100():
    s = _sitter()
    loud = [s._cycle_failed("[Errno 122] Disk quota exceeded") for _ in range(100)]
    assert [i + 1 for i, x in enumerate(loud) if x] == [1, 10, 100]
    assert s._cycle_failed("another error")


def test_a_good_cycle_resets_the_count():
    s = _sitter()
    s.log = type("L", (), {"info": lambda *a, **k: None})()
    s._cycle_failed("x")
    s._cycle_failed("x")
    s._cycle_ok()
    assert s.failures == 0 and s._cycle_failed("x")
    assert s.next_delay == 0.5


def test_a_changing_log_tail_is_still_the_same_error():
    s = _sitter()
    msg = "postgres on /d exited with status -9 before accepting connections; log tail:\n{}"
    loud = [s._cycle_failed(msg.format(i)) for i in range(5)]
    assert loud == [True, False, False, False, False]


def test_a_sick_primarys_start_waits_only_for_what_is_left_of_its_step_down_budget():
    """F18 sticky hang: PostgreSQL hangs again at every start. The start's wait for it to
    accept connections must end within primaryStartTimeout, else the step-down rule (which
    runs between cycles) waits for opsTimeout instead."""
    import time
    from types import SimpleNamespace

    from manatee.sitter.sitter import Sitter
    from manatee.shard.state import PRIMARY, STANDBY, Target

    pg = SimpleNamespace(ops_timeout=60.0, health_timeout=1.0)
    me = SimpleNamespace(pg=pg, primary_start_timeout=8.0, sick_since=None)
    primary, standby = Target(PRIMARY, read_only=True), Target(STANDBY)
    assert Sitter._start_budget(me, primary) is None  # healthy so far: opsTimeout
    me.sick_since = time.monotonic() - 5.0
    assert 2.5 <= Sitter._start_budget(me, primary) <= 3.0  # 8 s budget, 5 s spent
    me.sick_since = time.monotonic() - 30.0
    assert Sitter._start_budget(me, primary) == 2.0  # spent: still a couple of health checks
    assert Sitter._start_budget(me, standby) is None  # standbys do not step down
