"""The sitter's PostgreSQL credentials: config validation and what pg_hba they render."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import structlog

from manatee.core.config import ConfigError, validate
from manatee.core.pgconfig import render_pg_hba
from manatee.sitter.config import SitterConfig
from manatee.sitter.pgmanager import PgManager, RoleSpec

SAMPLE = json.loads((Path(__file__).parents[2] / "etc" / "sitter.json").read_text())


def cfg(ip: str = "10.0.0.1", **pg) -> SitterConfig:
    data = copy.deepcopy(SAMPLE)
    data["ip"] = ip
    for k, v in pg.items():
        if v is None:
            data["postgresMgrCfg"].pop(k, None)
        else:
            data["postgresMgrCfg"][k] = v
    return validate(data, SitterConfig)


def repl(**kw) -> dict:
    return {"method": "scram-sha-256", "user": "replicator", "password": "r-secret", **kw}


def manager(c: SitterConfig, members: tuple[str, ...]) -> PgManager:
    m = PgManager(c, structlog.get_logger("test"))
    m.members = tuple(sorted(set(members) | {c.ip}))
    return m


def hba(c: SitterConfig, members: tuple[str, ...], role: str = "primary") -> list[str]:
    rc = manager(c, members).role_config(RoleSpec(role, upstream=("10.0.0.9", 5432) if role == "standby" else None))
    return [line.split() for line in render_pg_hba(rc).splitlines() if line and not line.startswith("#")]


def test_sample_config_uses_a_dedicated_replication_role_and_no_tcp_superuser():
    c = cfg()
    assert c.postgresMgrCfg.replicationAuth.user == "replicator" != c.postgresMgrCfg.dbUser
    assert c.postgresMgrCfg.adminAuth is None
    rows = hba(c, ("10.0.0.2",))
    assert ["host", "replication", "replicator", "10.0.0.2/32", "scram-sha-256"] in rows
    assert ["host", "all", "postgres", "all", "reject"] in rows
    assert ["host", "all", "replicator", "all", "reject"] in rows
    # nothing lets the superuser in over TCP before its reject line
    first_reject = rows.index(["host", "all", "postgres", "all", "reject"])
    assert not [r for r in rows[:first_reject] if r[0] == "host" and r[1] == "all"]
    assert manager(c, ())._superuser_password() is None


def test_ipv6_members_are_single_hosts():
    c = cfg(ip="fd00::1", replicationAuth=repl())
    rows = hba(c, ("fd00::2", "fd00::3"))
    assert ["host", "replication", "replicator", "fd00::2/128", "scram-sha-256"] in rows
    assert ["host", "replication", "replicator", "fd00::1/128", "scram-sha-256"] in rows
    assert not [r for r in rows if r[3].startswith("fd00") and r[3].endswith("/32")]


@pytest.mark.parametrize("pg,key,msg", [
    (dict(replicationAuth=repl(method="trust")), "postgresMgrCfg.replicationAuth.method", "without a password"),
    (dict(adminAuth={"method": "trust", "cidrs": ["10.0.0.0/8"]}), "postgresMgrCfg.adminAuth.method", "without a password"),
    (dict(replicationAuth=repl(password=None)), "postgresMgrCfg.replicationAuth", "password is required"),
    (dict(replicationAuth=repl(method="cert", password=None)), "postgresMgrCfg.replicationAuth", "sslcert"),
    (dict(replicationAuth=repl(user="all")), "postgresMgrCfg.replicationAuth.user", "role name"),
    (dict(replicationAuth=repl(sslmode="sometimes")), "postgresMgrCfg.replicationAuth.sslmode", ""),
    (dict(adminAuth={"password": "a", "cidrs": []}), "postgresMgrCfg.adminAuth.cidrs", ""),
    (dict(adminAuth={"user": "replicator", "password": "a", "cidrs": ["10.0.0.0/8"]}), "postgresMgrCfg", "different roles"),
    (dict(replicationAuth=None), "postgresMgrCfg.replicationAuth", ""),
])
def test_bad_credentials_config_names_the_key(pg, key, msg):
    with pytest.raises(ConfigError) as e:
        cfg(**pg)
    assert f"'{key}" in str(e.value) and msg in str(e.value), str(e.value)


def test_secrets_are_not_echoed_in_errors():
    with pytest.raises(ConfigError) as e:
        cfg(replicationAuth=repl(method="trust", password="hunter2-very-secret"))
    assert "hunter2" not in str(e.value)


def test_cert_renders_hostssl_and_client_certificate_in_conninfo():
    c = cfg(replicationAuth=repl(method="cert", password=None, sslmode="verify-full", sslrootcert="/etc/m/ca.pem",
                                 sslcert="/etc/m/repl.crt", sslkey="/etc/m/repl.key"))
    rows = hba(c, ("10.0.0.2",))
    assert ["hostssl", "replication", "replicator", "10.0.0.2/32", "cert"] in rows
    rc = manager(c, ("10.0.0.2",)).role_config(RoleSpec("standby", upstream=("10.0.0.2", 5432)))
    assert dict(rc.replication_ssl) == {"sslmode": "verify-full", "sslrootcert": "/etc/m/ca.pem",
                                        "sslcert": "/etc/m/repl.crt", "sslkey": "/etc/m/repl.key"}


def test_admin_auth_opens_the_superuser_from_its_networks_only():
    c = cfg(adminAuth={"password": "a-secret", "cidrs": ["192.168.7.0/24"]})
    rows = hba(c, ("10.0.0.2",))
    assert ["host", "all", "postgres", "192.168.7.0/24", "scram-sha-256"] in rows
    assert ["host", "all", "postgres", "all", "reject"] not in rows
    assert ["host", "all", "replicator", "all", "reject"] in rows
    assert manager(c, ())._superuser_password() == "a-secret"


def test_old_config_with_the_superuser_replicating_keeps_working():
    c = cfg(replicationAuth=repl(user="postgres", password="old-secret"))
    rows = hba(c, ("10.0.0.2",))
    assert ["host", "replication", "postgres", "10.0.0.2/32", "scram-sha-256"] in rows
    # its password still set at initdb (a rebuilt node keeps streaming)
    assert manager(c, ())._superuser_password() == "old-secret"


def test_old_config_may_keep_tcp_superuser_access_with_the_same_password():
    c = cfg(replicationAuth=repl(user="postgres", password="old-secret"),
            adminAuth={"password": "old-secret", "cidrs": ["10.9.0.0/16"]})
    rows = hba(c, ("10.0.0.2",))
    assert ["host", "all", "postgres", "10.9.0.0/16", "scram-sha-256"] in rows
    assert ["host", "all", "postgres", "all", "reject"] not in rows
    with pytest.raises(ConfigError, match="one password"):
        cfg(replicationAuth=repl(user="postgres", password="old-secret"),
            adminAuth={"password": "other", "cidrs": ["10.9.0.0/16"]})


def test_migration_users_accepted_for_replication():
    c = cfg(replicationAuth=repl(migrationUsers=["postgres"]))
    assert ["host", "replication", "replicator,postgres", "10.0.0.2/32", "scram-sha-256"] in hba(c, ("10.0.0.2",))


def test_default_socket_dir_is_private_under_run():
    m = manager(cfg(socketDir=None), ())
    assert str(m.socket_dir) == "/run/manatee/10.0.0.1-5432"


def _conninfo(c: SitterConfig) -> str:
    from manatee.core.pgconfig import primary_conninfo
    return primary_conninfo(manager(c, ("10.0.0.9",)).role_config(RoleSpec("standby", upstream=("10.0.0.9", 5432))))


def test_the_replication_connections_tcp_user_timeout_is_the_operators():
    """postgresMgrCfg.replicationTcpUserTimeout bounds a walreceiver's connect (it ignores
    connect_timeout): 5 s by default, longer for a long lossy link, 0 for the kernel's own."""
    assert cfg().postgresMgrCfg.replicationTcpUserTimeout == 5000
    assert " tcp_user_timeout=5000" in _conninfo(cfg())
    assert " tcp_user_timeout=30000" in _conninfo(cfg(replicationTcpUserTimeout=30000))
    assert "tcp_user_timeout" not in _conninfo(cfg(replicationTcpUserTimeout=0))
    assert "connect_timeout=5" in _conninfo(cfg(replicationTcpUserTimeout=0))


@pytest.mark.parametrize("value, msg", [(999, "at least 1000 ms"), (-1, ""), (600001, ""), (True, "true/false")])
def test_a_bad_replication_tcp_user_timeout_names_the_key(value, msg):
    with pytest.raises(ConfigError) as e:
        cfg(replicationTcpUserTimeout=value)
    assert e.value.key == "postgresMgrCfg.replicationTcpUserTimeout" and msg in str(e.value)
