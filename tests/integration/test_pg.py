"""PostgreSQL control on real PostgreSQL 15: process lifecycle, queries, role configs, a streaming pair."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import stat
import subprocess
import time

import psycopg2
import psycopg2.extras
import pytest

from manatee.core.lsn import Lsn
from manatee.core.pg import PgClient, PgError, PostgresProcess
from manatee_testbed.postgres import (
    PgNode,
    controldata,
    controldata_checkpoint,
    controldata_timeline,
    health,
    replication_rows,
    setting,
    signal_all,
    timeline,
    wal_position,
    wal_receiver,
)

from tests.async_wait import eventually as _eventually

PG_UID = pwd.getpwnam("postgres").pw_uid


async def eventually(fn, timeout=15.0, interval=0.1, what="condition"):
    """Poll async `fn` until it returns a truthy value (a PgError counts as not yet)."""
    return await _eventually(fn, timeout, interval, what, tolerate=(PgError,))


# --------------------------------------------------------------------------- single node


async def test_initdb_start_health_and_query(pg_node: PgNode):
    c = pg_node.client
    assert await health(c)
    assert not await c.in_recovery()
    assert (await c.query("select 1 + %s as x", (41,))) == [{"x": 42}]
    assert await setting(c, "data_checksums") == "on"
    assert await setting(c, "unix_socket_directories") == str(pg_node.socket_dir)
    assert await setting(c, "listen_addresses") == pg_node.ip
    assert await setting(c, "cluster_name") == pg_node.name
    assert await setting(c, "wal_level") == "replica"
    assert await setting(c, "synchronous_commit") == "on"
    assert await setting(c, "default_transaction_read_only") == "off"
    # the private socket dir and data dir belong to postgres, mode 0700
    for d in (pg_node.socket_dir, pg_node.data_dir):
        st = os.stat(d)
        assert st.st_uid == PG_UID and stat.S_IMODE(st.st_mode) == 0o700, d
    # it listens on its own address, and nowhere near the Debian socket
    assert await health(pg_node.tcp_client())
    assert await health(pg_node.proc.client())
    assert not os.path.exists(f"/var/run/postgresql/.s.PGSQL.{pg_node.port}") or pg_node.port == 5432
    # postmaster is our direct child, in its own session
    assert os.getsid(pg_node.proc.pid) == pg_node.proc.pid
    assert pg_node.proc.pid in pg_node.proc.processes()
    # pg_hba as PostgreSQL parsed it: exactly our rows, no errors
    rules = await c.query("select type, database, user_name, address, auth_method, error from pg_hba_file_rules")
    assert [(r["type"], r["database"], r["user_name"], r["address"], r["auth_method"], r["error"]) for r in rules] == [
        ("local", ["all"], ["all"], None, "trust", None),
        ("local", ["replication"], ["all"], None, "trust", None),
        ("host", ["replication"], ["postgres"], "127.0.0.1", "trust", None),
        ("host", ["all"], ["postgres"], "127.0.0.1", "trust", None),
        ("host", ["replication"], ["all"], "all", "reject", None),
        ("host", ["all"], ["all"], "127.0.0.1", "trust", None),
    ]


async def test_query_errors_carry_sql_and_pg_code(pg_node: PgNode):
    with pytest.raises(PgError, match="no_such_table") as ei:
        await pg_node.psql("select * from no_such_table")
    assert ei.value.pgcode == "42P01"
    with pytest.raises(PgError, match="connection|Connection|connect"):
        await PgClient("127.0.0.1", 1, connect_timeout=1).query("select 1")
    assert not await health(PgClient("127.0.0.1", 1, connect_timeout=1))


async def test_wal_position_advances_after_writes(pg_node: PgNode):
    c = pg_node.client
    before = await wal_position(c)
    await c.execute("create table t (id int primary key, pad text)")
    await c.execute("insert into t select g, repeat('x', 100) from generate_series(1, 1000) g")
    after = await wal_position(c)
    assert after > before
    assert after - before > 100_000
    assert await timeline(c) == 1


async def test_health_of_a_hung_server_times_out_without_blocking(pg_node: PgNode):
    """A SIGSTOPped postgres: health() says False in time; the loop stays responsive."""
    stopped = signal_all(pg_node.proc, signal.SIGSTOP)
    assert pg_node.proc.pid in stopped
    try:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        t = asyncio.create_task(ticker())
        t0 = time.monotonic()
        ok = await health(pg_node.tcp_client(connect_timeout=1), timeout=1.5)
        elapsed = time.monotonic() - t0
        t.cancel()
        assert not ok
        assert elapsed < 3
        assert ticks >= 10  # the event loop kept running meanwhile
    finally:
        signal_all(pg_node.proc, signal.SIGCONT)
    assert await eventually(lambda: health(pg_node.client), what="health after SIGCONT")


@pytest.mark.parametrize("mode,state", [("fast", "shut down"), ("immediate", "in production")])
async def test_stop_modes_leave_no_process(pg_node: PgNode, mode, state):
    await pg_node.execute("create table t (id int)")
    pids = pg_node.proc.processes()
    assert len(pids) >= 4  # postmaster, checkpointer, bgwriter, walwriter, ...
    await pg_node.stop(mode)
    assert not pg_node.running
    assert pg_node.proc.processes() == []
    assert not any(os.path.exists(f"/proc/{p}") and _not_zombie(p) for p in pids)
    cd = await controldata(pg_node.data_dir)
    assert cd["Database cluster state"] == state
    assert controldata_timeline(cd) == 1
    assert controldata_checkpoint(cd) > Lsn(0)
    # and it starts again (after immediate: crash recovery)
    await pg_node.start()
    assert await pg_node.psql("select count(*) as n from t") == [{"n": 0}]


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


async def test_kill9_then_start_recovers(pg_node: PgNode):
    await pg_node.execute("create table t (id int)")
    await pg_node.execute("insert into t select generate_series(1, 500)")
    pid = pg_node.proc.pid
    await pg_node.kill()
    assert pg_node.proc.returncode == -signal.SIGKILL
    assert pg_node.proc.processes() == []
    assert (pg_node.data_dir / "postmaster.pid").exists()  # stale, pid dead
    assert not _not_zombie(pid)
    await pg_node.start()
    assert await pg_node.psql("select count(*) as n from t") == [{"n": 500}]
    assert "database system was interrupted" in pg_node.proc.log_tail(20000)


async def test_stale_lock_files_with_reused_pid_do_not_block_start(pg_node: PgNode):
    """After a crash the dead postmaster's pid may belong to another process by now;
    PostgreSQL alone would refuse to start ("lock file already exists")."""
    await pg_node.kill()
    me = str(os.getpid())  # alive, and not a postgres
    for lock in (pg_node.data_dir / "postmaster.pid", pg_node.socket_dir / f".s.PGSQL.{pg_node.port}.lock"):
        lines = lock.read_text().split("\n") if lock.exists() else ["0"]
        lines[0] = me
        lock.write_text("\n".join(lines))
    await pg_node.start()
    assert await health(pg_node.client)


async def test_lock_naming_an_unreaped_postmaster_does_not_block_start(pg_node: PgNode):
    """A sitter that died left its PostgreSQL running; the new sitter killed it, but nobody
    has reaped the dead postmaster yet (here PID 1 reaps lazily): a zombie, which
    PostgreSQL's kill(pid, 0) takes for a live postmaster ("lock file already exists").
    Seen in a sandbox trial, 2026-12-05: the first start after the kill failed."""
    await pg_node.kill()
    # exits at once, not waited for: a zombie, of PostgreSQL's user as the dead postmaster was
    # (kill(pid, 0) on another user's process fails with EPERM, which PostgreSQL ignores)
    zombie = subprocess.Popen(["true"], user=pg_node.user if os.geteuid() == 0 else None)

    async def is_zombie() -> bool:
        return _is_zombie(zombie.pid)

    await eventually(is_zombie, what="a zombie process")
    try:
        for lock in (pg_node.data_dir / "postmaster.pid", pg_node.socket_dir / f".s.PGSQL.{pg_node.port}.lock"):
            lines = lock.read_text().split("\n") if lock.exists() else ["0"]
            lines[0] = str(zombie.pid)
            lock.write_text("\n".join(lines))
        await pg_node.start()
        assert await health(pg_node.client)
    finally:
        zombie.wait()


def _is_zombie(pid: int) -> bool:
    return not _not_zombie(pid) and os.path.exists(f"/proc/{pid}")


async def test_second_start_on_same_data_dir_refused(pg_node: PgNode):
    other = PostgresProcess(
        pg_node.data_dir,
        log_file=pg_node.work_dir / "other.log",
        socket_dir=pg_node.work_dir / "s2",
        host=pg_node.ip,
        port=pg_node.port + 1,
    )
    with pytest.raises(PgError, match="already running"):
        await other.start()
    assert other.pid is None
    with pytest.raises(PgError, match="already running"):
        await pg_node.proc.start()


async def test_failed_start_reports_log_tail(pg_node_factory):
    node = pg_node_factory("bad")
    await node.init(extra_settings={"shared_buffers": "lots"})
    with pytest.raises(PgError, match=r"(?s)exited with status 1.*shared_buffers.*contains errors") as ei:
        await node.start(timeout=20)
    assert "log tail" in str(ei.value)
    assert not node.running and node.proc.processes() == []


async def test_read_only_primary_rejects_writes(pg_node: PgNode):
    await pg_node.execute("create table t (id int)")
    change = await pg_node.apply(pg_node.role_config(read_only=True))
    assert change.reload_needed and change.changed == ("default_transaction_read_only",)
    await eventually(lambda: _setting_is(pg_node, "default_transaction_read_only", "on"), what="read-only")
    with pytest.raises(PgError, match="read-only transaction") as ei:
        await pg_node.execute("insert into t values (1)")
    assert ei.value.pgcode == "25006"
    assert await pg_node.psql("select count(*) as n from t") == [{"n": 0}]  # reads still work
    await pg_node.apply(pg_node.role_config(read_only=False))
    await eventually(lambda: _setting_is(pg_node, "default_transaction_read_only", "off"), what="read-write")
    await pg_node.execute("insert into t values (1)")


async def _setting_is(node: PgNode, name: str, value: str) -> bool:
    return await setting(node.client, name) == value


async def test_hba_limits_replication_to_members_and_clients_to_cidrs(pg_node: PgNode):
    """On loopback every connection comes from 127.0.0.1, so membership is 127.0.0.1 or not."""

    def replication_connect():
        conn = psycopg2.connect(
            pg_node.connect_dsn(tcp=True), connection_factory=psycopg2.extras.PhysicalReplicationConnection
        )
        try:
            cur = conn.cursor()
            cur.execute("IDENTIFY_SYSTEM")
            return cur.fetchone()
        finally:
            conn.close()

    row = await asyncio.to_thread(replication_connect)
    assert int(row[1]) == 1  # timeline

    # members elsewhere: replication from here is rejected; trust is refused for such networks
    with pytest.raises(ValueError, match="trust"):
        pg_node.role_config(members=("10.1.2.3",))
    await pg_node.apply(pg_node.role_config(members=("10.1.2.3",), client_cidrs=("127.0.0.1/32",),
                                            auth_method="scram-sha-256"))
    await eventually(lambda: _hba_addresses_are(pg_node, {"10.1.2.3", "127.0.0.1", "all"}), what="hba reload")
    with pytest.raises(psycopg2.OperationalError, match="replication connection"):
        await asyncio.to_thread(replication_connect)
    assert await health(pg_node.tcp_client())  # the admin role (trust on loopback here)

    # no admin role: the superuser is refused over TCP whatever the client networks say
    await pg_node.apply(pg_node.role_config(members=("10.1.2.3",), client_cidrs=("127.0.0.1/32",),
                                            auth_method="scram-sha-256", admin_user=None))
    await eventually(lambda: _hba_addresses_are(pg_node, {"10.1.2.3", "127.0.0.1", "all"}, admin=False),
                     what="hba reload")
    with pytest.raises(PgError, match="rejects connection for host"):
        await pg_node.tcp_client().query("select 1")

    await pg_node.apply(pg_node.role_config(members=("10.1.2.3",), client_cidrs=("10.0.0.0/8",),
                                            auth_method="scram-sha-256", admin_user=None))
    await eventually(lambda: _hba_addresses_are(pg_node, {"10.1.2.3", "10.0.0.0", "all"}, admin=False),
                     what="hba reload")
    with pytest.raises(PgError, match="rejects connection for host"):
        await pg_node.tcp_client().query("select 1")
    assert await health(pg_node.client)  # the private socket always works


async def _hba_addresses_are(node: PgNode, addrs: set[str], admin: bool = True) -> bool:
    rows = await node.psql("select address, database, user_name, auth_method from pg_hba_file_rules"
                           " where address is not null")
    has_admin = any(r["user_name"] == [node.user] and r["database"] == ["all"] and r["auth_method"] != "reject"
                    for r in rows)
    return {r["address"] for r in rows} == addrs and has_admin == admin


# --------------------------------------------------------------------------- primary + standby

ODD_NAME = "tcp://o'brien \"x\"@127.0.0.1:5432/postgres"  # needs every kind of quoting


async def test_primary_and_sync_standby(pg_node_factory):
    p: PgNode = pg_node_factory("primary")
    s: PgNode = pg_node_factory("standby", port=None)
    await p.init()
    await p.start()
    await p.execute("create table t (id int primary key)")
    await p.execute("insert into t values (1)")

    await s.clone_from(p, application_name=ODD_NAME)
    assert (s.data_dir / "standby.signal").exists()
    await s.start()
    assert await s.client.in_recovery()
    assert await setting(s.client, "default_transaction_read_only") == "on"

    # the primary names its sync by the standby's application_name
    change = await p.apply(p.role_config(sync_standby=ODD_NAME))
    assert change.reload_needed and change.changed == ("synchronous_standby_names",)

    async def sync_row():
        rows = await replication_rows(p.client)
        return rows if rows and rows[0]["sync_state"] == "sync" and rows[0]["state"] == "streaming" else None

    rows = await eventually(sync_row, what="sync standby streaming")
    assert len(rows) == 1 and rows[0]["application_name"] == ODD_NAME
    assert Lsn.parse(rows[0]["flush_lsn"]) <= await wal_position(p.client)
    wr = await wal_receiver(s.client)
    assert wr["status"] == "streaming" and f"host={p.ip}" in wr["conninfo"]

    # writes reach the standby; its wal position follows the primary's
    await p.execute("insert into t select generate_series(2, 1000)")
    target = await wal_position(p.client)
    await eventually(lambda: _caught_up(s, target), what="standby caught up")
    assert await s.psql("select count(*) as n from t") == [{"n": 1000}]
    with pytest.raises(PgError, match="read-only transaction"):
        await s.execute("insert into t values (0)")

    # with the sync gone a commit waits (SyncRep) and returns once it is back; not cancelled
    await s.stop()
    done = asyncio.Event()

    def blocked_commit():
        conn = psycopg2.connect(p.connect_dsn())
        try:
            conn.autocommit = True
            conn.cursor().execute("insert into t values (5000)")
            return list(conn.notices)
        finally:
            conn.close()
            done.set()

    commit = asyncio.create_task(asyncio.to_thread(blocked_commit))

    async def waiting_on_syncrep():
        return await p.psql("select pid from pg_stat_activity where wait_event = 'SyncRep'")

    await eventually(waiting_on_syncrep, what="commit waiting for the sync")
    await asyncio.sleep(0.5)
    assert not done.is_set()
    await s.start()
    notices = await asyncio.wait_for(commit, 20)
    assert not any("canceling" in n for n in notices), notices
    target = await wal_position(p.client)
    await eventually(lambda: _caught_up(s, target), what="standby caught up after restart")
    assert await s.psql("select id from t where id = 5000") == [{"id": 5000}]

    # promote the standby: out of recovery, new timeline, signal file gone
    await p.stop(mode="immediate")
    await s.client.promote(wait=True, timeout=30)
    assert not await s.client.in_recovery()
    assert not (s.data_dir / "standby.signal").exists()
    assert await timeline(s.client) == 2
    # still read-only (standby config) until its primary config is written: then a reload suffices
    change = await s.apply(s.role_config(application_name=ODD_NAME))
    assert change.reload_needed and not change.restart_needed, change
    await eventually(lambda: _setting_is(s, "default_transaction_read_only", "off"), what="read-write")
    await s.execute("insert into t values (6000)")
    await s.stop()
    cd = await controldata(s.data_dir)
    assert controldata_timeline(cd) == 2
    assert cd["Database cluster state"] == "shut down"


async def _caught_up(node: PgNode, target: Lsn) -> bool:
    return (await wal_position(node.client)) >= target


async def test_query_timeout_abandons_the_blocked_thread(pg_node: PgNode):
    """A query past its deadline raises PgError at the deadline, and its thread ends too."""
    import threading

    def pg_threads():
        return [t for t in threading.enumerate() if t.name == "pg-query"]

    t0 = time.monotonic()
    with pytest.raises(PgError, match="timed out after 1.0s"):
        await pg_node.client.query("select pg_sleep(30)", timeout=1.0)
    assert time.monotonic() - t0 < 2.5
    deadline = time.monotonic() + 3
    while pg_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pg_threads() == []
    assert await health(pg_node.client)
