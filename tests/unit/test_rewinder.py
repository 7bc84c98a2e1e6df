"""The rewind shell (manatee.sitter.rewinder) around fakes of zfs and of the two PostgreSQL
tools: a snapshot keeps the data aside before pg_rewind touches it, and every way a rewind
does not finish puts the data back (or, if even that fails, makes it unusable)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from manatee.core.pg import rewind as pgrewind
from manatee.core.pg.runas import PgError
from manatee.core.zfs import Snapshot, ZfsError
from manatee.shard import rebuildpath as rp
from manatee.sitter.config import SitterConfig
from manatee.sitter import rewinder
from manatee.sitter.rewinder import MB, SNAPSHOT_PREFIX, Rewinder
from tests.factories import peer

ROOT = Path(__file__).resolve().parents[2]
CONTROL = {"Database cluster state": "in production", "Data page checksum version": "1",
           "wal_log_hints setting": "off"}


class Log:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((level, event, kw))


class FakeZfs:
    def __init__(self, fail_rollback=False):
        self.calls, self.fail_rollback = [], fail_rollback

    async def snapshot(self, dataset, name):
        self.calls.append(("snapshot", f"{dataset}@{name}"))
        return Snapshot(dataset, name, 0)

    async def rollback(self, snap):
        self.calls.append(("rollback", snap))
        if self.fail_rollback:
            raise ZfsError(["zfs", "rollback", snap], 1, "cannot rollback")

    async def destroy(self, snap):
        self.calls.append(("destroy", snap))


def _rewinder(tmp_path, *, zfs=None, password="pw", enabled=True):
    cfg = json.loads((ROOT / "etc" / "sitter.json").read_text())
    cfg["postgresMgrCfg"]["dataDir"] = str(tmp_path / "data")
    cfg["postgresMgrCfg"]["rebuildRewind"] = enabled
    (tmp_path / "data" / "global").mkdir(parents=True)
    (tmp_path / "data" / "global" / "pg_control").write_text("x")
    (tmp_path / "data" / "standby.signal").write_text("")
    log = Log()
    return Rewinder(SitterConfig.model_validate(cfg), log, zfs or FakeZfs(), password), log


@pytest.fixture
def tools(monkeypatch):
    """pg_controldata and pg_rewind, scripted: runs[i] is what the i-th pg_rewind returns or raises."""
    t = {"control": CONTROL, "runs": [], "argv": [], "single": [], "checkpoints": [], "wal_kept": True}

    async def controldata(data_dir, **kw):
        if isinstance(t["control"], Exception):
            raise t["control"]
        return t["control"]

    async def pg_rewind(data_dir, src, **kw):
        t["argv"].append((src, kw))
        r = t["runs"].pop(0)
        if isinstance(r, BaseException):
            raise r
        if r == "hang":
            await asyncio.sleep(3600)
        if not kw.get("dry_run"):  # what a real run leaves: the label, and the WAL it names
            (data_dir / "backup_label").write_text(
                "START WAL LOCATION: 0/E000028 (file 00000002000000000000000E)\n")
            (data_dir / "pg_wal").mkdir(exist_ok=True)
            if t["wal_kept"]:
                (data_dir / "pg_wal" / "00000001000000000000000E").write_text("")
        return r

    async def finish_crash_recovery(data_dir, **kw):
        t["single"].append(data_dir)

    async def checkpoint(self, peer):
        t["checkpoints"].append(peer.ip)

    monkeypatch.setattr(Rewinder, "_checkpoint", checkpoint)
    monkeypatch.setattr(rewinder, "DRY_RUN_PAUSE_S", 0.0)
    monkeypatch.setattr(pgrewind, "controldata", controldata)
    monkeypatch.setattr(pgrewind, "finish_crash_recovery", finish_crash_recovery)
    monkeypatch.setattr(pgrewind, "pg_rewind", pg_rewind)
    return t


def _report(copy_mb, source_mb=2000, done=False):
    return pgrewind.RewindReport(copy_mb=copy_mb, source_mb=source_mb, needed=True, diverged_at="0/1 on timeline 1",
                                 done=done)


UP = peer("10.0.0.1")


def run(rw, cause=rp.CAUSE_DIVERGED):
    seen = []
    return asyncio.run(rw.run(UP, cause, seen.append)), seen


def test_no_rewind_on_the_facts_touches_nothing(tmp_path, tools):
    for i, (kw, cause, control) in enumerate((({"enabled": False}, rp.CAUSE_DIVERGED, CONTROL),
                               ({}, rp.CAUSE_REQUESTED, CONTROL),
                               ({"password": None}, rp.CAUSE_DIVERGED, CONTROL),
                               ({}, rp.CAUSE_DIVERGED, PgError("pg_controldata: could not open")),
                               ({}, rp.CAUSE_DIVERGED, {**CONTROL, "Data page checksum version": "0"}))):
        tools["control"] = control
        zfs = FakeZfs()
        rw, _ = _rewinder(tmp_path / str(i), zfs=zfs, **kw)
        why, _ = run(rw, cause)
        assert isinstance(why, str) and why, (kw, cause)
        assert zfs.calls == [] and tools["argv"] == [] and tools["single"] == []
        assert (rw.data_dir / "standby.signal").exists()


def test_a_costly_rewind_is_measured_then_rolled_back(tmp_path, tools):
    zfs = FakeZfs()
    rw, log = _rewinder(tmp_path, zfs=zfs)
    tools["runs"] = [_report(201)]
    why, seen = run(rw)
    assert "201 MB of 2000 MB" in why
    snap = zfs.calls[0][1]
    assert snap.startswith(f"{rw.dataset}@{SNAPSHOT_PREFIX}")
    assert zfs.calls == [("snapshot", snap), ("rollback", snap), ("destroy", snap)]
    assert len(tools["argv"]) == 1 and tools["argv"][0][1]["dry_run"] is True
    assert seen == []  # nothing reported as rewinding


def test_a_rewind_runs_after_its_dry_run_and_drops_the_snapshot(tmp_path, tools):
    zfs = FakeZfs()
    rw, log = _rewinder(tmp_path, zfs=zfs)
    tools["runs"] = [_report(40), _report(41, done=True)]
    res, seen = run(rw)
    assert res.path == "rewind" and res.bytes == 41 * MB and "40 MB of 2000 MB" in res.reason
    assert res.source == UP.pg_url
    snap = zfs.calls[0][1]
    assert zfs.calls == [("snapshot", snap), ("destroy", snap)]
    src, kw = tools["argv"][1]
    assert "dry_run" not in kw and kw["password"] == "pw" and "pw" not in src
    assert "user=manatee_rewind" in src and "host=10.0.0.1" in src and "dbname=postgres" in src
    assert [p.phase for p in seen] == ["rewinding"] and seen[0].size == 40 * MB
    assert not (rw.data_dir / "standby.signal").exists()  # single-user recovery refuses standby mode
    assert tools["single"] == [rw.data_dir]  # "in production": crash recovery before the dry run


def test_a_cleanly_stopped_cluster_needs_no_crash_recovery(tmp_path, tools):
    tools["control"] = {**CONTROL, "Database cluster state": "shut down in recovery"}
    rw, _ = _rewinder(tmp_path)
    tools["runs"] = [_report(40), _report(41, done=True)]
    res, _ = run(rw)
    assert res.path == "rewind" and tools["single"] == []


def test_a_failed_rewind_is_rolled_back(tmp_path, tools):
    zfs = FakeZfs()
    rw, _ = _rewinder(tmp_path, zfs=zfs)
    tools["runs"] = [_report(40), PgError("pg_rewind failed with exit status 1: could not connect")]
    why, _ = run(rw)
    assert why.startswith("pg_rewind failed") and "could not connect" in why
    snap = zfs.calls[0][1]
    assert zfs.calls == [("snapshot", snap), ("rollback", snap), ("destroy", snap)]


def test_a_failed_rollback_leaves_no_usable_data(tmp_path, tools):
    zfs = FakeZfs(fail_rollback=True)
    rw, log = _rewinder(tmp_path, zfs=zfs)
    tools["runs"] = [_report(40), PgError("killed after the deadline")]
    why, _ = run(rw)
    assert "killed" in why
    assert not (rw.data_dir / "global" / "pg_control").exists()
    assert (rw.data_dir / "global" / "pg_control.rewind-incomplete").exists()
    assert ("error", "rewind_rollback_failed") in [(lv, ev) for lv, ev, _ in log.lines]


def test_a_cancelled_rewind_is_rolled_back_before_the_cancellation_goes_on(tmp_path, tools):
    zfs = FakeZfs()
    rw, _ = _rewinder(tmp_path, zfs=zfs)
    tools["runs"] = [_report(40), "hang"]

    async def go():
        task = asyncio.ensure_future(rw.run(UP, rp.CAUSE_DIVERGED, lambda p: None))
        while len(tools["argv"]) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    snap = zfs.calls[0][1]
    assert zfs.calls == [("snapshot", snap), ("rollback", snap), ("destroy", snap)]


def test_no_snapshot_no_rewind(tmp_path, tools):
    class NoSnap(FakeZfs):
        async def snapshot(self, dataset, name):
            raise ZfsError(["zfs", "snapshot"], 1, "out of space")

    rw, _ = _rewinder(tmp_path, zfs=NoSnap())
    why, _ = run(rw)
    assert "no snapshot" in why and tools["argv"] == []


NOT_YET = pgrewind.RewindReport(copy_mb=None, source_mb=None, needed=False, diverged_at=None, done=False)


def test_the_chain_checkpoints_down_to_the_upstream_until_the_dry_run_sees_the_new_timeline(tmp_path, tools):
    rw, _ = _rewinder(tmp_path)
    tools["runs"] = [NOT_YET, NOT_YET, _report(40), _report(40, done=True)]
    res = asyncio.run(rw.run(UP, rp.CAUSE_DIVERGED, lambda p: None, ahead=(peer("10.0.0.5"), peer("10.0.0.9"))))
    assert res.path == "rewind"
    # primary first (the last of `ahead`), then towards the upstream; three dry runs
    assert tools["checkpoints"] == ["10.0.0.9", "10.0.0.5", "10.0.0.1"] * 3


def test_no_rewind_required_every_time_streams(tmp_path, tools):
    zfs = FakeZfs()
    rw, _ = _rewinder(tmp_path, zfs=zfs)
    tools["runs"] = [NOT_YET] * rewinder.DRY_RUN_TRIES
    why, _ = run(rw)
    assert "source's history" in why and len(tools["argv"]) == rewinder.DRY_RUN_TRIES
    assert [c[0] for c in zfs.calls] == ["snapshot", "rollback", "destroy"]


def test_a_rewind_whose_start_wal_is_gone_is_rolled_back(tmp_path, tools):
    zfs = FakeZfs()
    rw, _ = _rewinder(tmp_path, zfs=zfs)
    tools["runs"] = [_report(40), _report(41, done=True)]
    tools["wal_kept"] = False
    why, _ = run(rw)
    assert "00000002000000000000000E" in why and "recycled" in why
    assert [c[0] for c in zfs.calls] == ["snapshot", "rollback", "destroy"]


def test_missing_start_wal():
    label = "START WAL LOCATION: 0/E000028 (file 00000002000000000000000E)\nCHECKPOINT LOCATION: 0/E000060\n"
    assert pgrewind.missing_start_wal(label, ["00000001000000000000000E", "00000002.history"]) is None
    assert pgrewind.missing_start_wal(label, ["00000002000000000000000E"]) is None
    assert pgrewind.missing_start_wal(label, ["00000002000000000000000F"]) == "00000002000000000000000E"
    assert "no START WAL LOCATION" in pgrewind.missing_start_wal("garbage", [])
