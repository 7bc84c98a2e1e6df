"""A cycle that keeps failing (e.g. F19: a full disk) backs off, bounded, and logs an error
once per distinct error instead of every half second (issue 8). The production Sitter, built
through its constructor with fakes (tests/sim)."""

from __future__ import annotations

from types import SimpleNamespace

from manatee.shard.state import PRIMARY, STANDBY, Target
from manatee.sitter.health import PgHealth
from manatee.sitter.heartbeat import HeartbeatSender
from tests.sim.clock import FakeClock, SimLog
from tests.sim.standalone import standalone_sitter
from tests.observations import A


def _sitter(interval=0.5, session_timeout=8.0):
    return standalone_sitter(A, interval=interval, session_timeout=session_timeout)


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


def test_a_failing_cycle_is_logged_and_backed_off_by_the_loop():
    s = _sitter()

    async def boom(_sync_app=None):
        raise RuntimeError("disk full")

    s.pg.status = boom
    import asyncio

    asyncio.run(s.cycle_once())
    asyncio.run(s.cycle_once())
    assert s.failures == 2 and s.next_delay == 1.0
    assert [r[3] for r in s.records if r[2] == "exception"] == ["cycle_failed"]  # once per distinct error


def test_a_sick_primarys_start_waits_only_for_what_is_left_of_its_step_down_budget():
    """F18 sticky hang: PostgreSQL hangs again at every start. The start's wait for it to
    accept connections must end within primaryStartTimeout, else the step-down rule (which
    runs between cycles) waits for opsTimeout instead."""
    clock = FakeClock(1000.0)
    pg = SimpleNamespace(ops_timeout=60.0, health_timeout=1.0)
    h = PgHealth(pg, SimLog(clock, "me", []), clock, primary_start_timeout_s=8.0, interval_s=1.0)
    primary, standby = Target(PRIMARY, read_only=True), Target(STANDBY)
    assert h.start_budget(primary) is None  # healthy so far: opsTimeout
    h.sick_since = clock.now - 5.0
    assert h.start_budget(primary) == 3.0  # 8 s budget, 5 s spent
    h.sick_since = clock.now - 30.0
    assert h.start_budget(primary) == 2.0  # spent: still a couple of health checks
    assert h.start_budget(standby) is None  # standbys do not step down


def test_a_sick_standby_stops_its_heartbeats_in_the_cycle_that_decides_it():
    """F19-sync (issue 8): a sync whose PostgreSQL cannot start fails every cycle in
    start_pg, so withholding must clear the sender's upstream where it is decided — before,
    the heartbeats flowed on for 40-70 s and the primary waited on a sync that could not ack."""
    from manatee.sitter.pgmanager import PgStatus
    clock = FakeClock(1000.0)
    pg = SimpleNamespace(ops_timeout=60.0, health_timeout=2.0, config_error=None)
    h = PgHealth(pg, SimLog(clock, "me", []), clock, primary_start_timeout_s=8.0, interval_s=1.0)
    down = PgStatus(running=False, healthy=False, in_recovery=None, wal=None, streaming=False, diverged=False,
                    sync_flush=None, timeline=None)
    sender = HeartbeatSender(me_id="me", pg_url="u", interval_s=1.0, timeout_s=1.0, status=dict, log=None)
    sender.upstream_url = "http://10.0.0.1:5433"
    sync = Target(STANDBY, upstream=A)
    h.track(down, as_primary=False, role=STANDBY, target=sync, sender=sender)
    assert not h.hb_withheld and sender.upstream_url  # sick for less than healthChkTimeout: still beating
    clock.now += 2.5
    h.track(down, as_primary=False, role=STANDBY, target=sync, sender=sender)
    assert h.hb_withheld and sender.upstream_url is None
    # and its last word tells that upstream why, once, so that it counts me gone at once
    url, why = sender.take_leaving()
    assert url == "http://10.0.0.1:5433" and "cannot serve: it is not running" in why
    assert sender.take_leaving() is None
    h.track(down, as_primary=False, role=STANDBY, target=sync, sender=sender)
    assert sender.take_leaving() is None  # said once, not every cycle


def test_an_error_without_a_message_is_named_by_its_type_and_logged_at_once():
    """Sandbox trial 2026-12-06: kazoo's NoAuthError carries no message, so the sync's failed
    state writes were logged as `error=` and only at the 10th failure (an empty error was
    never "new"). /state's cycles section says the same."""
    import asyncio

    from kazoo.exceptions import NoAuthError

    s = _sitter()

    async def refused(_sync_app=None):
        raise NoAuthError()

    s.pg.status = refused
    asyncio.run(s.cycle_once())
    loud = [r for r in s.records if r[2] == "exception" and r[3] == "cycle_failed"]
    assert len(loud) == 1 and loud[0][4]["error"] == "NoAuthError", loud
    assert (s.failures, s.failure_msg) == (1, "NoAuthError")
