"""A standby promoted while queries on it hold its replay back (real PostgreSQL 15).

Sandbox trial 2026-12-06: an open transaction on the sync that had read a table, an ALTER
TABLE of that table on the primary, the primary killed: the promotion waited out
max_standby_streaming_delay (30 s) and writes were out for 24.8 s at T = 6 s. Here the
standby waits forever (max_standby_streaming_delay = -1), so a promotion that waits for the
query never finishes: the sitter's promotion (manatee.sitter.promotion.promote) ends the
sessions that hold the replay — only those with an open transaction — and finishes."""

from __future__ import annotations

import time

import psycopg2
import pytest

from manatee.core.lsn import Lsn
from manatee.sitter import promotion
from manatee_testbed.postgres import PgNode, wal_position
from tests.async_wait import eventually
from tests.fixtures_pg import primary_and_standby
from tests.pgmanager_fakes import RecordingLog

FOREVER = {"max_standby_streaming_delay": "-1", "max_standby_archive_delay": "-1"}


async def _pair(pg_node_factory) -> tuple[PgNode, PgNode]:
    p, s = await primary_and_standby(pg_node_factory, "create table t (id int primary key, v int)",
                                     "insert into t select g, 0 from generate_series(1, 2000) g",
                                     standby_parameters=FOREVER)
    target = await wal_position(p.client)
    await eventually(lambda: _replayed(s, target), what="the standby replaying the table")
    return p, s


async def _replayed(s: PgNode, target) -> bool:
    rows = await s.psql("select pg_last_wal_replay_lsn()::text as l")
    return rows[0]["l"] is not None and Lsn.parse(rows[0]["l"]) >= target


def _startup_wait(s: PgNode):
    async def get():
        rows = await s.psql("select wait_event_type || '/' || coalesce(wait_event, '') as w from pg_stat_activity"
                            " where backend_type = 'startup'")
        w = rows[0]["w"] if rows else None
        return w if promotion.holds_replay(w) else None
    return get


@pytest.mark.parametrize("conflict", ["lock", "snapshot"])
async def test_a_promotion_ends_the_sessions_that_hold_its_replay(pg_node_factory, conflict: str):
    p, s = await _pair(pg_node_factory)
    holder = psycopg2.connect(s.connect_dsn(application_name="report"))
    idle = psycopg2.connect(s.connect_dsn(application_name="idle-reader"))
    idle.autocommit = True
    try:
        with holder.cursor() as cur:  # an open transaction that read t (its lock, its snapshot)
            cur.execute("begin isolation level repeatable read")
            cur.execute("select count(*) from t")
        with idle.cursor() as cur:
            cur.execute("select 1")
        if conflict == "lock":
            await p.execute("alter table t add column w int")  # replays as an AccessExclusiveLock
        else:
            await p.execute("delete from t where id > 1000")
            await p.execute("vacuum t")  # its cleanup removes rows the holder's snapshot sees
        wait = await eventually(_startup_wait(s), what=f"the standby's replay held by the {conflict} conflict")
        log = RecordingLog()
        t0 = time.monotonic()
        await promotion.promote(s.client, log, deadline_s=20, poll_s=0.01, query_timeout=5)
        took = time.monotonic() - t0
        print(f"promotion held by a {conflict} conflict ({wait}) finished {took:.2f} s after it was asked")
        assert not (await s.psql("select pg_is_in_recovery() as r"))[0]["r"]
        assert took < 10, f"the promotion took {took:.1f} s"
        ended = [kw for lvl, ev, kw in log.lines if ev == "promotion_replay_unblocked"]
        assert len(ended) == 1 and ended[0]["sessions"] == 1 and ended[0]["apps"] == ["report"], log.lines
        with pytest.raises(psycopg2.Error):  # the holder's session is gone
            with holder.cursor() as cur:
                cur.execute("select 1")
        with idle.cursor() as cur:  # a session with no open transaction is kept
            cur.execute("select count(*) from t")
            assert cur.fetchone()[0] == (2000 if conflict == "lock" else 1000)
    finally:
        holder.close()
        idle.close()


async def test_a_promotion_with_nothing_held_ends_no_session(pg_node_factory):
    p, s = await _pair(pg_node_factory)
    reader = psycopg2.connect(s.connect_dsn(application_name="report"))
    try:
        with reader.cursor() as cur:  # an open transaction, but nothing on the primary conflicts with it
            cur.execute("begin isolation level repeatable read")
            cur.execute("select count(*) from t")
        await p.execute("insert into t values (5000, 1)")
        log = RecordingLog()
        await promotion.promote(s.client, log, deadline_s=20, poll_s=0.01, query_timeout=5)
        assert not [ev for _lvl, ev, _kw in log.lines if ev.startswith("promotion_")], log.lines
        with reader.cursor() as cur:
            cur.execute("select count(*) from t")
            assert cur.fetchone()[0] == 2000  # its snapshot, still open
    finally:
        reader.close()

