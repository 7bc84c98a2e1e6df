"""A shard as the decision core and the operator tools see it, for unit tests: five peers
A–E (10.0.0.1–5, zones zone-1..5), the state A primary / B sync / C async, `obs(me)`: what
a healthy node of that shard observes (override any field by keyword), and `healthy()`:
what manatee-adm gathers from such a shard."""

from __future__ import annotations

from manatee.core.lsn import parse_lsn
from manatee.cli.adm_view import ShardView, chain_nodes
from manatee.shard.decide import Observation
from manatee.shard.state import CONNECTED, ClusterState
from tests.factories import peer

A, B, C, D, E = (peer(f"10.0.0.{i}", f"zone-{i}") for i in range(1, 6))
INIT = parse_lsn("0/5000")
STATE = ClusterState(generation=3, primary=A, sync=B, async_=(C,), init_wal=INIT)


def obs(me, *, election=(A, B, C), state=STATE, **kw) -> Observation:
    defaults = dict(zk=CONNECTED, state_version=7, running=True, has_data=True)
    if state is not None and state.primary.id == me.id:
        defaults.update(in_recovery=False, wal=0x9000, read_only=True)
    else:
        defaults.update(in_recovery=True, wal=0x6000, streaming=True, upstream_id=A.id)
    defaults.update(kw)
    return Observation(me=me, election=tuple(election), state=state, **defaults)


ADM_STATE = ClusterState(generation=4, primary=A, sync=B, async_=(C,), init_wal=0x5000)
ADM_LIVE = [A.id, B.id, C.id]


def healthy(state: ClusterState = ADM_STATE, live=ADM_LIVE, election=()) -> ShardView:
    """manatee-adm's view of a shard in `state`: the `live` sitters' PostgreSQL up, standbys streaming."""
    st = state.to_json()
    nodes = chain_nodes(st, live, [p.to_json() for p in election])
    for n in nodes:
        n.sitter = {"localRole": "primary" if n.role == "primary" else "standby"}
        if n.role in ("deposed", "unknown"):
            continue
        n.pg = {"up": True, "recovery": n.role != "primary", "readOnly": n.role != "primary", "wal": "0/9000"}
        if n.role != "primary":
            n.repl = {"state": "streaming", "sync_state": "sync" if n.role == "sync" else "async",
                      "lag_bytes": 0, "lag_s": 0.0, "replay_lsn": "0/9000"}
    return ShardView("1", st, None, nodes)
