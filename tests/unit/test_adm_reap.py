"""manatee-adm reap: a deposed former primary that is gone for good leaves the state's deposed
list by compare-and-set, recorded as Reaped; anything else is refused with the reason and
nothing written. ZooKeeper is a dict (tests/zk_fakes.py); nothing runs."""

from __future__ import annotations

import json

import pytest

from manatee.cli import adm, adm_reap
from manatee.cli.adm_view import WARNING, NodeView, _deposed_problem
from manatee.cli.common import CliError, one_line_failures
from manatee.shard.history import REAPED, parse_record
from manatee.shard.state import ClusterState, parse_state
from manatee.shard.syncstore import BadVersion
from tests.observations import A, B, C, D, E
from tests.zk_fakes import DictZk

PATH = "/manatee/1/state"
#: B took over from A (deposed, gone); C its sync, D the async
STATE = ClusterState(generation=4, primary=B, sync=C, async_=(D,), deposed=(A,), init_wal=0x9000)


def shard_zk(state: ClusterState = STATE, election=(B, C, D), extra_names=(), error: bool = False) -> DictZk:
    nodes = {"/manatee/1": b"", "/manatee/1/election": b"", "/manatee/1/history": b"", PATH: state.dumps()}
    for i, p in enumerate(election):
        nodes[f"/manatee/1/election/{p.id}-{i:010d}"] = json.dumps(
            {k: v for k, v in p.to_json().items() if k != "id"}).encode()
    for name in extra_names:
        nodes[f"/manatee/1/election/{name}"] = b"{not json"
    if error:
        nodes["/manatee/1/error"] = json.dumps({"reason": "test", "time": "now"}).encode()
    return DictZk(nodes)


def run(zk, node: str) -> int:
    args = adm.build_parser().parse_args(["reap", "-s", "1", "-z", "zk1", "--node", node])
    args.shard = "1"
    return one_line_failures("manatee-adm", lambda: adm_reap.cmd_reap(args, zk))


def history(zk) -> list[dict]:
    pre = "/manatee/1/history/"
    return [parse_record(p[len(pre):], d) for p, (d, _v) in zk.nodes.items() if p.startswith(pre)]


@pytest.mark.parametrize("key", [A.ip, A.id, A.zone_id])
def test_a_deposed_node_that_is_gone_leaves_the_state_and_the_history_says_so(capsys, key):
    zk = shard_zk()
    assert run(zk, key) == 0
    data, version = zk.nodes[PATH]
    assert version == 1 and parse_state(data) == STATE.evolve(deposed=())  # same generation, same chain
    out = capsys.readouterr().out
    assert f"{A.ip}: removed from the deposed list (generation 4)" in out and "base snapshots" in out
    [rec] = history(zk)
    assert rec["action"] == REAPED and rec["ip"] == A.ip and rec["master"] == B.ip and rec["generation"] == 4
    assert "manatee-adm reap" in rec["detail"]


@pytest.mark.parametrize("zk_kw, node, why", [
    (dict(election=(A, B, C, D)), A.ip, "is in the election"),
    # a malformed election node with its address: its sitter may run (unknown is not "gone")
    (dict(extra_names=(f"{A.ip}:5432:10002:9999-0000000009",)), A.ip, "is in the election"),
    (dict(), D.ip, "is the async, not a deposed former primary"),
    (dict(), C.ip, "is the sync, not a deposed former primary"),
    (dict(), B.ip, "is the primary, not a deposed former primary"),
    (dict(), "zone-9", "no node 'zone-9' in the shard state"),  # not an address: nothing to forget
    (dict(extra_names=("10.9.9.9:5432:10002:5433-0000000011",)), "10.9.9.9", "is in the election"),
    (dict(error=True), A.ip, "is in safe mode"),
])
def test_anything_else_is_refused_and_nothing_written(capsys, zk_kw, node, why):
    zk = shard_zk(**zk_kw)
    assert run(zk, node) == 1
    assert why in capsys.readouterr().err
    assert zk.nodes[PATH] == (STATE.dumps(), 0) and history(zk) == []


def test_a_node_the_state_no_longer_lists_is_recorded_as_reaped_without_a_state_write(capsys):
    """An async that left (its sitter stopped, the primary dropped it from the chain): no state
    to change, but the Reaped record lets the backupservers release its base marks."""
    zk = shard_zk()
    assert run(zk, "10.9.9.9") == 0
    assert zk.nodes[PATH] == (STATE.dumps(), 0)
    assert "10.9.9.9: not in the shard state; recorded as gone for good" in capsys.readouterr().out
    [rec] = history(zk)
    assert rec["action"] == REAPED and rec["ip"] == "10.9.9.9" and "not in the shard state" in rec["detail"]


def test_a_sitter_writing_in_between_is_read_again_and_kept():
    """The write is compare-and-set: a state written meanwhile is read again, and the removal
    applied to it, not to the copy read first."""
    zk = shard_zk()
    meanwhile = STATE.evolve(async_=(D, E))  # the primary appended a newcomer
    real_set = zk.set

    def set_once_raced(p, data, version):
        if zk.nodes[p][0] != meanwhile.dumps():
            zk.nodes[p] = (meanwhile.dumps(), zk.nodes[p][1] + 1)
            raise BadVersion(p)
        return real_set(p, data, version)

    zk.set = set_once_raced
    assert run(zk, A.ip) == 0
    assert zk.nodes[PATH] == (meanwhile.evolve(deposed=()).dumps(), 2)


def test_show_names_reap_for_a_deposed_node_that_is_down_and_not_for_one_rejoining():
    down = _deposed_problem(NodeView("deposed", A.to_json(), live=False))
    assert down == (WARNING, f"deposed {A.ip}: a former primary that is down (if it is gone for good: "
                             f"manatee-adm reap --node {A.ip})")
    sev, msg = _deposed_problem(NodeView("deposed", A.to_json(), live=True))
    assert sev == WARNING and "waiting to rejoin" in msg and "reap" not in msg


def test_forget_is_pure_and_decides_from_the_state_and_the_election_names():
    assert adm_reap.forget(STATE, A.ip, []) == (STATE.evolve(deposed=()), A.ip)
    assert adm_reap.forget(STATE, "10.9.9.9", []) == (None, "10.9.9.9")
    with pytest.raises(CliError, match="is in the election"):
        adm_reap.forget(STATE, A.ip, [f"{A.id}-0000000003"])
    with pytest.raises(CliError, match="is the sync"):
        adm_reap.forget(STATE, C.ip, [])
