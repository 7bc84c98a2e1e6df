"""PgManager.status when PostgreSQL stops answering in the middle of a check: the status query
answered, then a later query of the same check timed out (the sync's flush, the ALTER SYSTEM
check). Sandbox walk-through 2026-12-06 (`pg-hang` on the primary): those timeouts did not
count, the check read as healthy, the cycle went on to a write probe and a reload that timed out
too, and the hung clock started only at the next check, 9 s after the hang (15.9 s without
writes). Now such a check reads as unknown and timed out, as a failed status query does.
The same check also restores the sitters' way in (overrides.keep_access), on a read-write
primary only."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from manatee.core import pg as pgmod
from manatee.sitter.overrides import OverrideGuard
from manatee.sitter.pglog import LogFacts
from tests.pgmanager_fakes import bare_pg_manager

STATUS_ROW = {"conf_t": "t0", "rec": False, "cur": "0/3000060", "recv": None, "wr_status": None, "wr_host": None,
              "wr_port": None, "ro": False, "tli": 1, "pending": None}


class _Client:
    """The status query answers; the query whose text contains `hangs_at` times out (or fails)."""

    def __init__(self, hangs_at: str | None, timed_out: bool = True):
        self.hangs_at, self.timed_out = hangs_at, timed_out

    async def query(self, sql, params=None, *, timeout=None):
        if self.hangs_at and self.hangs_at in sql:
            raise pgmod.PgError(f"query timed out after {timeout}s: {sql[:40]}", timed_out=self.timed_out)
        if "pg_conf_load_time" in sql:
            return [dict(STATUS_ROW)]
        if "pg_stat_replication" in sql:
            return [{"flush": "0/3000060"}]
        return []

    async def execute(self, sql, params=None, *, timeout=None):
        return None


def _manager(monkeypatch, client):
    m = bare_pg_manager(monkeypatch, write=lambda *a, **k: None)
    m.proc = SimpleNamespace(running=True)
    m.spec = SimpleNamespace(role="primary")
    m.role_config = lambda spec: None
    m.client, m.status_timeout, m._reload_unseen = client, 1.5, None
    m.overrides = OverrideGuard(m.log)

    async def facts():
        return LogFacts()
    m._log_facts = facts
    monkeypatch.setattr("manatee.sitter.pgmanager.role_settings", lambda rc: {"synchronous_standby_names"})
    monkeypatch.setattr("manatee.sitter.pgmanager.parameter_settings", lambda rc: set())
    return m


def test_a_check_that_answers_throughout_is_known(monkeypatch):
    st = asyncio.run(_manager(monkeypatch, _Client(None)).status("sync-app"))
    assert st.known and st.in_recovery is False and st.sync_flush is not None


def test_a_check_whose_later_query_times_out_is_unknown_and_timed_out(monkeypatch):
    for hangs_at in ("pg_stat_replication", "pg_file_settings"):
        st = asyncio.run(_manager(monkeypatch, _Client(hangs_at)).status("sync-app"))
        assert not st.known and st.timed_out and st.in_recovery is None and st.wal is None, (hangs_at, st)
        assert "timed out" in st.error


def test_a_later_query_that_fails_without_timing_out_keeps_the_check(monkeypatch):
    """An error that is an answer (a refused query) says PostgreSQL answers: the check stands,
    the sync's flush reads as unknown, the ALTER SYSTEM check is logged and tried later."""
    st = asyncio.run(_manager(monkeypatch, _Client("pg_stat_replication", timed_out=False)).status("sync-app"))
    assert st.known and st.sync_flush_failed
    m = _manager(monkeypatch, _Client("pg_file_settings", timed_out=False))
    st = asyncio.run(m.status("sync-app"))
    assert st.known and [ev for _lvl, ev, _kw in m.log.lines] == ["pg_override_check_failed"]


class _Locked(_Client):
    """A status row that says the sitter's role may not log in, its database closed."""

    def __init__(self, rec: bool, ro: bool):
        super().__init__(None)
        self.rec, self.ro, self.executed = rec, ro, []

    async def query(self, sql, params=None, *, timeout=None):
        if "pg_conf_load_time" in sql:
            return [dict(STATUS_ROW, rec=self.rec, ro=self.ro, can_login=False, allow_conn=False,
                         dbname="postgres", is_super=False)]
        return await super().query(sql, params, timeout=timeout)

    async def execute(self, sql, params=None, *, timeout=None):
        self.executed.append(sql)


def test_the_sitters_way_in_is_restored_on_a_read_write_primary_only(monkeypatch):
    """Also in the status check (overrides.keep_access): a standby cannot write, and a
    read-only primary must not grow its WAL (its sync and a switchover compare it)."""
    done = {}
    for rec, ro in ((False, False), (False, True), (True, True)):
        c = _Locked(rec, ro)
        st = asyncio.run(_manager(monkeypatch, c).status(None))
        assert st.known and st.not_superuser is True
        done[(rec, ro)] = c.executed
    assert done[(False, True)] == done[(True, True)] == []
    assert done[(False, False)] == ["BEGIN; SET LOCAL synchronous_commit = local; ALTER ROLE CURRENT_USER LOGIN; "
                                    'ALTER DATABASE "postgres" ALLOW_CONNECTIONS true; COMMIT']


def test_a_failing_archive_is_read_from_the_status_query(monkeypatch):
    """pg_stat_archiver's last failure since the last success comes with the status (its SQL:
    ARCHIVE_FAILING_SQL, checked against a real PostgreSQL in test_wal_archive_shard.py)."""
    from manatee.sitter.pgmanager import ARCHIVE_FAILING_SQL

    class _Archive(_Client):
        def __init__(self, failing):
            super().__init__(None)
            self.failing = failing

        async def query(self, sql, params=None, *, timeout=None):
            if "pg_conf_load_time" in sql:
                assert ARCHIVE_FAILING_SQL in sql
                return [dict(STATUS_ROW, archive_failing=self.failing)]
            return await super().query(sql, params, timeout=timeout)

    for failing in ("00000001000000000000000A at 2026-12-07 02:35:00+00", None):
        st = asyncio.run(_manager(monkeypatch, _Archive(failing)).status(None))
        assert st.known and st.archive_failing == failing
