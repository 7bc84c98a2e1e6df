"""Incremental rebuilds on real ZFS (zfs-fuse) through the real backupserver daemon.

B is rebuilt from A once (a full stream: B then carries A's snapshot, same guid); A
gets more data and B takes a snapshot of its own; B's second rebuild receives only
what A wrote since the snapshot they share, and ends up with exactly A's files. With
no snapshot in common the stream is full. A failure or cancellation in the middle of
an increment leaves B's old dataset back, mounted, with its content and snapshots.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from manatee.core.procs import free_port, port_open
from manatee.core.restore import RestoreError, RestoreProgress, drop_replaced, restore, sweep_replaced
from manatee.core.restore.swap import REPLACED_PROP
from manatee.core.zfs import ZfsError
from manatee.snapshotter.snapshotter import Snapshotter
from manatee_testbed.zfspool import zfs_processes_on
from tests.fixtures_pg import random_loopback_ip
from tests.backup_env import Env, _zfs_recv_pids, env, kill_sender_host  # noqa: F401 - env is a fixture

BASE_MB = 40


def _write_random(path: Path, mb: int) -> None:
    with open(path, "wb") as f:  # incompressible: the stream is as big as the data
        for _ in range(mb):
            f.write(os.urandom(1 << 20))


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under `root`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".zfs"]
        for name in filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


async def _rebuild(env: Env, ds: str, mnt: Path, url: str, ip: str, **kw) -> object:
    await env.member(ip)
    kw.setdefault("secret", env.secret)
    return await restore(env.zfs, dataset=ds, mountpoint=mnt, backup_url=url, listen_host=ip,
                         listen_port=kw.pop("port", None) or free_port(ip), owner=None,
                         poll_interval=0.05, timeout=120, **kw)


async def _a_and_b(env: Env, *, stall_timeout: float | None = None):
    """A with BASE_MB of data and a backupserver; B rebuilt from it once (full)."""
    ip_a, ip_b = random_loopback_ip(), random_loopback_ip()
    ds_a, mnt_a = env.dataset("a")
    _write_random(mnt_a / "base.bin", BASE_MB)
    sender = {"dataset": ds_a} if stall_timeout is None else {"dataset": ds_a, "stallTimeout": stall_timeout}
    server, url = await env.backupserver(ds_a, ip_a, backupSenderCfg=sender)
    ds_b, mnt_b = env.dataset("b")
    (mnt_b / "marker").write_text("before the first rebuild")
    first = await _rebuild(env, ds_b, mnt_b, url, ip_b)
    assert first.path == "full" and first.bytes > BASE_MB << 20
    assert "no snapshots" in first.reason or "none of the" in first.reason, first.reason
    return ip_b, ds_a, mnt_a, url, server, ds_b, mnt_b, first


async def _snapshots(env: Env, ds: str) -> list[str]:
    return sorted(s.name for s in await env.zfs.list_snapshots(ds))


async def test_incremental_rebuild_sends_only_what_changed(env):
    ip_b, ds_a, mnt_a, url, _server, ds_b, mnt_b, first = await _a_and_b(env)
    common = first.snapshot.split("@")[1]

    # A moves on; B takes a snapshot of its own after the common one and writes more.
    _write_random(mnt_a / "more.bin", 2)
    (mnt_a / "base.bin").open("r+b").write(b"changed at the start of the file")
    (mnt_b / "b-only").write_text("diverged")
    await env.zfs.snapshot(ds_b, "9999999999999")
    (mnt_b / "b-only-after-snap").write_text("diverged more")

    seen: list[RestoreProgress] = []
    second = await _rebuild(env, ds_b, mnt_b, url, ip_b, progress=seen.append)

    assert second.incremental_from == f"{ds_b}@{common}", second
    assert second.path == f"incremental from {ds_b}@{common}"
    assert second.reason == f"newest common snapshot {common}"
    size = int(await env.zfs.get(ds_a, "referenced"))
    assert second.bytes < size / 10, (second.bytes, size)  # ~2 MB of ~42 MB
    assert second.bytes > 2 << 20
    assert any(p.path == second.path for p in seen)  # /state's `restore` shows the path while it runs

    assert _tree(mnt_b) == _tree(mnt_a)  # every byte of A; B's own files are gone
    names = (await env.zfs.run("list", "-H", "-t", "filesystem", "-o", "name,origin,mounted", "-r",
                               env.pool.name)).splitlines()
    assert sorted(names) == sorted([f"{env.pool.name}\t-\tno", f"{ds_a}\t-\tyes", f"{ds_b}\t-\tyes"]), names
    assert await env.zfs.get(ds_b, "mountpoint") == str(mnt_b)
    # B keeps the common base and the new one (same guid as A's): the next rebuild is incremental too.
    assert await _snapshots(env, ds_b) == sorted([common, second.snapshot.split("@")[1]])
    # Every hold the sender placed (fresh snapshot and base) is released.
    for snap in await env.zfs.list_snapshots(ds_a):
        assert await env.zfs.userrefs(snap.full) == 0, snap.full

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/backup/{second.jobid}") as r:
            job = await r.json()
    assert job["incremental"]["from"] == f"{ds_a}@{common}", job
    assert job["pathReason"] == f"newest common snapshot {common}"

    # A third rebuild goes from the second's snapshot.
    _write_random(mnt_a / "even-more.bin", 1)
    third = await _rebuild(env, ds_b, mnt_b, url, ip_b)
    assert third.incremental_from == second.snapshot
    assert third.bytes < 3 << 20
    assert _tree(mnt_b) == _tree(mnt_a)


async def test_no_common_snapshot_means_a_full_stream(env):
    ip_a, ip_b = random_loopback_ip(), random_loopback_ip()
    ds_a, mnt_a = env.dataset("a")
    _write_random(mnt_a / "a.bin", 5)
    _, url = await env.backupserver(ds_a, ip_a)
    ds_b, mnt_b = env.dataset("b")
    (mnt_b / "own").write_text("B's own history")
    await env.zfs.snapshot(ds_b, "1000000000000")  # B's own snapshot: A has no snapshot with its guid
    result = await _rebuild(env, ds_b, mnt_b, url, ip_b)
    assert result.path == "full" and result.incremental_from is None
    assert result.reason == "the backupserver sent a full stream: none of the 1 offered snapshots exists here"
    assert result.bytes > 5 << 20
    assert _tree(mnt_b) == _tree(mnt_a)

    # An old-style request (no snapshots offered) still gets a full stream.
    again = await _rebuild(env, ds_b, mnt_b, url, ip_b, incremental=False)
    assert again.path == "full" and again.bytes > 5 << 20 and again.reason == "an incremental was not asked for"
    assert _tree(mnt_b) == _tree(mnt_a)


async def test_increment_that_cannot_be_prepared_falls_back_to_full(env, monkeypatch):
    """If our side cannot take the increment (here: the clone of the base fails), the
    restore rolls back and asks again for a full stream, and says why."""
    ip_b, ds_a, mnt_a, url, _server, ds_b, mnt_b, _first = await _a_and_b(env)
    _write_random(mnt_a / "more.bin", 1)
    real_clone = env.zfs.clone

    async def failing_clone(snapshot, dataset, **kw):
        env.zfs.clone = real_clone
        raise ZfsError(["zfs", "clone", snapshot, dataset], 1, "injected: cannot clone")

    env.zfs.clone = failing_clone
    result = await _rebuild(env, ds_b, mnt_b, url, ip_b)
    assert result.path == "full" and result.bytes > BASE_MB << 20
    assert result.reason.startswith("the incremental restore failed: cannot prepare"), result.reason
    assert _tree(mnt_b) == _tree(mnt_a)


def _assert_old_b_back(env: Env, ds_b: str, mnt_b: Path, before: dict[str, str], snaps_before: list[str],
                       listen: tuple[str, int]) -> None:
    listing = subprocess.run(
        ["zfs", "list", "-H", "-t", "filesystem", "-r", "-o", "name,origin,mounted,mountpoint", env.pool.name],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in listing.splitlines()}
    assert not [n for n in rows if "-restore-" in n], listing
    assert rows[ds_b] == ["-", "yes", str(mnt_b)], listing  # not a clone: the promotion was undone
    assert _tree(mnt_b) == before
    snaps = subprocess.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", ds_b],
                           capture_output=True, text=True, check=True).stdout.split()
    assert sorted(s.split("@")[1] for s in snaps) == snaps_before
    assert not [p for p in _zfs_recv_pids() if env.pool.name in open(f"/proc/{p}/cmdline").read()]
    assert not port_open(*listen), f"{listen} still listening"


async def _b_diverged_with_big_increment(env: Env, stall_timeout: float = 3, mb: int = 150):
    ip_b, ds_a, mnt_a, url, server, ds_b, mnt_b, _first = await _a_and_b(env, stall_timeout=stall_timeout)
    _write_random(mnt_a / "big-increment.bin", mb)  # long enough to interrupt
    (mnt_b / "b-only").write_text("the old copy")
    await env.zfs.snapshot(ds_b, "9999999999999")
    return ip_b, url, server, ds_b, mnt_b, _tree(mnt_b), await _snapshots(env, ds_b)


async def test_backupserver_killed_mid_increment_leaves_old_data(env):
    # 400 MB: on an idle machine a 150 MB increment could end before the kill took effect
    ip_b, url, server, ds_b, mnt_b, before, snaps_before = await _b_diverged_with_big_increment(env, mb=400)
    listen = (ip_b, free_port(ip_b))
    killed: list[int] = []

    def kill_when_streaming(p: RestoreProgress) -> None:
        if p.phase == "receiving" and p.completed > 0 and p.path and not killed:
            assert p.path.startswith("incremental from ")
            kill_sender_host(server)
            killed.append(p.completed)

    with pytest.raises(RestoreError) as err:
        await _rebuild(env, ds_b, mnt_b, url, listen[0], port=listen[1], progress=kill_when_streaming)
    assert killed and killed[0] < 360 << 20  # before the increment's end (see test_backup_restore.py)
    assert err.value.rollback_errors == [], str(err.value)
    server.wait(5)
    _assert_old_b_back(env, ds_b, mnt_b, before, snaps_before, listen)
    assert not zfs_processes_on(env.pool.name)


async def test_cancelled_mid_increment_leaves_old_data(env):
    ip_b, url, _server, ds_b, mnt_b, before, snaps_before = await _b_diverged_with_big_increment(env, mb=400)
    listen = (ip_b, free_port(ip_b))
    streaming = asyncio.Event()

    def note(p: RestoreProgress) -> None:
        if p.phase == "receiving" and p.completed > 0 and p.path:
            streaming.set()

    task = asyncio.ensure_future(_rebuild(env, ds_b, mnt_b, url, listen[0], port=listen[1], progress=note))
    await asyncio.wait_for(streaming.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_old_b_back(env, ds_b, mnt_b, before, snaps_before, listen)


class _Events:
    """A logger that keeps (event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def bind(self, **_):
        return self

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((event, kw))


async def test_old_copy_left_for_later_is_marked_then_destroyed(env):
    """restore(drop_old=False), as the sitter asks: the new copy is in place and the old one
    waits, set aside and unmounted, until drop_replaced marks and destroys it."""
    ip_b, ds_a, mnt_a, url, _server, ds_b, mnt_b, _first = await _a_and_b(env)
    _write_random(mnt_a / "more.bin", 1)
    (mnt_b / "b-only").write_text("diverged")
    res = await _rebuild(env, ds_b, mnt_b, url, ip_b, drop_old=False)
    assert res.incremental_from and res.old_copy and res.old_copy.startswith(f"{ds_b}-restore-"), res
    assert _tree(mnt_b) == _tree(mnt_a)
    assert await env.zfs.get(res.old_copy, "mounted") == "no"
    assert await env.zfs.get(res.old_copy, "mountpoint") == "none"

    log = _Events()
    assert await drop_replaced(env.zfs, res.old_copy, log) is True
    assert not await env.zfs.exists(res.old_copy)
    assert [e for e, _ in log.events] == ["restore_old_dataset_destroyed"]
    assert _tree(mnt_b) == _tree(mnt_a)
    # the default still destroys it before returning
    _write_random(mnt_a / "even-more.bin", 1)
    again = await _rebuild(env, ds_b, mnt_b, url, ip_b)
    assert again.old_copy is None
    names = (await env.zfs.run("list", "-H", "-o", "name", "-t", "filesystem", "-r", env.pool.name)).split()
    assert not [n for n in names if "-restore-" in n], names


async def test_sweep_destroys_only_old_copies_marked_replaced(env):
    """At start the sitter destroys the old copies a finished restore marked (it died before
    the destroy ended); an unmarked one (an interrupted restore's) is kept and reported."""
    ds_x, mnt_x = env.dataset("x")
    (mnt_x / "live").write_text("the live copy")
    marked, _ = env.dataset("x-restore-1000", mounted=False)
    await env.zfs.snapshot(marked, "1")
    await env.zfs.set(marked, REPLACED_PROP, "2026-12-04T15:00:00Z")
    unmarked, _ = env.dataset("x-restore-2000", mounted=False)
    other, _ = env.dataset("xy-restore-3000", mounted=False)
    await env.zfs.set(other, REPLACED_PROP, "2026-12-04T15:00:00Z")  # another dataset's copy

    log = _Events()
    assert await sweep_replaced(env.zfs, ds_x, log) == [marked]
    assert not await env.zfs.exists(marked)
    for kept in (ds_x, unmarked, other):
        assert await env.zfs.exists(kept), kept
    assert (mnt_x / "live").read_text() == "the live copy"
    assert ("restore_old_copy_kept", {"aside": unmarked, "why": "an interrupted restore set it aside; "
                                      "it may hold the only copy of that data"}) in log.events


async def _marks(env: Env, ds: str, want: dict[str, str], timeout: float = 10.0) -> dict[str, str]:
    """The dataset's base marks once they include `want` (the sender writes its own in the
    background after the job is done), or as they are at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        marks = await env.zfs.snapshot_bases(ds)
        if all(marks.get(k) == v for k, v in want.items()) or asyncio.get_running_loop().time() > deadline:
            return marks
        await asyncio.sleep(0.1)


async def test_the_shared_base_outlives_retention_and_moves_with_each_exchange(env):
    """Both ends of a rebuild mark the snapshot they now share (manatee.core.bases); a
    snapshotter keeping one snapshot still keeps it, so a rebuild long after is an increment;
    the next exchange moves the marks and the old base is pruned like any other."""
    ip_b, ds_a, mnt_a, url, _server, ds_b, mnt_b, first = await _a_and_b(env)
    ip_a = urlsplit(url).hostname
    base = first.snapshot.split("@")[1]
    a_marks = await _marks(env, ds_a, {f"{ds_a}@{base}": ip_b})
    assert a_marks[f"{ds_a}@{base}"] == ip_b, a_marks  # the sender's: the receiver's address
    assert (await env.zfs.snapshot_bases(ds_b)) == {f"{ds_b}@{base}": ip_a}  # the receiver's: the sender's

    log = _Events()
    for ds in (ds_a, ds_b):
        snapper = Snapshotter(env.zfs, ds, interval_s=60, keep=1, logger=log)
        for _ in range(3):
            result = await snapper.run_once()
            assert result.ok, result
        assert result.kept_bases == [f"{ds}@{base}"]
        names = await _snapshots(env, ds)
        assert len(names) == 2 and base in names and result.snapshot.name in names, names
    assert any(e == "snapshot_kept_as_base" for e, _ in log.events)

    _write_random(mnt_a / "more.bin", 2)
    (mnt_b / "b-only").write_text("diverged")
    second = await _rebuild(env, ds_b, mnt_b, url, ip_b)
    assert second.incremental_from == f"{ds_b}@{base}", second  # retention did not force a full stream
    assert second.bytes < 4 << 20
    assert _tree(mnt_b) == _tree(mnt_a)

    new = second.snapshot.split("@")[1]
    # A marks the new snapshot and keeps the increment's base marked (had B's receive failed,
    # B would still have only that); B, which now has both, keeps only the new one.
    a_marks = await _marks(env, ds_a, {f"{ds_a}@{new}": ip_b})
    assert a_marks[f"{ds_a}@{new}"] == ip_b and a_marks[f"{ds_a}@{base}"] == ip_b, a_marks
    b_marks = await env.zfs.snapshot_bases(ds_b)
    assert b_marks[f"{ds_b}@{new}"] == ip_a and b_marks[f"{ds_b}@{base}"] == "-", b_marks
    result = await Snapshotter(env.zfs, ds_b, interval_s=60, keep=1, logger=log).run_once()
    assert f"{ds_b}@{base}" in result.destroyed and result.kept_bases == [f"{ds_b}@{new}"], result

    # The next exchange, an increment from the new base, releases the old one on A too.
    _write_random(mnt_a / "even-more.bin", 1)
    third = await _rebuild(env, ds_b, mnt_b, url, ip_b)
    assert third.incremental_from == f"{ds_b}@{new}", third
    newest = third.snapshot.split("@")[1]
    a_marks = await _marks(env, ds_a, {f"{ds_a}@{newest}": ip_b, f"{ds_a}@{base}": "-"})
    assert (a_marks[f"{ds_a}@{base}"], a_marks[f"{ds_a}@{new}"], a_marks[f"{ds_a}@{newest}"]) == ("-", ip_b, ip_b)
    assert _tree(mnt_b) == _tree(mnt_a)
