"""What the benchmark scripts share: running one (root checked, SIGTERM taken as Ctrl-C,
exit 130 when interrupted, cleanup always), the source side of a restore benchmark (a
file-backed pool, PostgreSQL A filled by pgbench, A's backupserver), a logger that keeps
restore's progress out of the tables, and the first line of a report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from manatee.core.pg import DEFAULT_BINDIR, run_as
from manatee.core.procs import free_port, terminate, wait_port_async
from manatee.core.zfs import Zfs
from manatee_testbed.postgres import PgNode
from manatee_testbed.zfspool import ZfsPool, ensure_zfs_fuse

BACKUPSERVER = str(Path(sys.executable).with_name("manatee-backupserver"))
NEEDS_ROOT = "needs root (zfs-fuse, PostgreSQL as postgres)"


def require_root(message: str = NEEDS_ROOT, out: Callable[[str], Any] | None = None) -> bool:
    """False (after saying `message`, on stderr unless `out` is given) when not root."""
    if os.geteuid() == 0:
        return True
    (out or (lambda m: print(m, file=sys.stderr)))(message)
    return False


def sigterm_interrupts() -> Callable:
    """SIGTERM raises KeyboardInterrupt from now on (so the cleanup runs); returns the handler."""
    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    return on_term


def run_async(amain: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    """A benchmark's main after its arguments: root, SIGTERM as Ctrl-C, 130 when interrupted."""
    if not require_root():
        return 2
    sigterm_interrupts()
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


async def measure_and_report(bench: Any, report: Callable[..., str], args: argparse.Namespace) -> int:
    """set up, measure, print the report; clean up whatever happened."""
    try:
        await bench.setup()
        m = await bench.measure()
        print()
        print(report(m, bench, args))
        return 0
    finally:
        await bench.cleanup()


def report_header(details: str) -> str:
    """A report's first line: when, on what machine, then the benchmark's own details."""
    return (f"date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {os.cpu_count()} cores, "
            f"{platform.system()} {platform.release()}, zfs-fuse file-backed pool{details}")


def run_times(times: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in times)


class QuietLog:
    """A restore logger that keeps errors only (a subclass shows more with `verbose`)."""

    verbose = False

    def bind(self, **_):
        return self

    def info(self, event, **kw):
        pass

    def debug(self, *a, **k):
        pass

    def warning(self, event, **kw):
        print(f"  warning: {event} {kw}", file=sys.stderr)

    error = warning


class SourceBench:
    """The source side of a restore benchmark: a pool in /tmp, PostgreSQL A on `ip_a` filled
    by `pgbench -i -s SCALE` on its own dataset, and A's backupserver at `self.url`."""

    def __init__(self, args: argparse.Namespace, ip_a: str, prefix: str) -> None:
        self.args = args
        self.ip_a = ip_a
        self.base = Path(tempfile.mkdtemp(prefix=f"{prefix}-{uuid.uuid4().hex[:6]}-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.pool = ZfsPool(self.base / "pool", size=args.pool_size)
        self.zfs = Zfs()
        self.pg: PgNode | None = None
        self.server: subprocess.Popen | None = None
        self.fuse = None

    async def setup_source(self, props: dict | None = None, init_timeout: float = 1800,
                           server_cfg: dict | None = None) -> None:
        self.fuse = ensure_zfs_fuse()
        self.pool.create()
        if getattr(self.args, "compression", None):  # on the pool's root: every dataset inherits it
            await self.zfs.set(self.pool.name, "compression", self.args.compression)
        self.ds_a = self.pool.create_dataset("a", self.base / "a", props)
        self.pg = PgNode("a", self.ip_a, free_port(self.ip_a), data_dir=self.base / "a", work_dir=self.base / "a-work")
        await self.pg.init()
        await self.pg.start()
        for name, value in getattr(self.args, "pg_set", None) or []:  # --pg-set NAME=VALUE
            await self.pg.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            await self.pg.execute("SELECT pg_reload_conf()")
            print(f"  PostgreSQL setting {name} = {value} (reloaded)", flush=True)
        print(f"building database: pgbench -i -s {self.args.scale} ...", flush=True)
        self.t_build = time.monotonic()
        await self.pgbench("-i", "-q", "-s", str(self.args.scale), timeout=init_timeout)
        await self.pg.execute("CHECKPOINT")
        self.db_bytes = int((await self.pg.psql("SELECT pg_database_size('postgres') AS n"))[0]["n"])

    async def start_backupserver(self, extra_cfg: dict | None = None) -> None:
        self.server, self.server_log, self.url = await self.serve(self.ds_a, self.ip_a, "backupserver", extra_cfg)

    async def serve(self, dataset: str, ip: str, name: str, extra_cfg: dict | None = None):
        """A `manatee-backupserver` for `dataset` on `ip`: (process, its log file, its URL)."""
        port = free_port(ip)
        cfg = self.base / f"{name}.json"
        cfg.write_text(json.dumps({"backupSenderCfg": {"dataset": dataset}, **(extra_cfg or {}),
                                   "backupServerCfg": {"host": ip, "port": port}}))
        log = open(self.base / f"{name}.log", "ab")
        proc = subprocess.Popen([BACKUPSERVER, "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        await wait_port_async(ip, port, 20)
        return proc, log, f"http://{ip}:{port}"

    async def pgbench(self, *args: str, timeout: float) -> str:
        """pgbench against A; its output."""
        assert self.pg is not None
        return await run_as([DEFAULT_BINDIR / "pgbench", *args, "-h", str(self.pg.socket_dir), "-p", str(self.pg.port),
                      "-U", "postgres", "postgres"], timeout=timeout)

    async def destroy(self, name: str, attempts: int = 40) -> None:
        """Destroy dataset `name` (and its children) if it exists; zfs-fuse says "busy" for
        a moment after an unmount, so that is retried."""
        for attempt in range(attempts):
            try:
                if not await self.zfs.exists(name):
                    return
                if await self.zfs.get(name, "mounted") == "yes":
                    await self.zfs.unmount(name)
                await self.zfs.destroy(name, recursive=True)
                return
            except Exception as e:  # zfs-fuse: "busy" for a moment after unmount
                if "busy" not in str(e) or attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.25)

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
