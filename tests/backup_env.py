"""The backup/restore test environment on real parts: a zfs-fuse pool, PostgreSQL nodes, the
real manatee-backupserver, ZooKeeper membership; shared by the backup/restore test modules."""

from __future__ import annotations

import asyncio

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp
import pytest

from manatee.core.auth import ShardSecret, load_secret_file, new_secret, sign_request, write_secret_file
from manatee.core.procs import free_port, pid_alive, terminate, wait_port_async
from manatee.core.restore import restore
from manatee.core.zfs import Zfs
from manatee.core.zk import ZKClient
from manatee_testbed.postgres import PgNode
from manatee_testbed.zfspool import ZfsPool, abort_daemon_streams, mounts_of_pool

BACKUPSERVER = str(Path(sys.executable).with_name("manatee-backupserver"))
ROWS = 10_000


def _zfs_recv_pids() -> list[int]:
    """Every live `zfs recv` on the machine (read from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and os.path.basename(argv[0]) == b"zfs" and argv[1] in (b"recv", b"receive"):
            if pid_alive(int(entry)):
                pids.append(int(entry))
    return pids


def make_secret_file(directory: Path) -> tuple[str, ShardSecret]:
    path = str(directory / "shard.secret")
    write_secret_file(path, new_secret())
    return path, load_secret_file(path)


async def signed_post(url: str, body: dict, secret: ShardSecret | None, source: str | None = None,
                      ) -> tuple[int, dict]:
    """POST JSON to a backupserver as a shard member would (signed, from `source`)."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **sign_request(secret, "POST", "/backup", data)}
    conn = aiohttp.TCPConnector(local_addr=(source, 0) if source else None)
    async with aiohttp.ClientSession(connector=conn) as http:
        async with http.post(f"{url}/backup", data=data, headers=headers) as r:
            return r.status, await r.json()


def _election_record(ip: str, zone: str, backup_url: str | None = None) -> dict:
    """What a sitter writes in its election node (a partial record is quarantined, not a member)."""
    return {"ip": ip, "zoneId": zone, "pgUrl": f"tcp://postgres@{ip}:5432/postgres",
            "backupUrl": backup_url or f"http://{ip}:10002", "statusUrl": f"http://{ip}:5433"}


class Env:
    """One test's pool, directories, PostgreSQL nodes and backupservers; all removed after.

    Every backupserver is secure as in production: the shard secret (one file) and
    membership from a real ZooKeeper election, in which the server's address and every
    restoring address (env.restore) are registered."""

    def __init__(self, base: Path, pool: ZfsPool, zk_hosts: str) -> None:
        self.base = base
        self.pool = pool
        self.zfs = Zfs()
        self.pg_nodes: list[PgNode] = []
        self.servers: list[subprocess.Popen] = []
        self.zk_hosts = zk_hosts
        self.shard = f"/manatee/{uuid.uuid4().hex[:8]}"
        self.secret_file, self.secret = make_secret_file(base)
        self.zk: ZKClient | None = None
        self.registered: set[str] = set()

    async def member(self, ip: str, backup_url: str | None = None) -> None:
        """Register `ip` in the shard's election (as its sitter would), with the URL of its
        backupserver when it runs one (the stale-mark check asks it there)."""
        if ip in self.registered:
            return
        if self.zk is None:
            self.zk = ZKClient(self.zk_hosts, session_timeout=10)
            await self.zk.start()
        await self.zk.create(f"{self.shard}/election/{ip}:5432:10002:5433-",
                             _election_record(ip, f"zone-{ip}", backup_url),
                             ephemeral=True, sequence=True, makepath=True)
        self.registered.add(ip)

    async def restore(self, zfs, **kw):
        await self.member(kw["listen_host"])
        kw.setdefault("secret", self.secret)
        return await restore(zfs, **kw)

    def dataset(self, rel: str, mounted: bool = True) -> tuple[str, Path]:
        mnt = self.base / rel
        name = self.pool.create_dataset(rel, mnt if mounted else None)
        return name, mnt

    def pg_node(self, name: str, ip: str, data_dir: Path) -> PgNode:
        node = PgNode(name, ip, free_port(ip), data_dir=data_dir, work_dir=self.base / f"{name}-work")
        self.pg_nodes.append(node)
        return node

    async def backupserver(self, dataset: str, ip: str, **extra) -> tuple[subprocess.Popen, str]:
        port = free_port(ip)
        await self.member(ip, f"http://{ip}:{port}")
        cfg = {
            "backupSenderCfg": extra.pop("backupSenderCfg", {"dataset": dataset}),
            "backupServerCfg": {"host": ip, "port": port, **extra.pop("server", {})},
            "secretFile": self.secret_file,
            "zkCfg": {"connStr": self.zk_hosts, "sessionTimeout": 10000},
            "shardPath": self.shard,
            **extra,
        }
        path = self.base / f"backupserver-{port}.json"
        path.write_text(json.dumps(cfg))
        log = open(self.base / f"backupserver-{port}.log", "ab")
        proc = subprocess.Popen(
            [BACKUPSERVER, "-f", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.servers.append(proc)
        await wait_port_async(ip, port, timeout=20)
        # It serves before its ZooKeeper session exists (503 to every request until then, by
        # design): a test must not race it (CI, 2026-12-05, a loaded machine).
        log_path = self.base / f"backupserver-{port}.log"
        for _ in range(200):
            if "backupserver_zk_connected" in log_path.read_text(errors="replace") or proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        return proc, f"http://{ip}:{port}"

    def server_log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.base.glob("backupserver-*.log"))

    async def cleanup(self) -> None:
        for proc in self.servers:
            terminate(proc.pid, timeout=10)
            proc.wait(5)
        if self.zk is not None:
            await self.zk.close()
        for node in self.pg_nodes:
            await node.kill()
        self.pool.destroy()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
async def env(zfs_fuse, zk_hosts):
    base = Path(tempfile.mkdtemp(prefix=f"mbr-{uuid.uuid4().hex[:6]}-", dir="/tmp"))
    os.chmod(base, 0o755)  # PostgreSQL runs as postgres and must reach its data dir
    pool = ZfsPool(base / "pool", size="2G")
    pool.create()
    e = Env(base, pool, zk_hosts)
    try:
        yield e
    finally:
        await e.cleanup()
        assert not pool.exists(), f"pool {pool.name} survived"
        assert not mounts_of_pool(pool.name)
        assert not any(p.processes() for p in (n.proc for n in e.pg_nodes))


def kill_sender_host(server: subprocess.Popen) -> None:
    """The sending host dies mid-stream: its backupserver and `zfs send` are SIGKILLed, and
    so is the stream itself. Under zfs-fuse the daemon (shared by every "host" of this
    machine) writes the stream and would finish it after `zfs send` died — on a real host
    ZFS dies with the host — so the daemon's stream connections are cut (this test's are
    the only ones: tests run one at a time)."""
    os.killpg(server.pid, signal.SIGKILL)
    abort_daemon_streams()
