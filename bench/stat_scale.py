#!/usr/bin/env python3
"""P5 scale: `manatee-stat` over 100 shards registered in one ZooKeeper, target ≤ 2 s.

Starts its own ZooKeeper (manatee_testbed.zookeeper.ZooKeeperServer) in a temporary
directory and registers SHARDS shards the way their sitters leave them: three ephemeral
election nodes, the persisted state (primary → sync → async, generation), the registrar
record and HISTORY history records each, written with the sitter's own serialisers.
Then it times the real CLI, `python -m manatee.cli.stat ZK` (no -p) as a subprocess,
RUNS times (the whole process: interpreter start, connect, reads, JSON out), checks every
output lists every shard with the roles of its state, and reports the median.

    .venv/bin/python bench/stat_scale.py [--shards 100] [--runs 7] [--history 10] [--doc docs/benchmarks.md]

With --doc, the "P5 scale" section of that file is replaced (or appended) with the result.
Everything it starts is stopped at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from kazoo.client import KazooClient

from manatee.shard.layout import registrar_path
from manatee_testbed.zookeeper import ZooKeeperServer
from manatee.shard.history import HistoryEvent, record_data, znode_prefix
from manatee.shard.state import ClusterState, Peer

TARGET_S = 2.0
SECTION = "## P5 scale"


def peer(shard: int, n: int) -> Peer:
    ip = f"127.{200 + shard // 250}.{shard % 250}.{n + 1}"  # loopback: nothing leaves the machine
    return Peer(id=f"{ip}:5432:10002:5433", zone_id=f"{shard:04d}-{n}-4cc5-6cd9-a6b0-9d07f5603265", ip=ip,
                pg_url=f"tcp://postgres@{ip}:5432/postgres", backup_url=f"http://{ip}:10002",
                status_url=f"http://{ip}:5433")


def register(kz: KazooClient, shards: int, history: int) -> dict[str, ClusterState]:
    """All shards' znodes, created with pipelined async calls (the set-up is not timed)."""
    states: dict[str, ClusterState] = {}
    t0 = 1_700_000_000_000
    for i in range(shards):
        name = f"{i + 1}.moray.bench.joyent.com"
        base = f"/manatee/{name}"
        for sub in ("election", "history"):
            kz.ensure_path(f"{base}/{sub}")
        a, b, c = (peer(i, n) for n in range(3))
        st = ClusterState(generation=1 + i % 7, primary=b, sync=c, async_=(a,), init_wal=0x3000060 + i)
        states[name] = st
        pending = [kz.create_async(f"{base}/state", st.dumps())]
        for p in (a, b, c):
            data = json.dumps({"zoneId": p.zone_id, "ip": p.ip, "pgUrl": p.pg_url, "backupUrl": p.backup_url,
                               "statusUrl": p.status_url}).encode()
            pending.append(kz.create_async(f"{base}/election/{p.id}-", data, ephemeral=True, sequence=True))
        for h in range(history):
            ip, master = (b.ip, "") if h % 3 == 0 else (c.ip, b.ip)
            ev = HistoryEvent(t0 + h * 1000, ip, "AssumeLeader" if h % 3 == 0 else "NewLeader",
                              "Leader" if h % 3 == 0 else "Standby", master=master, generation=1 + h // 3)
            pending.append(kz.create_async(f"{base}/history/{znode_prefix(ev)}", record_data(ev), sequence=True))
        reg = json.dumps({"type": "database", "database": {"primary": b.pg_url, "ttl": 60}}).encode()
        kz.ensure_path(registrar_path(name).rsplit("/", 1)[0])
        pending.append(kz.create_async(registrar_path(name), reg, ephemeral=True))
        for r in pending:
            r.get(timeout=30)
    return states


def check(out: str, states: dict[str, ClusterState]) -> None:
    doc = json.loads(out)
    if set(doc) != set(states):
        raise SystemExit(f"manatee-stat listed {len(doc)} shards, expected {len(states)}")
    for name, st in states.items():
        got = doc[name]
        want = {"primary": st.primary.ip, "sync": st.sync.ip, "async": st.async_[0].ip}
        if {k: got.get(k, {}).get("ip") for k in want} != want or "registrar" not in got:
            raise SystemExit(f"shard {name}: wrong roles in manatee-stat output: {got}")


def time_stat(hosts: str, runs: int, states: dict[str, ClusterState]) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "manatee.cli.stat", hosts], capture_output=True, text=True,
                           timeout=60)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"manatee-stat failed ({r.returncode}): {r.stderr.strip()}")
        check(r.stdout, states)
    return times


def doc_section(shards: int, history: int, runs: int, times: list[float]) -> str:
    med = statistics.median(times)
    verdict = "meets" if med <= TARGET_S else "MISSES"
    return (
        f"{SECTION}\n\n"
        f"`manatee-stat ZK` (no `-p`) over {shards} shards registered in one ZooKeeper "
        f"(`bench/stat_scale.py`). Each shard: 3 ephemeral election nodes, the persisted state "
        f"(primary → sync → async), the registrar record and {history} history records. "
        f"Timed as a subprocess (interpreter start, connect, reads, JSON output), {runs} runs; "
        f"every run's output checked for every shard's roles.\n\n"
        f"| shards | runs | median | min | max | target (P5) |\n"
        f"|---|---|---|---|---|---|\n"
        f"| {shards} | {runs} | {med:.3f} s | {min(times):.3f} s | {max(times):.3f} s | ≤ {TARGET_S:g} s: {verdict} |\n\n"
        f"How: the tool reads each shard's `state`, `error` and registrar znodes with kazoo's "
        f"async calls issued all at once (pipelined on one connection) and then collected; the "
        f"election is read only for a shard with no state. "
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.node()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}, local ZooKeeper 3.8).\n\n"
        f"Run: `.venv/bin/python bench/stat_scale.py --shards {shards} --runs {runs} --doc docs/benchmarks.md`\n"
    )


def write_doc(path: Path, section: str) -> None:
    """Replace our section (up to the next '## ' heading) or append it; other sections untouched."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pat = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pat.search(text):
        text = pat.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--history", type=int, default=10, help="history records per shard")
    ap.add_argument("--doc", type=Path, help="update the 'P5 scale' section of this markdown file")
    args = ap.parse_args()
    if args.runs < 5:
        ap.error("--runs must be at least 5")
    with tempfile.TemporaryDirectory(prefix="stat-scale-") as tmp:
        server = ZooKeeperServer(Path(tmp) / "zk", tick_ms=200)
        server.start()
        try:
            kz = KazooClient(hosts=server.connect_string, timeout=10)
            kz.start(timeout=15)
            try:
                t0 = time.perf_counter()
                states = register(kz, args.shards, args.history)
                print(f"registered {args.shards} shards in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
                times = time_stat(server.connect_string, args.runs, states)
            finally:
                kz.stop()
                kz.close()
        finally:
            server.close(remove=True)
    med = statistics.median(times)
    print(f"manatee-stat over {args.shards} shards: median {med:.3f}s over {args.runs} runs "
          f"(min {min(times):.3f}s, max {max(times):.3f}s); P5 target <= {TARGET_S:g}s: "
          f"{'PASS' if med <= TARGET_S else 'FAIL'}")
    if args.doc:
        write_doc(args.doc, doc_section(args.shards, args.history, args.runs, times))
        print(f"wrote the '{SECTION[3:]}' section of {args.doc}", file=sys.stderr)
    return 0 if med <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
