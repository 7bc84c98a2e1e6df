"""A report on a standby that holds its WAL replay back: an open transaction that read a table,
then an ACCESS EXCLUSIVE lock of that table taken on the primary, which the standby must replay
and cannot while the report's lock stands (PostgreSQL cancels the report only after
`max_standby_streaming_delay`, 30 s by default). The hold is a connection of the calling
process: `release_replay` (or that process's end) undoes it.

On the async this is harmless until the sync goes: PostgreSQL points a standby at a new
upstream only once its replay asks for more WAL, and the async named the new sync must do so
(manatee/sitter/syncfollow.py ends such a report once the node is the sync).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psycopg2

TABLE = "manatee_report_hold"
_STARTUP_WAIT = "select wait_event_type from pg_stat_activity where backend_type = 'startup'"


def _run(dsn: str, *queries: str) -> list[tuple]:
    conn = psycopg2.connect(dsn, connect_timeout=3)
    try:
        conn.autocommit = True
        rows: list[tuple] = []
        with conn.cursor() as cur:
            for q in queries:
                cur.execute(q)
                rows = cur.fetchall() if cur.description else []
        return rows
    finally:
        conn.close()


def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psycopg2.Error):
            if pred():
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} within {timeout:.0f}s")
        time.sleep(0.1)


def hold_replay(standby_dsn: str, primary_dsn: str, timeout: float = 15.0) -> Any:
    """Hold the standby's replay with a report; the report's connection (pass it to
    `release_replay`). Raises if the standby does not replay the table, or its replay is not
    seen held, within `timeout`."""
    _run(primary_dsn, f"create table if not exists {TABLE} (id int)",
         f"insert into {TABLE} select 1 where not exists (select 1 from {TABLE})")
    _until(lambda: _run(standby_dsn, f"select to_regclass('{TABLE}') is not null")[0][0], timeout,
           f"the standby to replay {TABLE}")
    report = psycopg2.connect(standby_dsn, connect_timeout=3, application_name="nemesis-report")
    try:
        with report.cursor() as cur:
            cur.execute(f"select count(*) from {TABLE}")  # its transaction stays open
        _run(primary_dsn, f"begin; lock table {TABLE} in access exclusive mode; commit")
        _until(lambda: _run(standby_dsn, _STARTUP_WAIT)[0][0] == "Lock", timeout, "the report to hold the replay")
    except BaseException:
        report.close()
        raise
    return report


def release_replay(report: Any) -> bool:
    """End the report (whether or not someone ended it already); True if it was still open."""
    if report is None or report.closed:
        return False
    alive = True
    try:
        with report.cursor() as cur:
            cur.execute("select 1")
    except psycopg2.Error:
        alive = False
    finally:
        report.close()
    return alive
