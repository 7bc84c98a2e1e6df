"""PostgreSQL's config files are written in a thread within a bound (manatee.sitter.configwriter):
a stalled fsync neither freezes the event loop nor loses the reload the stalled write needed,
and writes never overlap."""

from __future__ import annotations

import asyncio
import threading

import pytest

from manatee.core.pgconfig import ConfigChange
from manatee.sitter import configwriter
from manatee.sitter.configwriter import ConfigWriter, merged
from manatee.sitter.pgmanager import PgConfigError, RoleSpec
from tests.pgmanager_fakes import bare_pg_manager


class _Disk:
    """write_role_config's stand-in: each call takes its change from `changes`; a call waits
    for `release` while it is clear (a stalled fsync). Counts calls running at once."""

    def __init__(self, *changes: ConfigChange):
        self.changes = list(changes)
        self.release = threading.Event()
        self.release.set()
        self.running = self.most_at_once = self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, data_dir, rc, *, user):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            assert self.release.wait(10), "never released"
            return self.changes.pop(0)
        finally:
            with self.lock:
                self.running -= 1


def test_merged_keeps_every_need_and_name_once():
    a = ConfigChange(reload_needed=True, changed=("work_mem", "pg_hba.conf"))
    b = ConfigChange(restart_needed=True, changed=("pg_hba.conf", "shared_buffers"))
    assert merged(a, b) == ConfigChange(True, True, ("work_mem", "pg_hba.conf", "shared_buffers"))
    assert merged(ConfigChange(), ConfigChange()).any is False


def test_a_stalled_write_times_out_without_blocking_the_loop_and_its_reload_is_kept(monkeypatch):
    disk = _Disk(ConfigChange(reload_needed=True, changed=("work_mem",)), ConfigChange())
    monkeypatch.setattr(configwriter, "write_role_config", disk)
    w = ConfigWriter()

    async def run():
        ticks = 0

        async def ticker():  # the rest of the sitter (/state, heartbeats) while the disk stalls
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        disk.release.clear()
        with pytest.raises(TimeoutError, match="writing PostgreSQL's config has not finished within 0.2s"):
            await w.write("/d", None, user=None, timeout=0.2)
        assert ticks >= 5, ticks  # the loop kept running during the stalled write
        disk.release.set()
        # the next write waits for the stalled one, then writes the same files again: it finds
        # them as wanted (no change), and the stalled write's reload is still asked for
        change = await w.write("/d", None, user=None, timeout=5)
        t.cancel()
        return change

    assert asyncio.run(run()) == ConfigChange(reload_needed=True, changed=("work_mem",))
    assert disk.calls == 2 and disk.most_at_once == 1


def test_a_write_still_stalled_at_the_next_call_is_not_overlapped(monkeypatch):
    disk = _Disk(ConfigChange(), ConfigChange())
    monkeypatch.setattr(configwriter, "write_role_config", disk)
    w = ConfigWriter()

    async def run():
        disk.release.clear()
        with pytest.raises(TimeoutError):
            await w.write("/d", None, user=None, timeout=0.1)
        with pytest.raises(TimeoutError, match="an earlier write of PostgreSQL's config has not finished"):
            await w.write("/d", None, user=None, timeout=0.1)
        assert disk.calls == 1  # the second never started a write of its own
        disk.release.set()
        return await w.write("/d", None, user=None, timeout=5)

    assert asyncio.run(run()) == ConfigChange()
    assert disk.calls == 2 and disk.most_at_once == 1


def test_an_earlier_write_that_failed_leaves_only_the_new_writes_change(monkeypatch):
    calls = []

    def write(data_dir, rc, *, user):
        calls.append(rc)
        if len(calls) == 1:
            import time
            time.sleep(0.3)
            raise OSError(28, "No space left on device")
        return ConfigChange(reload_needed=True)

    monkeypatch.setattr(configwriter, "write_role_config", write)
    w = ConfigWriter()

    async def run():
        with pytest.raises(TimeoutError):
            await w.write("/d", "first", user=None, timeout=0.05)
        return await w.write("/d", "second", user=None, timeout=5)

    assert asyncio.run(run()) == ConfigChange(reload_needed=True)
    assert calls == ["first", "second"]


def test_configure_reports_a_stalled_write_as_a_config_error_and_keeps_a_newer_reload_pending(monkeypatch):
    """A reload that sets newer parameters while the files are written is not marked written:
    the next cycle writes them (parameters_dirty)."""
    m = None

    def write(*_a, **_k):
        m.parameters_gen += 1  # a POST /reload while the files are written (in the thread)
        return ConfigChange()

    m = bare_pg_manager(monkeypatch, write)
    asyncio.run(m.configure(RoleSpec("primary"), ()))
    assert m.parameters_dirty, "the newer parameters were taken for written"

    disk = _Disk(ConfigChange())
    monkeypatch.setattr(configwriter, "write_role_config", disk)
    m.ops_timeout = 0.1
    disk.release.clear()
    threading.Timer(0.5, disk.release.set).start()  # (asyncio.run's end waits for the thread)
    with pytest.raises(PgConfigError, match="has not finished within 0.1s: the disk stalls"):
        asyncio.run(m.configure(RoleSpec("primary"), ()))
    assert "the disk stalls" in m.config_error
