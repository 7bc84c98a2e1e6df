"""The primary's write probe (issue 8) on real PostgreSQL 15: the sitter proves that its
primary can commit locally (manatee.sitter.health.WRITE_PROBE_SQL), whatever its sync does,
and a node that cannot write WAL fails the probe instead of passing it."""

from __future__ import annotations

import time

import pytest

from manatee.core.lsn import Lsn
from manatee.core.pg import PgClient, PgError
from manatee.sitter.health import WRITE_PROBE_SQL
from manatee_testbed.postgres import PgNode, wal_position

pytestmark = pytest.mark.timeout(120)


def _monitor(node: PgNode) -> PgClient:
    return PgClient(str(node.proc.socket_dir), node.port, user="postgres", persistent=True,
                    application_name="manatee-sitter")


async def test_the_probe_commits_locally_while_commits_wait_for_a_missing_sync(pg_node_factory):
    p: PgNode = pg_node_factory("probe")
    await p.init(sync_standby="a-sync-that-never-connects")
    await p.start()
    mon = _monitor(p)
    try:
        await mon.query("select set_config('synchronous_commit', 'local', true); create table t (i int)", timeout=5)
        before = await wal_position(p.client)
        t0 = time.monotonic()
        rows = await mon.query(WRITE_PROBE_SQL, timeout=2.0)
        took = time.monotonic() - t0
        assert took < 1.5 and rows[0]["sc"] == "local"
        assert Lsn.parse(rows[0]["lsn"]) >= before and await wal_position(p.client) > before
        # an ordinary commit on the same primary waits for the sync (for ever: statement_timeout
        # does not cover the wait at commit), the probe does not
        with pytest.raises(PgError) as e:
            await PgClient(str(p.proc.socket_dir), p.port, user="postgres").query(
                "insert into t values (1)", timeout=1.0)
        assert e.value.timed_out
        rows = await mon.query(WRITE_PROBE_SQL, timeout=2.0)
        assert rows[0]["sc"] == "local"
    finally:
        mon.close()


async def test_the_probe_fails_where_no_wal_can_be_written(pg_node_factory):
    p: PgNode = pg_node_factory("probe-p")
    s: PgNode = pg_node_factory("probe-s")
    await p.init()
    await p.start()
    await s.clone_from(p)
    await s.start()
    mon = _monitor(s)
    try:
        with pytest.raises(PgError, match="recovery") as e:
            await mon.query(WRITE_PROBE_SQL, timeout=2.0)
        assert not e.value.timed_out
    finally:
        mon.close()


async def test_a_read_only_primary_would_still_write_wal_so_the_sitter_skips_it(pg_node_factory):
    """default_transaction_read_only does not stop the probe's WAL record: probing a read-only
    primary would grow its WAL (which a switchover and a new sync wait to see stop), so the
    sitter does not probe it (PgHealth.probe_writes)."""
    p: PgNode = pg_node_factory("probe-ro")
    await p.init(read_only=True)
    await p.start()
    mon = _monitor(p)
    try:
        assert (await mon.query("show default_transaction_read_only", timeout=2))[0]["default_transaction_read_only"] == "on"
        before = await wal_position(p.client)
        await mon.query(WRITE_PROBE_SQL, timeout=2.0)
        assert await wal_position(p.client) > before
    finally:
        mon.close()
