"""manatee-adm restart without I/O: the rolling order; the sitter's restart request (refused on
the primary unless forced, acted on once, in the current role, by the cycle); POST /restart
needs the shard secret's proof and a well-formed body."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from manatee.cli import adm_restart
from manatee.cli.adm_restart import _below, plan
from manatee.shard.state import PRIMARY, STANDBY, ClusterState
from tests.sim.standalone import ScriptedPg, standalone_sitter
from tests.observations import A, B, C, D
from tests.status_fakes import FakeSitter, S, _post, served


def test_plan_restarts_asyncs_deepest_first_then_sync_then_switches_over_then_old_primary():
    st = ClusterState(generation=3, primary=A, sync=B, async_=(C, D))
    assert plan(st) == [("restart", D), ("restart", C), ("restart", B), ("switchover", A), ("restart", A)]
    # a restart waits for the node and everyone below it (they lost their upstream) to stream
    assert _below(st, B) == [B, C, D] and _below(st, D) == [D]


def _sitter(me):
    """The production Sitter with fakes, in a shard whose state names A, B and C."""
    return standalone_sitter(me, pg=ScriptedPg(), state=ClusterState(generation=3, primary=A, sync=B, async_=(C,)))


@pytest.mark.parametrize("me, force, code", [(A, False, 409), (A, True, 202), (B, False, 202), (C, False, 202),
                                             (D, False, 409)])
def test_restart_request_refused_on_the_primary_unless_forced_and_for_strangers(me, force, code):
    s = _sitter(me)
    got, body = s.request_restart(force)
    assert got == code, body
    assert (s.restart_request is not None) == (code == 202) and s.wake.is_set() == (code == 202)
    if me == A and not force:
        assert "switch over first" in body["message"]


async def test_the_cycle_restarts_once_in_its_role_and_counts_it():
    s = _sitter(B)
    s.request_restart()
    await s._restart_pg(SimpleNamespace(role=STANDBY))
    assert s.pg.calls == [("stop:fast",), ("start",)] and s.pg_restarts == 1 and s.restart_request is None


async def test_a_restart_whose_start_fails_counts_as_done_and_leaves_the_start_to_the_next_cycle():
    """A standby below its primary's settings fails its start (PostgreSQL 15: 'recovery aborted
    because of insufficient parameter settings'); its sitter raises them in the next cycle. The
    restart was done: manatee-adm restart, which waits for restartsDone to move and then for the
    node to stream, must not report it as never done (sandbox, 2026-12-07: 'did not restart
    PostgreSQL within 60s' while the node streamed again 1 s after)."""
    s = _sitter(B)
    s.request_restart()

    async def failing_start(ready_timeout=None):
        s.pg.calls.append(("start",))
        raise RuntimeError("postgres exited with status 1 before accepting connections")

    s.pg.start = failing_start
    await s._restart_pg(SimpleNamespace(role=STANDBY))
    assert s.pg.calls == [("stop:fast",), ("start",)] and s.pg_restarts == 1 and s.restart_request is None
    assert [r[3] for r in s.records if r[2] == "error"] == ["pg_restart_start_failed"]


async def test_a_node_that_became_primary_since_the_request_is_not_restarted():
    s = _sitter(B)
    s.request_restart()
    await s._restart_pg(SimpleNamespace(role=PRIMARY))
    assert s.pg.calls == [] and s.pg_restarts == 0 and s.restart_request is None


class RestartSitter(FakeSitter):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.restarts: list[bool] = []

    def request_restart(self, force=False):
        self.restarts.append(force)
        return 202, {"restart": "requested", "restartsDone": 0}


@pytest.fixture
async def restart_server():
    sitter = RestartSitter(secret=S)
    async with served(sitter):
        yield sitter


async def test_post_restart_needs_the_secret_and_a_good_body(restart_server):
    sitter = restart_server
    assert (await _post(sitter, "/restart", {}, secret=None))[0] == 401
    assert (await _post(sitter, "/restart", {"force": "yes"}))[0] == 400
    assert (await _post(sitter, "/restart", {"now": True}))[0] == 400
    assert sitter.restarts == []
    assert (await _post(sitter, "/restart", {}))[0] == 202
    assert (await _post(sitter, "/restart", {"force": True}))[0] == 202
    assert sitter.restarts == [False, True]


@pytest.mark.parametrize("answer, streams, serves", [
    ((200, {"pgObservedAgo": 0.1, "pg": {"streaming": True, "healthy": True, "inRecovery": True}}), True, False),
    ((200, {"pgObservedAgo": 0.1, "pg": {"healthy": True, "inRecovery": False}}), False, True),
    # observed before the restart began: it may predate it, so it does not count
    ((200, {"pgObservedAgo": 50.0, "pg": {"streaming": True, "healthy": True, "inRecovery": False}}), False, False),
    ((200, {"pg": {"streaming": True, "healthy": True, "inRecovery": False}}), False, False),  # age unknown
    ((200, {"pgObservedAgo": 0.1, "pg": {"healthy": True, "inRecovery": None}}), False, False),  # unknown
    ((0, None), False, False),  # no answer
])
def test_a_restarted_node_counts_only_on_an_observation_made_after_the_restart(monkeypatch, answer, streams, serves):
    asked = []

    def http_json(url, timeout):
        asked.append(url)
        return (200, {}) if url.endswith("/replica") else answer

    monkeypatch.setattr(adm_restart, "http_json", http_json)
    since = time.monotonic() - 10
    assert adm_restart.streams_since("http://127.0.0.11:5433", since, 5) is streams
    assert adm_restart._serves_since("http://127.0.0.11:5433", since, 5) is serves
    assert ("http://127.0.0.11:5433/replica" in asked) is streams  # /replica only asked once /state says streaming
