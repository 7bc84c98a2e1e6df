"""The snapshotter on a real ZFS pool, and the real manatee-snapshotter console script."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web

from manatee.snapshotter.main import http_health_check
from manatee.snapshotter.snapshotter import Snapshotter, is_managed

SCRIPT = Path(sys.executable).parent / "manatee-snapshotter"
log = structlog.get_logger("test")


def managed_names(snaps) -> list[str]:
    return [s.name for s in snaps if is_managed(s.name)]


async def poll(s: Snapshotter):
    await asyncio.sleep(0.002)  # distinct epoch-ms names
    return await s.run_once()


async def test_retention_keeps_newest_and_operator_snapshots(zpool, zfs):
    ds = zpool.create_dataset("pg")
    await zfs.snapshot(ds, "before-upgrade")
    keep = 4
    s = Snapshotter(zfs, ds, interval_s=60, keep=keep, logger=log)
    taken = []
    for _ in range(keep + 3):
        r = await poll(s)
        assert r.ok and r.snapshot is not None, r.errors
        taken.append(r.snapshot.name)
    snaps = await zfs.list_snapshots(ds)
    assert sorted(managed_names(snaps)) == sorted(taken[-keep:])
    assert "before-upgrade" in [x.name for x in snaps]
    assert s.runs == keep + 3


async def test_held_snapshot_is_skipped_until_released(zpool, zfs):
    ds = zpool.create_dataset("pg")
    s = Snapshotter(zfs, ds, interval_s=60, keep=2, logger=log)
    first = (await poll(s)).snapshot
    await zfs.hold("manatee-backup", first.full)
    await poll(s)
    r = await poll(s)
    assert first.full in r.skipped_held
    assert not r.errors
    names = managed_names(await zfs.list_snapshots(ds))
    assert first.name in names and len(names) == 3
    await zfs.release("manatee-backup", first.full)
    r = await poll(s)
    assert first.full in r.destroyed
    names = managed_names(await zfs.list_snapshots(ds))
    assert first.name not in names and len(names) == 2


async def test_missing_dataset_is_logged_not_fatal(zpool, zfs):
    ds = f"{zpool.name}/not-yet"
    s = Snapshotter(zfs, ds, interval_s=60, keep=2, logger=log)
    r = await s.run_once()
    assert r.snapshot is None and r.errors and "does not exist" in r.errors[0]
    await zfs.create(ds)
    r = await s.run_once()
    assert r.ok and r.snapshot is not None
    assert managed_names(await zfs.list_snapshots(ds)) == [r.snapshot.name]


async def test_run_loop_polls_until_stopped(zpool, zfs):
    ds = zpool.create_dataset("pg")
    s = Snapshotter(zfs, ds, interval_s=0.2, keep=2, logger=log)
    stop = asyncio.Event()
    task = asyncio.ensure_future(s.run(stop))
    await asyncio.sleep(1.1)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert s.runs >= 4
    assert len(managed_names(await zfs.list_snapshots(ds))) == 2


async def test_health_check_gates_snapshots(zpool, zfs):
    ds = zpool.create_dataset("pg")
    state = {"status": 503}

    async def ping(request):
        return web.json_response({"healthy": state["status"] == 200}, status=state["status"])

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            check = http_health_check(f"http://127.0.0.1:{port}/ping", session)
            s = Snapshotter(zfs, ds, interval_s=60, keep=3, logger=log, health_check=check)
            r = await s.run_once()
            assert r.unhealthy and r.snapshot is None
            state["status"] = 200
            r = await s.run_once()
            assert r.ok and r.snapshot is not None
            await runner.cleanup()  # server gone: the check raises, the poll does not
            r = await s.run_once()
            assert r.unhealthy and r.snapshot is None
    finally:
        await runner.cleanup()
    assert len(managed_names(await zfs.list_snapshots(ds))) == 1


def _write_cfg(path: Path, **cfg) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def test_console_script_snapshots_until_sigterm(zpool, tmp_path):
    ds = zpool.create_dataset("pg")
    cfg = _write_cfg(tmp_path / "snapshotter.json", dataset=ds, pollInterval=1000, snapshotNumber=2)
    proc = subprocess.Popen([str(SCRIPT), "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = subprocess.run(["/usr/sbin/zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", ds],
                                 capture_output=True, text=True).stdout.split()
            if len(out) >= 2:
                break
            time.sleep(0.2)
        time.sleep(1.5)  # at least one more poll, which must prune to 2
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err.count("snapshot_taken") >= 3, err
    assert "snapshot_destroyed" in err
    zfs_names = subprocess.run(["/usr/sbin/zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", ds],
                               capture_output=True, text=True).stdout.split()
    assert len(zfs_names) == 2 and all(is_managed(n.split("@")[1]) for n in zfs_names), zfs_names


@pytest.mark.parametrize(
    "cfg,key",
    [
        ({"dataset": "p/ds", "snapshotNumber": "abc"}, "snapshotNumber"),
        ({"dataset": "p/ds", "pollIntervall": 1000}, "pollIntervall"),
        ({"dataset": "p/ds@snap"}, "dataset"),
        ({"pollInterval": 1000}, "dataset"),
    ],
)
def test_console_script_rejects_bad_config(tmp_path, cfg, key):
    path = _write_cfg(tmp_path / "bad.json", **cfg)
    cp = subprocess.run([str(SCRIPT), "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 2
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    assert str(path) in lines[0] and f"'{key}'" in lines[0]


def test_console_script_missing_file(tmp_path):
    cp = subprocess.run([str(SCRIPT), "-f", str(tmp_path / "nope.json")], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 2 and "nope.json" in cp.stderr
