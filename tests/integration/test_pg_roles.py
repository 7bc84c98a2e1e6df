"""The replication role on real PostgreSQL 15 (ACCEPTANCE S10): it streams, and its
password opens no ordinary session; the primary creates it even while read-only and
waiting for a sync; initdb's password file is not written through a planted link."""

from __future__ import annotations

import asyncio
import os
import time

import psycopg2
import psycopg2.extras
import pytest

from manatee.core import pg as pgmod
from manatee.core.pg import PgError, ensure_role
from manatee_testbed.postgres import PgNode, setting

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/lib/postgresql/15/bin/postgres"),
    reason="needs root and PostgreSQL 15",
)

PW = "repl-pw-0123456789"


def _scram(node: PgNode, **kw):
    """Replication from loopback members with passwords; the harness's admin (postgres,
    trust on 127.0.0.1) stays for the test's own TCP checks."""
    return node.role_config(auth_method="scram-sha-256", replication_user="replicator",
                            client_cidrs=("127.0.0.1/32",), **kw)


def _connect(node: PgNode, user: str, password: str, *, replication: bool = False):
    kw = {"connection_factory": psycopg2.extras.PhysicalReplicationConnection} if replication else {}
    conn = psycopg2.connect(host=node.ip, port=node.port, user=user, password=password, dbname="postgres",
                            connect_timeout=3, **kw)
    try:
        cur = conn.cursor()
        cur.execute("IDENTIFY_SYSTEM" if replication else "select current_user")
        return cur.fetchone()
    finally:
        conn.close()


async def _eventually(fn, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        v = await fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.2)


async def test_replication_role_streams_but_opens_no_session(pg_node_factory):
    p: PgNode = pg_node_factory("primary")
    s: PgNode = pg_node_factory("standby")
    await p.init()
    await p.start()
    assert await ensure_role(p.client, "replicator", PW, replication=True)
    assert not await ensure_role(p.client, "replicator", "other", replication=True)  # idempotent
    row = (await p.psql("select rolsuper, rolreplication, rolcanlogin, rolpassword like 'SCRAM-SHA-256$%%' as scram"
                        " from pg_authid where rolname = 'replicator'"))[0]
    assert row == {"rolsuper": False, "rolreplication": True, "rolcanlogin": True, "scram": True}
    await p.execute("create table t (id int primary key)")
    # (the harness clones over TCP as the superuser, before the primary's pg_hba tightens)
    await s.clone_from(p, auth_method="scram-sha-256", replication_user="replicator", replication_password=PW,
                       client_cidrs=("127.0.0.1/32",))
    await p.apply(_scram(p))
    await _eventually(lambda: _hba_replication_users(p, ["replicator"]), "hba reload")

    # the replication password opens a replication connection...
    ident = await asyncio.to_thread(_connect, p, "replicator", PW, replication=True)
    assert int(ident[1]) == 1
    # ...but no ordinary session
    with pytest.raises(psycopg2.OperationalError, match="rejects connection"):
        await asyncio.to_thread(_connect, p, "replicator", PW)
    # a wrong password is refused even for replication, and the superuser may not replicate
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        await asyncio.to_thread(_connect, p, "replicator", "wrong", replication=True)
    with pytest.raises(psycopg2.OperationalError, match="rejects replication connection"):
        await asyncio.to_thread(_connect, p, "postgres", PW, replication=True)
    # nor a TCP session as the superuser when no admin role is configured
    await p.apply(_scram(p, admin_user=None))
    await _eventually(lambda: _hba_has_no_admin(p), "hba reload")
    with pytest.raises(psycopg2.OperationalError, match="rejects connection"):
        await asyncio.to_thread(_connect, p, "postgres", PW)

    # the standby streams as the replication role
    await s.start()
    rows = await _eventually(lambda: _streaming(p), "standby streaming as replicator")
    assert rows[0]["usename"] == "replicator"
    await p.execute("insert into t select generate_series(1, 100)")
    await _eventually(lambda: _count(s, 100), "rows on the standby")


async def _hba_replication_users(node: PgNode, users: list[str]) -> bool:
    rows = await node.psql("select user_name from pg_hba_file_rules where database = '{replication}'"
                           " and auth_method <> 'reject' and type = 'host'")
    return bool(rows) and all(r["user_name"] == users for r in rows)


async def test_role_created_on_a_read_only_primary_waiting_for_its_sync(pg_node: PgNode):
    # the sitter's primary before its sync caught up: read-only, synchronous_standby_names
    # naming a sync that is not there. CREATE ROLE must neither fail nor wait for it.
    await pg_node.apply(pg_node.role_config(read_only=True, sync_standby="nosuch"))
    await _eventually(lambda: _setting(pg_node, "default_transaction_read_only", "on"), "read-only")
    t0 = time.monotonic()
    assert await asyncio.wait_for(ensure_role(pg_node.client, "replicator", PW, replication=True), 5)
    assert time.monotonic() - t0 < 5
    with pytest.raises(PgError, match="read-only"):
        await pg_node.execute("create table x (i int)")


async def test_initdb_password_file_does_not_follow_a_planted_link(pg_node_factory, tmp_path):
    node: PgNode = pg_node_factory("pw")
    node._prepare_dirs()
    target = tmp_path / "precious"
    target.write_text("precious\n")
    os.chmod(target, 0o644)
    pwfile = node.data_dir.parent / f".{node.data_dir.name}.pwfile"
    os.symlink(target, pwfile)
    await pgmod.initdb(node.data_dir, user=node.user, bindir=node.bindir, sync=False, password=PW)
    assert target.read_text() == "precious\n" and (os.stat(target).st_mode & 0o777) == 0o644
    assert os.stat(target).st_uid == 0
    assert not os.path.lexists(pwfile)
    # and the password is the superuser's
    rows = await _start_and_query(node, "select rolpassword like 'SCRAM-SHA-256$%%' as ok from pg_authid"
                                        " where rolname = 'postgres'")
    assert rows == [{"ok": True}]


async def _start_and_query(node: PgNode, sql: str):
    from manatee.core import pgconfig
    from manatee_testbed.postgres import BASE_CONFIG

    pgconfig.install_base_config(node.data_dir, BASE_CONFIG, user=node.user)
    node.configure(node.role_config("primary"))
    await node.start()
    return await node.psql(sql)


async def _hba_has_no_admin(node: PgNode) -> bool:
    rows = await node.psql("select user_name, auth_method from pg_hba_file_rules where type = 'host'")
    return {"user_name": ["postgres"], "auth_method": "reject"} in rows


async def _streaming(p: PgNode):
    rows = await p.psql("select usename, state from pg_stat_replication")
    return rows if rows and rows[0]["state"] == "streaming" else None


async def _count(node: PgNode, n: int) -> bool:
    return (await node.psql("select count(*) as n from t"))[0]["n"] == n


async def _setting(node: PgNode, name: str, value: str) -> bool:
    return await setting(node.client, name) == value


OLD = "old-superuser-pw-42"


async def _repl_users(p: PgNode) -> dict[str, str]:
    rows = await p.psql("select application_name, usename from pg_stat_replication where state = 'streaming'")
    return {r["application_name"]: r["usename"] for r in rows}


async def test_migration_from_superuser_replication_never_stops_streaming(pg_node_factory):
    """docs/security.md "Migration", on real PostgreSQL: a primary and two standbys
    streaming as the superuser (a config from before the replication role) move to the
    replication role one node at a time; every intermediate state streams."""
    p: PgNode = pg_node_factory("p")
    s1: PgNode = pg_node_factory("s1")
    s2: PgNode = pg_node_factory("s2")
    await p.init()
    await p.start()
    await p.execute("create table t (id int primary key)")
    base = dict(auth_method="scram-sha-256", client_cidrs=("127.0.0.1/32",))
    old = dict(base, replication_user="postgres", replication_password=OLD)
    await s1.clone_from(p, **old)
    await s2.clone_from(p, **old)
    await p.execute(f"alter role postgres password '{OLD}'")
    await p.apply(p.role_config(**old))
    await s1.start()
    await s2.start()

    async def streaming_as(want: dict[str, str]):
        return await _repl_users(p) == want or None

    async def rows_reach_both(n: int):
        await p.execute(f"insert into t values ({n})")
        for s in (s1, s2):
            await _eventually(lambda s=s: _has(s, n), f"row {n} on {s.name}")

    await _eventually(lambda: streaming_as({s1.url: "postgres", s2.url: "postgres"}), "old config streaming")
    await rows_reach_both(1)

    # 1: the role exists (with its new password) and every node admits both roles
    assert await ensure_role(p.client, "replicator", PW, replication=True)
    await p.apply(p.role_config(**old, extra_replication_users=("replicator",)))
    for s in (s1, s2):
        await s.apply(s.role_config("standby", upstream=(p.ip, p.port), application_name=s.url, **old,
                                    extra_replication_users=("replicator",)))
    await rows_reach_both(2)

    # 2: one standby moves first (its walreceiver reconnects as replicator), then the rest
    new = dict(base, replication_user="replicator", replication_password=PW, extra_replication_users=("postgres",))
    await s1.apply(s1.role_config("standby", upstream=(p.ip, p.port), application_name=s1.url, **new))
    await _eventually(lambda: streaming_as({s1.url: "replicator", s2.url: "postgres"}), "s1 moved, s2 not yet")
    await rows_reach_both(3)
    await p.apply(p.role_config(**new))
    await s2.apply(s2.role_config("standby", upstream=(p.ip, p.port), application_name=s2.url, **new))
    await _eventually(lambda: streaming_as({s1.url: "replicator", s2.url: "replicator"}), "both moved")
    await rows_reach_both(4)

    # 3: the superuser no longer replicates
    final = dict(base, replication_user="replicator", replication_password=PW)
    await p.apply(p.role_config(**final))
    await _eventually(lambda: _hba_replication_users(p, ["replicator"]), "hba reload")
    with pytest.raises(psycopg2.OperationalError, match="rejects replication connection"):
        await asyncio.to_thread(_connect, p, "postgres", OLD, replication=True)
    await rows_reach_both(5)
    assert await _repl_users(p) == {s1.url: "replicator", s2.url: "replicator"}


async def _has(node: PgNode, n: int) -> bool:
    return bool(await node.psql("select 1 from t where id = %s", (n,)))
