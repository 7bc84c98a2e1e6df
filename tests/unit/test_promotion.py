"""manatee.sitter.promotion's pure parts: which startup waits are conflicts with queries, and
that the sessions ended are named once and a failed query never fails the promotion."""

from __future__ import annotations

import pytest

from manatee.core.pg import PgError
from manatee.sitter.promotion import ReplayUnblocker, holds_replay
from tests.pgmanager_fakes import RecordingLog


@pytest.mark.parametrize("wait, held", [
    ("Lock/relation", True),                      # an AccessExclusiveLock that a standby session holds
    ("Lock/object", True),
    ("IPC/RecoveryConflictSnapshot", True),       # rows a VACUUM removed that a snapshot sees
    ("IPC/RecoveryConflictTablespace", True),
    ("BufferPin/BufferPin", True),
    ("Activity/RecoveryWalStream", False),        # waiting for WAL: nothing to end
    ("IPC/RecoveryPause", False),
    ("IO/WALRead", False),
    ("", False),
    (None, False),                                # unknown is not a conflict
])
def test_which_startup_waits_are_held_by_queries(wait, held):
    assert holds_replay(wait) is held


class _Client:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.asked = 0

    async def query(self, sql, params=None, timeout=None):
        self.asked += 1
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a


async def test_each_ended_session_is_named_once():
    log = RecordingLog()
    u = ReplayUnblocker(log)
    rows = [{"pid": 7, "app": "report", "ended": True}, {"pid": 9, "app": "psql", "ended": True}]
    client = _Client(rows, rows + [{"pid": 11, "app": "psql", "ended": True}], [])
    assert await u.unblock(client, "Lock/relation", 1) == [7, 9]
    assert await u.unblock(client, "Lock/relation", 1) == [11]  # 7 and 9 still exiting: not again
    assert await u.unblock(client, "Lock/relation", 1) == []
    said = [kw for _lvl, ev, kw in log.lines if ev == "promotion_replay_unblocked"]
    assert [s["pids"] for s in said] == [[7, 9], [11]] and said[0]["apps"] == ["psql", "report"]
    assert all(lvl == "warning" for lvl, _ev, _kw in log.lines)


async def test_a_session_that_was_not_ended_is_not_named():
    log = RecordingLog()
    client = _Client([{"pid": 7, "app": "x", "ended": False}])
    assert await ReplayUnblocker(log).unblock(client, "BufferPin/BufferPin", 1) == []
    assert log.lines == []


async def test_a_failed_query_is_logged_not_raised():
    log = RecordingLog()
    client = _Client(PgError("timed out"))
    assert await ReplayUnblocker(log).unblock(client, "Lock/relation", 1) == []
    assert log.lines == [("warning", "promotion_unblock_failed", {"wait": "Lock/relation", "error": "timed out"})]
