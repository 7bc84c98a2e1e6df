"""manatee-adm rebuild asks a node's sitter for a rebuild only when the member it would restore
from can serve: asked while none can, the request would hold a sound node waiting (the random
simulation found a forced rebuild of the sync of a primary whose data was gone, the one node
that could take over, waiting for ever). The rule is the sitter's own (`cannot_restore_from`,
also used by its restore's check of the upstream)."""

from __future__ import annotations

import pytest

from manatee.cli import adm
from manatee.cli.common import CliError
from manatee.shard.rebuildpath import cannot_restore_from
from manatee.shard.state import ClusterState
from tests.factories import peer

P, S, A1, A2 = (peer(f"127.0.0.{i}", f"zone-{i}") for i in (21, 22, 23, 24))
STATE = ClusterState(generation=4, primary=P, sync=S, async_=(A1, A2), deposed=(peer("127.0.0.25", "z5"),))
SERVING = {"pg": {"running": True, "healthy": True}, "reason": "I am the primary and take writes"}
NO_DATA = {"pg": {"running": False, "healthy": False},
           "reason": "my data directory is empty although 127.0.0.22 holds data of this shard"}


@pytest.mark.parametrize("body, can", [
    (SERVING, True),
    (NO_DATA, False),
    ({"pg": {"running": True, "healthy": False}}, False),
    ({"pg": {"running": True}}, False),  # does not say: unknown is not a fact
    ({"pg": None}, False),
    ({}, False),
    ([], False),
    ("502 Bad Gateway", False),
])
def test_a_member_can_be_restored_from_only_while_its_postgresql_runs_and_answers(body, can):
    assert (cannot_restore_from(body) is None) is can


def _answers(monkeypatch, by_ip: dict):
    asked = []

    def fake_http_json(url, *a, **k):
        ip = url.split("//")[1].split(":")[0]
        asked.append(ip)
        body = by_ip.get(ip)
        return (200, body) if body is not None else (0, "connection refused")

    monkeypatch.setattr(adm, "http_json", fake_http_json)
    return asked


def test_the_sync_of_a_primary_that_cannot_serve_is_not_asked_to_rebuild(monkeypatch):
    asked = _answers(monkeypatch, {P.ip: NO_DATA})
    why = adm.upstream_cannot_serve(STATE, S)
    assert why.startswith(f"{S.ip} would restore from {P.ip} (primary), but it has no running, healthy PostgreSQL")
    assert "my data directory is empty" in why  # what the upstream's sitter says
    assert "the one node that can take over" in why and why.endswith("Nothing requested")
    assert asked == [P.ip]


def test_an_async_restores_from_the_nearest_member_ahead_whose_sitter_answers(monkeypatch):
    asked = _answers(monkeypatch, {P.ip: SERVING})  # the sync's sitter is down: its async looks further
    assert adm.upstream_cannot_serve(STATE, A1) is None
    assert asked == [S.ip, P.ip]
    asked = _answers(monkeypatch, {S.ip: {"pg": {"running": False}, "reason": "restoring"}, P.ip: SERVING})
    why = adm.upstream_cannot_serve(STATE, A2)
    assert why.startswith(f"{A2.ip} would restore from {S.ip} (sync)") and "the one node" not in why
    assert asked == [A1.ip, S.ip]  # A1 does not answer; S answers and cannot serve: no further


def test_nobody_ahead_answering_is_a_refusal_not_a_guess(monkeypatch):
    _answers(monkeypatch, {})
    why = adm.upstream_cannot_serve(STATE, A1)
    assert why == (f"no member ahead of {A1.ip} answers ({S.ip}, {P.ip}): cannot tell whether its rebuild "
                   "could start. Nothing requested")


def test_the_primary_and_a_deposed_node_are_left_to_their_sitters(monkeypatch):
    asked = _answers(monkeypatch, {})
    assert adm.upstream_cannot_serve(STATE, P) is None  # its sitter refuses: switch over first
    assert adm.upstream_cannot_serve(STATE, STATE.deposed[0]) is None  # rebuilt once back in the chain
    assert asked == []


def _cmd_rebuild(monkeypatch, answers) -> list[str]:
    """manatee-adm rebuild of the async A1, its sitter's /state answering `answers` in turn
    (a fake clock: its waits take no time). The URLs of the polls of /state."""
    import argparse
    import time as time_mod

    from manatee.cli import adm_restart

    class Store:
        def __init__(self, *_a):
            pass

        def state(self, _why):
            return STATE, 7

    answers = iter(answers)
    polls = []

    def http_json(url, body=None, timeout=None, headers=None):
        if url.endswith("/rebuild"):
            return 202, {"rebuild": "requested"}
        if url.endswith("/replica"):
            return 200, {}  # as the sitter's stale observation said
        if url.startswith(P.status_url):
            return 200, SERVING  # the upstream of the async A1 (its sync S answers nothing)
        if url.startswith(S.status_url):
            return 0, "connection refused"
        assert url == f"{A1.status_url}/state", url
        polls.append(url)
        return 200, next(answers)

    clock = [1000.0]
    monkeypatch.setattr(adm, "SyncShardStore", Store)
    monkeypatch.setattr(adm, "http_json", http_json)
    monkeypatch.setattr(adm_restart, "http_json", http_json)
    monkeypatch.setattr(time_mod, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time_mod, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    args = argparse.Namespace(shard="1", node=A1.ip, force=False, secret_file=None, timeout=5, wait=60)
    assert adm.cmd_rebuild(args, zk=None) == 0
    return polls


def test_the_rebuild_is_done_only_on_an_observation_made_after_the_restore_ended(monkeypatch):
    """Sandbox, 2026-12-07: a forced rebuild of the sync while its primary's PostgreSQL hung
    said "done in 0.5s: it streams from its upstream": /replica still answered from the
    sitter's observation made before the restore (the old copy streaming)."""
    polls = _cmd_rebuild(monkeypatch, [
        {"restore": {"phase": "requested"}, "localRole": "standby"},
        # done, but the last look at PostgreSQL is 30 s old: before the restore ended
        {"restore": {"phase": "done"}, "localRole": "standby", "pgObservedAgo": 30.0, "pg": {"streaming": True}},
        {"restore": {"phase": "done"}, "localRole": "standby", "pgObservedAgo": 30.0, "pg": {"streaming": True}},
        {"restore": {"phase": "done"}, "localRole": "standby", "pgObservedAgo": 0.0, "pg": {"streaming": False}},
        {"restore": {"phase": "done"}, "localRole": "standby", "pgObservedAgo": 0.0, "pg": {"streaming": False}},
        {"restore": {"phase": "done"}, "localRole": "standby", "pgObservedAgo": 0.0, "pg": {"streaming": True}},
        {"restore": {"phase": "done"}, "localRole": "standby", "pgObservedAgo": 0.0, "pg": {"streaming": True}},
    ])
    # two looks at the stale observation and one at a fresh one that does not stream yet did not end it
    assert len(polls) == 7


def test_a_withdrawn_rebuild_ends_the_command_with_its_reason(monkeypatch):
    """An async that accepted the request unforced and was named the sync before its restore
    began keeps its data (rebuildpath.withdrawn_request): the command says so at once, not
    after --wait."""
    why = "I was named the sync before the rebuild I was asked for began, and it was not forced: ..."
    with pytest.raises(CliError, match="the rebuild of 127.0.0.23 was withdrawn: I was named the sync") as e:
        _cmd_rebuild(monkeypatch, [
            {"restore": {"phase": "requested"}, "localRole": "rebuild"},
            {"restore": {"phase": "withdrawn", "reason": why}, "localRole": "standby"},
        ])
    assert "not forced" in str(e.value)
