"""manatee-stat's output built from ZooKeeper data: the guide's shape, roles from the state."""

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from manatee.cli.stat import (
    ShardData, chain_roles, interval_json, pg_value, probe_targets, shard_status, status_document,
)
from manatee.shard.state import ClusterState, Peer
from tests import factories

# The key sets of the guide's `manatee-stat -p` example ("Shard Status").
GUIDE_NODE_KEYS = {"ip", "pgUrl", "zoneId"}
GUIDE_REPL_KEYS_PG93 = {"pid", "usesysid", "usename", "application_name", "client_addr", "client_hostname",
                        "client_port", "backend_start", "state", "sent_location", "write_location",
                        "flush_location", "replay_location", "sync_priority", "sync_state"}
GUIDE_REGISTRAR = {"type": "database", "database": {"primary": "tcp://postgres@172.27.4.12:5432/postgres", "ttl": 60}}


def peer(n: int) -> Peer:
    return factories.peer(f"172.27.{n}.{n + 4}", f"zone-{n}")


A, B, C, D, E = (peer(n) for n in range(1, 6))


def node(p: Peer) -> dict:
    return {"ip": p.ip, "pgUrl": p.pg_url, "zoneId": p.zone_id}


def election_data(*peers: Peer) -> dict:
    return {f"{p.id}-{i:010d}": {"zoneId": p.zone_id, "ip": p.ip, "pgUrl": p.pg_url, "backupUrl": p.backup_url,
                                 "statusUrl": p.status_url} for i, p in enumerate(peers)}


def state(**kw) -> bytes:
    return ClusterState(**kw).dumps()


def test_roles_come_from_the_state_not_the_election_order():
    # election order says D, C, B, A; the state says A → B → C, D → E deposed
    data = ShardData("1", state_raw=state(generation=7, primary=A, sync=B, async_=(C, D), deposed=(E,)),
                     election=election_data(D, C, B, A), registrar=GUIDE_REGISTRAR)
    assert shard_status(data) == {
        "primary": node(A), "sync": node(B), "async": node(C), "async1": node(D),
        "deposed": [node(E)], "registrar": GUIDE_REGISTRAR,
    }


def test_guide_shape_without_p():
    doc = status_document({"1": ShardData("1", state_raw=state(generation=1, primary=A, sync=B, async_=(C,)),
                                          registrar=GUIDE_REGISTRAR)})
    assert list(doc) == ["1"]
    assert list(doc["1"]) == ["primary", "sync", "async", "registrar"]
    for role in ("primary", "sync", "async"):
        assert set(doc["1"][role]) == GUIDE_NODE_KEYS
    json.dumps(doc)  # serialisable as is


def test_guide_shape_with_p():
    row_a = {"pid": 1, "application_name": B.pg_url, "state": "streaming", "sync_state": "sync"}
    row_b = {"pid": 2, "application_name": C.pg_url, "state": "streaming", "sync_state": "async"}
    pg = {A.pg_url: {"repl": row_a}, B.pg_url: {"repl": row_b},
          C.pg_url: {"repl": {}, "lag": {"time_lag": {}}}}
    out = shard_status(ShardData("1", state_raw=state(generation=2, primary=A, sync=B, async_=(C,))), pg)
    assert out["primary"] == {**node(A), "repl": row_a}
    assert out["sync"] == {**node(B), "repl": row_b}
    assert out["async"] == {**node(C), "repl": {}, "lag": {"time_lag": {}}}
    # a healthy shard by the original's rule
    assert out["primary"]["repl"]["sync_state"] == "sync" and out["sync"]["repl"]["sync_state"] == "async"


def test_unreachable_node_gets_empty_repl_and_an_error():
    pg = {A.pg_url: {"repl": {}, "error": "cannot connect to x: refused"}}
    out = shard_status(ShardData("1", state_raw=state(generation=2, primary=A, sync=B)), pg)
    assert out["primary"] == {**node(A), "repl": {}, "error": "cannot connect to x: refused"}
    assert out["sync"]["repl"] == {} and "not asked" in out["sync"]["error"]


def test_safe_mode_shows_the_error_object():
    err = {"primary": A.ip, "zoneId": A.zone_id, "standby": B.ip, "reason": "sync made no progress"}
    out = shard_status(ShardData("1", state_raw=state(generation=3, primary=A, sync=B), error=err))
    assert out["error"] == err and out["primary"] == node(A)
    # the guide's safe-mode example: no topology, just the error
    assert shard_status(ShardData("1", error={"primary": A.ip, "zoneId": A.zone_id})) == {
        "error": {"primary": A.ip, "zoneId": A.zone_id}}


def test_without_state_the_election_order_decides():
    out = shard_status(ShardData("1", election=election_data(C, A, B)))
    assert out == {"primary": node(C), "sync": node(A), "async": node(B)}
    assert shard_status(ShardData("1", election=election_data(B))) == {"primary": node(B)}
    assert shard_status(ShardData("1")) == {}


def test_malformed_state_is_reported_and_the_election_used():
    out = shard_status(ShardData("1", state_raw=b'{"generation": 0}', election=election_data(A, B)))
    assert out["primary"] == node(A) and out["sync"] == node(B)
    assert "state.generation" in out["stateError"] or "state.primary" in out["stateError"]


def test_malformed_election_nodes_are_ignored():
    el = election_data(A, B)
    el["garbage"] = {"ip": "x"}
    el[f"{C.id}-0000000009"] = "not an object"
    assert shard_status(ShardData("1", election=el)) == {"primary": node(A), "sync": node(B)}


def test_chain_roles_names_asyncs_async_async1_async2():
    st = ClusterState(generation=1, primary=A, sync=B, async_=(C, D, E))
    roles, deposed = chain_roles(st, ())
    assert [k for k, _ in roles] == ["primary", "sync", "async", "async1", "async2"]
    assert deposed == []
    roles, _ = chain_roles(ClusterState(generation=1, primary=A), ())
    assert [k for k, _ in roles] == ["primary"]


def test_probe_targets_pair_each_node_with_its_downstream():
    shards = {"1": ShardData("1", state_raw=state(generation=1, primary=A, sync=B, async_=(C,), deposed=(D,)))}
    assert probe_targets(shards) == [(A.pg_url, B.pg_url, False), (B.pg_url, C.pg_url, False),
                                     (C.pg_url, None, True)]


def test_interval_json_is_node_postgres_style():
    assert interval_json(None) is None
    assert interval_json(timedelta(0)) == {}
    assert interval_json(timedelta(seconds=3, milliseconds=250)) == {"seconds": 3, "milliseconds": 250}
    assert interval_json(timedelta(days=1, hours=2, minutes=3, seconds=4)) == {
        "days": 1, "hours": 2, "minutes": 3, "seconds": 4}
    assert interval_json(timedelta(milliseconds=-1500)) == {"seconds": -1, "milliseconds": -500}


def test_pg_values_become_json():
    ts = datetime(2014, 4, 28, 17, 7, 55, 548123, tzinfo=timezone(timedelta(hours=2)))
    assert pg_value(ts) == "2014-04-28T15:07:55.548Z"
    assert pg_value(timedelta(seconds=1)) == {"seconds": 1}
    assert pg_value(Decimal("3")) == 3 and pg_value(Decimal("1.5")) == 1.5
    assert pg_value(None) is None and pg_value("0/3000060") == "0/3000060" and pg_value(7) == 7


def test_guide_repl_keys_map_to_pg15_columns():
    """The guide's PG 9.x columns and their PG 15 names: what -p prints is PG's own names."""
    renamed = {k.replace("_location", "_lsn") for k in GUIDE_REPL_KEYS_PG93}
    assert {"sent_lsn", "write_lsn", "flush_lsn", "replay_lsn", "sync_state"} <= renamed
