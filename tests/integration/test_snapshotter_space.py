"""The snapshotter under disk pressure on a real zfs-fuse pool: a dataset with a quota whose
free space falls below minFreePercent gets no new snapshot and is pruned to its newest one;
once the quota is lifted it is snapshotted again."""

from __future__ import annotations

import asyncio
import os

import structlog

from manatee.snapshotter.snapshotter import Snapshotter, is_managed

log = structlog.get_logger("test")
MB = 1024 * 1024


def _write(path, mbytes: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mbytes):
            f.write(os.urandom(MB))
        f.flush()
        os.fsync(f.fileno())


async def _managed(zfs, ds) -> list[str]:
    return sorted(s.name for s in await zfs.list_snapshots(ds) if is_managed(s.name))


async def test_quota_pressure_refuses_and_prunes_then_recovers(zpool, zfs, tmp_path):
    mnt = tmp_path / "mnt"
    ds = zpool.create_dataset("pg", mountpoint=mnt)
    s = Snapshotter(zfs, ds, interval_s=60, keep=5, logger=log, min_free_pct=20)
    # three snapshots, each pinning 4 MB that is then overwritten
    for i in range(3):
        _write(mnt / "data", 4)
        await asyncio.sleep(0.01)
        r = await s.run_once()
        assert r.snapshot is not None and r.pressure is None, (r.errors, r.pressure)
    assert len(await _managed(zfs, ds)) == 3
    newest = (await _managed(zfs, ds))[-1]
    await asyncio.sleep(2)  # zfs-fuse settles `used` lazily
    used = await zfs.get_int(ds, "used")
    await zfs.set(ds, "quota", used + 2 * MB)  # about 2 MB free of used + 2 MB: far below 20 %
    try:
        r = await s.run_once()
        assert r.snapshot is None and r.pressure and "below minFreePercent 20%" in r.pressure, r
        assert await _managed(zfs, ds) == [newest], "under pressure only the newest snapshot stays"
        assert len(r.destroyed) == 2
    finally:
        await zfs.set(ds, "quota", "none")
    await asyncio.sleep(0.01)
    r = await s.run_once()
    assert r.snapshot is not None and r.pressure is None, (r.errors, r.pressure)
    assert len(await _managed(zfs, ds)) == 2
