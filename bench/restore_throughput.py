#!/usr/bin/env python3
"""P3 rebuild throughput: restore through the backupserver vs a raw zfs pipe vs pg_basebackup.

Builds a PostgreSQL database (pgbench -i, default scale 20 ≈ 300 MB) on a ZFS dataset
of a fresh file-backed zfs-fuse pool, then measures, REPEAT times each (interleaved,
median reported):

  (a) restore()   the project's rebuild: the real `manatee-backupserver` console script
                  takes a fresh snapshot and streams `zfs send` over TCP into
                  restore()'s `zfs recv`, then mount/chown; onto a new dataset
  (b) raw pipe    `zfs send SNAP | zfs recv -u NEW` in one shell, same snapshot as (a)
  (c) basebackup  `pg_basebackup -X stream -c fast` of the same database into a plain
                  directory on a dataset of the same pool (same storage as (a)/(b))

P3 holds when throughput(a) >= 80% of throughput(b) and (a) takes less time than (c).
Everything it starts (zfs-fuse pool, PostgreSQL, backupserver) is removed at exit.

    sudo .venv/bin/python bench/restore_throughput.py [--scale 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from manatee.core.pg import DEFAULT_BINDIR, run_as
from manatee.core.procs import free_port
from manatee.core.restore import restore

from common import QuietLog, SourceBench, measure_and_report, report_header, run_async, run_times

IP_A, IP_B = "127.0.0.61", "127.0.0.62"


def du_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


class Bench(SourceBench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, IP_A, "mbench")

    async def setup(self) -> None:
        await self.setup_source(init_timeout=1800)
        self.dir_bytes = du_bytes(self.base / "a")
        print(f"  done in {time.monotonic() - self.t_build:.1f}s: database {self.db_bytes / 1e6:.0f} MB, "
              f"data dir {self.dir_bytes / 1e6:.0f} MB", flush=True)
        # insecure: no ZooKeeper here for membership. The data path is the production one: the
        # stream still starts with the (token-bound) header that restore() checks before zfs recv.
        await self.start_backupserver({"insecure": True})
        self.bb_ds = self.pool.create_dataset("bb", self.base / "bb")

    async def run_a(self) -> tuple[float, int, str]:
        target = f"{self.pool.name}/b"
        await self.destroy(target)
        t = time.monotonic()
        phases: list[tuple[str, float]] = []

        def note(p) -> None:
            if not phases or phases[-1][0] != p.phase:
                phases.append((p.phase, time.monotonic() - t))

        result = await restore(self.zfs, dataset=target, mountpoint=self.base / "b", backup_url=self.url,
                               listen_host=IP_B, listen_port=free_port(IP_B), owner="postgres",
                               poll_interval=1.0, timeout=3600, logger=_QuietLog(), progress=note)
        if self.args.verbose:
            print("    phases: " + ", ".join(f"{name}@{at:.2f}s" for name, at in phases), flush=True)
        return time.monotonic() - t, result.bytes, result.source_snapshot

    async def run_b(self, snapshot: str) -> float:
        target = f"{self.pool.name}/raw"
        await self.destroy(target)
        t = time.monotonic()
        cp = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", f"zfs send {snapshot} | zfs recv -u {target}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await cp.communicate()
        elapsed = time.monotonic() - t
        if cp.returncode != 0:
            raise RuntimeError(f"raw pipe failed: {err.decode()}")
        return elapsed

    async def run_c(self) -> tuple[float, int]:
        target = self.base / "bb" / "backup"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        shutil.chown(target, "postgres", "postgres")
        os.chmod(self.base / "bb", 0o755)
        t = time.monotonic()
        await run_as([DEFAULT_BINDIR / "pg_basebackup", "-h", str(self.pg.socket_dir), "-p", str(self.pg.port),
                      "-U", "postgres", "-D", str(target), "-X", "stream", "-c", "fast"], timeout=3600)
        elapsed = time.monotonic() - t
        size = du_bytes(target)
        shutil.rmtree(target, ignore_errors=True)
        return elapsed, size

    async def _settle(self) -> None:
        """Let the previous run's writes and frees finish so each run starts alike."""
        await self.destroy(f"{self.pool.name}/b")
        await self.destroy(f"{self.pool.name}/raw")
        subprocess.run(["sync"], check=False)
        await asyncio.sleep(1.0)

    async def measure(self) -> dict:
        # warm-up: one unmeasured restore and pipe, so every measured run reads a warm ARC alike
        _, _, snap = await self.run_a()
        await self.run_b(snap)
        a_times, b_times, c_times = [], [], []
        stream_bytes = bb_bytes = 0
        for i in range(self.args.repeat):
            # alternate the order of (a) and (b): neither always runs after the other
            order = ["a", "b", "c"] if i % 2 == 0 else ["b", "a", "c"]
            took = {}
            for method in order:
                await self._settle()
                if method == "a":
                    took["a"], stream_bytes, snap = await self.run_a()
                elif method == "b":
                    took["b"] = await self.run_b(snap)  # the snapshot the last restore sent
                else:
                    took["c"], bb_bytes = await self.run_c()
            a_times.append(took["a"])
            b_times.append(took["b"])
            c_times.append(took["c"])
            print(f"  run {i + 1}: restore {took['a']:.2f}s  raw pipe {took['b']:.2f}s  "
                  f"pg_basebackup {took['c']:.2f}s", flush=True)
        return dict(a=statistics.median(a_times), b=statistics.median(b_times), c=statistics.median(c_times),
                    a_all=a_times, b_all=b_times, c_all=c_times, stream_bytes=stream_bytes, bb_bytes=bb_bytes)


class _QuietLog(QuietLog):
    """Restore's progress lines would drown the table; keep errors only."""

    def info(self, event, **kw):
        if self.verbose and event == "restore_mounted":
            print(f"    {event} {kw}", flush=True)


def report(m: dict, bench: Bench, args: argparse.Namespace) -> str:
    mb = m["stream_bytes"] / 1e6
    thr_a, thr_b = mb / m["a"], mb / m["b"]
    thr_c = m["bb_bytes"] / 1e6 / m["c"]
    lines = [
        report_header("; "
        f"database: pgbench scale {args.scale}, {bench.db_bytes / 1e6:.0f} MB "
        f"(zfs stream {mb:.0f} MB, base backup {m['bb_bytes'] / 1e6:.0f} MB); median of {args.repeat}"),
        "",
        "| method | seconds (median) | MB/s | runs (s) |",
        "|---|---:|---:|---|",
        f"| (a) restore via backupserver | {m['a']:.2f} | {thr_a:.0f} | {run_times(m['a_all'])} |",
        f"| (b) raw `zfs send \\| zfs recv` | {m['b']:.2f} | {thr_b:.0f} | {run_times(m['b_all'])} |",
        f"| (c) `pg_basebackup -X stream` | {m['c']:.2f} | {thr_c:.0f} | {run_times(m['c_all'])} |",
        "",
        f"a/b throughput: {thr_a / thr_b * 100:.0f}% (target >= 80%): {'PASS' if thr_a >= 0.8 * thr_b else 'FAIL'}"
        f"; per-run pairs b/a: {', '.join(f'{b / a * 100:.0f}%' for a, b in zip(m['a_all'], m['b_all']))} "
        f"(median {statistics.median(b / a for a, b in zip(m['a_all'], m['b_all'])) * 100:.0f}%)",
        f"a vs c time: restore {m['a']:.2f}s vs pg_basebackup {m['c']:.2f}s = {m['c'] / m['a']:.2f}x "
        f"(target: restore faster): {'PASS' if m['a'] < m['c'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=20, help="pgbench scale (x ~15 MB; default 20 ≈ 300 MB)")
    p.add_argument("--repeat", type=int, default=3, help="measured runs per method (median reported)")
    p.add_argument("--pool-size", default="4G", help="sparse pool file size")
    p.add_argument("-v", "--verbose", action="store_true", help="print when each restore phase began")
    args = p.parse_args(argv)
    _QuietLog.verbose = args.verbose
    return run_async(lambda a: measure_and_report(Bench(a), report, a), args)


if __name__ == "__main__":
    raise SystemExit(main())
