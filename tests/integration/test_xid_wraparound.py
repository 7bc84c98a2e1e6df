"""Transaction-ID wraparound ahead, made for real on PostgreSQL 15: a forgotten logical
replication slot holds the oldest catalog xmin (autovacuum cannot freeze past it) and pg_resetwal moves
the next transaction ID far ahead — first to 1.2 billion (manatee-adm warns), then to 2^31
less 2 segments of pg_xact, where PostgreSQL refuses every new transaction ID ("database is
not accepting commands to avoid wraparound data loss"). manatee-adm show/verify name the
database, the age and the slot; the sitter's /metrics show the age.

A prepared transaction holds the xmin too, but every start after the jump then zeroes
pg_subtrans from its ID to the next one: 8 GB written per start (the sandbox trial filled
its pool with it). A slot is no running transaction: nothing to zero."""

from __future__ import annotations

import os
import pwd

import pytest

from manatee.cli import adm
from manatee.cli.adm_probe import probe_pg
from manatee.cli.adm_view import assess, render_show, verdict
from manatee.cli.adm_xid import STOP_AGE
from manatee.core.pg import PgError, run_as
from manatee.sitter.health import PgHealth
from manatee.sitter.metrics import MetricsCollector
from manatee_testbed.postgres import PgNode
from tests.fixtures_pg import pg_manager_for
from tests.metrics_fakes import parse, sitter, value
from tests.observations import A, healthy
from tests.sim.clock import FakeClock, SimLog

pytestmark = pytest.mark.timeout(120)  # a few clean restarts of one PostgreSQL: about 2 s in all

XACTS_PER_SEGMENT = 32 * 8192 * 4  # a pg_xact segment: 32 pages of 2 status bits per transaction
STOPPED_X = 2**31 - 2 * XACTS_PER_SEGMENT  # past PostgreSQL's stop limit (3 million short of 2^31)
WARN_X = 1_200_000_000


@pytest.fixture
async def held(pg_node_factory) -> PgNode:
    """A primary whose logical replication slot 'hold' (a stalled consumer) holds the oldest
    catalog xmin."""
    node: PgNode = pg_node_factory("xid")
    await node.init()
    with open(node.data_dir / "postgresql.auto.conf", "a") as f:
        f.write("wal_level = logical\n")
    await node.start()
    await node.execute("create table t (i int)")
    await node.execute("select pg_create_logical_replication_slot('hold', 'test_decoding')")
    return node


async def _jump_to(node: PgNode, next_xid: int) -> None:
    """Stop PostgreSQL cleanly, set its next transaction ID, give pg_xact the (all in
    progress: zero) segment that ID falls in, start it again."""
    await node.stop()
    await run_as([node.bindir / "pg_resetwal", "-x", str(next_xid), "-D", node.data_dir], user=node.user)
    seg = node.data_dir / "pg_xact" / f"{next_xid // XACTS_PER_SEGMENT:04X}"
    seg.write_bytes(bytes(32 * 8192))
    pw = pwd.getpwnam(node.user)
    os.chown(seg, pw.pw_uid, pw.pw_gid)
    await node.start()


def _shard_with(probe: dict):
    v = healthy()
    assert v.nodes[0].peer["id"] == A.id
    v.nodes[0].pg = probe
    return v


async def _metric_ages(node: PgNode) -> tuple[float, float]:
    """manatee_pg_xid_age and manatee_pg_multixact_age as a sitter's /metrics shows them for `node`."""
    s = sitter(A, "primary")
    s.pg.client = node.client
    page = (await MetricsCollector(s, cache_s=0.0).render()).decode()
    fams = parse(page)
    return value(fams, "manatee_pg_xid_age"), value(fams, "manatee_pg_multixact_age")


async def test_wraparound_ahead_is_named_with_the_slot_that_holds_it(held: PgNode, monkeypatch, capsys):
    got = probe_pg(held.url, 5)
    x = got["xidAge"]
    assert x["age"] < 10_000 and x["mxidAge"] < 10_000, x
    assert x["holder"]["kind"] == "slot" and x["holder"]["name"] == "hold", x
    assert assess(_shard_with(got)) == []  # a young cluster: no line
    xid_age, mxid_age = await _metric_ages(held)
    assert xid_age == x["age"] and mxid_age == x["mxidAge"]

    await _jump_to(held, WARN_X)
    got = probe_pg(held.url, 5)
    assert WARN_X - 10_000 < got["xidAge"]["age"] <= WARN_X, got["xidAge"]
    found = assess(_shard_with(got))
    assert verdict(found) == "warning", found
    line = next(m for _, m in found)
    assert f"primary {A.ip}: XID age 1.20 billion in database " in line
    assert "PostgreSQL refuses writes in 0.94 billion more transactions" in line
    assert "the oldest xmin is held by replication slot 'hold' (age 1.20 billion, inactive): fix or drop" in line
    await held.execute("insert into t values (2)")  # still takes writes

    await _jump_to(held, STOPPED_X)
    with pytest.raises(PgError, match="to avoid wraparound data loss"):
        await held.execute("insert into t values (3)")
    got = probe_pg(held.url, 5)  # a read-only probe still answers
    age = got["xidAge"]["age"]
    assert STOP_AGE < age <= STOPPED_X, got["xidAge"]
    v = _shard_with(got)
    monkeypatch.setattr(adm, "gather", lambda *a, **k: v)
    assert adm.cmd_verify(type("Args", (), {"shard": "1", "timeout": 5, "json": False})(), None) == 2
    out = capsys.readouterr().out
    assert f"critical: primary {A.ip}: XID age 2.15 billion in database " in out, out
    assert "PostgreSQL refuses writes now" in out
    assert "held by replication slot 'hold' (age 2.15 billion, inactive): fix or drop its consumer" in out
    assert "XID age 2.15 billion" in render_show(v)
    xid_age, _ = await _metric_ages(held)
    assert STOP_AGE < xid_age <= STOPPED_X and xid_age >= age

    await held.execute("select pg_drop_replication_slot('hold')")  # gone; the age stays until VACUUM (FREEZE)
    line = next(m for _, m in assess(_shard_with(probe_pg(held.url, 5))) if "XID age" in m)
    assert "nothing holds the oldest xmin back: run VACUUM (FREEZE)" in line, line


async def test_the_sitters_write_probe_sees_the_refusal_and_counts_no_failure(held: PgNode):
    """The sitter's own PgManager and PgHealth on the same PostgreSQL, refusing new IDs: its
    status query answers (out of recovery, read-write), the write probe fails with the
    wraparound error, and that is no evidence against the node — no failed probe is counted
    and it never turns sick, however long it lasts (a failover would only move the refusal:
    the standbys replay the same IDs); the episode is kept with PostgreSQL's words."""
    await _jump_to(held, STOPPED_X)
    pm = pg_manager_for(held)
    clock, records = FakeClock(), []
    h = PgHealth(pm, SimLog(clock, held.ip, records), clock, primary_start_timeout_s=2.0, interval_s=1.0)
    try:
        for t in range(6):  # three times primaryStartTimeout
            clock.now = float(t)
            pgs = await pm.status()
            assert pgs.known and pgs.in_recovery is False and pgs.read_only is False, pgs
            await h.probe_writes(pgs, as_primary=True)
            h.track(pgs, as_primary=True, role="primary", target=None)
            assert h.probe_failures == 0 and h.sick_since is None and h.cannot_serve is None
        assert h.wraparound_since == 0.0 and "to avoid wraparound data loss" in h.wraparound_error
        assert h.wraparound_error.startswith("ERROR:  database is not accepting commands"), h.wraparound_error
        assert [r[3] for r in records].count("pg_xid_wraparound_refusal") == 1
        assert "pg_write_probe_failed" not in [r[3] for r in records]
    finally:
        pm.client.close()
