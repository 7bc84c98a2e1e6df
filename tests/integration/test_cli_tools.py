"""manatee-stat, manatee-history and manatee-clear against a real ZooKeeper (and, for -p,
real PostgreSQL). The shard's znodes are written by the sitter's own ShardStore, so the
tools read exactly the layout the sitter writes."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from dataclasses import dataclass

import pytest

from manatee.shard.layout import registrar_path
from manatee.core.log import get_logger
from manatee.core.procs import free_port
from manatee.core.zk import ZKClient
from manatee_testbed.postgres import PgNode, replication_rows
from manatee.shard.history import HistoryEvent
from manatee.shard.shardstore import ShardStore
from manatee.shard.state import ClusterState, Peer, error_record
from tests.async_wait import eventually as _eventually
from tests.factories import peer


@dataclass
class Run:
    code: int
    out: str
    err: str
    secs: float

    def json(self):
        return json.loads(self.out)


async def cli(tool: str, *args: str, limit: float = 40.0) -> Run:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"manatee.cli.{tool}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{tool} {args} still running after {limit}s")
    return Run(proc.returncode, out.decode(), err.decode(), time.monotonic() - t0)


def assert_one_line_error(r: Run, code: int, *needles: str) -> None:
    assert r.code == code, (r.code, r.out, r.err)
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    for n in needles:
        assert n in lines[0], lines[0]
    assert r.out == ""


def node(p: Peer) -> dict:
    return {"ip": p.ip, "pgUrl": p.pg_url, "zoneId": p.zone_id}


@pytest.fixture
async def zkc(zk_hosts):
    c = ZKClient(zk_hosts, session_timeout=10, connect_timeout=10)
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def register(zkc: ZKClient, shard: str, *, state: ClusterState | None, members: list[Peer],
                   events: list[HistoryEvent] = (), error: dict | None = None) -> ShardStore:
    """A shard as its sitters leave it in ZooKeeper: election (ephemeral, in `members` order),
    state, registrar (by the primary), history, and the error node in safe mode."""
    store = ShardStore(zkc, f"/manatee/{shard}", registrar_path(shard), get_logger("test"))
    await store.ensure_paths()
    for p in members:
        await store.join(p)
    if state is not None:
        assert await store.cas_state(state, -1)
        await store.publish_registrar(state.primary.pg_url, 60)
    for ev in events:
        await store.record(ev)
    if error is not None:
        await store.write_error(error)
    return store


A, B, C, D = (peer(f"127.77.0.{i}") for i in range(1, 5))


# --------------------------------------------------------------------------- manatee-stat

async def test_stat_roles_follow_the_state(zk_hosts, zkc):
    st = ClusterState(generation=4, primary=B, sync=C, async_=(A,), deposed=(D,))
    await register(zkc, "1", state=st, members=[A, B, C])  # election order A, B, C
    await register(zkc, "2.moray.us-sw-1.joyent.com", state=None, members=[C, A])
    r = await cli("stat", zk_hosts)
    assert r.code == 0 and r.err == "", r.err
    doc = r.json()
    assert list(doc) == ["1", "2.moray.us-sw-1.joyent.com"]
    reg = {"type": "database", "database": {"primary": B.pg_url, "ttl": 60}}
    assert doc["1"] == {"primary": node(B), "sync": node(C), "async": node(A), "deposed": [node(D)],
                        "registrar": reg}
    # no state yet: the election order (the original's rule), no registrar
    assert doc["2.moray.us-sw-1.joyent.com"] == {"primary": node(C), "sync": node(A)}
    assert r.out.startswith('{\n    "1": {\n        "primary": {')  # indented like the guide

    one = await cli("stat", "-s", "1", zk_hosts)
    assert one.code == 0 and one.json() == {"1": doc["1"]}


async def test_stat_shows_safe_mode_then_clear_removes_it_and_refuses_a_second_time(zk_hosts, zkc):
    st = ClusterState(generation=2, primary=A, sync=B)
    err = error_record(st, B, "sync made no progress for 60s")
    await register(zkc, "1", state=st, members=[A, B], error=err)

    r = await cli("stat", "-s", "1", zk_hosts)
    assert r.code == 0 and r.json()["1"]["error"] == err

    c = await cli("clear", "1", zk_hosts)
    assert c.code == 0, c.err
    assert c.json() == {"shard": "1", "removed": "/manatee/1/error", "error": err}
    assert await zkc.exists("/manatee/1/error") is None

    again = await cli("clear", "1", zk_hosts)
    assert_one_line_error(again, 1, "manatee-clear:", "not in safe mode")
    r = await cli("stat", "-s", "1", zk_hosts)
    assert "error" not in r.json()["1"] and r.json()["1"]["primary"] == node(A)


async def test_clear_and_history_refuse_an_unknown_shard(zk_hosts, zkc):
    await register(zkc, "1", state=ClusterState(generation=1, primary=A), members=[A])
    for tool in ("clear", "history"):
        r = await cli(tool, "nosuch", zk_hosts)
        assert_one_line_error(r, 1, f"manatee-{tool}:", "'nosuch' not found")
    r = await cli("stat", "-s", "nosuch", zk_hosts)
    assert_one_line_error(r, 1, "manatee-stat:", "'nosuch' not found")


async def test_stat_with_no_manatee_tree_says_so(zk_hosts):
    r = await cli("stat", zk_hosts)
    assert_one_line_error(r, 1, "no shards", "/manatee does not exist")


# --------------------------------------------------------------------------- manatee-history

async def test_history_lists_every_record_in_zkseq_order(zk_hosts, zkc):
    t = 1_700_000_000_000
    events = [
        HistoryEvent(t, A.ip, "AssumeLeader", "Leader", generation=1),
        HistoryEvent(t + 20, B.ip, "NewLeader", "Standby", master=A.ip, generation=1),
        HistoryEvent(t + 10, A.ip, "NewStandby", "Leader", slave=B.ip, generation=1),  # clock skew
        HistoryEvent(t + 5000, B.ip, "AssumeLeader", "Leader", generation=2),
        HistoryEvent(t + 5001, A.ip, "ExpiredStandby", "Leader", slave=B.ip, generation=2),
    ]
    await register(zkc, "1", state=ClusterState(generation=2, primary=B), members=[B], events=events)
    r = await cli("history", "1", zk_hosts)
    assert r.code == 0 and r.err == ""
    lines = r.out.splitlines()
    recs = [json.loads(x) for x in lines]
    assert [x["zkSeq"] for x in recs] == [f"{i:010d}" for i in range(5)]
    assert [(x["ip"], x["action"], x["master"], x["slave"], x["generation"]) for x in recs] == [
        (e.ip, e.action, e.master, e.slave, e.generation) for e in events]
    assert all(list(x)[:8] == ["time", "date", "ip", "action", "role", "master", "slave", "zkSeq"] for x in recs)
    assert lines[0].startswith('{"time":"1700000000000","date":"2023-11-14T22:13:20.000Z","ip":"127.77.0.1"')

    await register(zkc, "empty", state=None, members=[])
    r = await cli("history", "empty", zk_hosts)
    assert r.code == 0 and r.out == ""


# --------------------------------------------------------------------------- F17

@pytest.mark.parametrize("tool, args", [("stat", []), ("history", ["1"]), ("clear", ["1"])])
async def test_unreachable_zookeeper_one_line_bounded(tool, args):
    port = free_port("127.0.0.1")  # nothing listens there
    r = await cli(tool, "-t", "2", *args, f"127.0.0.1:{port}")
    assert_one_line_error(r, 1, f"manatee-{tool}:", "cannot connect to ZooKeeper", f"127.0.0.1:{port}")
    assert r.secs < 6


async def test_blackholed_zookeeper_one_line_bounded():
    """A server that takes the TCP connection and never answers (a hung or black-holed host)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)  # never accept(): the kernel completes handshakes, nobody replies
        r = await cli("stat", "--timeout", "2", f"127.0.0.1:{s.getsockname()[1]}")
    assert_one_line_error(r, 1, "manatee-stat:", "cannot connect to ZooKeeper")
    assert r.secs < 7


@pytest.mark.slow
async def test_default_timeout_bounds_an_unreachable_zookeeper():
    r = await cli("history", "1", f"127.0.0.1:{free_port('127.0.0.1')}")
    assert_one_line_error(r, 1, "cannot connect", "within 10s")
    assert 9 < r.secs < 15


@pytest.mark.parametrize("tool, args, needle", [
    ("stat", [], "required: ZK"),
    ("stat", ["-x", "zk"], "unrecognized arguments: -x"),
    ("stat", ["zk:notaport"], "bad port"),
    ("stat", ["-s", "a/b", "zk"], "bad shard name"),
    ("history", ["zk"], "required: ZK"),
    ("history", ["../x", "zk"], "bad shard name"),
    ("clear", ["1"], "required: ZK"),
    ("clear", ["1", "zk", "more"], "unrecognized arguments: more"),
    ("clear", ["-t", "-1", "1", "zk"], "--timeout"),
])
async def test_bad_arguments_exit_2_with_one_line(tool, args, needle):
    r = await cli(tool, *args)
    assert_one_line_error(r, 2, f"manatee-{tool}:", needle)


async def test_help_exits_0():
    for tool in ("stat", "history", "clear"):
        r = await cli(tool, "--help")
        assert r.code == 0 and "usage:" in r.out and "ZK" in r.out


# --------------------------------------------------------------------------- manatee-stat -p

def pg_peer(n: PgNode) -> Peer:
    return Peer(id=f"{n.ip}:{n.port}:10002:{n.port + 1}", zone_id=f"zone-{n.name}", ip=n.ip, pg_url=n.url,
                backup_url=f"http://{n.ip}:10002", status_url=f"http://{n.ip}:{n.port + 1}")


async def eventually(fn, timeout=20.0, what="condition"):
    return await _eventually(fn, timeout, 0.2, what)


async def test_stat_p_shows_each_nodes_replication_row_and_async_lag(zk_hosts, zkc, pg_node_factory):
    """A real chain primary → sync → async (cascading), plus an async1 whose PostgreSQL is down."""
    p, s, a = pg_node_factory("primary"), pg_node_factory("sync"), pg_node_factory("async")
    await p.init(sync_standby=s.url)
    await p.start()
    await s.clone_from(p)
    await s.start()
    await a.clone_from(s)
    await a.start()
    await p.execute("create table t (id int)")
    await p.execute("insert into t values (1)")  # waits for the sync: the chain works

    async def streaming():
        pr, sr = await replication_rows(p.client), await replication_rows(s.client)
        return pr and pr[0]["sync_state"] == "sync" and sr and sr[0]["state"] == "streaming"

    await eventually(streaming, what="chain streaming")
    down = peer("127.0.0.1", "down", port=free_port("127.0.0.1"))
    st = ClusterState(generation=3, primary=pg_peer(p), sync=pg_peer(s), async_=(pg_peer(a), down))
    await register(zkc, "1", state=st, members=[pg_peer(x) for x in (p, s, a)])

    r = await cli("stat", "-p", zk_hosts)
    assert r.code == 0, r.err
    doc = r.json()["1"]
    assert list(doc) == ["primary", "sync", "async", "async1", "registrar"]
    prim, sync, asy, asy1 = doc["primary"], doc["sync"], doc["async"], doc["async1"]
    assert {k: prim[k] for k in ("ip", "pgUrl", "zoneId")} == node(pg_peer(p))
    # the primary's row is its sync's connection, by PostgreSQL's PG 15 column names
    assert prim["repl"]["application_name"] == s.url
    assert prim["repl"]["sync_state"] == "sync" and prim["repl"]["state"] == "streaming"
    for col in ("pid", "usesysid", "usename", "client_addr", "client_port", "backend_start",
                "sent_lsn", "write_lsn", "flush_lsn", "replay_lsn", "sync_priority"):
        assert col in prim["repl"], col
    assert prim["repl"]["backend_start"].endswith("Z")
    # the sync's row is the async streaming from it
    assert sync["repl"]["application_name"] == a.url and sync["repl"]["sync_state"] == "async"
    assert "error" not in prim and "error" not in sync
    # the async has no standby; its lag is an interval object (or null before any replay)
    assert asy["repl"] == {} and "error" not in asy
    assert set(asy["lag"]) == {"time_lag"}
    assert asy["lag"]["time_lag"] is None or set(asy["lag"]["time_lag"]) <= {
        "days", "hours", "minutes", "seconds", "milliseconds"}
    # a node whose PostgreSQL is down: empty repl and why
    assert asy1["repl"] == {} and "cannot connect to " + down.pg_url in asy1["error"]
    assert r.secs < 10
