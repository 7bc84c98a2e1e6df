import os
from pathlib import Path

import pytest

from manatee.core import pgconfig, pgquote
from manatee.core.pgconfig import (
    INCLUDE_LINE,
    RoleConfig,
    render_manatee_conf,
    render_pg_hba,
    write_role_config,
)
from manatee.core.pgparams import parse_settings
from manatee.core.pgquote import conf_quote, conninfo_quote, ident_quote

P_URL = "tcp://postgres@10.0.0.1:5432/postgres"
S_URL = "tcp://postgres@10.0.0.2:5432/postgres"


def primary(**kw) -> RoleConfig:
    base = dict(
        role="primary",
        listen_address="10.0.0.1",
        port=5432,
        socket_dir="/var/run/manatee",
        application_name=P_URL,
        members=("10.0.0.2", "10.0.0.3"),
    )
    base.update(kw)
    return RoleConfig(**base)


def standby(**kw) -> RoleConfig:
    base = dict(
        role="standby",
        listen_address="10.0.0.2",
        port=5432,
        socket_dir="/var/run/manatee",
        application_name=S_URL,
        upstream=("10.0.0.1", 5432),
        members=("10.0.0.1", "10.0.0.3"),
    )
    base.update(kw)
    return RoleConfig(**base)


def lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if l and not l.startswith("#")]


def test_primary_with_sync_read_only_until_caught_up():
    assert lines(render_manatee_conf(primary(sync_standby=S_URL))) == [
        "listen_addresses = '10.0.0.1'",
        "port = 5432",
        "unix_socket_directories = '/var/run/manatee'",
        "wal_level = replica",
        "max_wal_senders = 15",
        "wal_keep_size = '1GB'",
        "max_slot_wal_keep_size = '4GB'",
        "wal_log_hints = on",
        "full_page_writes = on",
        "wal_compression = lz4",
        "wal_init_zero = off",
        "wal_recycle = off",
        "hot_standby = on",
        "hot_standby_feedback = off",
        "wal_retrieve_retry_interval = 1s",
        "synchronous_commit = on",
        """synchronous_standby_names = '"tcp://postgres@10.0.0.2:5432/postgres"'""",
        "default_transaction_read_only = on",
        "primary_conninfo = ''",
        "primary_slot_name = ''",
        "recovery_target_timeline = 'latest'",
    ]


def test_primary_read_write_without_sync_and_options():
    s = parse_settings(
        render_manatee_conf(
            primary(read_only=False, synchronous_commit="remote_write", cluster_name="shard 1", hot_standby_feedback=True)
        )
    )
    assert s["default_transaction_read_only"] == "off"
    assert s["synchronous_standby_names"] == "''"
    assert s["synchronous_commit"] == "remote_write"
    assert s["cluster_name"] == "'shard 1'"
    assert s["hot_standby_feedback"] == "on"


def test_standby_streams_from_upstream_and_is_read_only():
    s = parse_settings(render_manatee_conf(standby(read_only=False)))
    assert s["primary_conninfo"] == (
        "'host=10.0.0.1 port=5432 user=postgres application_name=tcp://postgres@10.0.0.2:5432/postgres connect_timeout=5 "
        "tcp_user_timeout=5000'"
    )
    assert s["recovery_target_timeline"] == "'latest'"
    assert s["synchronous_standby_names"] == "''"
    # a promoted standby stays read-only until its primary config is written
    assert s["default_transaction_read_only"] == "on"


def test_sync_names_quoting():
    assert ident_quote(S_URL) == '"tcp://postgres@10.0.0.2:5432/postgres"'
    assert ident_quote('a"b') == '"a""b"'
    s = parse_settings(render_manatee_conf(primary(sync_standby="it's \"odd\"")))
    # identifier quoting inside, then postgresql.conf string quoting outside
    assert s["synchronous_standby_names"] == "'\"it''s \"\"odd\"\"\"'"


def test_conninfo_quoting():
    assert conninfo_quote("plain") == "plain"
    assert conninfo_quote("") == "''"
    assert conninfo_quote("a b") == "'a b'"
    assert conninfo_quote("it's") == r"'it\'s'"
    assert conninfo_quote("back\\slash") == r"'back\\slash'"
    assert conf_quote(r"it's \ x") == r"'it''s \\ x'"
    s = parse_settings(render_manatee_conf(standby(replication_password="it's a \\ secret", replication_user="repl")))
    assert s["primary_conninfo"] == (
        r"'host=10.0.0.1 port=5432 user=repl password=''it\\''s a \\\\ secret'' "
        r"application_name=tcp://postgres@10.0.0.2:5432/postgres connect_timeout=5 tcp_user_timeout=5000'"
    )


def test_extra_settings_rendered_last_and_quoted_when_needed():
    text = render_manatee_conf(primary(extra_settings={"fsync": "off", "work_mem": "64MB", "search_path": "a, b"}))
    assert lines(text)[-3:] == ["fsync = off", "work_mem = '64MB'", "search_path = 'a, b'"]
    with pytest.raises(ValueError, match="extra_settings"):
        primary(extra_settings={"bad name": "x"})


def test_hba_members_and_clients():
    assert lines(render_pg_hba(primary(auth_method="scram-sha-256", replication_user="replicator"))) == [
        "local   all          all                               trust",
        "local   replication  all                               trust",
        "host    replication  replicator   10.0.0.2/32          scram-sha-256",
        "host    replication  replicator   10.0.0.3/32          scram-sha-256",
        "host    all          postgres     all                  reject",
        "host    all          replicator   all                  reject",
        "host    replication  all          all                  reject",
        "host    all          all          127.0.0.1/32         scram-sha-256",
        "host    all          all          10.0.0.2/32          scram-sha-256",
        "host    all          all          10.0.0.3/32          scram-sha-256",
    ]


def test_hba_explicit_clients_cidrs_ipv6_and_no_world():
    text = render_pg_hba(primary(members=("10.0.0.2", "10.0.0.2", "fd00::2"), client_cidrs=("192.168.0.0/16",),
                                 replication_user="replicator", auth_method="md5"))
    assert lines(text) == [
        "local   all          all                               trust",
        "local   replication  all                               trust",
        "host    replication  replicator   10.0.0.2/32          md5",
        "host    replication  replicator   fd00::2/128          md5",
        "host    all          postgres     all                  reject",
        "host    all          replicator   all                  reject",
        "host    replication  all          all                  reject",
        "host    all          all          192.168.0.0/16       md5",
    ]
    assert "0.0.0.0/0" not in text
    assert "0.0.0.0/0" in render_pg_hba(primary(client_cidrs=("0.0.0.0/0",)))


def test_hba_ipv6_member_is_a_single_address():
    # A bare IPv6 member is one host (/128), never the /32 block of a whole provider.
    text = render_pg_hba(primary(members=("fd00::2", "2001:db8::7")))
    assert "fd00::2/128" in text and "2001:db8::7/128" in text
    assert "/32 " not in text.replace("127.0.0.1/32 ", "")


def test_hba_cert_is_hostssl():
    rows = lines(render_pg_hba(primary(auth_method="cert", replication_user="replicator")))
    assert "hostssl replication  replicator   10.0.0.2/32          cert" in rows
    assert "hostssl all          all          127.0.0.1/32         cert" in rows
    assert not [r for r in rows if r.startswith("host ") and r.endswith("cert")]
    # reject lines stay "host": they must match with and without TLS
    assert "host    all          replicator   all                  reject" in rows


def test_hba_trust_only_on_loopback():
    with pytest.raises(ValueError, match="auth_method.*trust.*10.0.0.2"):
        primary(auth_method="trust")
    with pytest.raises(ValueError, match="admin_method.*trust"):
        primary(admin_user="postgres", admin_cidrs=("10.0.0.0/8",), admin_method="trust")
    rc = primary(auth_method="trust", members=("127.0.0.2",), client_cidrs=("127.0.0.0/8",))
    assert "127.0.0.2/32         trust" in render_pg_hba(rc)


def test_hba_admin_role_comes_before_the_rejects():
    rows = lines(render_pg_hba(primary(replication_user="replicator", admin_user="postgres",
                                       admin_cidrs=("10.9.0.0/16", "fd00::9"))))
    assert rows[4:8] == [
        "host    all          postgres     10.9.0.0/16          scram-sha-256",
        "host    all          postgres     fd00::9/128          scram-sha-256",
        "host    all          replicator   all                  reject",
        "host    replication  all          all                  reject",
    ]
    with pytest.raises(ValueError, match="admin_cidrs"):
        primary(admin_user="postgres")


def test_hba_migration_accepts_both_replication_roles():
    rows = lines(render_pg_hba(primary(replication_user="replicator", extra_replication_users=("postgres",))))
    assert rows[2] == "host    replication  replicator,postgres 10.0.0.2/32          scram-sha-256"
    assert "host    all          postgres     all                  reject" in rows
    assert "host    all          replicator   all                  reject" in rows


def test_legacy_superuser_replication_still_renders():
    # An existing shard configured with replicationAuth.user = postgres keeps streaming.
    rows = lines(render_pg_hba(primary()))
    assert rows[2] == "host    replication  postgres     10.0.0.2/32          scram-sha-256"
    assert "host    all          postgres     all                  reject" in rows


def test_replication_ssl_in_conninfo():
    rc = standby(replication_user="replicator", replication_password="pw",
                 replication_ssl={"sslmode": "verify-full", "sslrootcert": "/etc/manatee/ca.pem"})
    conninfo = parse_settings(render_manatee_conf(rc))["primary_conninfo"]
    assert "user=replicator" in conninfo and "sslmode=verify-full" in conninfo
    assert "sslrootcert=/etc/manatee/ca.pem" in conninfo
    with pytest.raises(ValueError, match="replication_ssl"):
        standby(replication_ssl={"host": "x"})


@pytest.mark.parametrize("name", ["all", "Robert'); drop", "x" * 64, "", "a b"])
def test_bad_role_names_are_refused(name):
    with pytest.raises(ValueError, match="role name"):
        primary(replication_user=name)


def test_scram_verifier_matches_postgresql_format():
    # RFC 7677 test vector: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096.
    import base64

    v = pgquote.scram_verifier("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    assert v.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    stored, server = v.split("$")[2].split(":")
    assert len(base64.b64decode(stored)) == 32 and len(base64.b64decode(server)) == 32
    assert server == "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    sql = pgquote.create_role_sql("replicator", "pencil", replication=True)
    assert sql.startswith('CREATE ROLE "replicator" LOGIN NOSUPERUSER REPLICATION ')
    assert "pencil" not in sql


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(role="none"), "role"),
        (dict(port=0), "port"),
        (dict(socket_dir="relative"), "socket_dir"),
        (dict(application_name="x" * 64), "truncates"),
        (dict(application_name="caf\u00e9"), "ASCII"),
        (dict(sync_standby=""), "sync_standby"),
        (dict(members=("not-an-ip",)), "not-an-ip"),
        (dict(upstream=("h", 1)), "upstream"),
        (dict(auth_method="password"), "auth_method"),
    ],
)
def test_invalid_primary_config_names_the_field(kw, msg):
    with pytest.raises(ValueError, match=msg):
        primary(**kw)


def test_detached_standby_has_empty_conninfo():
    # A sync detaches before it takes over: nothing more may stream into it.
    settings = parse_settings(render_manatee_conf(standby(upstream=None)))
    assert settings["primary_conninfo"] == "''"
    assert settings["default_transaction_read_only"] == "on"


def test_invalid_standby_config():
    with pytest.raises(ValueError, match="sync_standby"):
        standby(sync_standby=P_URL)  # a standby that streams has no sync


def test_detached_standby_about_to_be_promoted_names_its_sync_and_renders_the_primarys_read_only():
    """What it will be as primary (PostgreSQL ignores both in recovery), so that no reload
    follows the promotion: read-write after a switchover, read-only after a failover."""
    settings = parse_settings(render_manatee_conf(standby(upstream=None, sync_standby=P_URL, read_only=False)))
    assert P_URL in settings["synchronous_standby_names"]
    assert settings["default_transaction_read_only"] == "off" and settings["primary_conninfo"] == "''"
    settings = parse_settings(render_manatee_conf(standby(upstream=None, sync_standby=P_URL)))
    assert settings["default_transaction_read_only"] == "on"


def test_a_promoted_standby_that_named_its_sync_needs_no_reload(data_dir: Path):
    write(data_dir, standby(upstream=None))
    ch = write(data_dir, standby(upstream=None, sync_standby=P_URL))
    assert ch.reload_needed and not ch.restart_needed and ch.changed == ("synchronous_standby_names",)
    assert (data_dir / "standby.signal").exists()
    (data_dir / "standby.signal").unlink()  # PostgreSQL removes it when promotion ends
    promoted = primary(listen_address="10.0.0.2", application_name=S_URL, members=("10.0.0.1", "10.0.0.3"),
                       sync_standby=P_URL)
    ch = write(data_dir, promoted)
    assert not ch.any, ch.changed


def test_config_is_hashable_and_normalised():
    a = primary(members=["10.0.0.2"], extra_settings={"fsync": "off"})
    b = primary(members=("10.0.0.2",), extra_settings=(("fsync", "off"),))
    assert a == b and hash(a) == hash(b)


# --------------------------------------------------------------------------- files


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "postgresql.conf").write_text("shared_buffers = 64MB\n")
    return d


def write(d: Path, rc: RoleConfig):
    return write_role_config(d, rc, user=None)


def test_first_write_needs_restart_and_keeps_operator_settings(data_dir: Path):
    ch = write(data_dir, primary())
    assert ch.restart_needed and not ch.reload_needed
    conf = (data_dir / "postgresql.conf").read_text()
    assert conf.startswith("shared_buffers = 64MB\n")
    assert conf.rstrip().endswith(INCLUDE_LINE)
    assert (data_dir / "manatee.conf").read_text() == render_manatee_conf(primary())
    assert (data_dir / "pg_hba.conf").read_text() == render_pg_hba(primary())
    assert not (data_dir / "standby.signal").exists()
    assert oct((data_dir / "manatee.conf").stat().st_mode & 0o777) == "0o600"


def test_unchanged_config_needs_nothing(data_dir: Path):
    write(data_dir, primary())
    ch = write(data_dir, primary())
    assert not ch.any and ch.changed == ()
    assert (data_dir / "postgresql.conf").read_text().count(INCLUDE_LINE) == 1


def test_read_only_and_sync_changes_are_reloads(data_dir: Path):
    write(data_dir, primary())
    ch = write(data_dir, primary(sync_standby=S_URL))
    assert ch.reload_needed and not ch.restart_needed
    assert ch.changed == ("synchronous_standby_names",)
    ch = write(data_dir, primary(sync_standby=S_URL, read_only=False))
    assert ch.reload_needed and not ch.restart_needed
    assert ch.changed == ("default_transaction_read_only",)


def test_hba_change_is_a_reload(data_dir: Path):
    write(data_dir, primary())
    ch = write(data_dir, primary(members=("10.0.0.2", "10.0.0.4")))
    assert ch.reload_needed and not ch.restart_needed
    assert "pg_hba.conf" in ch.changed


def test_port_or_listen_change_is_a_restart(data_dir: Path):
    write(data_dir, primary())
    assert write(data_dir, primary(port=5433)).restart_needed
    assert write(data_dir, primary(port=5433, listen_address="10.0.0.9")).restart_needed


def test_primary_to_standby_needs_restart_and_signal(data_dir: Path):
    write(data_dir, primary())
    ch = write(data_dir, standby(listen_address="10.0.0.1", application_name=P_URL, members=("10.0.0.2", "10.0.0.3")))
    assert ch.restart_needed
    assert "standby.signal" in ch.changed and "primary_conninfo" in ch.changed
    assert (data_dir / "standby.signal").exists()


def test_promoted_standby_to_primary_is_a_reload(data_dir: Path):
    """pg_promote removes standby.signal itself; the primary config then only needs a reload."""
    sb = standby()
    write(data_dir, sb)
    (data_dir / "standby.signal").unlink()  # what promotion does
    ch = write(
        data_dir,
        primary(listen_address=sb.listen_address, application_name=S_URL, members=sb.members, sync_standby=P_URL),
    )
    assert ch.reload_needed and not ch.restart_needed, ch
    assert set(ch.changed) == {"primary_conninfo", "primary_slot_name", "synchronous_standby_names"}


def test_upstream_change_is_a_reload_on_pg15(data_dir: Path):
    write(data_dir, standby())
    ch = write(data_dir, standby(upstream=("10.0.0.3", 5432)))
    assert ch.reload_needed and not ch.restart_needed
    assert ch.changed == ("primary_conninfo",)


def test_unknown_extra_setting_change_is_conservatively_a_restart(data_dir: Path):
    write(data_dir, primary())
    assert write(data_dir, primary(extra_settings={"some_ext.thing": "1"})).restart_needed
    assert write(data_dir, primary(extra_settings={"some_ext.thing": "1", "fsync": "off"})).reload_needed


def test_missing_data_dir_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope"):
        write(tmp_path / "nope", primary())


def test_install_base_config(tmp_path: Path, data_dir: Path):
    tpl = tmp_path / "tpl.conf"
    tpl.write_text("max_connections = 50")
    pgconfig.install_base_config(data_dir, tpl, user=None)
    text = (data_dir / "postgresql.conf").read_text()
    assert text.startswith("max_connections = 50\n") and text.count(INCLUDE_LINE) == 1
    assert not os.path.exists(data_dir / ".postgresql.conf.tmp")


def test_shipped_base_template_has_no_role_settings():
    tpl = Path(__file__).resolve().parents[2] / "etc" / "postgresql.conf"
    s = parse_settings(tpl.read_text())
    managed = set(parse_settings(render_manatee_conf(primary(cluster_name="x"))))
    assert s and not (set(s) & managed), set(s) & managed


def test_a_standbys_tcp_user_timeout_follows_its_role_config():
    """The walreceiver's bound is rendered from the role config; 0 leaves it out (the kernel's)."""
    def conninfo(**kw):
        return parse_settings(render_manatee_conf(standby(**kw)))["primary_conninfo"]
    assert "tcp_user_timeout=5000" in conninfo()
    assert "tcp_user_timeout=12000'" in conninfo(replication_tcp_user_timeout_ms=12000)
    assert "tcp_user_timeout" not in conninfo(replication_tcp_user_timeout_ms=0)
    with pytest.raises(ValueError, match="replication_tcp_user_timeout_ms"):
        standby(replication_tcp_user_timeout_ms=-5)
