#!/usr/bin/env python3
"""P6 rebuild of a standby that shares a snapshot with its upstream: incremental vs full.

Builds a PostgreSQL database (pgbench -i, default scale 150 ≈ 2.2 GB) on a ZFS dataset
A of a fresh file-backed zfs-fuse pool, serves it with the real `manatee-backupserver`
console script, and builds standby B from it once with restore() (a full stream: B now
carries A's snapshot, same guid). Then, REPEAT times:

  1. pgbench runs on A for --work seconds (the standby falls behind / diverges: B also
     writes a file and takes a snapshot of its own after the common one);
  2. (i)  restore() of B — it offers its snapshots, the backupserver sends
          `zfs send -i <newest common> <fresh>`, B receives into a promoted clone of its
          base; old data kept aside until the end, as for a full rebuild;
     (ii) restore() of a new dataset C with no snapshot in common (a full stream of the
          same database), for comparison.

Reports the bytes streamed and the seconds of each, median over the runs, and the
ratio (P6 / issue 10: the incremental rejoin ≤ 10 % of the full rebuild's time).
Everything it starts (zfs-fuse pool, PostgreSQL, backupserver) is removed at exit.

    sudo .venv/bin/python bench/rebuild_incremental.py [--scale 150] [--repeat 3] [--work 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from manatee.core.pg import DEFAULT_BINDIR, run_as
from manatee.core.procs import free_port, terminate, wait_port_async
from manatee.core.restore import restore
from manatee.core.zfs import Zfs
from manatee_testbed.postgres import PgNode
from manatee_testbed.zfspool import ZfsPool, ensure_zfs_fuse

BACKUPSERVER = str(Path(sys.executable).with_name("manatee-backupserver"))
IP_A, IP_B = "127.0.0.71", "127.0.0.72"


class _QuietLog:
    """Restore's progress lines would drown the table; keep the path and errors."""

    def bind(self, **_):
        return self

    verbose = False
    t0 = 0.0

    def info(self, event, **kw):
        if event == "restore_path":
            print(f"    {kw.get('path')} ({kw.get('why')})", flush=True)
        elif self.verbose and event in ("restore_start", "restore_phase", "restore_old_dataset_destroyed"):
            if event == "restore_start":
                _QuietLog.t0 = time.monotonic()
            print(f"      {time.monotonic() - _QuietLog.t0:6.2f}s {event} {kw.get('phase', '')}", flush=True)

    def debug(self, *a, **k):
        pass

    def warning(self, event, **kw):
        print(f"  warning: {event} {kw}", file=sys.stderr)

    error = warning


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = Path(tempfile.mkdtemp(prefix=f"mincr-{uuid.uuid4().hex[:6]}-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.pool = ZfsPool(self.base / "pool", size=args.pool_size)
        self.zfs = Zfs()
        self.pg: PgNode | None = None
        self.server: subprocess.Popen | None = None
        self.fuse = None

    async def setup(self) -> None:
        self.fuse = ensure_zfs_fuse()
        self.pool.create()
        props = {"recordsize": self.args.recordsize} if self.args.recordsize else None
        self.ds_a = self.pool.create_dataset("a", self.base / "a", props)
        self.pg = PgNode("a", IP_A, free_port(IP_A), data_dir=self.base / "a", work_dir=self.base / "a-work")
        await self.pg.init()
        await self.pg.start()
        print(f"building database: pgbench -i -s {self.args.scale} ...", flush=True)
        t = time.monotonic()
        await self._pgbench("-i", "-q", "-s", str(self.args.scale), timeout=7200)
        await self.pg.execute("CHECKPOINT")
        self.db_bytes = int((await self.pg.psql("SELECT pg_database_size('postgres') AS n"))[0]["n"])
        print(f"  done in {time.monotonic() - t:.1f}s: database {self.db_bytes / 1e6:.0f} MB", flush=True)
        port = free_port(IP_A)
        cfg = self.base / "backupserver.json"
        cfg.write_text(json.dumps({"backupSenderCfg": {"dataset": self.ds_a},
                                   "backupServerCfg": {"host": IP_A, "port": port}}))
        self.server_log = open(self.base / "backupserver.log", "ab")
        self.server = subprocess.Popen([BACKUPSERVER, "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                       stdout=self.server_log, stderr=subprocess.STDOUT, start_new_session=True)
        await wait_port_async(IP_A, port, 20)
        self.url = f"http://{IP_A}:{port}"
        self.ds_b = self.pool.create_dataset("b", self.base / "b")

    async def _pgbench(self, *args: str, timeout: float) -> None:
        assert self.pg is not None
        await run_as([DEFAULT_BINDIR / "pgbench", *args, "-h", str(self.pg.socket_dir), "-p", str(self.pg.port),
                      "-U", "postgres", "postgres"], timeout=timeout)

    async def _restore(self, dataset: str, mnt: Path, incremental: bool):
        t = time.monotonic()
        res = await restore(self.zfs, dataset=dataset, mountpoint=mnt, backup_url=self.url, listen_host=IP_B,
                            listen_port=free_port(IP_B), owner="postgres", poll_interval=0.2, timeout=7200,
                            logger=_QuietLog(), incremental=incremental)
        return time.monotonic() - t, res

    async def _destroy(self, name: str) -> None:
        for attempt in range(40):
            try:
                if not await self.zfs.exists(name):
                    return
                if await self.zfs.get(name, "mounted") == "yes":
                    await self.zfs.unmount(name)
                await self.zfs.destroy(name, recursive=True)
                return
            except Exception as e:  # zfs-fuse: "busy" for a moment after unmount
                if "busy" not in str(e) or attempt == 39:
                    raise
                await asyncio.sleep(0.25)

    async def measure(self) -> dict:
        print("first build of B (full) ...", flush=True)
        secs, res = await self._restore(self.ds_b, self.base / "b", incremental=True)
        print(f"  {secs:.1f}s, {res.bytes / 1e6:.0f} MB ({res.path})", flush=True)
        runs = []
        for i in range(self.args.repeat):
            print(f"run {i + 1}: pgbench on A for {self.args.work}s ...", flush=True)
            await self._pgbench("-c", "4", "-j", "2", "-T", str(self.args.work), "-n", timeout=self.args.work + 600)
            await self.pg.execute("CHECKPOINT")
            (self.base / "b" / "diverged-on-b").write_text(f"run {i}")
            await self.zfs.snapshot(self.ds_b)
            size = int(await self.zfs.get(self.ds_a, "referenced"))
            subprocess.run(["sync"], check=False)
            inc_s, inc = await self._restore(self.ds_b, self.base / "b", incremental=True)
            assert inc.incremental_from, f"expected an incremental rebuild, got {inc.path}: {inc.reason}"
            print(f"  incremental: {inc_s:.2f}s, {inc.bytes / 1e6:.1f} MB", flush=True)
            ds_c = f"{self.pool.name}/c"
            await self._destroy(ds_c)
            subprocess.run(["sync"], check=False)
            await asyncio.sleep(1.0)
            full_s, full = await self._restore(ds_c, self.base / "c", incremental=True)
            assert full.path == "full", full.path
            await self._destroy(ds_c)
            runs.append(dict(size=size, inc_s=inc_s, inc_b=inc.bytes, full_s=full_s, full_b=full.bytes))
            print(f"  incremental {inc_s:.2f}s {inc.bytes / 1e6:.1f} MB | full {full_s:.2f}s "
                  f"{full.bytes / 1e6:.0f} MB | dataset {size / 1e6:.0f} MB | time ratio "
                  f"{inc_s / full_s * 100:.1f}%", flush=True)
        return dict(runs=runs)

    async def cleanup(self) -> None:
        if self.server is not None:
            terminate(self.server.pid, timeout=10)
            self.server.wait(5)
            self.server_log.close()
        if self.pg is not None:
            await self.pg.kill()
        try:
            self.pool.destroy()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            if self.fuse is not None:
                self.fuse.release()


def report(m: dict, bench: Bench, args: argparse.Namespace) -> str:
    runs = m["runs"]
    med = {k: statistics.median(r[k] for r in runs) for k in ("size", "inc_s", "inc_b", "full_s", "full_b")}
    ratio = med["inc_s"] / med["full_s"]
    inc_runs = ", ".join(f"{r['inc_s']:.2f}" for r in runs)
    full_runs = ", ".join(f"{r['full_s']:.2f}" for r in runs)
    load = os.getloadavg()[0]
    lines = [
        f"date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}, zfs-fuse file-backed pool, load average {load:.1f}; "
        f"database: pgbench scale {args.scale}, {bench.db_bytes / 1e6:.0f} MB (dataset {med['size'] / 1e6:.0f} MB); "
        f"recordsize {args.recordsize or '128K (default)'}; between rebuilds pgbench -c 4 for {args.work}s; "
        f"median of {len(runs)}",
        "",
        "| rebuild | seconds (median) | MB streamed (median) | runs (s) |",
        "|---|---:|---:|---|",
        f"| incremental (`zfs send -i` from the newest common snapshot) | {med['inc_s']:.2f} | "
        f"{med['inc_b'] / 1e6:.1f} | {inc_runs} |",
        f"| full | {med['full_s']:.2f} | {med['full_b'] / 1e6:.0f} | {full_runs} |",
        "",
        f"incremental/full time: {ratio * 100:.1f}% (target <= 10%): {'PASS' if ratio <= 0.10 else 'FAIL'}; "
        f"bytes: {med['inc_b'] / med['full_b'] * 100:.1f}%",
    ]
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    bench = Bench(args)
    try:
        await bench.setup()
        m = await bench.measure()
        print()
        print(report(m, bench, args))
        return 0
    finally:
        await bench.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=150, help="pgbench scale (x ~15 MB; default 150 ≈ 2.2 GB)")
    p.add_argument("--repeat", type=int, default=3, help="measured rounds (median reported)")
    p.add_argument("--work", type=int, default=30, help="seconds of pgbench on A before each rebuild")
    p.add_argument("--pool-size", default="24G", help="sparse pool file size")
    p.add_argument("--recordsize", default=None,
                   help="recordsize of A's dataset (default: the pool's 128K; 8k matches PostgreSQL's pages)")
    p.add_argument("-v", "--verbose", action="store_true", help="print when each restore phase began")
    args = p.parse_args(argv)
    _QuietLog.verbose = args.verbose
    if os.geteuid() != 0:
        print("needs root (zfs-fuse, PostgreSQL as postgres)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
