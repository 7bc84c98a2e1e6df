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
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

from manatee.core.procs import free_port
from manatee.core.restore import after_restore, restore

from common import QuietLog, SourceBench, measure_and_report, report_header, run_async, run_times

IP_A, IP_B = "127.0.0.71", "127.0.0.72"


class _QuietLog(QuietLog):
    """Restore's progress lines would drown the table; keep the path and errors."""

    t0 = 0.0

    def info(self, event, **kw):
        if event == "restore_path":
            print(f"    {kw.get('path')} ({kw.get('why')})", flush=True)
            if self.verbose:
                print(f"      {time.monotonic() - _QuietLog.t0:6.2f}s {event} (base cloned and promoted)", flush=True)
        elif self.verbose and event in ("restore_start", "restore_phase", "restore_old_dataset_destroyed",
                                             "restore_stream_connected", "restore_received", "restore_mounted"):
            if event == "restore_start":
                _QuietLog.t0 = time.monotonic()
            print(f"      {time.monotonic() - _QuietLog.t0:6.2f}s {event} {kw.get('phase', '')}", flush=True)


class Bench(SourceBench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, IP_A, "mincr")

    async def setup(self) -> None:
        props = {"recordsize": self.args.recordsize} if self.args.recordsize else None
        await self.setup_source(props, init_timeout=7200)
        print(f"  done in {time.monotonic() - self.t_build:.1f}s: database {self.db_bytes / 1e6:.0f} MB", flush=True)
        await self.start_backupserver({"insecure": True})  # no ZooKeeper here for membership
        self.ds_b = self.pool.create_dataset("b", self.base / "b")

    async def _restore(self, dataset: str, mnt: Path, incremental: bool = True, url: str | None = None,
                       source_reason: str | None = None):
        t = time.monotonic()
        res = await restore(self.zfs, dataset=dataset, mountpoint=mnt, backup_url=url or self.url, listen_host=IP_B,
                            listen_port=free_port(IP_B), owner="postgres", poll_interval=0.2, timeout=7200,
                            logger=_QuietLog(), incremental=incremental, source_reason=source_reason,
                            drop_old=False)
        secs = time.monotonic() - t
        # As the sitter does while PostgreSQL starts (not timed): mark the base, destroy the old copy.
        t = time.monotonic()
        await after_restore(self.zfs, _QuietLog(), snapshot=res.snapshot, source=res.source, old_copy=res.old_copy)
        print(f"    base marked and old copy destroyed after the rebuild in {time.monotonic() - t:.2f}s "
              "(not counted)", flush=True)
        return secs, res

    async def first_build(self) -> None:
        print("first build of B (full) ...", flush=True)
        secs, res = await self._restore(self.ds_b, self.base / "b", incremental=True)
        print(f"  {secs:.1f}s, {res.bytes / 1e6:.0f} MB ({res.path})", flush=True)

    async def rebuild_b(self):
        """(seconds, result) of B's incremental rebuild."""
        secs, res = await self._restore(self.ds_b, self.base / "b", incremental=True)
        assert res.incremental_from, f"expected an incremental rebuild, got {res.path}: {res.reason}"
        return secs, res

    full_url = None  # where the full stream for comparison comes from (None: A)

    async def _wal_lsn(self) -> int:
        rows = await self.pg.psql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS n")
        return int(rows[0]["n"])

    async def measure(self) -> dict:
        await self.first_build()
        runs = []
        for i in range(self.args.repeat):
            print(f"run {i + 1}: pgbench on A for {self.args.work}s ...", flush=True)
            lsn0 = await self._wal_lsn()
            out = await self.pgbench("-c", "4", "-j", "2", "-T", str(self.args.work), "-n",
                                     timeout=self.args.work + 600)
            tps = next((float(m) for m in re.findall(r"tps = ([\d.]+)", out)), None)
            await self.pg.execute("CHECKPOINT")
            wal_mb = (await self._wal_lsn() - lsn0) / 1e6
            print(f"  pgbench {tps} tps; {wal_mb:.1f} MB of WAL", flush=True)
            (self.base / "b" / "diverged-on-b").write_text(f"run {i}")
            await self.zfs.snapshot(self.ds_b)
            size = int(await self.zfs.get(self.ds_a, "referenced"))
            subprocess.run(["sync"], check=False)
            inc_s, inc = await self.rebuild_b()
            print(f"  incremental: {inc_s:.2f}s, {inc.bytes / 1e6:.1f} MB ({inc.reason})", flush=True)
            ds_c = f"{self.pool.name}/c"
            await self.destroy(ds_c)
            subprocess.run(["sync"], check=False)
            await asyncio.sleep(1.0)
            full_s, full = await self._restore(ds_c, self.base / "c", incremental=True, url=self.full_url)
            assert full.path == "full", full.path
            await self.destroy(ds_c)
            runs.append(dict(size=size, inc_s=inc_s, inc_b=inc.bytes, full_s=full_s, full_b=full.bytes,
                             tps=tps, wal_mb=wal_mb))
            print(f"  incremental {inc_s:.2f}s {inc.bytes / 1e6:.1f} MB | full {full_s:.2f}s "
                  f"{full.bytes / 1e6:.0f} MB | dataset {size / 1e6:.0f} MB | time ratio "
                  f"{inc_s / full_s * 100:.1f}%", flush=True)
        return dict(runs=runs)


def report(m: dict, bench: Bench, args: argparse.Namespace) -> str:
    runs = m["runs"]
    med = {k: statistics.median(r[k] for r in runs) for k in ("size", "inc_s", "inc_b", "full_s", "full_b")}
    ratio = med["inc_s"] / med["full_s"]
    inc_runs = run_times([r["inc_s"] for r in runs])
    full_runs = run_times([r["full_s"] for r in runs])
    load = os.getloadavg()[0]
    lines = [
        report_header(f", load average {load:.1f}; "
        f"database: pgbench scale {args.scale}, {bench.db_bytes / 1e6:.0f} MB (dataset {med['size'] / 1e6:.0f} MB); "
        f"recordsize {args.recordsize or '128K (default)'}; compression {args.compression or 'off'}; between rebuilds pgbench -c 4 for {args.work}s; "
        f"median of {len(runs)}"),
        "",
        "| rebuild | seconds (median) | MB streamed (median) | runs (s) |",
        "|---|---:|---:|---|",
        f"| incremental (`zfs send -i` from the newest common snapshot) | {med['inc_s']:.2f} | "
        f"{med['inc_b'] / 1e6:.1f} | {inc_runs} |",
        f"| full | {med['full_s']:.2f} | {med['full_b'] / 1e6:.0f} | {full_runs} |",
        "",
        "pgbench before each rebuild: " + ", ".join(f"{r['tps']} tps, {r['wal_mb']:.0f} MB of WAL" for r in runs),
        f"incremental/full time: {ratio * 100:.1f}% (target <= 10%): {'PASS' if ratio <= 0.10 else 'FAIL'}; "
        f"bytes: {med['inc_b'] / med['full_b'] * 100:.1f}%",
    ]
    return "\n".join(lines)


def pg_setting(text: str) -> tuple[str, str]:
    """NAME=VALUE of --pg-set: a PostgreSQL parameter name and a value without quotes."""
    name, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or "'" in value or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (a PostgreSQL parameter), not {text!r}")
    return name, value


def cli(argv: list[str] | None, doc: str, bench: type, report_fn, work: int) -> int:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=150, help="pgbench scale (x ~15 MB; default 150 ≈ 2.2 GB)")
    p.add_argument("--repeat", type=int, default=3, help="measured rounds (median reported)")
    p.add_argument("--work", type=int, default=work, help="seconds of pgbench on A before each rebuild")
    p.add_argument("--pool-size", default="24G", help="sparse pool file size")
    p.add_argument("--recordsize", default=None,
                   help="recordsize of A's dataset (default: the pool's 128K; 8k matches PostgreSQL's pages)")
    p.add_argument("--compression", default=None,
                   help="compression of the pool's root, inherited by every dataset (e.g. lzjb; default off)")
    p.add_argument("--pg-set", action="append", type=pg_setting, default=[], metavar="NAME=VALUE",
                   help="a PostgreSQL setting for A, applied by ALTER SYSTEM and a reload before the database "
                        "is built (repeatable; e.g. full_page_writes=off)")
    p.add_argument("-v", "--verbose", action="store_true", help="print when each restore phase began")
    args = p.parse_args(argv)
    _QuietLog.verbose = args.verbose
    return run_async(lambda a: measure_and_report(bench(a), report_fn, a), args)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, __doc__, Bench, report, work=30)


if __name__ == "__main__":
    raise SystemExit(main())
