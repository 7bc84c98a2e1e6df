"""manatee.core.zfs and manatee.harness.zfspool against real ZFS (zfs-fuse)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from manatee.core.zfs import Zfs, ZfsError
from manatee.harness.zfspool import (
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


_keep_alive: list = []  # unused halves: a StreamWriter closes its socket when collected


async def stream_pair(limit: int = 4 * MiB):
    """A connected (reader, writer) over a Unix socketpair, as a TCP peer would be."""
    a, b = socket.socketpair()
    reader, writer_a = await asyncio.open_unix_connection(sock=a, limit=limit)
    reader_b, writer = await asyncio.open_unix_connection(sock=b)
    _keep_alive[:] = [writer_a, reader_b]
    return reader, writer


async def send_to_recv(zfs: Zfs, snapshot: str, target: str, incremental_from: str | None = None, **recv_kw):
    reader, writer = await stream_pair()
    progress = []

    async def sender():
        try:
            return await zfs.send(snapshot, writer, incremental_from=incremental_from,
                                  progress=lambda s, t: progress.append((s, t)))
        finally:
            writer.close()

    sent, received = await asyncio.gather(sender(), zfs.recv(target, reader, **recv_kw))
    return sent, received, progress


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


# ------------------------------------------------------------------ send / recv


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
    assert progress and progress[-1][0] == sent and all(t >= s for s, t in progress)
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


async def test_send_to_callable_counts_bytes(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 3 * MiB)
    snap = await zfs.snapshot(ds)
    chunks = []

    async def sink(b):
        chunks.append(len(b))

    total = await zfs.send(snap.full, sink)
    assert total == sum(chunks) > 3 * MiB
    got = bytearray()
    assert await zfs.send(snap.full, got.extend) == total == len(got)


async def test_send_error_surfaces_stderr(zpool, zfs):
    ds = zpool.create_dataset("src")
    with pytest.raises(ZfsError) as ei:
        await zfs.send(f"{ds}@missing", lambda b: None)
    assert ei.value.returncode != 0
    assert "does not exist" in ei.value.stderr
    assert "send" in ei.value.cmd and f"{ds}@missing" in ei.value.cmd
    assert "does not exist" in str(ei.value)
    assert await wait_no_procs(zpool.name) == []


async def test_send_output_failure_kills_zfs_send(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 8 * MiB)
    snap = await zfs.snapshot(ds)
    seen = []

    def broken(b):
        seen.append(len(b))
        raise ConnectionResetError("peer went away")

    with pytest.raises(ZfsError) as ei:
        await zfs.send(snap.full, broken)
    assert "peer went away" in str(ei.value)
    assert isinstance(ei.value.__cause__, ConnectionResetError)
    assert seen
    assert await wait_no_procs(zpool.name) == []


async def test_send_cancelled_leaves_no_zfs_send(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 8 * MiB)
    snap = await zfs.snapshot(ds)
    blocked = asyncio.Event()

    async def stuck(b):
        blocked.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(zfs.send(snap.full, stuck))
    await asyncio.wait_for(blocked.wait(), 10)
    assert my_zfs_procs(zpool.name), "zfs send should be running"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert my_zfs_procs(zpool.name) == []  # reaped before the cancellation returned


async def test_recv_cancelled_leaves_no_zfs_recv(zpool, zfs, tmp_path):
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 6 * MiB)
    snap = await zfs.snapshot(ds)
    stream = bytearray()
    await zfs.send(snap.full, stream.extend)

    source = asyncio.StreamReader()
    source.feed_data(bytes(stream[: len(stream) // 2]))  # half a stream, then silence
    target = f"{zpool.name}/dst"
    task = asyncio.ensure_future(zfs.recv(target, source))
    deadline = time.monotonic() + 10
    while not my_zfs_procs(zpool.name) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert my_zfs_procs(zpool.name), "zfs recv should be running"
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert my_zfs_procs(zpool.name) == []
    # the aborted receive left nothing half-made that blocks a full one
    deadline = time.monotonic() + 10
    while True:
        source = asyncio.StreamReader()
        source.feed_data(bytes(stream))
        source.feed_eof()
        try:
            assert await zfs.recv(target, source, force=True) == len(stream)
            break
        except ZfsError:  # the daemon may still be tearing down the aborted receive
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert [s.name for s in await zfs.list_snapshots(target)] == [snap.name]


async def test_recv_garbage_raises_with_stderr(zpool, zfs):
    source = asyncio.StreamReader()
    source.feed_data(os.urandom(1 * MiB))
    source.feed_eof()
    with pytest.raises(ZfsError) as ei:
        await zfs.recv(f"{zpool.name}/dst", source)
    assert ei.value.returncode != 0
    assert ei.value.stderr.strip()
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
    assert "exists" in ei.value.stderr or "exists" in str(ei.value)
    assert await wait_no_procs(zpool.name) == []
    sent, received, _ = await send_to_recv(zfs, snap.full, f"{zpool.name}/dst", force=True)
    assert sent == received


async def test_roundtrip_over_tcp_with_buffered_prefix(zpool, zfs, tmp_path):
    """The restore path: zfs send -> TCP -> zfs recv, the receiver's reader already holding data."""
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    digest = write_random(mnt / "f", 12 * MiB)
    snap = await zfs.snapshot(ds, "1700000000001")
    target = f"{zpool.name}/dst"
    first = asyncio.Event()
    result = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        try:
            await first.wait()
            await asyncio.sleep(0.5)  # let the StreamReader buffer the start of the stream
            result.set_result(await zfs.recv(target, reader))
        except Exception as e:  # noqa: BLE001
            result.set_exception(e)
        finally:
            writer.close()

    # a large reader limit: several MiB are buffered, more than the 1 MiB pipe takes at once
    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=4 * MiB)
    try:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)

        async def out(chunk):  # a callable output: the copy path on the sending side
            first.set()
            writer.write(chunk)
            await writer.drain()

        sent = await zfs.send(snap.full, out)
        writer.close()
        assert await asyncio.wait_for(result, 30) == sent
    finally:
        server.close()
        await server.wait_closed()
    await zfs.set(target, "mountpoint", str(tmp_path / "dst"))
    if await zfs.get(target, "mounted") != "yes":
        await zfs.mount(target)
    assert sha(tmp_path / "dst" / "f") == digest


async def test_roundtrip_without_splice(zpool, zfs, tmp_path, monkeypatch):
    """The portable copy path (no splice(2)) moves the same bytes."""
    import manatee.core.zfs as zmod

    monkeypatch.setattr(zmod, "_splice_supported", lambda: False)
    mnt = tmp_path / "m"
    ds = zpool.create_dataset("src", mountpoint=mnt)
    write_random(mnt / "f", 3 * MiB)
    snap = await zfs.snapshot(ds)
    sent, received, progress = await send_to_recv(zfs, snap.full, f"{zpool.name}/dst")
    assert sent == received > 3 * MiB and progress[-1][0] == sent
