"""manatee-adm's probe of the primary names ALTER ROLE / ALTER DATABASE settings of
synchronous_commit that do not wait for the sync (real PostgreSQL 15): commits of those
sessions return before the sync has them, and a failover loses them (S2 covers only commits
that waited). A session's own `SET` is the client's choice and cannot be seen from here."""

from __future__ import annotations

from manatee.cli.adm_probe import probe_pg
from manatee_testbed.postgres import PgNode


async def test_the_primarys_probe_lists_each_scope_that_does_not_wait_for_the_sync(pg_node: PgNode):
    assert probe_pg(pg_node.url, 5)["weakCommit"] == []
    await pg_node.execute("create role app login")
    await pg_node.execute("create role careful login")
    await pg_node.execute("alter role app set synchronous_commit = off")
    await pg_node.execute("alter role app in database postgres set synchronous_commit = 'LOCAL'")
    await pg_node.execute("alter role careful set synchronous_commit = remote_apply")  # waits: not listed
    await pg_node.execute("alter database postgres set synchronous_commit = local")
    await pg_node.execute("alter role app set work_mem = '8MB'")  # other settings: not listed
    got = probe_pg(pg_node.url, 5)
    assert got["up"] and not got["recovery"], got
    assert [(w["role"], w["db"], w["setting"].lower()) for w in got["weakCommit"]] == [
        ("", "postgres", "synchronous_commit=local"),
        ("app", "", "synchronous_commit=off"),
        ("app", "postgres", "synchronous_commit=local"),
    ], got["weakCommit"]


async def test_the_probe_says_when_fsync_is_off(pg_node: PgNode):
    """fsync = off (an operator's postgresMgrCfg.parameters): the node's WAL is not durable."""
    assert probe_pg(pg_node.url, 5)["noFsync"] is False
    await pg_node.execute("alter system set fsync = off")
    await pg_node.execute("select pg_reload_conf()")
    got = probe_pg(pg_node.url, 5)
    assert got["up"] and got["noFsync"] is True, got
