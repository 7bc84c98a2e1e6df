"""Node tags in the pure core: nofailover (never sync, never primary), nosync (never sync),
priority (order among the eligible); their election-data form."""

from dataclasses import replace

import pytest

from manatee.shard.decide import decide
from manatee.shard.state import PRIMARY, UNASSIGNED, Peer, StateError, election_order
from tests.observations import A, B, C, D, E, STATE, obs

NOFAIL = dict(nofailover=True)


def t(p: Peer, **tags) -> Peer:
    return replace(p, **tags)


def test_tags_round_trip_and_are_not_identity():
    p = t(C, nofailover=True, priority=-3)
    j = p.to_json()
    assert j["tags"] == {"nofailover": True, "priority": -3}
    assert Peer.from_json(j) == p == C and Peer.from_json(j).nofailover and Peer.from_json(j).priority == -3
    assert "tags" not in C.to_json()  # untagged peers' JSON is unchanged
    assert not p.can_sync and not t(C, nosync=True).can_sync and C.can_sync


@pytest.mark.parametrize("tags", [[1], {"nofailover": "yes"}, {"priority": 1.5}, {"priority": True}, {"x": 1}])
def test_malformed_tags_are_an_error_not_untagged(tags):
    with pytest.raises(StateError, match="tags"):
        Peer.from_json({**C.to_json(), "tags": tags})


def test_election_data_carries_the_tags():
    kids = {f"{C.id}-0000000001": {**t(C, nosync=True).to_json()}}
    assert election_order(kids)[0].nosync


def test_primary_never_names_a_nofailover_or_nosync_node_sync_and_honours_priority():
    # B (the sync) is gone; C is nofailover, D nosync, E eligible: E becomes sync
    d = decide(obs(A, election=(A, t(C, **NOFAIL), t(D, nosync=True), E), read_only=True))
    assert d.write_state.sync == E and d.write_state.async_ == (C, D)
    # only ineligible candidates: no new sync; the primary stays read-only and writes nothing
    d = decide(obs(A, election=(A, t(C, **NOFAIL), t(D, nosync=True)), read_only=True))
    assert d.target.role == PRIMARY and d.target.read_only and d.target.sync == B  # the gone sync stays named
    assert d.write_state is None or d.write_state.sync == B
    # priority among the eligible: the highest first, election order on a tie; asyncs keep their order
    d = decide(obs(A, election=(A, C, t(D, priority=5), E), read_only=True))
    assert d.write_state.sync == D and d.write_state.async_ == (C, E)
    d = decide(obs(A, election=(A, C, D), read_only=True))
    assert d.write_state.sync == C


def test_a_sync_tagged_nofailover_is_replaced_when_another_can_be_sync():
    d = decide(obs(A, election=(A, t(B, **NOFAIL), C), read_only=True))
    assert d.rule == "primary.replace_sync" and d.write_state.sync == C and d.write_state.async_ == (B,)
    assert "tagged" in d.reason
    # ...and kept while nobody else may be sync (never left without one)
    d = decide(obs(A, election=(A, t(B, **NOFAIL), t(C, nosync=True)), read_only=True, sync_caught_up=True))
    assert d.target.sync == B and (d.write_state is None or d.write_state.sync == B)


def test_sync_takeover_names_no_nofailover_node_its_sync():
    # A (primary) is gone; B takes over: C is nofailover, so D becomes its sync
    st = STATE.evolve(async_=(C, D))
    d = decide(obs(B, election=(B, t(C, **NOFAIL), D), state=st, streaming=False, upstream_id=None))
    assert d.rule == "sync.takeover", d.reason
    assert d.write_state.primary == B and d.write_state.sync == D and d.write_state.async_ == (C,)
    # only a nofailover standby left: no takeover without a sync (not one-node-write mode)
    st = STATE.evolve(async_=(C,))
    d = decide(obs(B, election=(B, t(C, **NOFAIL)), state=st, streaming=False, upstream_id=None))
    assert d.write_state is None and d.rule == "sync.no_candidate" and "nofailover" in d.reason


def test_bootstrap_skips_nofailover_heads_and_ineligible_syncs():
    el = (t(A, **NOFAIL), B, t(C, nosync=True), D)
    assert decide(obs(A, election=el, state=None)).target.role == UNASSIGNED
    d = decide(obs(B, election=el, state=None, in_recovery=False, streaming=False, upstream_id=None))
    assert d.rule == "bootstrap.declare"
    assert d.write_state.primary == B and d.write_state.sync == D and d.write_state.async_ == (el[0], el[2])
    d = decide(obs(B, election=(B, t(C, **NOFAIL)), state=None, in_recovery=False, streaming=False,
                   upstream_id=None))
    assert d.write_state is None and d.rule == "bootstrap.no_sync_candidate"


def test_show_lists_tags_and_pending_restarts_below_the_table():
    from manatee.cli.adm_view import render_show, show_json
    from tests.observations import healthy

    v = healthy()
    v.nodes[2].peer = {**v.nodes[2].peer, "tags": {"nofailover": True, "priority": 2}}
    v.nodes[1].sitter = {"localRole": "standby", "pg": {"pendingRestart": ["shared_buffers"]}}
    out = render_show(v)
    ip1, ip2 = v.nodes[1].ip, v.nodes[2].ip
    assert f"  {ip2}: tags nofailover,priority=2" in out
    assert f"  {ip1}: pending restart: shared_buffers" in out
    j = show_json(v)["nodes"]
    assert j[2]["tags"] == {"nofailover": True, "priority": 2} and j[1]["pendingRestart"] == ["shared_buffers"]
    assert "nodes:" not in render_show(healthy())
