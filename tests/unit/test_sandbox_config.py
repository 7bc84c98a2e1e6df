"""The sandbox's generated configs pass the daemons' own models; addresses, ports and
state round-trip; bad input is refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manatee.backupserver.config import BackupServerConfig
from manatee.core.config import validate
from manatee_testbed import sandbox_config, sandbox_nodes, sandbox_state
from manatee_testbed.sandbox_state import SandboxError, SandboxState
from manatee.sitter.config import SitterConfig
from manatee.snapshotter.config import SnapshotterConfig
from tests.factories import make_state


def test_generated_configs_validate_with_the_daemons_models(tmp_path):
    st = make_state(tmp_path)
    b = st.node("b")
    cfgs = sandbox_config.node_configs(st, b)
    sitter = validate(cfgs["sitter"], SitterConfig)
    snap = validate(cfgs["snapshotter"], SnapshotterConfig)
    backup = validate(cfgs["backupserver"], BackupServerConfig)
    assert sitter.ip == "127.0.0.12" and sitter.shardPath == "/manatee/1"
    assert sitter.zkCfg.connStr == "127.0.0.10:2181" and sitter.zkCfg.sessionTimeout == 6000
    assert sitter.pg_url == b.pg_url and sitter.status_url == b.status_url
    assert sitter.postgresMgrCfg.dataDir == b.data_dir
    assert sitter.postgresMgrCfg.socketDir == b.socket_dir
    assert sitter.postgresMgrCfg.zfsClientCfg.dataset == b.dataset == snap.dataset == backup.backupSenderCfg.dataset
    assert sitter.postgresMgrCfg.replicationAuth.password == "pw-123456"
    assert not sitter.postgresMgrCfg.oneNodeWriteMode
    assert sitter.secretFile == backup.secretFile == st.secret_file  # one shard secret for every daemon
    assert not sitter.insecure and not backup.insecure
    assert sitter.backupPort == backup.backupServerCfg.port and backup.backupServerCfg.host == b.ip
    assert snap.healthUrl == f"{b.status_url}/ping"
    assert backup.shardPath == sitter.shardPath and backup.zkCfg.connStr == sitter.zkCfg.connStr
    assert sitter.heartbeatCfg.expirationTime >= sitter.heartbeatCfg.heartbeatInterval * 2


def test_one_node_sandbox_writes_without_a_sync(tmp_path):
    st = make_state(tmp_path, n=1)
    assert sandbox_config.node_configs(st, st.nodes[0])["sitter"]["postgresMgrCfg"]["oneNodeWriteMode"] is True


def test_trust_auth_is_refused_naming_the_key(tmp_path):
    st = make_state(tmp_path, auth="trust")
    with pytest.raises(sandbox_state.SandboxError, match="replicationAuth.method.*trust"):
        sandbox_config.node_configs(st, st.nodes[0])


def test_clients_use_the_admin_credential_not_the_replication_one(tmp_path):
    st = make_state(tmp_path)
    cfg = validate(sandbox_config.node_configs(st, st.nodes[0])["sitter"], SitterConfig).postgresMgrCfg
    assert cfg.replicationAuth.user == "replicator" != cfg.dbUser
    assert cfg.adminAuth.password == st.admin_password and cfg.admin_user == "postgres"
    assert cfg.adminAuth.password != cfg.replicationAuth.password
    assert cfg.socketDir.startswith("/run/manatee/")


@pytest.mark.parametrize("session", [1000, 2000, 4000, 6000, 30000, 120000])
def test_timings_fit_the_session_timeout(tmp_path, session):
    st = make_state(tmp_path, session=session)
    for node in st.nodes:
        cfg = validate(sandbox_config.node_configs(st, node)["sitter"], SitterConfig)
        hb = cfg.heartbeatCfg
        assert hb.heartbeatInterval <= session / 4
        assert hb.requestTimeout < hb.expirationTime



def test_up_health_timeout_overrides_the_derived_one(tmp_path):
    """`up --health-timeout MS` (the loaded soak runs the product's 5 s at T = 1 s); by
    default it is derived from T (2 s at T = 1 s, for the fault tests' quick hang verdicts)."""
    from dataclasses import replace as dc_replace

    st = make_state(tmp_path, session=1000)
    node = st.nodes[0]
    assert sandbox_config.node_configs(st, node)["sitter"]["postgresMgrCfg"]["healthChkTimeout"] == 2000
    st = dc_replace(st, health_timeout_ms=5000, expiration_ms=10000)
    cfg = validate(sandbox_config.node_configs(st, node)["sitter"], SitterConfig)
    assert cfg.postgresMgrCfg.healthChkTimeout == 5000 and cfg.heartbeatCfg.expirationTime == 10000
    sandbox_state.save_state(st)
    assert sandbox_state.load_state(tmp_path).health_timeout_ms == 5000

def test_a_drift_from_the_models_is_caught(tmp_path, monkeypatch):
    st = make_state(tmp_path)
    real = sandbox_config.snapshotter_config
    monkeypatch.setattr(sandbox_config, "snapshotter_config", lambda s, n: {**real(s, n), "pollIntervall": 5})
    with pytest.raises(SandboxError, match=r"snapshotter's model: .*pollIntervall"):
        sandbox_config.node_configs(st, st.nodes[0])


def test_written_configs_are_private_and_loadable(tmp_path):
    st = make_state(tmp_path)
    node = st.nodes[0]
    sandbox_config.write_node_configs(st, node)
    for daemon in sandbox_nodes.DAEMONS:
        p = node.config_path(daemon)
        assert p.stat().st_mode & 0o077 == 0
        assert json.loads(p.read_text()) == sandbox_config.node_configs(st, node)[daemon]


def test_state_round_trip(tmp_path):
    st = make_state(tmp_path)
    sandbox_state.save_state(st)
    back = sandbox_state.load_state(tmp_path)
    assert back == st
    assert back.node("c").pids == {"sitter": 123}
    assert back.zk_connect == "127.0.0.10:2181" and back.shard_path == "/manatee/1"


def test_missing_and_bad_state_are_clear_errors(tmp_path):
    with pytest.raises(SandboxError, match="no sandbox in"):
        sandbox_state.load_state(tmp_path)
    sandbox_state.state_path(tmp_path).write_text("{not json")
    with pytest.raises(SandboxError, match="cannot read"):
        sandbox_state.load_state(tmp_path)
    sandbox_state.state_path(tmp_path).write_text(json.dumps({"version": 99}))
    with pytest.raises(SandboxError, match="version"):
        sandbox_state.load_state(tmp_path)


def test_unknown_node_names_the_known_ones(tmp_path):
    st = make_state(tmp_path)
    with pytest.raises(SandboxError, match=r"no node named 'x' .*nodes: a, b, c"):
        st.node("x")


def test_addresses():
    assert sandbox_config.node_addresses("127.0.0.11", 3) == ("127.0.0.10", ["127.0.0.11", "127.0.0.12", "127.0.0.13"])
    assert sandbox_config.node_names(4) == ["a", "b", "c", "d"]
    for bad in ("10.0.0.1", "127.0.0.1", "127.0.0.254", "nonsense", "::1"):
        with pytest.raises(SandboxError, match="--first-ip"):
            sandbox_config.node_addresses(bad, 3)
    for n in (0, 27):
        with pytest.raises(SandboxError, match="--nodes"):
            sandbox_config.node_names(n)


def test_postgres_reachability(tmp_path):
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user")
    closed = tmp_path / "closed"
    (closed / "inner").mkdir(parents=True)
    closed.chmod(0o700)
    assert not sandbox_config.postgres_can_reach(closed / "inner")
    assert sandbox_config.postgres_can_reach(Path("/tmp"))
    assert sandbox_config.postgres_can_reach(Path("/"))


def test_daemon_command_uses_the_venv(tmp_path):
    cmd = sandbox_nodes.daemon_command("snapshotter", tmp_path / "snapshotter.json")
    assert cmd[-4:] == ["-f", str(tmp_path / "snapshotter.json"), "--log-format", "text"]
    assert cmd[0].endswith("manatee-snapshotter") or cmd[:3][-1] == "manatee.snapshotter.main"


@pytest.mark.skipif(__import__("shutil").which("openssl") is None, reason="needs openssl")
def test_tls_and_zk_auth_sandbox_configures_every_daemon(tmp_path):
    import os
    import stat

    from manatee_testbed.cli.sandbox import tool_commands, tool_vars

    st = make_state(tmp_path)
    st.tls, st.zk_auth = True, "manatee-ab12cd34:pw-zk-0123456789"
    sandbox_config.write_security_files(st)
    assert stat.S_IMODE(os.stat(st.tls_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(st.zk_auth_file).st_mode) == 0o600
    b = st.node("b")
    assert stat.S_IMODE(os.stat(b.key_file).st_mode) == 0o600
    cfgs = sandbox_config.node_configs(st, b)
    sitter = validate(cfgs["sitter"], SitterConfig)
    backup = validate(cfgs["backupserver"], BackupServerConfig)
    snap = validate(cfgs["snapshotter"], SnapshotterConfig)
    assert b.status_url.startswith("https://") and sitter.status_url == b.status_url
    assert sitter.backup_url.startswith("https://") and snap.healthUrl.startswith("https://")
    assert sitter.tls.requireClientCert and backup.tls.requireClientCert and snap.tls.certFile == b.cert_file
    assert sitter.zkCfg.auth.zk_auth().auth_data()  # the credential file is usable
    # the state round-trips (an older sandbox.json without the keys loads too)
    again = SandboxState.from_json(json.loads(json.dumps(st.to_json())))
    assert again.tls and again.node("b").cert_file == b.cert_file
    old = st.to_json()
    for k in ("tls", "zk_auth"):
        old.pop(k)
    for n in old["nodes"]:
        for k in ("cert_file", "key_file", "ca_file"):
            n.pop(k)
    assert not SandboxState.from_json(old).node("b").status_url.startswith("https")
    # the tools get the credential and the TLS files, in manatee.env and in the printed commands
    v = tool_vars(st)
    assert v["MANATEE_ZK_AUTH_FILE"] == st.zk_auth_file and os.path.exists(v["MANATEE_TLS_CERT"])
    show = dict(tool_commands(st.zk_connect, st.shard, tmp_path / "pgpass", tmp_path / "manatee.env", v))
    assert "MANATEE_TLS_CA=" in show["the shard as a table"]
