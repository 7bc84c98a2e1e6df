"""Issue 9 on a real shard: the sitters' POST endpoints need the shard secret, and a flood of
idle connections plus a /metrics scrape storm does not stop a sitter from observing PostgreSQL.

One sandbox shard (ZooKeeper, zfs-fuse, three nodes of sitter + snapshotter + backupserver,
PostgreSQL 15), every daemon reading the sandbox's one shard secret file. That the shard
becomes and stays healthy already shows that signed heartbeats and signed backup requests
work (a standby's rebuild goes through the backupserver with a checked stream header).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from manatee.core.auth import ShardSecret, sign_request
from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]

IDLE_CONNECTIONS = 10_000
SCRAPES_PER_S = 50


SHARD = SharedShard("security")


def http(url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 3.0,
         source: str | None = None) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    opener = urllib.request.build_opener(_SourceHandler(source)) if source else urllib.request.build_opener()
    try:
        with opener.open(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except OSError as e:  # no answer (reset, timeout): status 0
        return 0, f"{type(e).__name__}: {e}"
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class _SourceHandler(urllib.request.HTTPHandler):
    """Connect from `source` (a member's address, so that only the proof is missing)."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def http_open(self, req):
        import http.client

        return self.do_open(lambda host, **kw: http.client.HTTPConnection(
            host, source_address=(self.source, 0), **kw), req)


def state(node) -> dict:
    code, body = http(f"{node.status_url}/state")
    assert code == 200, body
    return body


def test_posts_without_the_shard_secret_are_refused_and_change_nothing(shard: Shard):
    """POST /rebuild, /heartbeat (sitters) and /backup (backupserver) without a valid proof of
    the shard secret, from members' addresses: 401, and nothing happens."""
    p, s, a = names(shard.topology())
    P, S, A = shard.node(p), shard.node(s), shard.node(a)
    gen0 = shard.zk_state()["generation"]
    before = {n.name: state(n) for n in (P, S, A)}
    jobs0 = P.log_path("backupserver").read_text(errors="replace").count("backup_job_queued")
    strangers = ShardSecret.of("another-shards-secret-xyz")
    rebuild = json.dumps({"force": True}).encode()
    # A forged heartbeat claiming to be the sync, from the sync's own address.
    beat = json.dumps({"id": before[S.name]["id"], "pgUrl": before[S.name]["pgUrl"], "wal": None,
                       "streaming": False}).encode()
    for what, headers in [
        ("no proof", {}),
        ("the old Bearer scheme", {"Authorization": f"Bearer {shard.sb.st.secret}"}),
        ("another shard's secret", sign_request(strangers, "POST", "/rebuild", rebuild)),
        ("a proof for another body", sign_request(ShardSecret.of(shard.sb.st.secret), "POST", "/rebuild",
                                                  b'{"force": false}')),
    ]:
        for node in (A, S):
            code, body = http(f"{node.status_url}/rebuild", rebuild, headers)
            assert code == 401, (what, node.name, code, body)
        code, body = http(f"{P.status_url}/heartbeat", beat, headers)
        assert code == 401, (what, code, body)
        # The primary's backupserver, asked (from the async's address) to send the database
        # to the async's zfs port.
        backup = json.dumps({"host": A.ip, "port": A.zfs_port, "dataset": "x/y", "streamToken": "ab" * 32})
        code, body = http(f"http://{P.ip}:{P.backup_port}/backup", backup.encode(), headers, source=A.ip)
        assert code == 401, (what, code, body)
        say(f"{what}: POST /rebuild, /heartbeat and /backup -> 401")
    time.sleep(2 * shard.session_s)
    after = {n.name: state(n) for n in (P, S, A)}
    # No send was queued by the primary's backupserver.
    assert P.log_path("backupserver").read_text(errors="replace").count("backup_job_queued") == jobs0
    for n in (P, S, A):
        assert after[n.name]["localRole"] != "rebuild" and after[n.name]["restore"] == before[n.name]["restore"]
        assert after[n.name]["insecure"] is False
    assert shard.zk_state()["generation"] == gen0
    assert names(shard.topology()) == (p, s, a)


def _flood(ip: str, port: int, n: int, done: threading.Event, result: dict) -> None:
    """Open `n` connections that never send a byte (bounded, all closed at the end)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []
        t0 = time.monotonic()
        try:
            for i in range(n):
                s = socket.socket()
                s.setblocking(False)
                socks.append(s)
                try:
                    await asyncio.wait_for(loop.sock_connect(s, (ip, port)), 5)
                except (OSError, asyncio.TimeoutError):
                    result["failed"] = result.get("failed", 0) + 1
            result["opened"] = n
            result["open_s"] = time.monotonic() - t0
            while not done.is_set():
                await asyncio.sleep(0.1)
        finally:
            for s in socks:
                s.close()

    asyncio.run(main())


def test_idle_flood_and_scrape_storm_do_not_stop_observation(shard: Shard):
    p, s, a = names(shard.topology())
    P = shard.node(p)
    gen0 = shard.zk_state()["generation"]
    done, flood = threading.Event(), {}
    flooder = threading.Thread(target=_flood, args=(P.ip, P.status_port, IDLE_CONNECTIONS, done, flood),
                               daemon=True)
    scrapes: list[tuple[float, int]] = []

    def scrape() -> None:
        while not done.is_set():
            t = time.monotonic()
            code, _ = http(f"{P.status_url}/metrics", timeout=5)
            scrapes.append((time.monotonic() - t, code))
            time.sleep(max(0.0, SCRAPERS / SCRAPES_PER_S - (time.monotonic() - t)))

    SCRAPERS = 12  # each at SCRAPES_PER_S / SCRAPERS: one slow answer does not lower the rate
    scrapers = [threading.Thread(target=scrape, daemon=True) for _ in range(SCRAPERS)]
    sitter_pid = P.pids["sitter"]
    fds: list[int] = []
    ages: list[float] = []
    base_fds = len(os.listdir(f"/proc/{sitter_pid}/fd"))  # its ZooKeeper, PostgreSQL, logs, ...
    t0 = time.monotonic()
    flooder.start()
    for t in scrapers:
        t.start()
    try:
        while time.monotonic() - t0 < 20 or "opened" not in flood:
            assert time.monotonic() - t0 < 120, f"the flood did not finish opening: {flood}"
            st = state(P)
            assert st["pg"] and st["pg"]["healthy"], st
            ages.append(st["pgObservedAgo"])
            fds.append(len(os.listdir(f"/proc/{sitter_pid}/fd")))
            time.sleep(0.5)
    finally:
        done.set()
        flooder.join(30)
        for t in scrapers:
            t.join(30)
    ok = [d for d, c in scrapes if c == 200]
    say(f"flood: {flood.get('opened')} idle connections opened in {flood.get('open_s', 0):.1f}s "
        f"({flood.get('failed', 0)} failed); {len(scrapes)} scrapes in {time.monotonic() - t0:.0f}s, "
        f"{len(ok)} answered 200, slowest {max(ok or [0]):.2f}s; observation age max {max(ages):.2f}s "
        f"over {len(ages)} /state reads; sitter descriptors max {max(fds)} (before the flood {base_fds})")
    interval = 1.0  # the sandbox's healthChkInterval is at most 1 s
    assert max(ages) < 3 * interval + 1, ages
    assert len(ok) >= 0.9 * len(scrapes) and len(scrapes) >= 0.8 * SCRAPES_PER_S * 20, (len(ok), len(scrapes))
    # The server is bounded: the sitter never holds the flood (statusServerCfg.maxConnections = 256).
    # On top of what it held before the flood: the pool, and connections in passing. asyncio
    # accepts a batch (the listen backlog, 256 // 4) in one turn of the loop and makes each a task;
    # the task makes its transport the next turn, which calls connection_made (joins the pool,
    # evicting one) the turn after; an evicted transport's socket closes the turn after its close().
    # So while the flood lasts, at most three batches are in passing: accepted, transport made,
    # evicted (the kernel queues at most a backlog's worth). The sitter's own descriptors may move
    # by a few meanwhile (a PostgreSQL or ZooKeeper connection renewed): 8 for those. (Measured:
    # 347 over the base locally; 402 in CI 2026-12-07, where the bound was 256 + 150 counting the
    # base.)
    assert max(fds) <= base_fds + 256 + 3 * (256 // 4) + 8, (base_fds, fds)
    assert shard.zk_state()["generation"] == gen0
    assert names(shard.topology()) == (p, s, a)
