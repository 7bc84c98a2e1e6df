"""Bad data in ZooKeeper is quarantined, not fatal (issue 8, F21): a malformed election node
is left out of the election and named; a malformed state znode is never "no state" — the
decision core holds (nobody writes the state, promotes or rebuilds) while a primary keeps
serving."""

from __future__ import annotations

import itertools

import pytest

from manatee.shard.decide import decide
from manatee.shard.decision import Observation
from manatee.shard.shardstore import Quarantine
from manatee.shard.state import (
    CONNECTED, FENCED, LOST, PRIMARY, REBUILD, SAFE_MODE, STANDBY, SUSPENDED, UNASSIGNED, Peer,
    StateError, election_order, parse_election,
)
from tests.observations import A, B, C, D, STATE, obs

ROGUE = "127.0.0.99:5432:10002:5433-0000000001"


def _data(p: Peer) -> dict:
    return {"zoneId": p.zone_id, "ip": p.ip, "pgUrl": p.pg_url, "backupUrl": p.backup_url,
            "statusUrl": p.status_url}


# ---------------------------------------------------------------- election parsing
def test_a_rogue_election_node_is_quarantined_and_the_rest_kept_in_order():
    children = {f"{A.id}-0000000005": _data(A), ROGUE: {"ip": "127.0.0.99"},
                f"{B.id}-0000000007": _data(B), "garbage": _data(C), f"{C.id}-0000000009": [1, 2],
                f"{D.id}-0000000002": None}
    with pytest.raises(StateError, match="zoneId: missing"):  # the strict parser (CLIs) still refuses
        election_order({ROGUE: {"ip": "127.0.0.99"}})
    peers, bad = parse_election(children)
    assert peers == (A, B)
    names = [n for n, _ in bad]
    assert names == sorted([ROGUE, "garbage", f"{C.id}-0000000009", f"{D.id}-0000000002"])
    why = dict(bad)
    assert why[ROGUE] == f"election/{ROGUE}.zoneId: missing"
    assert "expected a JSON object, got list" in why[f"{C.id}-0000000009"]
    assert "expected a JSON object, got nothing" in why[f"{D.id}-0000000002"]
    assert "expected '<ip:pgPort" in why["garbage"]


def test_a_clean_election_parses_as_the_strict_one_does():
    children = {f"{B.id}-0000000003": _data(B), f"{A.id}-0000000001": _data(A), f"{A.id}-0000000004": _data(A)}
    assert parse_election(children) == (election_order(children), ())


# ---------------------------------------------------------------- quarantine log
class _Log:
    def __init__(self):
        self.lines: list[tuple[str, str, dict]] = []

    def warning(self, ev, **kw):
        self.lines.append(("warning", ev, kw))

    def info(self, ev, **kw):
        self.lines.append(("info", ev, kw))


def test_quarantine_logs_each_node_once_and_when_it_is_gone():
    log = _Log()
    q = Quarantine(log)
    for _ in range(3):  # every cycle reads the election again: one line only
        q.update("election", {"/s/election/x": "bad"})
    q.update("state", {"/s/state": "state: not JSON"})
    assert q.items() == ("/s/election/x: bad", "/s/state: state: not JSON")
    assert [(lv, ev) for lv, ev, _ in log.lines] == [("warning", "zk_data_quarantined")] * 2
    q.update("election", {"/s/election/x": "worse"})  # a new reason is news
    q.update("election", {})
    q.update("election", {})
    assert [ev for _, ev, _ in log.lines[2:]] == ["zk_data_quarantined", "zk_data_quarantine_cleared"]
    assert q.items() == ("/s/state: state: not JSON",)


# ---------------------------------------------------------------- decide: unreadable state
def test_unreadable_state_with_no_state_ever_read_never_bootstraps():
    # the head of the election would declare generation 1 on "no state": a fork
    d = decide(obs(A, state=None, state_unreadable=True, election=(A, B, C), running=False))
    assert d.target.role == UNASSIGNED and d.write_state is None and d.write_error is None
    assert d.rule == "state_unreadable.wait" and "cannot be parsed" in d.reason


def test_unreadable_state_primary_keeps_serving_as_it_is():
    d = decide(obs(A, state_unreadable=True, sync_caught_up=True))
    assert d.target.role == PRIMARY and d.target.sync == B and not d.target.read_only
    assert d.write_state is None and d.rule.startswith("state_unreadable.")


def test_unreadable_state_primary_does_not_replace_a_gone_sync():
    d = decide(obs(A, state_unreadable=True, election=(A, C), read_only=True))
    assert d.target.role == PRIMARY and d.target.sync == B and d.write_state is None


def test_unreadable_state_primary_is_still_fenced_when_its_session_expired():
    d = decide(obs(A, state_unreadable=True, zk=LOST, sync_caught_up=True))
    assert d.target.role == FENCED and d.write_state is None


def test_unreadable_state_sync_never_takes_over_from_a_gone_primary():
    d = decide(obs(B, state_unreadable=True, election=(B, C), streaming=False, upstream_id=None))
    assert d.target.role == STANDBY and d.target.upstream == A
    assert d.write_state is None and d.write_error is None


def test_unreadable_state_diverged_standbys_are_not_rebuilt():
    for me in (B, C):
        d = decide(obs(me, state_unreadable=True, diverged=True))
        assert d.target.role == STANDBY and d.write_state is None


def test_unreadable_state_does_not_hide_safe_mode():
    d = decide(obs(B, state_unreadable=True, error={"reason": "x"}))
    assert d.target.role == SAFE_MODE


@pytest.mark.parametrize("me", [A, B, C, D])
def test_unreadable_state_never_writes_promotes_or_rebuilds_in_any_combination(me):
    for (zk, election, running, in_rec, diverged, has_data, state, expiry, streaming) in itertools.product(
            (CONNECTED, SUSPENDED, LOST), ((A, B, C), (B, C), (C,), (A, C, D), ()), (True, False),
            (True, False), (True, False), (True, False), (STATE, None, STATE.evolve(sync=None)),
            (True, False), (True, False)):
        o = Observation(me=me, zk=zk, election=election, state=state, state_version=4, running=running,
                        in_recovery=in_rec, wal=0x9000, streaming=streaming, diverged=diverged,
                        has_data=has_data, expiry_passed=expiry, sync_streaming=streaming,
                        read_only=True, state_unreadable=True)
        d = decide(o)
        assert d.write_state is None and d.write_error is None, o
        assert d.target.role != REBUILD, o
        place = state.place_of(me.id) if state else None
        if d.target.role == PRIMARY:  # only the last-known primary keeps (never gains) the role
            assert place == "primary", o


# ---------------------------------------------------------------- backupserver membership
def test_backupserver_membership_counts_only_well_formed_election_nodes():
    import asyncio
    import json

    from manatee.backupserver.membership import ShardMembership

    nodes = {f"{A.id}-0000000001": json.dumps(_data(A)).encode(), ROGUE: b'{"ip": "127.0.0.99"}',
             "10.9.9.9:1:2:3-0000000002": b"not json"}

    class FakeZk:  # the two reads ShardMembership makes
        async def get_children(self, path):
            assert path == "/manatee/1/election"
            return list(nodes)

        async def get(self, path):
            return nodes[path.rsplit("/", 1)[1]], None

    m = ShardMembership(FakeZk(), "/manatee/1")
    assert asyncio.run(m.members()) == {A.ip}
    assert asyncio.run(m.is_member("127.0.0.99")) is False


# ---------------------------------------------------------------- negotiated session timeout
def test_the_sitter_adopts_and_logs_the_negotiated_session_timeout():
    import asyncio
    from types import SimpleNamespace

    from manatee.sitter.zkview import ZkView

    log = _Log()
    session = SimpleNamespace(negotiated_session_timeout=None)
    v = ZkView(session, None, A, 60.0, log, SimpleNamespace(monotonic=lambda: 0.0), asyncio.Event())
    v.note_session_timeout()  # not connected yet: nothing known, nothing said
    assert v.session_timeout == 60.0 and log.lines == []
    session.negotiated_session_timeout = 40.0  # a stock server (tickTime 2000) caps it at 40 s
    v.note_session_timeout()
    v.note_session_timeout()  # every refresh asks again: said once
    assert v.session_timeout == 40.0
    assert [(lv, ev, kw["configured_s"], kw["negotiated_s"]) for lv, ev, kw in log.lines] == \
        [("warning", "zk_session_timeout_negotiated", 60.0, 40.0)]
    session.negotiated_session_timeout = 60.0  # reconnected to a server that grants it
    v.note_session_timeout()
    assert v.session_timeout == 60.0 and log.lines[-1][0] == "info"


def test_manatee_adm_names_what_the_sitters_quarantined():
    from manatee.cli.adm_view import NodeView, ShardView, problems

    q = f"/manatee/1/election/{ROGUE}: election/{ROGUE}.zoneId: missing"
    nodes = [NodeView("primary", A.to_json(), sitter={"quarantined": [q]}),
             NodeView("sync", B.to_json(), sitter={"quarantined": [q]}), NodeView("async", C.to_json())]
    out = problems(ShardView("1", STATE.to_json(), None, nodes))
    assert out.count(f"malformed znode ignored by the sitters (quarantined): {q}") == 1
