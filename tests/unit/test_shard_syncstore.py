"""The shard's record parsers (one per record, shared by the sitter's store and the tools')
and the tools' synchronous store: its reads, its compare-and-set retry and its refusals.
The ZooKeeper here is a dict (the store's logic is what is tested; tests/integration/
test_cli_tools.py runs the same store against a real ZooKeeper)."""
from __future__ import annotations

import json

import pytest

from manatee.shard.state import (
    ClusterState, StateError, parse_election_nodes, parse_error_node, parse_state,
)
from manatee.shard.syncstore import ShardStoreError, SyncShardStore
from tests.observations import A, B, C
from tests.zk_fakes import DictZk

STATE = ClusterState(generation=3, primary=A, sync=B, async_=(C,))


def election_raw(p) -> bytes:
    return json.dumps({k: v for k, v in p.to_json().items() if k != "id"}).encode()


def test_parse_error_node_keeps_safe_mode_whatever_the_node_holds():
    assert parse_error_node(b'{"reason": "sync diverged"}') == ({"reason": "sync diverged"}, None)
    assert parse_error_node(b"") == ({}, None)
    rec, why = parse_error_node(b"{garbage")
    assert "cannot be parsed" in rec["reason"] and why and "error: not JSON" in why
    assert parse_error_node(b'"text"') == ({"reason": "text"}, None)


def test_parse_state_refuses_an_empty_node_and_names_the_field():
    with pytest.raises(StateError, match="empty"):
        parse_state(b"")
    with pytest.raises(StateError, match="state.generation"):
        parse_state(b'{"primary": {}}')
    assert parse_state(STATE.dumps()) == STATE


def test_parse_election_nodes_quarantines_undecodable_and_malformed_nodes():
    raws = {f"{A.id}-0000000002": election_raw(A), f"{B.id}-0000000001": election_raw(B),
            f"{C.id}-0000000003": b"{not json", "junk": b"{}"}
    peers, bad = parse_election_nodes(raws)
    assert peers == (B, A)
    assert [n for n, _ in bad] == sorted([f"{C.id}-0000000003", "junk"])
    assert "not JSON" in dict(bad)[f"{C.id}-0000000003"]


def shard(**extra: bytes) -> dict[str, bytes]:
    return {"/manatee/1": b"", "/manatee/1/election": b"", "/manatee/1/history": b"", **extra}


def test_read_gives_state_error_node_and_election():
    zk = DictZk(shard(**{"/manatee/1/state": STATE.dumps(), "/manatee/1/error": b'{"reason": "x"}',
                         f"/manatee/1/election/{A.id}-0000000001": election_raw(A)}))
    rec = SyncShardStore(zk, "1").read()
    assert (rec.state, rec.version, rec.state_error, rec.error, rec.election) == (STATE, 0, None, {"reason": "x"}, (A,))
    bad = SyncShardStore(DictZk(shard(**{"/manatee/1/state": b"{"})), "1").read()
    assert bad.state is None and "not JSON" in bad.state_error and bad.error is None


def test_cas_retries_a_lost_race_and_gives_up_after_its_tries():
    zk = DictZk(shard(**{"/manatee/1/state": STATE.dumps()}), races=2)
    old, new = SyncShardStore(zk, "1").cas_state(lambda st: st.evolve(generation=st.generation + 1))
    assert old == STATE and new.generation == 4 and parse_state(zk.nodes["/manatee/1/state"][0]) == new
    assert SyncShardStore(zk, "1").cas_state(lambda st: None) == (new, None)
    zk.races = 5
    with pytest.raises(ShardStoreError, match="kept changing under 3 attempts"):
        SyncShardStore(zk, "1").cas_state(lambda st: st.evolve(init_wal=1), tries=3)


def test_refusals_name_the_shard_and_what_is_missing():
    with pytest.raises(ShardStoreError, match="shard '2' not found: no /manatee/2 in ZooKeeper at 127.0.0.1:2181"):
        SyncShardStore(DictZk(shard()), "2").read()
    with pytest.raises(ShardStoreError, match=r"has no state yet \(/manatee/1/state\): nothing to rebuild"):
        SyncShardStore(DictZk(shard()), "1").state("rebuild")
    with pytest.raises(ShardStoreError, match="not in safe mode"):
        SyncShardStore(DictZk(shard()), "1").clear_error()
    zk = DictZk(shard(**{"/manatee/1/error": b'{"reason": "r"}'}))
    assert SyncShardStore(zk, "1").clear_error() == ("/manatee/1/error", b'{"reason": "r"}')
    assert "/manatee/1/error" not in zk.nodes
