"""Shared by the unit tests of /metrics and the status server: Prometheus' own text parser
over a rendered page (`parse`, `value`), and a stand-in sitter behind a real StatusServer
(`sitter`: its config, its published snapshot, the I/O the metrics use)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from manatee.shard.state import PRIMARY, STANDBY, ClusterState, Target
from manatee.sitter.pgmanager import PgStatus
from manatee.sitter.snapshot import SitterSnapshot
from tests.observations import A, B, C

parser = pytest.importorskip("prometheus_client.parser")

STATE = ClusterState(generation=3, primary=A, sync=B, async_=(C,), init_wal=0)


def parse(text: str) -> dict[str, list]:
    """{family name: [(sample name, labels, value), ...]} via prometheus_client's parser."""
    out: dict[str, list] = {}
    for fam in parser.text_string_to_metric_families(text):
        out[fam.name] = [(s.name, dict(s.labels), s.value) for s in fam.samples]
        assert fam.documentation, f"{fam.name} has no HELP"
    return out


def value(fams, name, **labels):
    hits = [v for (n, lab, v) in fams[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, f"{name}{labels}: {fams.get(name)}"
    return hits[0]


class FakeClient:
    def __init__(self, lag_bytes=100, lag_s=0.5, xid_age=1234, multixact_age=56, checksum_failures=0):
        self.calls = 0
        self.lag_bytes, self.lag_s = lag_bytes, lag_s
        self.xid_age, self.multixact_age = xid_age, multixact_age
        self.checksum_failures = checksum_failures

    async def query(self, sql, params=None, *, timeout=None):
        self.calls += 1
        await asyncio.sleep(0.05)  # a real round trip: concurrent scrapes overlap it
        return [{"standby_bytes": self.lag_bytes, "standby_seconds": self.lag_s,
                 "replication": [{"application_name": "x", "sync_state": "async", "bytes": 5, "seconds": 0.1}],
                 "xid_age": self.xid_age, "multixact_age": self.multixact_age,
                 "checksum_failures": self.checksum_failures}]


class FakeDataset:
    def __init__(self):
        self.calls = 0

    async def list_snapshots(self):
        self.calls += 1
        return [SimpleNamespace(name="1700000000000")]

    async def space(self):
        return "available\t1000\nused\t200\nquota\t0\n"


def sitter(me=B, role=STANDBY, *, zk="connected", pg=None, restore=None, **kw):
    """A stand-in for the loop: its config, its published snapshot, the I/O the metrics use."""
    pg = pg if pg is not None else PgStatus(True, True, role != PRIMARY, None, role != PRIMARY, False, None, 1,
                                            read_only=role != PRIMARY)
    up = A if me is B else B
    snap = SitterSnapshot(
        me=me, state=STATE, last_pg=pg, last_pg_at=time.monotonic(), session_timeout=10.0,
        target=Target(role, upstream=None if role == PRIMARY else up, read_only=role != PRIMARY),
        role=role, zk_state=zk, restore_progress=restore, started=time.monotonic())
    return SimpleNamespace(
        cfg=SimpleNamespace(ip="127.0.0.1", status_port=0, status_url="http://127.0.0.1:0", shardPath="/manatee/1",
                            insecure=False, zkCfg=SimpleNamespace(auth=None, sessionTimeout=10000, session_timeout_s=10.0),
                            postgresMgrCfg=SimpleNamespace(zfsClientCfg=SimpleNamespace(dataset="p/d"))),
        snapshot=replace(snap, **kw), pg=SimpleNamespace(client=FakeClient()), dataset=FakeDataset())
