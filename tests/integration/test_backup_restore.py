"""Backupserver + restore client on real ZFS (zfs-fuse), PostgreSQL and ZooKeeper.

The acceptance test: node A runs PostgreSQL on a ZFS dataset; the real
`manatee-backupserver` console script serves A's dataset; `restore()` rebuilds node
B's dataset from it; PostgreSQL started on B sees every row. The fault tests kill
the backupserver mid-stream and cancel a restore, and check that B is left exactly
as it was (old dataset back, mounted, same content; no zfs recv; port closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from manatee.backupserver.config import BackupServerConfig
from manatee.backupserver.main import run as backupserver_run
from manatee.core.auth import ShardSecret, sign_request
from manatee.core.procs import free_port, port_open, wait_port_async
from manatee.core.restore import RestoreError, RestoreProgress
from manatee.core.zk import ZKClient
from manatee_testbed.zfspool import zfs_processes_on
from tests.fixtures_pg import random_loopback_ip

from tests.backup_env import (BACKUPSERVER, ROWS, Env, _election_record, _zfs_recv_pids, env,  # noqa: F401 - env is a fixture
                              kill_sender_host, make_secret_file, signed_post)


async def _election(zk_hosts: str, shard: str, *ips: str) -> ZKClient:
    zk = ZKClient(zk_hosts, session_timeout=10)
    await zk.start()
    for i, ip in enumerate(ips):
        await zk.create(
            f"{shard}/election/{ip}:5432:10002:5433-",
            _election_record(ip, f"node-{i}"),
            ephemeral=True,
            sequence=True,
            makepath=True,
        )
    return zk


def _assert_invariant_after_failure(env: Env, dataset: str, mnt: Path, listen: tuple[str, int]) -> None:
    listing = subprocess.run(
        ["zfs", "list", "-H", "-t", "filesystem", "-r", "-o", "name,mounted,mountpoint", env.pool.name],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line.split("\t") for line in listing.splitlines()]
    names = [r[0] for r in rows]
    assert not [n for n in names if "-restore-" in n], listing
    row = next(r for r in rows if r[0] == dataset)
    assert row[1:] == ["yes", str(mnt)], listing
    assert (mnt / "marker").read_text() == "the old copy"
    assert sorted(os.listdir(mnt)) == ["marker"]
    # No zfs recv left (the sender's zfs send, in the backupserver, stops on its own).
    assert not [p for p in _zfs_recv_pids() if env.pool.name in open(f"/proc/{p}/cmdline").read()]
    assert not port_open(*listen), f"{listen} still listening"


# ------------------------------------------------------------------------ acceptance


async def test_restore_postgres_through_backupserver(env, zk_hosts):
    """Node A's PostgreSQL (on ZFS) is rebuilt onto node B's dataset via the real daemon."""
    ip_a, ip_b = random_loopback_ip(), random_loopback_ip()
    shard = "/manatee/test"
    zk = await _election(zk_hosts, shard, ip_a, ip_b)
    try:
        ds_a, mnt_a = env.dataset("a")
        a = env.pg_node("a", ip_a, mnt_a)
        await a.init()
        await a.start()
        await a.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        await a.execute(f"INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, {ROWS}) i")
        expected = (await a.psql("SELECT count(*) AS n, sum(id) AS s FROM t"))[0]
        assert expected["n"] == ROWS

        ds_b, mnt_b = env.dataset("b")
        (mnt_b / "marker").write_text("the old copy")

        _, url = await env.backupserver(ds_a, ip_a, zkCfg={"connStr": zk_hosts, "sessionTimeout": 10000},
                                        shardPath=shard)
        listen_port = free_port(ip_b)
        seen: list[RestoreProgress] = []
        result = await env.restore(
            env.zfs,
            dataset=ds_b,
            mountpoint=mnt_b,
            backup_url=url,
            listen_host=ip_b,
            listen_port=listen_port,
            owner="postgres",
            poll_interval=0.1,
            timeout=120,
            progress=seen.append,
        )
        # The stream: a fresh epoch-ms snapshot of A, fully received; hold released.
        assert re.fullmatch(rf"{re.escape(ds_a)}@\d{{13}}", result.source_snapshot)
        snap_name = result.source_snapshot.split("@")[1]
        assert result.snapshot == f"{ds_b}@{snap_name}"
        assert result.bytes > 10_000_000 and result.seconds > 0
        assert int(await env.zfs.get(result.source_snapshot, "userrefs")) == 0
        phases = [p.phase for p in seen]
        assert phases[0] == "listening" and phases[-1] == "done"
        assert "setting_aside" in phases and "receiving" in phases and "mounting" in phases
        assert max(p.completed for p in seen) == result.bytes
        assert all(p.size is None or p.size > 0 for p in seen)

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/backup/{result.jobid}") as r:
                job = await r.json()
        assert job["done"] is True and job["completed"] == result.bytes
        assert job["host"] == ip_b and job["port"] == listen_port and job["dataset"] == ds_b

        # B: the new copy mounted in place of the old one, which is gone.
        assert not (mnt_b / "marker").exists()
        assert not (mnt_b / "postmaster.pid").exists()
        st = os.stat(mnt_b)
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (pwd.getpwnam("postgres").pw_uid, "0o700")
        names = (await env.zfs.run("list", "-H", "-o", "name", "-r", env.pool.name)).split()
        assert sorted(names) == sorted([env.pool.name, ds_a, ds_b])
        assert await env.zfs.get(ds_b, "mountpoint") == str(mnt_b)
        assert not port_open(ip_b, listen_port)

        # PostgreSQL on B (its own address, port and socket dir) sees every row.
        b = env.pg_node("b", ip_b, mnt_b)
        b.configure(b.role_config("primary"))
        await b.start()
        got = (await b.psql("SELECT count(*) AS n, sum(id) AS s FROM t"))[0]
        assert got == expected
        assert (await b.psql("SELECT v FROM t WHERE id = 4242"))[0]["v"] == (
            await a.psql("SELECT v FROM t WHERE id = 4242")
        )[0]["v"]
    finally:
        await zk.close()


async def test_restore_onto_new_dataset(env):
    """A node with no dataset yet (F14: a fourth node joining) is bootstrapped."""
    ip_a, ip_b = random_loopback_ip(), random_loopback_ip()
    ds_a, mnt_a = env.dataset("a")
    (mnt_a / "data").mkdir()
    (mnt_a / "data" / "file").write_bytes(os.urandom(3_000_000))
    (mnt_a / "data" / "postmaster.pid").write_text("12345\n")
    _, url = await env.backupserver(ds_a, ip_a)
    ds_c = f"{env.pool.name}/c"
    mnt_c = env.base / "c"
    result = await env.restore(
        env.zfs, dataset=ds_c, mountpoint=mnt_c, backup_url=url, listen_host=ip_b,
        listen_port=free_port(ip_b), owner="postgres", poll_interval=0.1, timeout=60,
    )
    assert (mnt_c / "data" / "file").read_bytes() == (mnt_a / "data" / "file").read_bytes()
    assert not (mnt_c / "data" / "postmaster.pid").exists()
    assert (mnt_a / "data" / "postmaster.pid").exists()  # the source is untouched
    assert os.stat(mnt_c / "data" / "file").st_uid == pwd.getpwnam("postgres").pw_uid
    assert await env.zfs.get(ds_c, "mounted") == "yes"
    assert result.bytes >= 3_000_000


# ------------------------------------------------------------------------ faults


async def _big_source(env: Env, ip: str, mb: int = 150) -> tuple[str, str, subprocess.Popen]:
    ds_a, mnt_a = env.dataset("a")
    with open(mnt_a / "random.bin", "wb") as f:  # incompressible, so the stream is long
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    # Both ends share this machine's one zfs-fuse daemon, whose blocked send thread can hold
    # the lock the aborted receive needs for its clean-up; then only the sender's stall
    # timeout ends the send. On real hosts each end has its own ZFS and the write fails at
    # once. A short stall timeout keeps the test quick either way.
    proc, url = await env.backupserver(ds_a, ip, backupSenderCfg={"dataset": ds_a, "stallTimeout": 3})
    return ds_a, url, proc


async def _old_b(env: Env) -> tuple[str, Path]:
    ds_b, mnt_b = env.dataset("b")
    (mnt_b / "marker").write_text("the old copy")
    return ds_b, mnt_b


async def test_backupserver_killed_mid_stream(env):
    ip_a, ip_b = random_loopback_ip(), random_loopback_ip()
    # 400 MB: on an idle machine a 150 MB stream could end before the kill took effect
    ds_a, url, server = await _big_source(env, ip_a, mb=400)
    ds_b, mnt_b = await _old_b(env)
    listen = (ip_b, free_port(ip_b))
    killed_at: list[int] = []

    def kill_when_streaming(p: RestoreProgress) -> None:
        if p.phase == "receiving" and p.completed > 0 and not killed_at:
            kill_sender_host(server)  # the whole host dies, zfs send and its stream too
            killed_at.append(p.completed)

    started = time.monotonic()
    with pytest.raises(RestoreError) as err:
        await env.restore(
            env.zfs, dataset=ds_b, mountpoint=mnt_b, backup_url=url, listen_host=listen[0],
            listen_port=listen[1], poll_interval=0.05, timeout=60, progress=kill_when_streaming,
        )
    # killed before the stream ended (it was 194 MB in once when the first poll saw it, on a
    # loaded machine: the bound is the stream's end, with room for its overhead)
    assert killed_at and killed_at[0] < 360 << 20
    assert time.monotonic() - started < 30
    msg = str(err.value)
    assert "zfs recv" in msg or "stopped answering" in msg, msg
    assert err.value.rollback_errors == []
    server.wait(5)
    _assert_invariant_after_failure(env, ds_b, mnt_b, listen)
    assert not zfs_processes_on(env.pool.name)  # its zfs send died with it

    # The killed daemon left its hold on the snapshot; a restarted one releases it, so
    # the snapshotter's retention can prune the snapshot again.
    snaps = [s.full for s in await env.zfs.list_snapshots(ds_a)]
    assert len(snaps) == 1 and int(await env.zfs.get(snaps[0], "userrefs")) == 1
    await env.backupserver(ds_a, ip_a)
    assert int(await env.zfs.get(snaps[0], "userrefs")) == 0


async def test_restore_cancelled_mid_stream(env):
    ip_a, ip_b = random_loopback_ip(), random_loopback_ip()
    # 400 MB: once a 150 MB stream ended before a poll saw a byte of it (CI, 2026-12-06)
    ds_a, url, _server = await _big_source(env, ip_a, mb=400)
    ds_b, mnt_b = await _old_b(env)
    listen = (ip_b, free_port(ip_b))
    streaming = asyncio.Event()

    def note(p: RestoreProgress) -> None:
        if p.phase == "receiving" and p.completed > 0:
            streaming.set()

    task = asyncio.ensure_future(
        env.restore(env.zfs, dataset=ds_b, mountpoint=mnt_b, backup_url=url, listen_host=listen[0],
                listen_port=listen[1], poll_interval=0.05, timeout=60, progress=note)
    )
    await asyncio.wait_for(streaming.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_invariant_after_failure(env, ds_b, mnt_b, listen)
    # The sender notices the receiver went away and fails the job (and drops its hold).
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            async with http.get(f"{url}/ping") as r:
                ping = await r.json()
            if ping["running"] == 0:
                break
            await asyncio.sleep(0.1)
    assert ping["running"] == 0, env.server_log()
    assert not zfs_processes_on(env.pool.name)
    snaps = await env.zfs.list_snapshots(ds_a)
    assert int(await env.zfs.get(snaps[0].full, "userrefs")) == 0, env.server_log()


async def test_restore_refused_rolls_back(env):
    """Wrong secret: the request is refused (401) and B is left as it was."""
    ip_a, ip_b = random_loopback_ip(), random_loopback_ip()
    ds_a, _ = env.dataset("a")
    _, url = await env.backupserver(ds_a, ip_a)
    # B's mountpoint is inherited from its parent: the rollback must restore that too.
    env.dataset("nodes")
    ds_b, mnt_b = f"{env.pool.name}/nodes/b", env.base / "nodes" / "b"
    await env.zfs.create(ds_b)
    (mnt_b / "marker").write_text("the old copy")
    assert (await env.zfs.run("get", "-H", "-o", "source", "mountpoint", ds_b)).startswith("inherited")
    listen = (ip_b, free_port(ip_b))
    with pytest.raises(RestoreError, match="HTTP 401"):
        await env.restore(env.zfs, dataset=ds_b, mountpoint=mnt_b, backup_url=url, listen_host=listen[0],
                      listen_port=listen[1], secret="another-shards-secret-456", poll_interval=0.1, timeout=30)
    _assert_invariant_after_failure(env, ds_b, mnt_b, listen)
    assert (await env.zfs.run("get", "-H", "-o", "source", "mountpoint", ds_b)).startswith("inherited")
    # ... and the right secret works.
    await env.restore(env.zfs, dataset=ds_b, mountpoint=mnt_b, backup_url=url, listen_host=listen[0],
                  listen_port=listen[1], poll_interval=0.1, timeout=30)
    assert not (mnt_b / "marker").exists()


async def test_restore_with_listen_port_taken_touches_nothing(env):
    ip_b = random_loopback_ip()
    ds_b, mnt_b = await _old_b(env)
    blocker = await asyncio.start_server(lambda r, w: w.close(), ip_b, 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RestoreError, match=f"cannot listen on {re.escape(ip_b)}:{port}"):
            await env.restore(env.zfs, dataset=ds_b, mountpoint=mnt_b, backup_url="http://127.0.0.1:9",
                          listen_host=ip_b, listen_port=port, timeout=10)
    finally:
        blocker.close()
        await blocker.wait_closed()
    _assert_invariant_after_failure(env, ds_b, mnt_b, (ip_b, port))


# ------------------------------------------------------------------------ membership


async def test_only_shard_members_may_ask(zk_hosts, tmp_path):
    """Real ZooKeeper election children decide who may request and receive a backup."""
    member, other, target_ok, target_bad = (random_loopback_ip() for _ in range(4))
    shard = f"/manatee/{uuid.uuid4().hex[:6]}"
    port = free_port("0.0.0.0")  # the server binds every address: free on all of them, not on one
    secret_file, secret = make_secret_file(tmp_path)
    config = BackupServerConfig.model_validate(
        {
            "backupSenderCfg": {"dataset": f"nopool{uuid.uuid4().hex[:6]}/ds"},
            "backupServerCfg": {"host": "0.0.0.0", "port": port},
            "zkCfg": {"connStr": zk_hosts, "sessionTimeout": 10000},
            "shardPath": shard,
            "secretFile": secret_file,
        }
    )
    import structlog

    stop = asyncio.Event()
    server = asyncio.ensure_future(backupserver_run(config, structlog.get_logger("test"), stop))
    zk = None
    try:
        await wait_port_async("127.0.0.1", port, 20)

        async def post(source: str, host: str) -> tuple[int, dict]:
            return await signed_post(f"http://127.0.0.1:{port}", {"host": host, "port": 10001, "dataset": "p/d",
                                                                  "streamToken": "ab" * 32}, secret, source)

        # No election node (yet, or a typo in shardPath): nobody is a member (fail closed).
        status, body = await post(other, target_bad)
        assert status == 403, body

        zk = await _election(zk_hosts, shard, member, target_ok)
        status, body = await post(other, target_ok)
        assert status == 403 and f"requester {other} is not a member" in body["message"]
        status, body = await post(member, target_bad)
        assert status == 403 and f"host {target_bad} is not a member" in body["message"]
        status, body = await post(member, target_ok)
        assert status == 200, body

        # The job runs (and fails: the configured dataset does not exist), visibly.
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                async with http.get(f"http://127.0.0.1:{port}{body['jobPath']}") as r:
                    job = await r.json()
                if job["done"] is not False:
                    break
                await asyncio.sleep(0.05)
        assert job["done"] == "failed" and "nopool" in job["error"]
        assert job["host"] == target_ok

        # A member that leaves the election loses access at once.
        await zk.close()
        zk = None
        status, body = await post(member, target_ok)
        assert status == 403
    finally:
        if zk is not None:
            await zk.close()
        stop.set()
        assert await asyncio.wait_for(server, 20) == 0
    assert not port_open("127.0.0.1", port)


async def test_unreachable_zookeeper_fails_closed(tmp_path):
    dead = free_port("127.0.0.1")
    port = free_port("127.0.0.1")
    secret_file, secret = make_secret_file(tmp_path)
    config = BackupServerConfig.model_validate(
        {
            "secretFile": secret_file,
            "backupSenderCfg": {"dataset": "nopool/ds"},
            "backupServerCfg": {"host": "127.0.0.1", "port": port},
            "zkCfg": {"connStr": f"127.0.0.1:{dead}", "sessionTimeout": 4000, "connectTimeout": 500},
            "shardPath": "/manatee/x",
        }
    )
    import structlog

    stop = asyncio.Event()
    server = asyncio.ensure_future(backupserver_run(config, structlog.get_logger("test"), stop))
    try:
        await wait_port_async("127.0.0.1", port, 20)
        status, body = await signed_post(f"http://127.0.0.1:{port}", {"host": "127.0.0.1", "port": 1,
                                         "dataset": "p", "streamToken": "ab" * 32}, secret)
        assert status == 503 and "ZooKeeper" in body["message"]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/ping") as r:
                assert r.status == 200
    finally:
        stop.set()
        assert await asyncio.wait_for(server, 20) == 0


# ------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"backupServerCfg": {"port": 10002}}, "backupSenderCfg"),
        ({"backupSenderCfg": {"dataset": "pool/ds@snap"}}, "backupSenderCfg.dataset"),
        ({"backupSenderCfg": {"dataset": "pool/ds"}, "backupServerCfg": {"port": "ten"}},
         "backupServerCfg.port"),
        ({"backupSenderCfg": {"dataset": "pool/ds"}, "backupServerCfg": {"port": 70000}},
         "backupServerCfg.port"),
        ({"backupSenderCfg": {"dataset": "pool/ds"}, "backupServerCfg": {"maxConcurrentSends": 0}},
         "backupServerCfg.maxConcurrentSends"),
        ({"backupSenderCfg": {"dataset": "pool/ds", "zfspath": "/x"}}, "backupSenderCfg.zfspath"),
        ({"backupSenderCfg": {"dataset": "pool/ds"}, "zkCfg": {"connStr": "127.0.0.1:2181"}}, "shardPath"),
        ({"backupSenderCfg": {"dataset": "pool/ds"}, "zkCfg": {"connStr": "nohostport"},
          "shardPath": "/manatee/1"}, "zkCfg.connStr"),
    ],
)
def test_invalid_config_exits_nonzero(tmp_path, cfg, key):
    path = tmp_path / "backupserver.json"
    path.write_text(json.dumps(cfg))
    cp = subprocess.run([BACKUPSERVER, "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 2, cp
    assert str(path) in cp.stderr and key in cp.stderr, cp.stderr


def test_malformed_config_file(tmp_path):
    path = tmp_path / "backupserver.json"
    path.write_text('{"backupSenderCfg": {')
    cp = subprocess.run([BACKUPSERVER, "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 2 and "not valid JSON" in cp.stderr
    cp = subprocess.run([BACKUPSERVER, "-f", str(tmp_path / "missing.json")], capture_output=True,
                        text=True, timeout=30)
    assert cp.returncode == 2 and "file not found" in cp.stderr


async def test_hung_receiver_fails_the_job_and_frees_everything(env):
    """A receiver that accepts and never reads: the send stalls, is killed, the hold released."""
    ip_a, ip_r = random_loopback_ip(), random_loopback_ip()
    ds_a, mnt_a = env.dataset("a")
    with open(mnt_a / "random.bin", "wb") as f:
        for _ in range(60):
            f.write(os.urandom(1 << 20))
    _, url = await env.backupserver(ds_a, ip_a, backupSenderCfg={"dataset": ds_a, "stallTimeout": 1.5})
    # The kernel completes the handshake for a listening socket nobody accept()s, and
    # then buffers a few MB: exactly a peer that connected and stopped reading.
    hung = socket.socket()
    hung.bind((ip_r, 0))
    hung.listen(1)
    hung_port = hung.getsockname()[1]
    await env.member(ip_r)
    try:
        status, body = await signed_post(url, {"host": ip_r, "port": hung_port, "dataset": "x/y",
                                               "streamToken": "00" * 32}, env.secret, source=ip_r)
        assert status == 200, body
        jobpath = body["jobPath"]
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                async with http.get(url + jobpath) as r:
                    job = await r.json()
                if job["done"] is not False:
                    break
                await asyncio.sleep(0.1)
        assert job["done"] == "failed", job
        assert "stalled" in job["error"] and 0 < job["completed"] < 60 << 20, job
        assert re.fullmatch(r"\d{13}", job["snapshot"].split("@")[1])
        assert int(await env.zfs.get(job["snapshot"], "userrefs")) == 0
        assert not zfs_processes_on(env.pool.name)
    finally:
        hung.close()


# ------------------------------------------------------------------------ authentication (issue 9)


class _Recorder:
    """A logger that keeps (event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def _rec(self, event, **kw):
        self.events.append((event, kw))

    info = warning = error = debug = exception = _rec


async def _strangers(ip: str, port: int, stop: asyncio.Event, log: list[str]) -> list[socket.socket]:
    """Knock on the restoring node's zfs port as soon as it listens: one connection sends a
    (fake) zfs stream, one says nothing; both connect before the real sender can."""
    loop = asyncio.get_running_loop()
    held: list[socket.socket] = []
    for payload in (b"\x00\x00\x00\x00\xac\xcb\xba\xf5" + os.urandom(4096), None):
        while not stop.is_set():
            s = socket.socket()
            s.setblocking(False)
            try:
                await loop.sock_connect(s, (ip, port))
            except OSError:
                s.close()
                await asyncio.sleep(0.005)
                continue
            log.append("connected" + (" and sent a stream" if payload else " silently"))
            if payload:
                with contextlib.suppress(OSError):
                    await loop.sock_sendall(s, payload)
            held.append(s)
            break
    return held


async def test_a_strangers_connection_never_reaches_zfs_recv(env):
    """Strangers connect to the restoring node's zfs port first (one sends a fake stream, one
    stays silent): neither reaches zfs recv, and the restore completes from the real upstream."""
    ip_a, ip_b, ip_x = random_loopback_ip(), random_loopback_ip(), random_loopback_ip()
    ds_a, mnt_a = env.dataset("a")
    (mnt_a / "marker").write_text("from the real upstream")
    with open(mnt_a / "random.bin", "wb") as f:
        f.write(os.urandom(8 << 20))
    _, url = await env.backupserver(ds_a, ip_a)
    ds_b, mnt_b = env.dataset("b")
    (mnt_b / "marker").write_text("the old copy")
    listen = (ip_b, free_port(ip_b))
    stop, knocks, log = asyncio.Event(), [], _Recorder()
    strangers = asyncio.ensure_future(_strangers(ip_b, listen[1], stop, knocks))
    try:
        result = await env.restore(env.zfs, dataset=ds_b, mountpoint=mnt_b, backup_url=url,
                                   listen_host=listen[0], listen_port=listen[1], owner="postgres",
                                   poll_interval=0.1, timeout=60, logger=log)
    finally:
        stop.set()
        held = await strangers
        for s in held:
            s.close()
    assert knocks == ["connected and sent a stream", "connected silently"], knocks
    rejected = [kw for ev, kw in log.events if ev == "restore_stream_rejected"]
    assert rejected and all("bad header" in r["reason"] or "no header" in r["reason"] for r in rejected), rejected
    connected = [kw for ev, kw in log.events if ev == "restore_stream_connected"]
    assert len(connected) == 1 and ip_a in connected[0]["peer"], connected
    assert (mnt_b / "marker").read_text() == "from the real upstream"
    assert (mnt_b / "random.bin").stat().st_size == 8 << 20
    assert result.bytes > 8 << 20
    assert not port_open(*listen)
    del ip_x


async def test_backup_requests_without_proof_change_nothing(env):
    """POST /backup without the shard secret's proof → 401, from a non-member or naming one → 403,
    and with the shard's election node missing → 403: no job, no snapshot, no connection."""
    ip_a, ip_b, ip_x = random_loopback_ip(), random_loopback_ip(), random_loopback_ip()
    ds_a, _ = env.dataset("a")
    _, url = await env.backupserver(ds_a, ip_a)
    await env.member(ip_b)
    catcher = socket.socket()  # where a leaked stream would go
    catcher.bind((ip_b, 0))
    catcher.listen(8)
    catcher.setblocking(False)
    body = {"host": ip_b, "port": catcher.getsockname()[1], "dataset": "x/y", "streamToken": "ab" * 32}
    try:
        # 401: no proof, the old Bearer scheme, another shard's secret, a replayed request.
        assert (await signed_post(url, body, None, ip_b))[0] == 401
        data = json.dumps(body).encode()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip_b, 0))) as http:
            async with http.post(f"{url}/backup", data=data, headers={
                    "Content-Type": "application/json", "Authorization": "Bearer " + env.secret.keys[0].decode()}) as r:
                assert r.status == 401 and "Bearer" in (await r.json())["message"]
            signed = {"Content-Type": "application/json", **sign_request(env.secret, "POST", "/backup",
                                                                         json.dumps({**body, "port": 1}).encode())}
            async with http.post(f"{url}/backup", data=data, headers=signed) as r:  # body swapped
                assert r.status == 401
        assert (await signed_post(url, body, ShardSecret.of("another-shards-secret-xyz"), ip_b))[0] == 401
        # 403: a signed request from a stranger's address, or naming a stranger's address.
        status, err = await signed_post(url, body, env.secret, ip_x)
        assert status == 403 and f"requester {ip_x}" in err["message"]
        status, err = await signed_post(url, {**body, "host": ip_x}, env.secret, ip_b)
        assert status == 403 and f"host {ip_x}" in err["message"]
        # 403: the shard's election node is gone (e.g. a typo in shardPath): fail closed.
        await env.zk.close()
        env.zk = None
        zk = ZKClient(env.zk_hosts, session_timeout=10)
        await zk.start()
        try:
            await zk.delete(f"{env.shard}/election", recursive=True)
        finally:
            await zk.close()
        status, err = await signed_post(url, body, env.secret, ip_b)
        assert status == 403, err
        # Nothing happened: no job ran, no snapshot was taken, nobody connected.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/ping") as r:
                ping = await r.json()
        assert ping["running"] == 0 and ping["queued"] == 0
        snaps = (await env.zfs.run("list", "-H", "-t", "snapshot", "-o", "name", "-r", ds_a)).split()
        assert snaps == []
        with pytest.raises(BlockingIOError):
            catcher.accept()
    finally:
        catcher.close()


def test_backupserver_refuses_to_start_without_a_usable_secret(tmp_path):
    secret = tmp_path / "shard.secret"
    secret.write_text("a-long-enough-shard-secret-123\n")
    os.chmod(secret, 0o644)
    base = {"backupSenderCfg": {"dataset": "pool/ds"}, "zkCfg": {"connStr": "127.0.0.1:9"}, "shardPath": "/m/1"}
    for cfg, words in [
        (base, "secretFile is required"),
        ({**base, "secretFile": str(secret)}, "chmod 600"),
        ({**base, "secretFile": str(tmp_path / "missing")}, "does not exist"),
    ]:
        path = tmp_path / "backupserver.json"
        path.write_text(json.dumps(cfg))
        cp = subprocess.run([BACKUPSERVER, "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert cp.returncode == 2, cp
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "secretFile" in lines[0], cp.stderr
        assert "a-long-enough" not in cp.stderr
