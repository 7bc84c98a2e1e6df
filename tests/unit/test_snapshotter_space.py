"""The snapshotter's disk-pressure decision (plan_for_space) and its use in a poll (with a
scripted ZFS: pure logic, no I/O)."""

from __future__ import annotations

import asyncio
import time

import pytest

from manatee.core.config import ConfigError, validate
from manatee.core.zfs import Snapshot, ZfsError
from manatee.snapshotter.config import SnapshotterConfig
from manatee.snapshotter.snapshotter import KEEP_UNDER_PRESSURE, Snapshotter, plan_for_space

MB = 1024 * 1024


def test_enough_free_space_takes_a_snapshot_and_keeps_the_configured_number():
    p = plan_for_space(used=50 * MB, available=50 * MB, min_free_pct=10, keep=20)
    assert (p.take_snapshot, p.keep, p.reason) == (True, 20, None)


def test_exactly_at_the_threshold_is_not_pressure():
    assert plan_for_space(used=90, available=10, min_free_pct=10, keep=5).take_snapshot


def test_below_the_threshold_refuses_and_prunes_all_but_the_newest():
    p = plan_for_space(used=95 * MB, available=5 * MB, min_free_pct=10, keep=20)
    assert not p.take_snapshot and p.keep == KEEP_UNDER_PRESSURE == 1
    assert "5.0% free" in p.reason and "minFreePercent 10%" in p.reason


def test_a_full_dataset_is_pressure():
    assert not plan_for_space(used=100, available=0, min_free_pct=1, keep=3).take_snapshot


@pytest.mark.parametrize("used,available", [(None, 10), (10, None), (None, None), (-1, 5)])
def test_unknown_space_is_not_pressure(used, available):
    p = plan_for_space(used=used, available=available, min_free_pct=50, keep=4)
    assert (p.take_snapshot, p.keep, p.reason) == (True, 4, None)


def test_zero_turns_the_check_off():
    assert plan_for_space(used=100, available=0, min_free_pct=0, keep=4).take_snapshot


def test_keep_must_be_positive():
    with pytest.raises(ValueError):
        plan_for_space(used=1, available=1, min_free_pct=10, keep=0)


@pytest.mark.parametrize("bad", [-1, 91, "ten", None])
def test_config_rejects_bad_min_free_percent_naming_the_key(bad):
    with pytest.raises(ConfigError) as ei:
        validate({"dataset": "zones/pg", "minFreePercent": bad}, SnapshotterConfig, "snap.json")
    assert ei.value.key == "minFreePercent"


def test_config_default_is_on():
    assert validate({"dataset": "zones/pg"}, SnapshotterConfig).minFreePercent == 10.0


class _Log:
    def __init__(self):
        self.events = []

    def bind(self, **kw):
        return self

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((level, event, kw))


class _FakeZfs:
    """Answers the snapshotter's ZFS calls from fixed numbers (used/available may raise)."""

    def __init__(self, used, available, snaps):
        self.props = {"used": used, "available": available}
        self.snaps = list(snaps)
        self.taken = []
        self.destroyed = []
        self.bases = {}  # snapshot full name -> manatee:bases value (or an exception to raise)

    async def get_int(self, name, prop):
        v = self.props[prop]
        if isinstance(v, Exception):
            raise v
        return v

    async def snapshot(self, dataset):
        s = Snapshot(dataset, str(1_700_000_000_000 + len(self.snaps) + len(self.taken)))
        self.taken.append(s)
        self.snaps.append(s)
        return s

    async def list_snapshots(self, dataset):
        return list(self.snaps)

    async def held_snapshots(self, dataset):
        return set()

    async def snapshot_bases(self, dataset):
        if isinstance(self.bases, Exception):
            raise self.bases
        return {s.full: self.bases.get(s.full, "-") for s in self.snaps}

    async def destroy(self, full):
        self.destroyed.append(full)
        self.snaps = [s for s in self.snaps if s.full != full]


def _snaps(n):
    return [Snapshot("p/ds", str(1_600_000_000_000 + i)) for i in range(n)]


def test_poll_under_pressure_takes_none_and_prunes_to_the_newest():
    zfs, log = _FakeZfs(95 * MB, 5 * MB, _snaps(4)), _Log()
    s = Snapshotter(zfs, "p/ds", interval_s=60, keep=3, logger=log, min_free_pct=10)
    r = asyncio.run(s.run_once())
    assert zfs.taken == [] and r.snapshot is None and r.pressure
    assert [x.name for x in zfs.snaps] == ["1600000000003"]
    assert any(e[1] == "disk_pressure" for e in log.events)


def test_poll_with_space_takes_one_and_keeps_the_configured_number():
    zfs = _FakeZfs(10 * MB, 90 * MB, _snaps(4))
    r = asyncio.run(Snapshotter(zfs, "p/ds", interval_s=60, keep=3, logger=_Log(), min_free_pct=10).run_once())
    assert len(zfs.taken) == 1 and r.pressure is None and len(zfs.snaps) == 3


def test_poll_with_unreadable_space_goes_on_as_usual():
    zfs = _FakeZfs(ZfsError(["zfs", "get"], 1, "boom"), 90 * MB, _snaps(2))
    r = asyncio.run(Snapshotter(zfs, "p/ds", interval_s=60, keep=3, logger=_Log(), min_free_pct=10).run_once())
    assert len(zfs.taken) == 1 and r.pressure is None and r.ok


def test_base_snapshots_outlive_retention_but_not_disk_pressure():
    snaps = _snaps(5)
    zfs = _FakeZfs(10 * MB, 90 * MB, list(snaps))
    zfs.bases = {snaps[0].full: "127.0.0.12", snaps[1].full: "not-an-address"}  # unreadable still counts
    r = asyncio.run(Snapshotter(zfs, "p/ds", interval_s=60, keep=2, logger=_Log(), min_free_pct=10).run_once())
    assert r.kept_bases == [snaps[0].full, snaps[1].full]
    assert zfs.destroyed == [snaps[2].full, snaps[3].full]  # oldest first; the bases stay
    assert [x.full for x in zfs.snaps] == [snaps[0].full, snaps[1].full, snaps[4].full, zfs.taken[0].full]

    zfs.props.update(used=95 * MB, available=5 * MB)  # now under pressure: space for PostgreSQL comes first
    r = asyncio.run(Snapshotter(zfs, "p/ds", interval_s=60, keep=2, logger=_Log(), min_free_pct=10).run_once())
    assert r.pressure and r.kept_bases == []
    assert [x.full for x in zfs.snaps] == [zfs.taken[0].full]


def test_unreadable_base_marks_prune_nothing():
    zfs = _FakeZfs(10 * MB, 90 * MB, _snaps(5))
    zfs.bases = ZfsError(["zfs", "get"], 1, "cannot get manatee:bases")
    r = asyncio.run(Snapshotter(zfs, "p/ds", interval_s=60, keep=2, logger=_Log(), min_free_pct=10).run_once())
    assert zfs.destroyed == [] and len(zfs.taken) == 1 and not r.ok


@pytest.mark.parametrize("hung", ["snapshot", "list_snapshots", "snapshot_bases", "destroy", "get_int"])
def test_a_hung_zfs_call_ends_the_poll_within_its_deadline(hung):
    """Every zfs call of a poll has a deadline: a hung one fails like a zfs error (unknown:
    nothing is destroyed on a listing that did not answer) and the poll ends."""
    zfs = _FakeZfs(10 * MB, 90 * MB, _snaps(5))

    async def never(*_a, **_k):
        await asyncio.sleep(3600)

    setattr(zfs, hung, never)
    s = Snapshotter(zfs, "p/ds", interval_s=60, keep=2, logger=_Log(), min_free_pct=10, zfs_timeout=0.05)
    t0 = time.monotonic()
    r = asyncio.run(s.run_once())
    assert time.monotonic() - t0 < 2
    if hung == "get_int":  # unknown space is no pressure: the poll goes on as usual
        assert r.ok and len(zfs.taken) == 1 and len(zfs.destroyed) == 4
        return
    assert not r.ok and any("no answer within 0.05s" in e for e in r.errors), r.errors
    if hung in ("list_snapshots", "snapshot_bases"):
        assert zfs.destroyed == []
