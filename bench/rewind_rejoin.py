#!/usr/bin/env python3
"""Rejoin of a diverged old primary by pg_rewind vs a full ZFS stream (issue 10).

A pool in /tmp; PostgreSQL A with a `pgbench -i -s SCALE` database on its own dataset; B
built from A by a full ZFS stream (as the sitter builds a standby) and streaming from it.
Then, REPEAT times, with P the primary and S its standby (A and B, then swapped):
pgbench on P for --work seconds; S is promoted (the failover); P goes on committing alone
for --fork seconds (its WAL forks) and is killed; pgbench on S for --work seconds; then
  (i)  P is rewound from S as the sitter does it (manatee.core.pg.rewind: CHECKPOINT on the
       source, single-user crash recovery, the dry run, the real run) — timed;
  (ii) for comparison, a full ZFS stream of S's dataset into a new one — timed;
and P streams from S again. pg_rewind (PostgreSQL 15) copies every WAL file the source
keeps, so --wal-keep (wal_keep_size on both) weighs in the rewind's bytes.

    sudo .venv/bin/python bench/rewind_rejoin.py [--scale 150] [--repeat 3] [--work 10] [--wal-keep 1GB]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from manatee.core.pg import rewind
from manatee.core.slotname import slot_name
from manatee.core.procs import free_port
from manatee_testbed.postgres import PgNode

from common import measure_and_report, report_header, run_async, run_times
from rebuild_incremental import Bench as IncrementalBench
from rebuild_incremental import IP_A, IP_B

MB = 1 << 20


class Bench(IncrementalBench):
    async def setup(self) -> None:
        await super().setup()
        wk = self.args.wal_keep
        await self.pg.apply(self.pg.role_config("primary", wal_keep_size=wk))
        print(f"build of B from A (full ZFS stream), then B streams from A (wal_keep_size {wk}) ...", flush=True)
        secs, res = await self._restore(self.ds_b, self.base / "b")
        print(f"  {secs:.1f}s, {res.bytes / 1e6:.0f} MB ({res.path})", flush=True)
        self.pg_b = PgNode("b", IP_B, free_port(IP_B), data_dir=self.base / "b", work_dir=self.base / "b-work")
        self.pg_b._prepare_dirs()
        await self._follow(self.pg_b, self.pg)
        self.b_server, self.b_log, self.b_url = await self.serve(self.ds_b, IP_B, "backupserver-b", {"insecure": True})
        self.urls = {"a": self.url, "b": self.b_url}

    async def _follow(self, node: PgNode, upstream: PgNode) -> None:
        """`node` (stopped) starts as a standby of `upstream` and streams."""
        rc = node.role_config("standby", upstream=(upstream.ip, upstream.port), wal_keep_size=self.args.wal_keep)
        node.configure(rc)
        slot = slot_name(rc.application_name)
        await upstream.execute("select pg_create_physical_replication_slot(%s, true) where not exists "
                               "(select 1 from pg_replication_slots where slot_name = %s)", (slot, slot))
        await node.start(timeout=600)
        for _ in range(1200):
            rows = await node.psql("select status from pg_stat_wal_receiver")
            if rows and rows[0]["status"] == "streaming":
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"{node.name} does not stream from {upstream.name}")

    async def _pgbench(self, node: PgNode, seconds: int) -> None:
        self.pg, was = node, self.pg  # SourceBench.pgbench runs against self.pg
        try:
            await self.pgbench("-c", "4", "-j", "2", "-T", str(seconds), "-n", timeout=seconds + 600)
        finally:
            self.pg = was

    async def _rewind(self, p: PgNode, s: PgNode) -> tuple[float, rewind.RewindReport, rewind.RewindReport]:
        t = time.monotonic()
        await s.execute("CHECKPOINT", timeout=600)  # the new timeline in its control file
        await rewind.finish_crash_recovery(p.data_dir)
        src = s.tcp_client().dsn()
        dry = await rewind.pg_rewind(p.data_dir, src, dry_run=True, timeout=3600)
        real = await rewind.pg_rewind(p.data_dir, src, timeout=3600)
        return time.monotonic() - t, dry, real

    async def measure(self) -> dict:
        runs = []
        p, s = self.pg, self.pg_b
        ds = {"a": self.ds_a, "b": self.ds_b}
        for i in range(self.args.repeat):
            print(f"run {i + 1}: pgbench on {p.name} for {self.args.work}s, promote {s.name}, "
                  f"{p.name} forks for {self.args.fork}s ...", flush=True)
            await self._pgbench(p, self.args.work)
            await s.execute("select pg_promote(true, 120)", timeout=180)
            await s.apply(s.role_config("primary", wal_keep_size=self.args.wal_keep))  # read-write
            await self._pgbench(p, self.args.fork)
            await p.kill()
            await self._pgbench(s, self.args.work)
            size = int(await self.zfs.get(ds[s.name], "referenced"))
            rw_s, dry, real = await self._rewind(p, s)
            print(f"  pg_rewind: {rw_s:.2f}s, copied {real.copy_mb} MB of {real.source_mb} MB "
                  f"(dry run: {dry.copy_mb} MB; diverged at {dry.diverged_at})", flush=True)
            ds_c = f"{self.pool.name}/c"
            await self.destroy(ds_c)
            await asyncio.sleep(1.0)
            full_s, full = await self._restore(ds_c, self.base / "c", incremental=True, url=self.urls[s.name])
            assert full.path == "full", full.path
            await self.destroy(ds_c)
            print(f"  full stream: {full_s:.2f}s, {full.bytes / 1e6:.0f} MB | dataset {size / 1e6:.0f} MB | "
                  f"time ratio {rw_s / full_s * 100:.1f}%", flush=True)
            runs.append(dict(size=size, rw_s=rw_s, rw_b=(real.copy_mb or 0) * MB, full_s=full_s, full_b=full.bytes))
            await self._follow(p, s)
            p, s = s, p
        return dict(runs=runs)

    async def cleanup(self) -> None:
        if getattr(self, "b_server", None) is not None:
            self.b_server.terminate()
            self.b_server.wait(10)
            self.b_log.close()
        if getattr(self, "pg_b", None) is not None:
            await self.pg_b.kill()
        await super().cleanup()


def report(m: dict, bench: Bench, args: argparse.Namespace) -> str:
    runs = m["runs"]
    med = {k: statistics.median(r[k] for r in runs) for k in ("size", "rw_s", "rw_b", "full_s", "full_b")}
    ratio = med["rw_s"] / med["full_s"]
    return "\n".join([
        report_header(f", load average {os.getloadavg()[0]:.1f}; database: pgbench scale {args.scale}, "
                      f"{bench.db_bytes / 1e6:.0f} MB (dataset {med['size'] / 1e6:.0f} MB); wal_keep_size "
                      f"{args.wal_keep}; pgbench -c 4 for {args.work}s before the failover and after it, the old "
                      f"primary alone for {args.fork}s; median of {len(runs)}"),
        "",
        "| rejoin | seconds (median) | MB (median) | runs (s) |",
        "|---|---:|---:|---|",
        f"| pg_rewind (checkpoint, crash recovery, dry run, run) | {med['rw_s']:.2f} | {med['rw_b'] / 1e6:.1f} | "
        f"{run_times([r['rw_s'] for r in runs])} |",
        f"| full ZFS stream | {med['full_s']:.2f} | {med['full_b'] / 1e6:.0f} | "
        f"{run_times([r['full_s'] for r in runs])} |",
        "",
        f"pg_rewind/full time: {ratio * 100:.1f}% (target <= 10%): {'PASS' if ratio <= 0.10 else 'FAIL'}; "
        f"bytes: {med['rw_b'] / med['full_b'] * 100:.1f}%",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=150, help="pgbench scale (x ~15 MB; default 150 ≈ 2.2 GB)")
    p.add_argument("--repeat", type=int, default=3, help="measured rounds (median reported)")
    p.add_argument("--work", type=int, default=10, help="seconds of pgbench before and after each failover")
    p.add_argument("--fork", type=int, default=3, help="seconds the old primary commits alone before it dies")
    p.add_argument("--wal-keep", default="1GB", help="wal_keep_size on both (manatee's default: 1GB)")
    p.add_argument("--pool-size", default="24G", help="sparse pool file size")
    p.add_argument("--recordsize", default=None, help="recordsize of A's dataset (default 128K)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    return run_async(lambda a: measure_and_report(Bench(a), report, a), args)


if __name__ == "__main__":
    raise SystemExit(main())
