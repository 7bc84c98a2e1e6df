"""manatee.sitter.syncfollow: a sync whose replay queries hold cannot reach its upstream, so its
sitter ends them; nobody else's reads are touched, and a failed look never fails a cycle."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from manatee.core.pg import PgError
from manatee.sitter.replaypause import RESUME_SQL
from manatee.sitter.syncfollow import WAIT_SQL, SyncFollower, SyncReplay, must_look
from tests.pgmanager_fakes import RecordingLog

A, B = "127.0.0.11", "127.0.0.13"


@pytest.mark.parametrize("place, upstream, sender, look", [
    ("sync", A, None, True),      # my upstream is gone, or my walreceiver has not started again
    ("sync", A, B, True),         # still streaming from the upstream before (the one I replace)
    ("sync", A, A, False),        # streaming from my upstream: nothing holds me
    ("sync", None, None, False),  # detached before a takeover: the promotion's business
    ("async", A, B, False),       # an async's reads are the operator's
    ("async", A, None, False),
    ("primary", None, None, False),
    (None, A, None, False),       # not in the shard's state
])
def test_only_a_sync_that_does_not_stream_from_its_upstream_looks(place, upstream, sender, look):
    assert must_look(place, upstream, sender) is look


class _Client:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.asked: list[str] = []

    async def query(self, sql, params=None, timeout=None):
        self.asked.append(sql)
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a


ENDED = [{"pid": 7, "app": "report", "ended": True}]


async def test_a_sync_held_by_a_query_ends_its_session_and_says_so():
    log = RecordingLog()
    client = _Client([{"w": "Lock/relation"}], ENDED)
    assert await SyncFollower(log).check(client, "sync", A, None, 1) == [7]
    assert client.asked[0] == WAIT_SQL and "pg_terminate_backend" in client.asked[1]
    said = [kw for _lvl, ev, kw in log.lines if ev == "sync_replay_unblocked"]
    assert said and said[0]["pids"] == [7] and "writes do not wait for reads" in said[0]["note"]


@pytest.mark.parametrize("wait", ["Activity/RecoveryWalStream", "IPC/RecoveryPause", None])
async def test_a_sync_not_held_by_queries_ends_nothing(wait):
    client = _Client([{"w": wait}])
    assert await SyncFollower(RecordingLog()).check(client, "sync", A, B, 1) == []
    assert client.asked == [WAIT_SQL]


async def test_nothing_is_asked_unless_it_must_look():
    client = _Client()
    assert await SyncFollower(RecordingLog()).check(client, "async", A, None, 1) == []
    assert await SyncFollower(RecordingLog()).check(client, "sync", A, A, 1) == []
    assert client.asked == []


async def test_a_failed_look_is_logged_once_per_error_and_never_raised():
    log = RecordingLog()
    f = SyncFollower(log)
    client = _Client(PgError("timed out"), PgError("timed out"), [{"w": "Lock/relation"}], ENDED)
    for _ in range(3):
        await f.check(client, "sync", A, None, 1)
    assert [ev for _lvl, ev, _kw in log.lines] == ["sync_replay_look_failed", "sync_replay_unblocked"]


async def test_an_episode_over_forgets_the_sessions_ended():
    f = SyncFollower(RecordingLog())
    client = _Client([{"w": "Lock/relation"}], ENDED, [{"w": "Lock/relation"}], ENDED)
    assert await f.check(client, "sync", A, None, 1) == [7]
    assert await f.check(client, "sync", A, A, 1) == []  # streaming again: over
    assert await f.check(client, "sync", A, None, 1) == [7]  # a new episode (pid reused) is named again


async def test_sync_replay_resumes_a_paused_sync_and_follows_its_upstream():
    log = RecordingLog()
    clock = SimpleNamespace(monotonic=lambda: 5.0)
    r = SyncReplay(log, clock)
    client = _Client([], [{"w": "Lock/relation"}], ENDED)
    pgs = SimpleNamespace(replay_paused=True, sender=(B, 5432), below_primary=False)
    await r.check(client, pgs, "sync", False, SimpleNamespace(ip=A), 1)
    assert client.asked[:2] == [RESUME_SQL, WAIT_SQL] and r.paused_since is None
    assert {ev for _lvl, ev, _kw in log.lines} == {"pg_replay_resumed", "sync_replay_unblocked"}


async def test_a_sync_paused_by_postgresql_for_a_setting_below_the_primarys_is_not_resumed():
    """PostgreSQL 15 shuts a standby down when its replay is resumed after it paused for
    'insufficient parameter settings': its sitter restarts it with the primary's value instead
    (primaryfloors.py)."""
    log = RecordingLog()
    r = SyncReplay(log, SimpleNamespace(monotonic=lambda: 5.0))
    client = _Client([])
    pgs = SimpleNamespace(replay_paused=True, sender=(A, 5432), below_primary=True)
    await r.check(client, pgs, "sync", False, SimpleNamespace(ip=A), 1)
    assert RESUME_SQL not in client.asked and not log.lines
