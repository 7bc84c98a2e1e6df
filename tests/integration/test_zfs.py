"""manatee.core.zfs and manatee_testbed.zfspool against real ZFS (zfs-fuse)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from manatee.core.zfs import Zfs, ZfsError
from manatee.core.zfsstream import StreamError
from manatee_testbed.zfspool import (
    ZfsPool,
    ZfsPoolBusy,
    ensure_zfs_fuse,
    mounts_of_pool,
    processes_using,
    zfs_processes_on,
)

MiB = 1 << 20


def write_random(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (sending end, receiving end) pair of non-blocking TCP sockets on loopback."""
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        a.setblocking(False)
        (b, _), _ = await asyncio.gather(loop.sock_accept(listener), loop.sock_connect(a, listener.getsockname()))
        b.setblocking(False)
        return a, b
    finally:
        listener.close()


async def send_to_recv(zfs: Zfs, snapshot: str, target: str, incremental_from: str | None = None, **recv_kw):
    """zfs send -> TCP -> zfs recv, as backupserver and restore do; the receiver's error first."""
    a, b = await tcp_pair()
    progress: list[int] = []

    async def sender():
        try:
            return await zfs.send_to_socket(snapshot, a, incremental_from=incremental_from,
                                            progress=progress.append, stall_timeout=30)
        finally:
            a.close()

    async def receiver():
        try:
            return await zfs.recv_from_socket(target, b, **recv_kw)
        finally:
            b.close()  # the sender returns once the receiver has closed

    sent, received = await asyncio.gather(sender(), receiver(), return_exceptions=True)
    for result in (received, sent):
        if isinstance(result, BaseException):
            raise result
    return sent, received, progress


async def read_stream(zfs: Zfs, snapshot: str) -> bytes:
    """The whole `zfs send` stream of `snapshot`, read from the socket by Python."""
    loop = asyncio.get_running_loop()
    a, b = await tcp_pair()
    task = asyncio.ensure_future(zfs.send_to_socket(snapshot, a, stall_timeout=30))
    data = bytearray()
    try:
        while chunk := await loop.sock_recv(b, 1 << 20):
            data += chunk
        b.close()
        assert await task == len(data)
    finally:
        b.close()
        a.close()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return bytes(data)


async def feed(sock: socket.socket, data: bytes, eof: bool = True) -> None:
    """Write `data` into `sock` (then EOF); a receiver that quits early is not an error here."""
    try:
        await asyncio.get_running_loop().sock_sendall(sock, data)
        if eof:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def my_zfs_procs(pool: str) -> list[int]:
    return zfs_processes_on(pool)


async def wait_no_procs(pool: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = my_zfs_procs(pool)
        if not left:
            return []
        await asyncio.sleep(0.05)
    return my_zfs_procs(pool)


# ------------------------------------------------------------------ pool harness


def test_pool_dataset_mounts_and_teardown_leaves_nothing(zfs_fuse, tmp_path):
    pool = ZfsPool(tmp_path)
    with pool:
        assert pool.exists()
        mnt = tmp_path / "mnt"
        ds = pool.create_dataset("a/b", mountpoint=mnt)
        assert ds == f"{pool.name}/a/b"
        assert str(mnt) in mounts_of_pool(pool.name)
        (mnt / "f").write_text("x")
        # a leftover process using the mount (as a crashed test's postgres would) is killed
        leftover = subprocess.Popen(["sleep", "60"], cwd=mnt)
        assert leftover.pid in processes_using([str(mnt)])
    assert leftover.wait(5) == -9
    assert not pool.exists()
    assert mounts_of_pool(pool.name) == []
    assert not pool.file.exists()
    pool.destroy()  # idempotent


def test_pool_busy_in_this_process_is_refused_not_forced(zfs_fuse, tmp_path):
    pool = ZfsPool(tmp_path).create()
    try:
        mnt = tmp_path / "mnt"
        pool.create_dataset("a", mountpoint=mnt)
        fd = os.open(mnt / "f", os.O_CREAT | os.O_RDWR)
        try:
            with pytest.raises(ZfsPoolBusy) as ei:
                pool.destroy()
            assert str(os.getpid()) in str(ei.value)
            assert pool.exists() and str(mnt) in mounts_of_pool(pool.name)
            os.write(fd, b"still works")  # the daemon is fine
        finally:
            os.close(fd)
    finally:
        pool.destroy()
    assert not pool.exists() and mounts_of_pool(pool.name) == []


def test_pool_destroy_tolerates_partial_states(zfs_fuse, tmp_path):
    never_created = ZfsPool(tmp_path)
    never_created.destroy()
    p = ZfsPool(tmp_path, name=f"mtest{os.urandom(4).hex()}", size="256M")
    p.create()
    with pytest.raises(ZfsError):
        ZfsPool(tmp_path, name=p.name).create()  # same name: zpool refuses
    p.destroy()
    assert not p.exists()


def test_ensure_zfs_fuse_reuses_running_daemon(zfs_fuse):
    h = ensure_zfs_fuse()
    assert h.pid is not None and not h.started
    assert h.release() is False  # never stops a daemon it did not start
    assert ensure_zfs_fuse().pid == h.pid


# ------------------------------------------------------------------ datasets and snapshots


async def test_exists_create_get_set(zpool, zfs):
    ds = f"{zpool.name}/pg"
    assert not await zfs.exists(ds)
    await zfs.create(ds, props={"canmount": "noauto", "atime": False})
    assert await zfs.exists(ds)
    assert await zfs.get(ds, "canmount") == "noauto"
    assert await zfs.get(ds, "atime") == "off"
    await zfs.set(ds, "atime", True)
    assert await zfs.get(ds, "atime") == "on"
    assert await zfs.get_int(ds, "referenced") > 0
    await zfs.create(f"{zpool.name}/x/y/z", parents=True)
    assert await zfs.exists(f"{zpool.name}/x/y")
    with pytest.raises(ZfsError) as ei:
        await zfs.create(ds)
    assert "exists" in ei.value.stderr
    with pytest.raises(ZfsError) as ei:
        await zfs.get(f"{zpool.name}/nope", "used")
    assert ei.value.not_found and ei.value.returncode != 0


async def test_snapshot_list_newest_first_and_destroy(zpool, zfs):
    ds = zpool.create_dataset("pg")
    child = zpool.create_dataset("pg/child")
    taken = []
    for _ in range(3):
        taken.append(await zfs.snapshot(ds))
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.1)  # a later creation second
    op = await zfs.snapshot(ds, "operator")
    await zfs.snapshot(child)
    for s in taken:
        assert len(s.name) == 13 and s.name.isdigit() and s.dataset == ds
        assert abs(s.creation - time.time()) < 30
    listed = await zfs.list_snapshots(ds)
    assert [s.full for s in listed] == [op.full] + [s.full for s in reversed(taken)]
    assert all(s.dataset == ds for s in listed)  # not the child's
    assert await zfs.latest_snapshot(ds) == op
    import re

    assert (await zfs.latest_snapshot(ds, re.compile(r"^\d{13}$"))).name == taken[-1].name
    await zfs.destroy(taken[0].full)
    assert not await zfs.exists(taken[0].full)
    assert len(await zfs.list_snapshots(ds)) == 3
    with pytest.raises(ValueError):
        await zfs.snapshot(ds, "bad name")
    await zfs.destroy(ds, recursive=True)
    assert not await zfs.exists(child)


async def test_rollback_and_rename(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("pg", mountpoint=mnt)
    (mnt / "f").write_text("one")
    s1 = await zfs.snapshot(ds, "s1")
    (mnt / "f").write_text("two")
    await zfs.snapshot(ds, "s2")
    with pytest.raises(ZfsError) as ei:
        await zfs.rollback(s1.full)
    assert "more recent" in ei.value.stderr
    await zfs.rollback(s1.full, recursive=True)
    assert (mnt / "f").read_text() == "one"
    assert [s.name for s in await zfs.list_snapshots(ds)] == ["s1"]
    await zfs.rename(s1.full, f"{ds}@renamed")
    assert [s.name for s in await zfs.list_snapshots(ds)] == ["renamed"]
    await zfs.unmount(ds)
    assert await zfs.get(ds, "mounted") == "no"
    await zfs.rename(ds, f"{zpool.name}/pg2")
    assert await zfs.exists(f"{zpool.name}/pg2@renamed")
    await zfs.mount(f"{zpool.name}/pg2")
    assert (mnt / "f").read_text() == "one"
    await zfs.unmount(f"{zpool.name}/pg2")
    assert str(mnt) not in mounts_of_pool(zpool.name)


async def test_hold_blocks_destroy_until_released(zpool, zfs):
    ds = zpool.create_dataset("pg")
    snap = await zfs.snapshot(ds)
    other = await zfs.snapshot(ds, "other")
    await zfs.hold("manatee-send", snap.full)
    assert await zfs.userrefs(snap.full) == 1
    assert await zfs.holds(snap.full) == {"manatee-send"}
    assert await zfs.held_snapshots(ds) == {snap.full}
    with pytest.raises(ZfsError) as ei:
        await zfs.destroy(snap.full)
    assert ei.value.busy
    # a hold placed by someone else (another process) is still seen
    other_client = Zfs()
    await other_client.hold("theirs", snap.full)
    holds = await zfs.holds(snap.full)
    assert len(holds) == 2 and "manatee-send" in holds
    await other_client.release("theirs", snap.full)
    await zfs.release("manatee-send", snap.full)
    assert await zfs.holds(snap.full) == set()
    assert await zfs.held_snapshots(ds) == set()
    await zfs.destroy(snap.full)
    assert not await zfs.exists(snap.full)
    assert await zfs.exists(other.full)


# ------------------------------------------------------------------ send / recv over TCP


async def test_send_recv_roundtrip_full_and_incremental(zpool, zfs, tmp_path):
    src_mnt, dst_mnt = tmp_path / "src", tmp_path / "dst"
    src = zpool.create_dataset("src", mountpoint=src_mnt)
    digest = write_random(src_mnt / "data", 12 * MiB)
    s1 = await zfs.snapshot(src, "1700000000001")
    estimate = await zfs.estimate_send_size(s1.full)
    assert estimate > 12 * MiB

    dst = f"{zpool.name}/dst"
    sent, received, progress = await send_to_recv(zfs, s1.full, dst)
    assert sent == received > 12 * MiB
    assert progress and progress[-1] == sent and progress == sorted(progress)
    assert abs(sent - estimate) / estimate < 0.1
    assert await zfs.get(dst, "mounted") == "no"  # -u
    assert [s.name for s in await zfs.list_snapshots(dst)] == [s1.name]

    # incremental: only the change travels
    digest2 = write_random(src_mnt / "more", 2 * MiB)
    s2 = await zfs.snapshot(src, "1700000000002")
    sent2, received2, _ = await send_to_recv(zfs, s2.full, dst, incremental_from=s1.full)
    assert sent2 == received2
    assert 2 * MiB < sent2 < 4 * MiB
    assert [s.name for s in await zfs.list_snapshots(dst)] == [s2.name, s1.name]

    await zfs.set(dst, "mountpoint", str(dst_mnt))
    if await zfs.get(dst, "mounted") != "yes":
        await zfs.mount(dst)
    assert sha(dst_mnt / "data") == digest
    assert sha(dst_mnt / "more") == digest2
    assert not my_zfs_procs(zpool.name)


async def test_send_counts_the_bytes_the_peer_read(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 3 * MiB)
    snap = await zfs.snapshot(ds)
    stream = await read_stream(zfs, snap.full)  # asserts send's count == bytes read
    assert len(stream) > 3 * MiB
    assert await read_stream(zfs, snap.full) == stream  # the same snapshot, the same bytes


async def test_send_error_surfaces_stderr(zpool, zfs):
    ds = zpool.create_dataset("src")
    a, b = await tcp_pair()
    try:
        with pytest.raises(ZfsError) as ei:
            await zfs.send_to_socket(f"{ds}@missing", a)
    finally:
        a.close()
        b.close()
    assert ei.value.returncode != 0
    assert "does not exist" in ei.value.stderr
    assert "send" in ei.value.cmd and f"{ds}@missing" in ei.value.cmd
    assert "does not exist" in str(ei.value)
    assert await wait_no_procs(zpool.name) == []


async def test_receiver_going_away_kills_zfs_send(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 24 * MiB)  # more than loopback socket buffers hold
    snap = await zfs.snapshot(ds)
    a, b = await tcp_pair()
    task = asyncio.ensure_future(zfs.send_to_socket(snap.full, a, stall_timeout=30))
    try:
        got = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(b, 65536), 10)
        assert got, "the stream should have started"
        assert my_zfs_procs(zpool.name), "zfs send should be running"
        b.close()  # unread data: the peer resets the connection
        with pytest.raises((ZfsError, StreamError)) as ei:
            await asyncio.wait_for(task, 30)
        assert my_zfs_procs(zpool.name) == []  # killed and reaped before the error returned
        if isinstance(ei.value, ZfsError):
            assert ei.value.returncode != 0
    finally:
        a.close()
        b.close()


async def test_send_cancelled_leaves_no_zfs_send(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 24 * MiB)
    snap = await zfs.snapshot(ds)
    a, b = await tcp_pair()  # b never reads: the send blocks on full buffers
    try:
        task = asyncio.ensure_future(zfs.send_to_socket(snap.full, a, stall_timeout=30))
        deadline = time.monotonic() + 10
        while not my_zfs_procs(zpool.name) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert my_zfs_procs(zpool.name), "zfs send should be running"
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert my_zfs_procs(zpool.name) == []  # reaped before the cancellation returned
    finally:
        a.close()
        b.close()


async def test_send_stall_is_detected_and_kills_zfs_send(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 24 * MiB)
    snap = await zfs.snapshot(ds)
    a, b = await tcp_pair()  # b never reads
    try:
        started = time.monotonic()
        with pytest.raises(StreamError) as ei:
            await asyncio.wait_for(zfs.send_to_socket(snap.full, a, stall_timeout=1.0), 20)
        assert "stalled" in str(ei.value) and "no progress for 1s" in str(ei.value)
        assert time.monotonic() - started < 10
        assert my_zfs_procs(zpool.name) == []
    finally:
        a.close()
        b.close()


async def test_recv_cancelled_leaves_no_zfs_recv_and_retry_works(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 6 * MiB)
    snap = await zfs.snapshot(ds)
    stream = await read_stream(zfs, snap.full)

    target = f"{zpool.name}/dst"
    a, b = await tcp_pair()
    writer = asyncio.ensure_future(feed(a, stream[: len(stream) // 2], eof=False))  # half, then silence
    try:
        task = asyncio.ensure_future(zfs.recv_from_socket(target, b))
        deadline = time.monotonic() + 10
        while not my_zfs_procs(zpool.name) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert my_zfs_procs(zpool.name), "zfs recv should be running"
        await asyncio.sleep(0.3)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert my_zfs_procs(zpool.name) == []  # killed and reaped before the cancellation returned
    finally:
        await writer
        a.close()
        b.close()

    # A clean retry, as restore's rollback does it: remove what the aborted receive left
    # (zfs-fuse's daemon tears it down asynchronously, "busy" meanwhile), receive again.
    deadline = time.monotonic() + 10
    while True:
        try:
            if await zfs.exists(target):
                await zfs.destroy(target, recursive=True)
            a, b = await tcp_pair()
            writer = asyncio.ensure_future(feed(a, stream))
            try:
                assert await zfs.recv_from_socket(target, b) == len(stream)
            finally:
                await writer
                a.close()
                b.close()
            break
        except ZfsError as e:  # busy; or gone between exists() and destroy()
            if not (e.busy or e.not_found) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert [s.name for s in await zfs.list_snapshots(target)] == [snap.name]
    assert my_zfs_procs(zpool.name) == []


async def test_recv_garbage_raises_with_stderr(zpool, zfs):
    a, b = await tcp_pair()
    writer = asyncio.ensure_future(feed(a, os.urandom(1 * MiB)))
    try:
        with pytest.raises(ZfsError) as ei:
            await zfs.recv_from_socket(f"{zpool.name}/dst", b)
    finally:
        await writer
        a.close()
        b.close()
    assert ei.value.returncode != 0
    assert ei.value.stderr.strip()
    assert "recv" in ei.value.cmd and f"{zpool.name}/dst" in ei.value.cmd
    assert not await zfs.exists(f"{zpool.name}/dst")
    assert await wait_no_procs(zpool.name) == []


async def test_recv_into_existing_dataset_needs_force(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 1 * MiB)
    snap = await zfs.snapshot(ds)
    zpool.create_dataset("dst")
    with pytest.raises(ZfsError) as ei:
        await send_to_recv(zfs, snap.full, f"{zpool.name}/dst")
    assert "-F" not in ei.value.cmd
    assert "exists" in ei.value.stderr or "exists" in str(ei.value)
    assert await wait_no_procs(zpool.name) == []
    sent, received, _ = await send_to_recv(zfs, snap.full, f"{zpool.name}/dst", force=True)
    assert sent == received > 1 * MiB
    assert [s.name for s in await zfs.list_snapshots(f"{zpool.name}/dst")] == [snap.name]
