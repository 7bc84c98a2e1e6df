"""Persisted shard state: JSON round trips, validation errors that name the field, election order."""

import json

import pytest

from manatee.shard.state import (
    PRIMARY, STANDBY, ClusterState, Freeze, Peer, StateError, Target, dedupe_peers, election_order,
    error_record, parse_election_name,
)
from tests.observations import A, B, C, D


def full_state() -> ClusterState:
    return ClusterState(generation=7, primary=A, sync=B, async_=(C,), deposed=(D,), init_wal=0x16B3748,
                        freeze=Freeze(reason="maintenance", by="ops", time="2024-01-01T00:00:00Z"),
                        one_node_write_mode=False)


def test_peer_json_uses_the_originals_keys_and_round_trips():
    j = A.to_json()
    assert j == {"id": A.id, "zoneId": "zone-1", "ip": "10.0.0.1", "pgUrl": "tcp://postgres@10.0.0.1:5432/postgres",
                 "backupUrl": "http://10.0.0.1:10002", "statusUrl": "http://10.0.0.1:5433"}
    assert Peer.from_json(j) == A


def test_peer_from_election_takes_its_id_from_the_node_name():
    data = {k: v for k, v in A.to_json().items() if k != "id"}
    assert Peer.from_election(A.id, data) == A


def test_state_round_trips_through_json_bytes():
    st = full_state()
    raw = st.dumps()
    d = json.loads(raw)
    assert d["initWal"] == "0/16B3748" and d["generation"] == 7
    assert list(d) == ["generation", "primary", "sync", "async", "deposed", "initWal", "freeze", "oneNodeWriteMode"]
    assert d["freeze"] == {"reason": "maintenance", "by": "ops", "time": "2024-01-01T00:00:00Z"}
    assert ClusterState.loads(raw) == st


def test_state_without_sync_deposed_or_freeze():
    st = ClusterState(generation=1, primary=A, one_node_write_mode=True)
    d = st.to_json()
    assert d["sync"] is None and d["async"] == [] and d["deposed"] == [] and d["freeze"] is None
    del d["deposed"]  # some v2 states lack it (MANATEE-389)
    assert ClusterState.from_json(d) == st


def test_chain_and_places():
    st = full_state()
    assert st.chain() == (A, B, C)
    assert [st.place_of(p.id) for p in (A, B, C, D)] == ["primary", "sync", "async", "deposed"]
    assert st.place_of("10.9.9.9:1:2:3") is None
    assert st.frozen and not st.evolve(freeze=None).frozen


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("generation"), "state.generation"),
    (lambda d: d.update(generation="3"), "state.generation"),
    (lambda d: d.update(generation=0), "state.generation"),
    (lambda d: d.update(initWal="zz"), "state.initWal"),
    (lambda d: d.update(primary=None), "state.primary"),
    (lambda d: d["primary"].pop("pgUrl"), "state.primary.pgUrl"),
    (lambda d: d.update(**{"async": "x"}), "state.async"),
    (lambda d: d["async"][0].update(ip=5), "state.async[0].ip"),
    (lambda d: d.update(oneNodeWriteMode="yes"), "state.oneNodeWriteMode"),
    (lambda d: d.update(freeze=3), "state.freeze"),
    (lambda d: d.update(sync=d["primary"]), "state.sync"),
])
def test_malformed_state_names_the_field(mutate, field):
    d = json.loads(full_state().dumps())
    mutate(d)
    with pytest.raises(StateError) as e:
        ClusterState.from_json(d)
    assert field in str(e.value)


def test_not_json():
    with pytest.raises(StateError, match="not JSON"):
        ClusterState.loads(b"{nope")


def test_a_peer_may_appear_only_once():
    with pytest.raises(StateError, match="also listed"):
        ClusterState(generation=2, primary=A, sync=B, async_=(A,))


def test_election_order_sorts_by_sequence_and_keeps_the_latest_duplicate():
    def data(p):
        return {k: v for k, v in p.to_json().items() if k != "id"}
    children = {f"{B.id}-0000000003": data(B), f"{A.id}-0000000001": data(A),
                f"{C.id}-0000000002": data(C), f"{A.id}-0000000011": data(A)}
    assert election_order(children) == (C, B, A)  # A restarted: its latest node is last


def test_dedupe_keeps_last_position():
    assert dedupe_peers([A, B, A, C]) == (B, A, C)


@pytest.mark.parametrize("name", ["10.0.0.1:5432:10002:5433", "x-12", "-0000000001"])
def test_bad_election_names(name):
    with pytest.raises(StateError):
        parse_election_name(name)


def test_election_name_parses():
    assert parse_election_name(f"{A.id}-0000000042") == (A.id, 42)


def test_target_rules():
    assert Target(PRIMARY, sync=B, read_only=False).describe() == "primary (read-write, sync 10.0.0.2)"
    assert Target(STANDBY, upstream=A).describe() == "standby of 10.0.0.1"
    assert Target(STANDBY).describe() == "standby of nobody (detached)"
    with pytest.raises(ValueError, match="only a primary"):
        Target(STANDBY, upstream=A, read_only=False)
    with pytest.raises(ValueError, match="unknown role"):
        Target("leader")


def test_error_record_has_the_guides_fields_plus_reason():
    assert error_record(full_state(), B, "why") == {"primary": "10.0.0.1", "zoneId": "zone-1",
                                                    "standby": "10.0.0.2", "reason": "why"}
