"""A standby's settings below its primary's (PostgreSQL 15: replay paused, no promotion, no
start) are raised by its sitter to the primary's values its log names (primaryfloors.py)."""

from __future__ import annotations

import asyncio

from manatee.cli.adm_gray import gray_problems
from manatee.core.pgconfig import ConfigChange
from manatee.sitter.pglog import primary_values_in
from manatee.sitter.pgmanager import RoleSpec
from manatee.sitter.primaryfloors import PrimaryFloors
from tests.pgmanager_fakes import RecordingLog, bare_pg_manager

# PostgreSQL 15's own lines (a standby whose max_connections was 100 after its primary
# restarted with 120; checked by hand 2026-12-07)
PAUSED = """\
2026-12-07 05:59:29.185 UTC [13009] WARNING:  hot standby is not possible because of insufficient parameter settings
2026-12-07 05:59:29.185 UTC [13009] DETAIL:  max_connections = 100 is a lower setting than on the primary server, where its value was 120.
2026-12-07 05:59:29.185 UTC [13009] LOG:  recovery has paused
2026-12-07 05:59:29.185 UTC [13009] DETAIL:  If recovery is unpaused, the server will shut down.
"""


def test_the_log_names_the_setting_and_the_primarys_value():
    assert primary_values_in(PAUSED) == (("max_connections", 120),)
    two = PAUSED + PAUSED.replace("max_connections = 100", "max_worker_processes = 4").replace("120", "16")
    assert primary_values_in(two + PAUSED.replace("120", "110")) == (("max_connections", 120), ("max_worker_processes", 16))
    assert primary_values_in("LOG:  database system is ready to accept connections\n") == ()


def test_floors_only_rise_and_are_rendered_over_a_lower_or_missing_configured_value():
    f, log = PrimaryFloors(), RecordingLog()
    assert f.note((("max_connections", 120),), log)
    assert [e for _lvl, e, _kw in log.lines] == ["pg_settings_raised_to_primary"]
    assert not f.note((("max_connections", 110),), log)  # never lowered
    assert f.over({}) == {"max_connections": "120"}
    assert f.over({"max_connections": "100", "work_mem": "8MB"}) == {"max_connections": "120", "work_mem": "8MB"}
    assert f.over({"max_connections": 200}) == {"max_connections": 200}  # higher: the operator's stays
    assert f.over({"max_connections": "lots"}) == {"max_connections": "120"}
    assert f.written() and not f.written()  # a new floor asks for one restart, once
    assert f.above({"max_connections": "100"}) == {"max_connections": 120}
    assert f.above({"max_connections": "120"}) == {}  # the operator's config holds it now: not named
    # only the settings a hot standby needs at the primary's value are ever rendered over the config
    assert not f.note((("shared_buffers", 999999),), log)
    assert "shared_buffers" not in f.over({})


def _manager(monkeypatch, changes):
    seq = iter(changes)
    m = bare_pg_manager(monkeypatch, lambda *_a, **_k: next(seq))
    m.proc = type("P", (), {"running": True})()  # a running PostgreSQL
    m.parameters = {}
    return m


def test_a_new_floor_restarts_a_running_postgresql_once(monkeypatch):
    m = _manager(monkeypatch, [ConfigChange(reload_needed=True), ConfigChange()])
    m.floors.note((("max_connections", 120),), m.log)
    asyncio.run(m.configure(RoleSpec("standby"), ()))
    assert m._restart_pending  # the written floor takes a restart (max_connections is restart-only)
    m._restart_pending = False
    asyncio.run(m.configure(RoleSpec("standby"), ()))
    assert not m._restart_pending


def test_a_stopped_postgresql_reads_the_floor_at_its_start_without_a_restart(monkeypatch):
    m = _manager(monkeypatch, [ConfigChange()])
    m.proc = None
    m.floors.note((("max_connections", 120),), m.log)
    asyncio.run(m.configure(RoleSpec("standby"), ()))
    assert not m._restart_pending and not m.floors.unwritten


def test_verify_says_a_paused_standby_and_a_raised_one():
    sync = {"pg": {"belowPrimary": True, "raisedToPrimary": {}}}
    (sev, line), = gray_problems("sync 127.0.0.12", "sync", sync, "critical", "warning")
    assert sev == "critical" and "PostgreSQL paused its replay: a setting is below the primary's value" in line
    raised = {"pg": {"belowPrimary": False, "raisedToPrimary": {"max_connections": 120}}}
    (sev, line), = gray_problems("async 127.0.0.13", "async", raised, "critical", "warning")
    assert sev == "warning" and "its sitter raised max_connections 120 to the primary's value" in line
    assert gray_problems("async 127.0.0.13", "async", {"pg": {"raisedToPrimary": {}}}, "critical", "warning") == []


def test_the_log_counts_only_once_this_sitter_has_started_postgresql(monkeypatch, tmp_path):
    """A new sitter reads the log of an earlier run before its first start: an old 'lower
    setting' line there is not today's (a sandbox walk-through kept a lowered max_connections
    at the old primary value that way)."""
    log = tmp_path / "postgresql.log"
    log.write_text(PAUSED)
    m = bare_pg_manager(monkeypatch, lambda *_a, **_k: ConfigChange())
    m.log_file, m.status_timeout = log, 2.0
    m._log_offset, m._upstream_log_from, m._started_at, m.started_once = 0, 0, None, False
    gen = m.parameters_gen
    assert asyncio.run(m._log_facts()).primary_values == () and m.floors.values == {}
    m.started_once = True  # its own start failed with the same words: now they count
    assert asyncio.run(m._log_facts()).primary_values == (("max_connections", 120),)
    assert m.floors.values == {"max_connections": 120} and m.parameters_gen == gen + 1  # written next cycle
