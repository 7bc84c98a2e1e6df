"""A standby's WAL replay paused by hand (manatee/sitter/replaypause.py): the sync's is resumed
unless the shard is frozen, any other is reported once per episode, and an unknown status
decides nothing (the real PostgreSQL side: tests/integration/test_replay_pause.py)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from manatee.core.pg import PgError
from manatee.sitter.replaypause import REPORT, RESUME, RESUME_SQL, ReplayGuard, replay_action
from tests.pgmanager_fakes import RecordingLog
from tests.sim.clock import FakeClock


@pytest.mark.parametrize("paused, place, frozen", list(itertools.product(
    (None, False, True), (None, "primary", "sync", "async", "deposed"), (False, True))))
def test_only_a_paused_sync_of_a_shard_not_frozen_is_resumed(paused, place, frozen):
    got = replay_action(paused, place, frozen)
    if not paused:
        assert got is None
    elif place == "sync" and not frozen:
        assert got == RESUME
    else:
        assert got == REPORT


class _Client:
    def __init__(self, fail=None):
        self.sql, self.fail = [], fail

    async def query(self, sql, params=None, *, timeout=None):
        self.sql.append(sql)
        if self.fail:
            raise PgError(self.fail)
        return [{}]


def _guard(fail=None):
    log, clock = RecordingLog(), FakeClock(100.0)
    return log, clock, _Client(fail), ReplayGuard(log, clock)


def _run(guard, client, paused, place, frozen=False):
    asyncio.run(guard.check(client, paused, place, frozen, 1.0))


def test_the_sync_is_resumed_and_said_loudly():
    log, clock, c, g = _guard()
    _run(g, c, True, "sync")
    assert c.sql == [RESUME_SQL]
    assert [(lvl, ev) for lvl, ev, _ in log.lines] == [("error", "pg_replay_resumed")]
    assert "while I am the sync" in log.lines[0][2]["reason"]
    assert g.paused_since is None


def test_an_async_is_reported_once_per_episode_and_left_paused():
    log, clock, c, g = _guard()
    _run(g, c, True, "async")
    clock.now += 5
    _run(g, c, True, "async")
    assert c.sql == [] and [ev for _, ev, _ in log.lines] == ["pg_replay_paused"]
    assert clock.now - g.paused_since == 5.0
    _run(g, c, None, "async")  # unknown: the episode stands
    assert clock.now - g.paused_since == 5.0
    _run(g, c, False, "async")  # resumed by the operator: a new pause is a new episode
    assert g.paused_since is None
    _run(g, c, True, "async")
    assert [ev for _, ev, _ in log.lines] == ["pg_replay_paused"] * 2


def test_a_frozen_shard_keeps_its_syncs_replay_paused():
    log, _, c, g = _guard()
    _run(g, c, True, "sync", frozen=True)
    assert c.sql == [] and [ev for _, ev, _ in log.lines] == ["pg_replay_paused"]
    assert log.lines[0][2]["frozen"] is True


def test_the_async_that_becomes_the_sync_is_resumed_then():
    log, clock, c, g = _guard()
    _run(g, c, True, "async")
    clock.now += 30
    _run(g, c, True, "sync")
    assert c.sql == [RESUME_SQL]
    assert [ev for _, ev, _ in log.lines] == ["pg_replay_paused", "pg_replay_resumed"]
    assert log.lines[1][2]["paused_s"] == 30.0


def test_a_resume_that_fails_is_logged_once_per_error_and_tried_again():
    log, _, c, g = _guard(fail="connection lost")
    for _ in range(3):
        _run(g, c, True, "sync")
    assert c.sql == [RESUME_SQL] * 3
    assert [ev for _, ev, _ in log.lines] == ["pg_replay_resume_failed"]
    assert g.paused_since is not None  # still paused: /state and show say so
