"""What the sitter's shell tells decide() about its ZooKeeper session (Sitter.observe), run on
the production Sitter built through its constructor with fakes (tests/sim).

Found by F6 (SIGSTOP the primary past its session timeout, then SIGCONT): right after
SIGCONT the old primary's session is LOST and a new one CONNECTED while observe() awaits
PostgreSQL; the view it read (election, state) is still the expired session's, in which
it is the primary. Reported as CONNECTED, decide() made it primary again: PostgreSQL was
restarted as a (read-only) primary and an AssumeLeader with the old generation recorded.
"""

from __future__ import annotations

import asyncio

from manatee.core.lsn import Lsn
from manatee.shard.decide import decide
from manatee.sitter.pgmanager import PgStatus
from manatee.shard.state import CONNECTED, FENCED, LOST, PRIMARY, SUSPENDED, ClusterState, Peer
from tests.factories import peer
from tests.sim.clock import FakeClock
from tests.sim.standalone import ScriptedPg, standalone_sitter


def _peer(n: int) -> Peer:
    return peer(f"10.0.0.{n}", f"zone-{n}")


A, B, C = _peer(1), _peer(2), _peer(3)
STATE = ClusterState(generation=1, primary=A, sync=B, async_=(C,), init_wal=0x5000)


def obs_for_primary():
    from manatee.shard.decision import Observation
    return Observation(me=A, election=(A, B, C), state=STATE, state_version=3, running=True, in_recovery=False,
                       wal=0x9000, read_only=False, has_data=True, sync_caught_up=True)


def _sitter(zk_before: str, zk_after: str, *, view_stale: bool, me: Peer = A, statuses=None):
    """The production Sitter (built through its constructor with fakes), A primary in STATE,
    whose ZooKeeper session goes from zk_before to zk_after while PostgreSQL is asked."""
    clock = FakeClock(100.0)
    s = None

    def status(_sync_app):
        s.session._fire(zk_after)  # the kazoo thread's news arrives during the await
        return PgStatus(True, True, False, Lsn(0x9000), False, False, None, 1, False)

    s = standalone_sitter(me, pg=ScriptedPg(statuses or status), state=STATE, election=(A, B, C), clock=clock,
                          session_timeout=4.0, primary_start_timeout=None)
    if view_stale:
        s.session._fire(LOST)
    if zk_before != s.session.state:
        s.session._fire(zk_before)
    s.clock = clock
    s.last_decided = decide(obs_for_primary())
    return s


def test_a_view_from_an_expired_session_is_reported_lost_until_reread():
    s = _sitter(LOST, CONNECTED, view_stale=True)
    obs = asyncio.run(s.observe())
    assert obs.zk == LOST
    assert decide(obs).target.role == FENCED  # not primary again on the old state


def test_a_new_session_whose_first_read_fails_still_reports_lost():
    """The session was lost and a new one is connected before the cycle starts, but the view
    cannot be read again (ZooKeeper stops answering): the view is the expired session's."""
    s = _sitter(CONNECTED, CONNECTED, view_stale=False)
    s.session._fire(LOST)
    s.session._fire(CONNECTED)
    s.store.zk.up = False  # every read now fails (ConnectionLoss)
    obs = asyncio.run(s.observe())
    assert s.view.view_stale and obs.zk == LOST
    assert decide(obs).target.role == FENCED


def test_reconnect_during_observe_reports_the_worse_state():
    s = _sitter(SUSPENDED, CONNECTED, view_stale=False)  # same session back: still alive
    assert asyncio.run(s.observe()).zk == SUSPENDED
    s = _sitter(CONNECTED, SUSPENDED, view_stale=False)
    assert asyncio.run(s.observe()).zk == SUSPENDED


def test_a_fresh_view_while_connected_is_connected():
    s = _sitter(CONNECTED, CONNECTED, view_stale=False)
    obs = asyncio.run(s.observe())
    assert obs.zk == CONNECTED and decide(obs).target.role == PRIMARY


def test_session_loss_marks_the_view_stale():
    s = _sitter(CONNECTED, CONNECTED, view_stale=False)
    assert not s.view.view_stale and not s.view.need_join
    s.view.on_state("LOST")
    assert s.view.view_stale and s.view.need_join


# -- issue 8: what observe() makes of a PostgreSQL that does not answer ------------------------
UNANSWERED = PgStatus(True, False, None, None, False, False, None, None, error="query timed out", timed_out=True)
REFUSED = PgStatus(True, False, None, None, False, False, None, None, error="FATAL:  sorry, too many clients already",
                   crowded=True)
STARTING = PgStatus(True, False, None, None, False, False, None, None,
                    error="FATAL:  the database system is in recovery mode")


def _sitter_with_pg(statuses, place=A):
    seq = iter(statuses)
    s = _sitter(CONNECTED, CONNECTED, view_stale=False, me=place, statuses=lambda _app: next(seq))
    return s, _kills(s)


def _kills(s):
    """Truthy once the sitter has killed its PostgreSQL."""
    class Kills:
        def __bool__(self):
            return any(c == ("kill",) for c in s.pg.calls)
    return Kills()


def test_an_unanswered_status_query_is_unknown_not_a_primary():
    s, killed = _sitter_with_pg([REFUSED], place=C)
    s.role = "standby"
    obs = asyncio.run(s.observe())
    assert obs.running and not obs.pg_known and obs.in_recovery is None and obs.wal is None
    d = decide(obs)
    assert d.target.role == "standby" and d.rule == "async.pg_unknown" and not killed


def test_a_pg_that_does_not_answer_for_health_chk_timeout_is_killed_but_a_refusing_one_is_not():
    down = PgStatus(False, False, None, None, False, False, None, None)
    s, killed = _sitter_with_pg([UNANSWERED, UNANSWERED, down], place=C)
    s.role = "standby"
    asyncio.run(s.observe())
    assert not killed
    s.clock.now += 2.5  # healthChkTimeout (2 s) has passed since the first timeout
    obs = asyncio.run(s.observe())
    assert killed and not obs.running and s.health.hung_kills == 1
    s, killed = _sitter_with_pg([REFUSED] * 3, place=C)
    for _ in range(3):
        asyncio.run(s.observe())
    assert not killed and s.health.unanswered_since is None


def test_a_crowded_pg_is_busy_not_sick_and_never_makes_the_primary_step_down():
    s, _ = _sitter_with_pg([REFUSED] * 3)
    asyncio.run(s.observe())
    assert s.health.sick_since is None
    s.health.sick_since = 0.0  # even with an old failure on record
    assert asyncio.run(s.observe()).cannot_serve is None


def test_a_primary_unhealthy_past_primary_start_timeout_reports_cannot_serve():
    s, _ = _sitter_with_pg([STARTING] * 3)
    obs = asyncio.run(s.observe())
    assert obs.cannot_serve is None and s.health.sick_since is not None
    s.clock.now += 8.5  # primaryStartTimeout: 2 x the 4 s session timeout
    obs = asyncio.run(s.observe())
    assert obs.cannot_serve and "did not answer" in obs.cannot_serve
    s.cfg.primaryStartTimeout = 20000
    assert asyncio.run(s.observe()).cannot_serve is None



def test_a_standby_that_is_down_for_health_chk_timeout_withholds_its_heartbeats():
    down = PgStatus(False, False, None, None, False, False, None, None)
    s, _ = _sitter_with_pg([down] * 3, place=C)
    s.role, s.target = "standby", decide(obs_for_primary()).target  # any target
    asyncio.run(s.observe())
    assert not s.health.hb_withheld
    s.clock.now += 2.5  # healthChkTimeout is 2 s
    asyncio.run(s.observe())
    assert s.health.hb_withheld and s.health.cannot_serve is None


def test_a_standby_that_does_not_stream_keeps_heartbeating():
    """Not streaming may be the upstream's fault (a hung primary steps down only to a sync
    that heartbeats it): the sickness is noted, the heartbeats go on."""
    from manatee.shard.state import STANDBY, Target
    idle = PgStatus(True, True, True, None, False, False, None, 1, True)
    s, _ = _sitter_with_pg([idle] * 3, place=B)
    s.role, s.target = STANDBY, Target(STANDBY, upstream=A)
    asyncio.run(s.observe())
    s.clock.now += 2.5
    asyncio.run(s.observe())
    assert not s.health.hb_withheld  # an upstream restarting takes longer than healthChkTimeout
    s.clock.now += 6.0  # past primaryStartTimeout (8 s)
    asyncio.run(s.observe())
    assert not s.health.hb_withheld and "does not stream" in s.health.sick_why
