"""A sitter that starts while a PostgreSQL of its data directory runs that it did not start
(its previous process died; the supervisor restarted it alone) kills that PostgreSQL once,
so that it starts it again itself in the role the state gives (PgManager.kill_orphan). The
real thing: tests/integration/test_gray_faults.py::test_sitter_crash_*."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from manatee.core.pg import PgError
from manatee.sitter.pgmanager import PgManager
from tests.pgmanager_fakes import RecordingLog


class _Proc:
    def __init__(self, pids, kill_error=None):
        self.pids, self.kill_error, self.killed = pids, kill_error, 0

    def processes(self):
        return list(self.pids)

    async def kill(self):
        self.killed += 1
        if self.kill_error:
            raise self.kill_error


def _manager(proc: _Proc, mine=None) -> PgManager:
    m = PgManager.__new__(PgManager)
    m.log, m.proc = RecordingLog(), mine
    m._new_process = lambda: proc
    return m


def test_a_postgres_left_running_is_killed_and_said():
    orphan = _Proc([101, 102])
    m = _manager(orphan)
    assert asyncio.run(m.kill_orphan()) == [101, 102]
    assert orphan.killed == 1
    assert [(lv, ev) for lv, ev, _ in m.log.lines] == [("warning", "pg_orphan_killed")]


def test_nothing_running_nothing_killed():
    nothing = _Proc([])
    m = _manager(nothing)
    assert asyncio.run(m.kill_orphan()) == [] and nothing.killed == 0 and not m.log.lines


def test_my_own_child_is_never_an_orphan():
    running = _Proc([101])
    m = _manager(running, mine=SimpleNamespace(running=True))
    assert asyncio.run(m.kill_orphan()) == [] and running.killed == 0


def test_a_failure_is_logged_not_raised():
    stuck = _Proc([101], kill_error=PgError("postgres pid 101 did not exit after SIGKILL"))
    m = _manager(stuck)
    assert asyncio.run(m.kill_orphan()) == []
    assert m.log.lines[-1][:2] == ("error", "pg_orphan_check_failed")


def test_a_scan_that_does_not_finish_is_bounded():
    class Slow(_Proc):
        def processes(self):
            import time
            time.sleep(0.5)
            return [1]

    m = _manager(Slow([1]))
    assert asyncio.run(m.kill_orphan(timeout=0.05)) == []
    assert m.log.lines[-1][:2] == ("error", "pg_orphan_check_failed")


def test_what_my_exited_child_left_running_is_killed():
    leftover = _Proc([103])
    m = _manager(leftover, mine=SimpleNamespace(running=False))
    assert asyncio.run(m.kill_orphan()) == [103] and leftover.killed == 1


def test_a_start_first_kills_a_postgres_started_by_hand(tmp_path):
    """Sandbox trial 2026-12-06: `pg_ctl restart` on the primary left a PostgreSQL the sitter
    did not start; each start failed on it ("already running") until the primary stepped down
    after primaryStartTimeout (13.6 s without writes). Now the start kills it and starts its own."""
    order = []

    class Foreign(_Proc):
        async def kill(self):
            order.append("kill")
            self.pids = []
            await super().kill()

        async def start(self):
            if self.pids:
                raise PgError("postgres already running")
            order.append("start")

        async def wait_ready(self, timeout):
            pass

        pid = 200
        running = True

    class _Client:
        def close(self):
            pass

        async def connect(self, timeout):
            order.append("connect")

    foreign = Foreign([150, 151])
    m = _manager(foreign)
    m.socket_dir, m.log_file, m.client, m.spec = tmp_path / "sock", tmp_path / "pg.log", _Client(), None
    m.ops_timeout = m.health_timeout = 1.0
    asyncio.run(m.start())
    assert order == ["kill", "start", "connect"] and foreign.killed == 1
    killed = [kw for lv, ev, kw in m.log.lines if ev == "pg_orphan_killed"]
    assert len(killed) == 1 and killed[0]["pids"] == [150, 151] and "pg_ctl" in killed[0]["why"]
