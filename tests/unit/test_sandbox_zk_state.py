"""The sandbox's ZooKeeper ensemble in its state file: an older sandbox.json (no
`zk_servers`) is a standalone ZooKeeper as before; an ensemble's servers round-trip and
make the connect string every daemon gets; bad server counts and single-server faults on
a standalone are refused with a clear message."""

from __future__ import annotations

import json

import pytest

from manatee_testbed.cli.sandbox import build_parser
from manatee_testbed import sandbox_config, sandbox_state
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_state import SandboxError, SandboxState, ZkServerState


def _state(tmp_path, servers=()) -> SandboxState:
    return SandboxState(id="ab12cd34", dir=str(tmp_path), shard="1", session_timeout_ms=5000,
                        zk_host="127.0.0.10", zk_port=2181, zk_pid=4242, zk_servers=list(servers),
                        secret="s3cret-s3cret-s3cret", repl_password="pw-123456", admin_password="admin-pw-654321")


def test_old_state_without_zk_servers_is_a_standalone(tmp_path):
    data = _state(tmp_path).to_json()
    del data["zk_servers"]  # written before ensembles existed
    sandbox_state.state_path(tmp_path).write_text(json.dumps(data))
    st = sandbox_state.load_state(tmp_path)
    assert st.zk_servers == [] and not st.zk_ensemble
    assert st.zk_connect == "127.0.0.10:2181" and st.zk_pid == 4242


def test_ensemble_round_trips_and_every_server_is_in_the_connect_string(tmp_path):
    servers = [ZkServerState(myid=i + 1, client_port=30000 + i, quorum_port=31000 + i, election_port=32000 + i,
                             pid=100 + i if i != 1 else None) for i in range(3)]
    st = _state(tmp_path, servers)
    sandbox_state.save_state(st)
    back = sandbox_state.load_state(tmp_path)
    assert back == st and back.zk_ensemble
    assert back.zk_servers[1] == ZkServerState(2, 30001, 31001, 32001, None)
    assert back.zk_connect == "127.0.0.10:30000,127.0.0.10:30001,127.0.0.10:30002"
    # the daemons' configs carry the whole ensemble (and their models accept it)
    node = sandbox_state.NodeState(name="a", ip="127.0.0.11", pg_port=5432, status_port=5433, backup_port=10002,
                         zfs_port=10001, dataset="p/a/pg", mountpoint=str(tmp_path / "a" / "pg"),
                         dir=str(tmp_path / "a"))
    back.nodes.append(node)
    cfgs = sandbox_config.node_configs(back, node)
    assert cfgs["sitter"]["zkCfg"]["connStr"] == back.zk_connect
    assert cfgs["backupserver"]["zkCfg"]["connStr"] == back.zk_connect


@pytest.mark.parametrize("n", [0, 2, 5])
def test_only_one_or_three_zookeeper_servers(tmp_path, n):
    with pytest.raises(SandboxError, match=f"--zk-servers {n}: must be one of 1, 3"):
        Sandbox(tmp_path / "sb", out=lambda _l: None).create(zk_servers=n, require_daemons=())
    assert not (tmp_path / "sb").exists()


def test_single_server_faults_need_an_ensemble(tmp_path):
    sandbox_state.save_state(_state(tmp_path))
    sb = Sandbox(tmp_path, out=lambda _l: None)
    with pytest.raises(SandboxError, match="standalone ZooKeeper, not an ensemble"):
        sb.zk_stop_server(0)
    with pytest.raises(SandboxError, match="standalone ZooKeeper, not an ensemble"):
        sb.zk_start_server(0)
    assert sb.zk_leader() is None


def test_server_index_out_of_range_is_refused(tmp_path):
    sandbox_state.save_state(_state(tmp_path, [ZkServerState(i + 1, 30000 + i, 31000 + i, 32000 + i) for i in range(3)]))
    with pytest.raises(SandboxError, match="no ZooKeeper server 3: servers are 0..2"):
        Sandbox(tmp_path, out=lambda _l: None).zk_stop_server(3)


def test_cli_up_takes_zk_servers_1_or_3(capsys):
    p = build_parser()
    assert p.parse_args(["up"]).zk_servers == 1
    assert p.parse_args(["up", "--zk-servers", "3"]).zk_servers == 3
    with pytest.raises(SystemExit) as e:
        p.parse_args(["up", "--zk-servers", "2"])
    assert e.value.code == 2
    assert "--zk-servers" in capsys.readouterr().err


def test_cli_up_passes_zk_servers_to_the_sandbox(monkeypatch, tmp_path, capsys):
    from manatee_testbed.cli import sandbox as cli

    got = {}

    def fake_up(self, **kw):
        got.update(kw)
        raise SandboxError("stop here")

    monkeypatch.setattr(cli.Sandbox, "up", fake_up)
    assert cli.main(["up", "--dir", str(tmp_path), "--zk-servers", "3"]) == cli.EXIT_FAIL
    assert got["zk_servers"] == 3 and "stop here" in capsys.readouterr().err
    assert cli.main(["up", "--dir", str(tmp_path)]) == cli.EXIT_FAIL
    assert got["zk_servers"] == 1
