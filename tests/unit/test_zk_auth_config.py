"""zkCfg.auth / zkCfg.tls: validated, the error names the key, the secret is never echoed."""

from __future__ import annotations

import json

import pytest

from manatee.core.config import ConfigError, load_config
from manatee.core.zkauth import ZKAuth, auth_from_env, shard_acl
from manatee.core.zkconfig import ZkCfg
from manatee.sitter.config import SitterConfig

SECRET = "s3cr3t-Passw0rd"


def _cfg(tmp_path, zk: dict):
    base = json.loads(open("etc/sitter.json").read())
    base["zkCfg"] = {"connStr": "127.0.0.1:2181", **zk}
    p = tmp_path / "sitter.json"
    p.write_text(json.dumps(base))
    return p


@pytest.mark.parametrize("auth", [
    {"credential": SECRET},                                  # no ':'
    {"credential": f":{SECRET}"},                            # no user
    {"credential": f"manatee:{SECRET}", "credentialFile": "/x"},  # both
    {"scheme": "digest"},                                     # neither
    {"credential": ["manatee", SECRET]},                      # not a string
    {"credentialFile": f"relative/{SECRET}"},
])
def test_bad_auth_is_named_and_never_echoes_the_secret(tmp_path, auth):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, {"auth": auth}), SitterConfig)
    assert e.value.key == "zkCfg.auth"
    assert SECRET not in str(e.value)


def test_scheme_other_than_digest_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, {"auth": {"scheme": "sasl", "credential": f"u:{SECRET}"}}), SitterConfig)
    assert e.value.key == "zkCfg.auth.scheme" and SECRET not in str(e.value)


def test_credential_file_is_read_and_a_bad_one_is_a_config_error(tmp_path):
    f = tmp_path / "zk.cred"
    f.write_text(f"manatee:{SECRET}\n")
    c = load_config(_cfg(tmp_path, {"auth": {"credentialFile": str(f)}}), SitterConfig)
    opts = c.zkCfg.client_options()
    assert opts["auth"] == ZKAuth(f"manatee:{SECRET}") and opts["tls"] is None
    assert SECRET not in repr(c) and SECRET not in repr(opts)
    f.write_text(SECRET)
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, {"auth": {"credentialFile": str(f)}}), SitterConfig)
    assert e.value.key == "zkCfg.auth" and SECRET not in str(e.value) and str(f) in str(e.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(_cfg(tmp_path, {"auth": {"credentialFile": str(tmp_path / "missing")}}), SitterConfig)


def test_inline_credential_is_hidden_from_repr_and_acl_is_read_all_write_credential(tmp_path):
    c = load_config(_cfg(tmp_path, {"auth": {"credential": f"manatee:{SECRET}"}}), SitterConfig)
    assert SECRET not in repr(c)
    acl = shard_acl(c.zkCfg.client_options()["auth"])
    assert [(a.id.scheme, a.perms) for a in acl] == [("world", 1), ("digest", 31)]
    assert acl[1].id.id.startswith("manatee:") and SECRET not in acl[1].id.id


def test_tls_keys_pass_through_to_kazoo():
    z = ZkCfg(connStr="127.0.0.1:2281", tls={"ca": "/etc/ca.pem", "certfile": "/c.pem", "keyfile": "/k.pem"})
    assert z.client_options()["tls"] == {"use_ssl": True, "ca": "/etc/ca.pem", "certfile": "/c.pem",
                                         "keyfile": "/k.pem", "verify_certs": True, "check_hostname": False}


def test_cli_credential_from_env_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MANATEE_ZK_AUTH_FILE", raising=False)
    assert auth_from_env() is None
    f = tmp_path / "cred"
    f.write_text(f"adm:{SECRET}\n")
    monkeypatch.setenv("MANATEE_ZK_AUTH_FILE", str(f))
    assert auth_from_env() == ZKAuth(f"adm:{SECRET}")
    f.write_text(SECRET)
    with pytest.raises(ValueError) as e:
        auth_from_env()
    assert SECRET not in str(e.value) and str(f) in str(e.value)


def test_one_connection_string_parser_for_the_daemons_and_the_tools():
    """zkCfg.connStr (sitter and backupserver) and the CLIs' -z take the same forms and
    normalise them the same way; a bad one names its part."""
    from manatee.backupserver.config import ZkCfg as BackupZkCfg
    from manatee.cli.common import UsageError, parse_zk_hosts
    from manatee.core.zkconfig import parse_zk_hosts as core_parse

    assert BackupZkCfg is ZkCfg
    for spec, want in (("zk1:2181", "zk1:2181"), ("a:1, b:2/chroot", "a:1,b:2/chroot"), ("[::1]:2", "[::1]:2")):
        assert ZkCfg(connStr=spec).connStr == want == parse_zk_hosts(spec) == core_parse(spec)
    # a tool's -z may leave the port out (2181); a daemon's config names it
    assert parse_zk_hosts("zk1,zk2:2182") == "zk1:2181,zk2:2182"
    with pytest.raises(ValueError, match="no port in 'zk1'"):
        ZkCfg(connStr="zk1,zk2:2182")
    for bad in ("", "h:0", "h:", "bad host:1", "h:1/bad//chroot"):
        with pytest.raises(ValueError):
            ZkCfg(connStr=bad)
        with pytest.raises(UsageError):
            parse_zk_hosts(bad)
