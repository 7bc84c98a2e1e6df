"""The status server's GET routes against a stand-in sitter (plain attributes: the routes only
read them): health endpoints with ?lag=, /liveness without ZooKeeper or PostgreSQL, /ping's
semantics, and /metrics served from cached observations — one PostgreSQL query per cache
period however many scrapes — with shard/node labels on every series, process_* included."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manatee.sitter.metrics import MetricsView, lag_within, parse_lag, parse_space
from manatee.sitter.pgmanager import PgStatus
from manatee.shard.state import PRIMARY, STANDBY
from manatee.sitter.status import StatusServer
from tests.metrics_fakes import STATE, sitter
from tests.observations import A, B, C

parser = pytest.importorskip("prometheus_client.parser")

async def client_for(s) -> TestClient:
    srv = StatusServer(s, SimpleNamespace(info=lambda *a, **k: None, debug=lambda *a, **k: None,
                                          warning=lambda *a, **k: None))
    c = TestClient(TestServer(srv.app))
    await c.start_server()
    return c


async def codes(s, *paths) -> list[int]:
    c = await client_for(s)
    try:
        return [(await c.get(p)).status for p in paths]
    finally:
        await c.close()


@pytest.mark.parametrize("text, want", [
    ("1MB", ("bytes", 1 << 20)), ("16kB", ("bytes", 16 << 10)), ("4096", ("bytes", 4096)),
    ("2GB", ("bytes", 2 << 30)), ("10s", ("seconds", 10.0)), ("500ms", ("seconds", 0.5)),
    ("2min", ("seconds", 120.0)), ("1h", ("seconds", 3600.0)),
])
def test_parse_lag(text, want):
    assert parse_lag(text) == want


@pytest.mark.parametrize("bad", ["", "fast", "1XB", "-1MB", "1 MB x"])
def test_parse_lag_rejects_naming_the_value(bad):
    with pytest.raises(ValueError, match="lag="):
        parse_lag(bad)


def test_unknown_lag_is_not_within():
    v = MetricsView(peer_id="p", zone_id="z", shard="/manatee/1", role="async", local_role="standby")
    assert lag_within(v, "bytes", 1e9) is None


async def test_replica_lag_threshold_and_the_role_endpoints():
    s = sitter(B, STANDBY)  # the sync, 100 bytes / 0.5 s behind
    assert await codes(s, "/replica", "/replica?lag=1MB", "/replica?lag=64", "/replica?lag=10s",
                       "/replica?lag=100ms", "/sync", "/sync?lag=1kB", "/async", "/read-only",
                       "/read-only?lag=16", "/primary", "/replica?lag=lots") == \
        [200, 200, 503, 200, 503, 200, 200, 503, 200, 503, 503, 400]
    s = sitter(C, STANDBY)  # the async
    assert await codes(s, "/sync", "/async", "/async?lag=1MB") == [503, 200, 200]
    s = sitter(A, PRIMARY)
    assert await codes(s, "/primary", "/replica", "/read-only", "/read-only?lag=1kB", "/sync") == \
        [200, 503, 200, 200, 503]
    s = sitter(B, STANDBY, pg=PgStatus(True, True, True, None, False, False, None, 1, read_only=True))
    assert await codes(s, "/replica", "/read-only", "/sync") == [503, 503, 503]  # not streaming
    s = sitter(B, STANDBY)
    s.pg.client.lag_bytes = None  # the lag query gave nothing: unknown is not "within"
    assert await codes(s, "/replica", "/replica?lag=1GB") == [200, 503]


async def test_liveness_needs_neither_zookeeper_nor_postgres_and_ping_means_a_database():
    down = PgStatus(False, False, None, None, False, False, None, None)
    s = sitter(B, STANDBY, zk="lost", pg=down)
    assert await codes(s, "/liveness", "/readiness", "/ping") == [200, 503, 503]
    s = sitter(B, STANDBY, zk="lost")  # PostgreSQL fine, ZooKeeper gone: ping yes, ready no
    assert await codes(s, "/liveness", "/readiness", "/ping") == [200, 503, 200]
    s = sitter(B, STANDBY)
    assert await codes(s, "/liveness", "/readiness", "/ping") == [200, 200, 200]
    s = sitter(B, "rebuild", restore={"phase": "receiving", "completed": 1, "size": 9})
    assert await codes(s, "/ping", "/readiness") == [503, 503]
    s = sitter(B, STANDBY, last_pg=None)
    assert await codes(s, "/ping", "/liveness") == [503, 200]


async def test_metrics_are_cached_and_one_query_serves_concurrent_scrapes():
    s = sitter(B, STANDBY)
    c = await client_for(s)
    try:
        rs = await asyncio.gather(*(c.get("/metrics") for _ in range(20)))
        texts = [await r.text() for r in rs]
        assert all(r.status == 200 for r in rs)
        assert s.pg.client.calls == 1, "20 concurrent scrapes: one PostgreSQL query"
        for _ in range(5):
            assert (await c.get("/metrics")).status == 200
        assert s.pg.client.calls == 1, "within the cache period: no new query"
        await c.get("/replica?lag=1MB")
        assert s.pg.client.calls == 1, "the lag endpoints read the same cache"
        await asyncio.sleep(1.05)
        await c.get("/metrics")
        assert s.pg.client.calls == 2
        assert s.dataset.calls == 1, "zfs is asked once per 30 s"
    finally:
        await c.close()
    fams = list(parser.text_string_to_metric_families(texts[0]))
    names = {f.name for f in fams}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "manatee_standby_lag_bytes",
            "manatee_dataset_available_bytes", "manatee_transitions"} <= names
    for f in fams:
        for smp in f.samples:
            assert smp.labels.get("shard") == "1" and smp.labels.get("node") == B.zone_id, smp
        if f.type == "counter":
            assert all(smp.name.endswith(("_total", "_created")) for smp in f.samples), f.name
    by = {f.name: f for f in fams}
    assert by["manatee_standby_lag_bytes"].samples[0].value == 100
    assert by["manatee_dataset_available_bytes"].samples[0].value == 1000
    assert by["manatee_dataset_quota_bytes"].samples[0].value == 0


def test_parse_space():
    assert parse_space("available\t1000\nused\t20\nquota\t-\n") == {"available": 1000, "used": 20, "quota": None}


async def test_liveness_fails_only_when_the_loop_is_stuck():
    s = sitter(B, STANDBY, last_pg_at=time.monotonic() - 10_000)  # no observation for hours
    assert await codes(s, "/liveness") == [503]
    s = sitter(B, "rebuild", last_pg_at=time.monotonic() - 10_000,
               restore={"phase": "receiving", "completed": 1, "size": 9})  # a long restore is alive
    assert await codes(s, "/liveness") == [200]
    s = sitter(B, STANDBY, last_pg_at=0.0)  # never observed yet (waiting for ZooKeeper): alive
    assert await codes(s, "/liveness") == [200]
    s = sitter(B, STANDBY, last_pg_at=time.monotonic() - 100)  # under 2 opsTimeout + 2 T (120 s min)
    assert await codes(s, "/liveness") == [200]


async def test_the_status_server_reads_the_real_loops_snapshot_and_asks_it_by_its_methods():
    """The production Sitter (fakes behind it, tests/sim): the routes answer from the snapshot it
    published, and a restart request reaches it only through request_restart."""
    from tests.sim.standalone import standalone_sitter

    s = standalone_sitter(B, state=STATE, election=(A, B, C))
    await s.cycle_once()  # observe, decide (B is the sync: a standby of A), publish
    snap = s.snapshot
    c = await client_for(s)
    try:
        body = await (await c.get("/state")).json()
        assert body["role"] == "sync" and body["localRole"] == snap.role and body["rule"] == snap.rule
        assert body["restartRequested"] is False and sorted(body["election"]) == sorted([A.id, B.id, C.id])
        r = await c.post("/restart", json={})
        assert r.status == 202 and s.restart_request is False  # asked through the method, not forced
        assert s.snapshot is not snap and s.snapshot.restart_requested  # and published again
        assert (await (await c.get("/state")).json())["restartRequested"] is True
    finally:
        await c.close()
    with pytest.raises(Exception):
        snap.role = "primary"  # frozen: readers cannot change what the loop published


def test_a_reload_is_published_at_once_as_parameters_pending():
    """manatee-adm reload waits for /state's parametersPending to clear: right after the reload
    it must be set, not a snapshot from before it (which would say "applied")."""
    from types import SimpleNamespace as NS

    from manatee.sitter.snapshot import debug_state
    from tests.sim.standalone import standalone_sitter

    s = standalone_sitter(B, state=STATE, election=(A, B, C))
    s.last_pg = PgStatus(True, True, True, None, True, False, None, 1, read_only=True, parameters_gen=0)
    s.publish()
    s.pg.set_parameters = lambda params: True  # the new parameters differ
    s.pg.parameters_gen = 1
    s.reload_config(NS(postgresMgrCfg=NS(parameters={"work_mem": "5MB"})))
    cfg = NS(insecure=True, zkCfg=NS(auth=None, sessionTimeout=6000, session_timeout_s=6.0))
    assert debug_state(s.snapshot, cfg, time.monotonic())["pg"]["parametersPending"] is True


def test_a_session_change_is_published_at_once():
    """/readiness reads the snapshot: a lost ZooKeeper connection shows before the next cycle."""
    from tests.sim.standalone import standalone_sitter

    s = standalone_sitter(B, state=STATE, election=(A, B, C))
    assert s.snapshot.zk_state == "connected"
    s.session._fire("suspended")
    assert s.snapshot.zk_state == "suspended"
