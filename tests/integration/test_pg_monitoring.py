"""The sitter's way into its own PostgreSQL (issue 8, F18/F20) on real PostgreSQL 15.

The sitter's PgClient is persistent: one connection opened at PostgreSQL's start and reused
by every status query, so clients holding every connection slot (the superuser's reserved
ones too: PostgreSQL 15 has no `reserved_connections`) cannot lock it out; and every call
has a deadline, so a hung (SIGSTOPped) PostgreSQL makes a call fail in time as "timed out"
instead of blocking the sitter's cycle.
"""

from __future__ import annotations

import asyncio
import signal
import time

import psycopg2
import pytest

from manatee.core.pg import PgClient, PgError
from manatee_testbed.postgres import PgNode, signal_all
from tests.fixtures_pg import pg_manager_for, primary_and_standby

MAX_CONNECTIONS = 6


@pytest.fixture
async def small_pg(pg_node_factory) -> PgNode:
    node = pg_node_factory("mon")
    await node.init()
    with open(node.data_dir / "postgresql.auto.conf", "a") as f:
        f.write(f"max_connections = {MAX_CONNECTIONS}\nsuperuser_reserved_connections = 2\n")
    await node.start()
    return node


def _monitor(node: PgNode) -> PgClient:
    return PgClient(str(node.proc.socket_dir), node.port, user="postgres", persistent=True,
                    application_name="manatee-sitter")


def _hog_every_slot(node: PgNode) -> list:
    """Superuser connections over the local socket until PostgreSQL refuses any more."""
    hogs = []
    while len(hogs) < MAX_CONNECTIONS + 5:
        try:
            hogs.append(psycopg2.connect(host=str(node.proc.socket_dir), port=node.port, user="postgres",
                                         dbname="postgres", connect_timeout=3))
        except psycopg2.OperationalError as e:
            assert "too many clients" in str(e) or "connection slots" in str(e), e
            return hogs
    raise AssertionError("PostgreSQL never refused a connection")


async def test_monitoring_connection_keeps_working_when_clients_take_every_slot(small_pg: PgNode):
    mon = _monitor(small_pg)
    await mon.connect(timeout=5)
    hogs = _hog_every_slot(small_pg)
    try:
        assert len(hogs) == MAX_CONNECTIONS - 1  # every slot, the superuser's included, but ours
        with pytest.raises(PgError, match="too many clients|connection slots") as e:
            await PgClient(str(small_pg.proc.socket_dir), small_pg.port).query("select 1", timeout=3)
        assert not e.value.timed_out  # a refusal is an answer, not a hang
        for _ in range(5):  # status queries and a metrics-style call, all on the one connection
            rows = await mon.query("select pg_is_in_recovery() as rec, pg_backend_pid() as pid", timeout=2)
            assert rows[0]["rec"] is False
        pids = {(await mon.query("select pg_backend_pid() as pid", timeout=2))[0]["pid"] for _ in range(3)}
        assert len(pids) == 1
        rows = await mon.query("select count(*) as n from pg_stat_activity where application_name = 'manatee-sitter'",
                               timeout=2)
        assert rows[0]["n"] == 1
        shown = (await mon.query("show statement_timeout", timeout=1.5))[0]["statement_timeout"]
        assert shown.endswith("ms") and 1000 < int(shown[:-2]) <= 1500  # the call's remaining deadline
    finally:
        for h in hogs:
            h.close()
        mon.close()


async def test_an_operators_idle_session_timeout_does_not_end_the_monitoring_connection(small_pg: PgNode):
    """idle_session_timeout (or idle_in_transaction_session_timeout) set for every session of
    the superuser, e.g. for connection hygiene: it ended the sitter's kept connection between
    two status queries, so in a connection storm the sitter could not get back in."""
    await small_pg.execute("alter role postgres set idle_session_timeout = '200ms'")
    await small_pg.execute("alter role postgres set idle_in_transaction_session_timeout = '200ms'")
    mon = _monitor(small_pg)
    await mon.connect(timeout=5)
    hogs = []
    try:
        first = (await mon.query("select pg_backend_pid() as pid", timeout=2))[0]["pid"]
        await asyncio.sleep(0.6)
        hogs = _hog_every_slot(small_pg)  # a storm meanwhile: no new connection could be made
        await asyncio.sleep(0.6)
        rows = await mon.query("select pg_backend_pid() as pid, current_setting('idle_session_timeout') as ist",
                               timeout=2)
        assert rows[0]["pid"] == first and rows[0]["ist"] == "0"
    finally:
        for h in hogs:
            h.close()
        mon.close()
        await small_pg.execute("alter role postgres reset all")


async def test_a_failed_statement_in_a_transaction_block_does_not_poison_the_kept_connection(small_pg: PgNode):
    """Sandbox trial 2026-12-06: the primary started while PostgreSQL refused new transaction
    IDs (wraparound); the sitter's `begin read write; ... GRANT ...; commit` failed half-way,
    which leaves the block open and aborted, and every later status query on the kept
    connection failed ("current transaction is aborted"): the sitter was blind. The block is
    now ended after any failure, on the same connection."""
    mon = _monitor(small_pg)
    await mon.connect(timeout=5)
    try:
        pid = (await mon.query("select pg_backend_pid() as pid", timeout=2))[0]["pid"]
        with pytest.raises(PgError, match="division by zero"):
            await mon.execute("begin read write; select 1/0; commit", timeout=2)
        rows = await mon.query("select pg_backend_pid() as pid, 1 as one", timeout=2)
        assert rows[0]["one"] == 1 and rows[0]["pid"] == pid  # same connection, usable
        with pytest.raises(PgError) as e:  # the server cancels at statement_timeout inside a block
            await mon.execute("begin; select pg_sleep(3); commit", timeout=0.5)
        assert e.value.timed_out
        rows = await mon.query("select 1 as one", timeout=2)
        assert rows[0]["one"] == 1
        assert (await mon.query("select count(*) as n from pg_stat_activity where state like 'idle in%'",
                                timeout=2))[0]["n"] == 0
    finally:
        mon.close()


async def test_concurrent_calls_share_the_connection_one_at_a_time(small_pg: PgNode):
    mon = _monitor(small_pg)
    try:
        rows = await asyncio.gather(*(mon.query("select pg_backend_pid() as pid, pg_sleep(0.05)", timeout=5)
                                      for _ in range(6)))
        assert len({r[0]["pid"] for r in rows}) == 1
    finally:
        mon.close()


async def test_a_hung_postgres_times_out_within_the_deadline_and_the_connection_comes_back(small_pg: PgNode):
    mon = _monitor(small_pg)
    await mon.connect(timeout=5)
    signal_all(small_pg.proc, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(PgError) as e:
            await mon.query("select pg_is_in_recovery() as rec", timeout=1.0)
        assert e.value.timed_out and time.monotonic() - t0 < 2.0
        t0 = time.monotonic()  # the next call reconnects, which a hung server also cannot answer
        with pytest.raises(PgError) as e:
            await mon.query("select 1", timeout=1.0)
        assert e.value.timed_out and time.monotonic() - t0 < 2.0
    finally:
        signal_all(small_pg.proc, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert (await mon.query("select 1 as one", timeout=2))[0]["one"] == 1
            break
        except PgError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    mon.close()


async def test_the_connection_is_replaced_after_a_restart(small_pg: PgNode):
    mon = _monitor(small_pg)
    try:
        before = (await mon.query("select pg_backend_pid() as pid", timeout=2))[0]["pid"]
        await small_pg.stop(mode="fast")
        await small_pg.start()
        after = (await mon.query("select pg_backend_pid() as pid", timeout=5))[0]["pid"]
        assert after != before
    finally:
        mon.close()


# --------------------------------------------------------------------------- the sitter's PgManager


async def test_pgmanager_status_of_a_hung_postgres_is_unknown_within_its_deadline(small_pg: PgNode):
    pm = pg_manager_for(small_pg)
    st = await pm.status()
    assert st.known and st.healthy and st.in_recovery is False and st.wal is not None
    signal_all(small_pg.proc, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        st = await pm.status()
        took = time.monotonic() - t0
        assert st.running and not st.known and st.timed_out and not st.crowded
        assert st.in_recovery is None and st.wal is None and st.read_only is None  # unknown, not a primary
        assert took < pm.status_timeout + 1.0, took
    finally:
        signal_all(small_pg.proc, signal.SIGCONT)
        pm.client.close()


async def test_pgmanager_status_works_and_a_crowd_is_told_apart_when_clients_take_every_slot(small_pg: PgNode):
    pm = pg_manager_for(small_pg)
    await pm.client.connect(timeout=5)
    hogs = _hog_every_slot(small_pg)
    try:
        st = await pm.status()
        assert st.known and st.in_recovery is False  # through the monitoring connection
        pm.client.close()  # lose it, and let a client take its slot: now the server can only refuse us
        await asyncio.sleep(0.3)
        hogs += _hog_every_slot(small_pg)
        st = await pm.status()
        assert not st.known and st.crowded and not st.timed_out
    finally:
        for h in hogs:
            h.close()
        pm.client.close()


async def test_pgmanager_status_says_when_its_role_is_no_longer_a_superuser(small_pg: PgNode):
    """`ALTER ROLE postgres NOSUPERUSER` (PostgreSQL 15 allows it for the bootstrap superuser):
    the sitter could no longer promote, reload or reset settings, and cannot give itself the
    right back. Its status query says so at once, on its kept connection."""
    await small_pg.execute("create role admin2 superuser login")
    admin = psycopg2.connect(host=str(small_pg.proc.socket_dir), port=small_pg.port, user="admin2",
                             dbname="postgres", connect_timeout=3)
    admin.autocommit = True
    pm = pg_manager_for(small_pg)
    try:
        assert (await pm.status()).not_superuser is False
        with admin.cursor() as cur:
            cur.execute("alter role postgres nosuperuser")
        st = await pm.status()
        assert st.known and st.not_superuser is True and pm.not_superuser
        with admin.cursor() as cur:
            cur.execute("alter role postgres superuser")
        assert (await pm.status()).not_superuser is False and not pm.not_superuser
    finally:
        with admin.cursor() as cur:
            cur.execute("alter role postgres superuser")
        admin.close()
        pm.client.close()


async def test_pgmanager_confirms_new_parameters_only_once_its_backend_has_read_them(small_pg: PgNode):
    """A reload is asynchronous: until the backend answering the sitter's status queries has
    read the new files, a status is of the old settings (a restart-only one not yet pending),
    so it must not report the new parameters as applied (manatee-adm reload would then say
    "applied" where a restart is pending). Provoked by holding the postmaster, which
    forwards the SIGHUP, stopped."""
    import os

    from manatee.sitter.pgmanager import RoleSpec

    pm = pg_manager_for(small_pg)
    try:
        assert (await pm.status()).known
        pm.set_parameters({"shared_buffers": "40MB", "work_mem": "5MB"})
        await pm.configure(RoleSpec("primary", read_only=False), ())
        os.kill(small_pg.proc.pid, signal.SIGSTOP)
        try:
            assert await pm.apply_pending() == "reloaded"
            st = await pm.status()
            assert st.known and st.parameters_gen != pm.parameters_gen, st
            assert st.pending_restart == ()
        finally:
            os.kill(small_pg.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while (st := await pm.status()).parameters_gen != pm.parameters_gen:
            assert time.monotonic() < deadline, st
            await asyncio.sleep(0.05)
        assert "shared_buffers" in st.pending_restart, st
    finally:
        pm.client.close()


async def test_a_restarted_standby_claims_the_wal_it_holds_while_its_upstream_hangs(pg_node_factory):
    """A sync whose PostgreSQL restarts while its primary hangs (SIGSTOP: the walreceiver
    cannot stream) still holds every WAL record it flushed. pg_last_wal_receive_lsn then
    reads the segment start it asks to stream from, below what it holds; the sitter must
    report the WAL it replayed from its own disk, or the primary's step-down to it finds a
    sync "behind" initWal again and again while the primary stays hung (found by CI on
    test_f18_pg_stays_hung_on_primary_sync_takes_over)."""
    from manatee.core.lsn import Lsn

    p, s = await primary_and_standby(pg_node_factory, "create table t (id int primary key, pad text)",
                                     names=("up", "down"))
    # past a segment boundary and well inside the next segment
    await p.execute("insert into t select g, repeat('x', 200) from generate_series(1, 20000) g")
    held = Lsn.parse((await p.psql("select pg_current_wal_flush_lsn()::text as l"))[0]["l"])

    async def replayed():
        r = await s.psql("select pg_last_wal_replay_lsn()::text as l")
        return r[0]["l"] and Lsn.parse(r[0]["l"]) >= held
    await _wait(replayed, "the standby to replay the primary's WAL")
    signal_all(p.proc, signal.SIGSTOP)
    try:
        await s.stop()
        await s.start()
        pm = pg_manager_for(s)
        try:
            seen = []

            async def claims_it():  # (replay of the local WAL may still run just after start)
                st = await pm.status()
                seen.append(st.wal)
                assert st.known and st.in_recovery and not st.streaming, st
                return st.wal is not None and st.wal >= held
            try:
                await _wait(claims_it, f"a claimed WAL of at least {held}", timeout=5)
            except AssertionError as e:
                raise AssertionError(f"{e}; the sitter claimed {seen[-1]}") from None
            # the metrics and slot queries read the same position there (they run on it)
            from manatee.sitter.metrics import PG_SQL
            from manatee.sitter.slots import list_slots
            row = (await s.psql(PG_SQL))[0]
            assert row["standby_bytes"] is None and row["replication"] == [], row
            assert row["xid_age"] > 0 and row["multixact_age"] >= 0, row  # readable in recovery too
            assert await list_slots(s.client) == ()
        finally:
            pm.client.close()
    finally:
        signal_all(p.proc, signal.SIGCONT)


async def _wait(fn, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not await fn():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.1)
