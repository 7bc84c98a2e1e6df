"""ALTER SYSTEM overrides of the settings manatee manages (manatee.sitter.overrides): which
are reset, and that a failing check never fails the cycle. A real shard runs it in
tests/integration/test_gray_faults.py::test_an_alter_system_override_of_the_primarys_sync_is_reset."""

from __future__ import annotations

import asyncio

import pytest

from manatee.core import pg as pgmod
from manatee.sitter.overrides import OverrideGuard, access_fixes, overridden
from tests.pgmanager_fakes import RecordingLog


def test_only_managed_settings_with_a_plain_name_are_reset():
    rows = [{"name": "synchronous_standby_names"}, {"name": "work_mem"}, {"name": "Default_Transaction_Read_Only"},
            {"name": "x; drop table t"}]
    managed = {"synchronous_standby_names", "default_transaction_read_only", "x; drop table t", "port"}
    assert overridden(rows, managed) == ["default_transaction_read_only", "synchronous_standby_names"]
    assert overridden([], managed) == []


class _Client:
    def __init__(self, rows, fail=None):
        self.rows, self.fail, self.sql = rows, fail, []

    async def query(self, sql, params=None, *, timeout=None):
        self.sql.append(sql)
        if self.fail:
            raise pgmod.PgError(self.fail)
        return self.rows if "pg_file_settings" in sql else [{}]

    async def execute(self, sql, params=None, *, timeout=None):
        self.sql.append(sql)


def test_an_override_is_reset_reloaded_and_said_loudly():
    c, log = _Client([{"name": "synchronous_standby_names"}]), RecordingLog()
    guard = OverrideGuard(log)
    got = asyncio.run(guard.drop(c, {"synchronous_standby_names"}, 1.0))
    assert got == ["synchronous_standby_names"]
    assert c.sql[1:] == ["ALTER SYSTEM RESET synchronous_standby_names", "select pg_reload_conf()"]
    assert [(lvl, ev) for lvl, ev, _ in log.lines] == [("error", "pg_override_removed")]
    c2 = _Client([{"name": "work_mem"}])
    assert asyncio.run(guard.drop(c2, {"synchronous_standby_names"}, 1.0)) == []
    assert len(c2.sql) == 1  # nothing managed: no reset, no reload


def test_a_failing_check_is_logged_once_per_error_and_never_raises():
    log = RecordingLog()
    guard = OverrideGuard(log)
    for _ in range(3):
        assert asyncio.run(guard.drop(_Client([], fail="too many clients"), {"port"}, 1.0)) == []
    assert [ev for _, ev, _ in log.lines] == ["pg_override_check_failed"]
    asyncio.run(guard.drop(_Client([]), {"port"}, 1.0))
    asyncio.run(guard.drop(_Client([], fail="too many clients"), {"port"}, 1.0))
    assert [ev for _, ev, _ in log.lines] == ["pg_override_check_failed"] * 2


def test_a_check_that_times_out_is_raised_for_the_status_to_read_as_unknown():
    """A PostgreSQL that stops answering mid-check: the status check reads as unknown (hung),
    see test_pg_status_timeouts.py; nothing is logged here."""
    class _Slow(_Client):
        async def query(self, sql, params=None, *, timeout=None):
            raise pgmod.PgError("query timed out after 1.5s", timed_out=True)

    log = RecordingLog()
    with pytest.raises(pgmod.PgError):
        asyncio.run(OverrideGuard(log).drop(_Slow([]), {"port"}, 1.0))
    assert log.lines == []


# ---------------------------------------------------------------------------- the sitter's own way in

@pytest.mark.parametrize("row, undone, sql", [
    ({"can_login": True, "allow_conn": True, "dbname": "postgres"}, [], []),
    ({"can_login": None, "allow_conn": None, "dbname": None}, [], []),  # unknown: left alone
    ({"can_login": False, "allow_conn": True, "dbname": "postgres"}, ["its role may not log in (NOLOGIN)"],
     ["ALTER ROLE CURRENT_USER LOGIN"]),
    ({"can_login": True, "allow_conn": False, "dbname": 'we"ird'},
     ['database we"ird takes no connections (ALLOW_CONNECTIONS false)'],
     ['ALTER DATABASE "we""ird" ALLOW_CONNECTIONS true']),
    ({"can_login": False, "allow_conn": False, "dbname": "postgres"},
     ["its role may not log in (NOLOGIN)", "database postgres takes no connections (ALLOW_CONNECTIONS false)"],
     ["ALTER ROLE CURRENT_USER LOGIN", 'ALTER DATABASE "postgres" ALLOW_CONNECTIONS true']),
])
def test_what_locks_the_sitters_out_is_named_and_undone(row, undone, sql):
    got = access_fixes(row)
    assert [w for w, _ in got] == undone and [f for _, f in got] == sql


def test_the_access_fix_commits_locally_in_one_transaction_and_says_so_loudly():
    c, log = _Client([]), RecordingLog()
    guard = OverrideGuard(log)
    row = {"can_login": False, "allow_conn": True, "dbname": "postgres"}
    assert asyncio.run(guard.keep_access(c, row, 1.0)) == ["its role may not log in (NOLOGIN)"]
    assert c.sql == ["BEGIN; SET LOCAL synchronous_commit = local; ALTER ROLE CURRENT_USER LOGIN; COMMIT"]
    assert [(lvl, ev) for lvl, ev, _ in log.lines] == [("error", "pg_access_restored")]
    c2 = _Client([])
    assert asyncio.run(guard.keep_access(c2, {"can_login": True, "allow_conn": True}, 1.0)) == [] and c2.sql == []


def test_a_failed_access_fix_is_logged_once_and_a_timeout_is_raised():
    class _Refusing(_Client):
        def __init__(self, timed_out=False):
            super().__init__([])
            self.timed_out = timed_out

        async def execute(self, sql, params=None, *, timeout=None):
            raise pgmod.PgError("permission denied to alter role", timed_out=self.timed_out)

    log = RecordingLog()
    guard = OverrideGuard(log)
    row = {"can_login": False}
    for _ in range(3):
        assert asyncio.run(guard.keep_access(_Refusing(), row, 1.0)) == []
    assert [ev for _, ev, _ in log.lines] == ["pg_access_fix_failed"]
    with pytest.raises(pgmod.PgError):
        asyncio.run(guard.keep_access(_Refusing(timed_out=True), row, 1.0))
