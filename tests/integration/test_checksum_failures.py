"""A node whose storage returns a page that is not what PostgreSQL wrote (real PostgreSQL 15,
data checksums on, as manatee's initdb sets them): the query that reads it fails with
"invalid page in block", and nothing else shows it — the status checks read no table.
PostgreSQL counts it in pg_stat_database.checksum_failures; manatee-adm show/verify name the
node and the database, and the sitter's /metrics has manatee_pg_checksum_failures."""

from __future__ import annotations

import pytest

from manatee.cli.adm_probe import probe_pg
from manatee.cli.adm_view import assess
from manatee.core.pg import PgError
from manatee.sitter.metrics import MetricsCollector
from manatee_testbed.postgres import PgNode
from tests.metrics_fakes import parse, sitter, value
from tests.observations import A, healthy

pytestmark = pytest.mark.timeout(120)


async def test_a_page_that_fails_its_checksum_is_named_by_manatee_adm_and_the_metrics(pg_node_factory):
    node: PgNode = pg_node_factory("cksum")
    await node.init()
    await node.start()
    assert (await node.client.query("show data_checksums"))[0]["data_checksums"] == "on"
    await node.execute("create table t as select g as i, repeat('x', 100) as pad from generate_series(1, 2000) g")
    await node.execute("checkpoint")
    rel = (await node.client.query("select pg_relation_filepath('t') as p"))[0]["p"]
    clean = probe_pg(node.url, 5)
    assert clean["checksums"] == {"failures": 0, "last": None, "databases": None}
    await node.stop()
    with open(node.data_dir / rel, "r+b") as f:  # one byte in the middle of the first page
        f.seek(4000)
        b = f.read(1)
        f.seek(4000)
        f.write(bytes([b[0] ^ 0xFF]))
    await node.start()
    with pytest.raises(PgError, match="invalid page in block 0"):
        await node.execute("select count(*) from t")
    got = probe_pg(node.url, 5)
    cs = got["checksums"]
    assert cs["failures"] >= 1 and cs["databases"] == "postgres" and cs["last"], cs
    v = healthy()
    v.nodes[0].pg = got
    found = [(s, m) for s, m in assess(v) if "data checksum failure" in m]
    assert len(found) == 1 and found[0][0] == "critical", found
    assert found[0][1].startswith(f"primary {A.ip}: {cs['failures']} data checksum failure(s) (database postgres")
    s = sitter(A, "primary")
    s.pg.client = node.client
    fams = parse((await MetricsCollector(s, cache_s=0.0).render()).decode())
    assert value(fams, "manatee_pg_checksum_failures") == cs["failures"]
