"""RecordingWriter against a real PostgreSQL: crashes, hangs, blocked and cancelled sync waits."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import pytest

from manatee_testbed.checks import check_data, fetch_ids, fetch_rows, missing_acked, two_writers, unconfirmed_commits
from manatee_testbed.postgres import signal_all
from manatee_testbed.writer import RecordingWriter
from manatee_testbed.writer_record import ACKED, FAILED, WARNED

TABLE = "writes_test"


async def wait_until(pred, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)


def assert_ids_strictly_increasing(writer: RecordingWriter) -> None:
    ids = [a.id for a in writer.attempts()]
    assert ids == sorted(set(ids)), "ids reused or out of order"


async def test_kill9_and_restart_loses_no_acked_write(pg_node):
    dsn = pg_node.connect_dsn(tcp=True)
    writer = RecordingWriter(lambda: dsn, table=TABLE, interval=0.005, connect_timeout=1, commit_timeout=2)
    writer.start()
    try:
        await writer.await_acks(30, timeout=10)

        t_kill = time.monotonic()
        await pg_node.kill()
        await wait_until(lambda: writer.stats()["outage_open"], 5, "the writer to notice the crash")
        await asyncio.sleep(1.0)  # some downtime: connects are refused meanwhile
        assert writer.stats()["connect_failures"] >= 1
        t_restart = time.monotonic()
        await pg_node.start()

        await writer.await_acks(30, timeout=15)
    finally:
        t0 = time.monotonic()
        assert await writer.astop()
        assert time.monotonic() - t0 < 1.0

    stats = writer.stats()
    ids = await asyncio.to_thread(fetch_ids, dsn, TABLE)
    assert missing_acked(writer.acked, ids, pg_node.ip) == []
    assert writer.warned == set()
    assert_ids_strictly_increasing(writer)
    # every id the server holds was attempted by the writer; failed ids may or may not be there
    assert set(ids) <= writer.attempted
    assert set(ids) >= writer.acked
    assert all(a.dsn == dsn for a in writer.attempts())

    # exactly one outage, covering the downtime
    (outage,) = writer.outages()
    assert outage.end is not None
    assert outage.start <= t_kill + 0.5
    assert outage.end >= t_restart
    assert outage.last_ack <= outage.start
    assert writer.longest_outage() >= t_restart - t_kill
    first = writer.first_ack_after(t_kill + 0.1)
    assert first is not None and first >= t_restart
    assert writer.longest_ack_gap() >= writer.longest_outage() - 0.1
    assert stats["acked"] >= 60 and stats["outages"] == 1 and not stats["outage_open"]

    # the node column names the server that executed each insert
    rows = await asyncio.to_thread(fetch_rows, dsn, TABLE)
    assert {r.node for r in rows} == {f"{pg_node.ip}:{pg_node.port}"}
    assert two_writers(rows, acked=writer.acked) == []


async def test_stop_is_prompt_while_server_is_hung(pg_node):
    """SIGSTOP: the commit neither fails nor returns; it is abandoned (socket shut down) and
    recorded as failed, and stop() does not wait for the server."""
    dsn = pg_node.connect_dsn(tcp=True)
    writer = RecordingWriter(lambda: dsn, table=TABLE, interval=0.005, connect_timeout=1, commit_timeout=1)
    writer.start()
    stopped = False
    try:
        await writer.await_acks(10, timeout=10)
        signal_all(pg_node.proc, signal.SIGSTOP)
        stopped = True
        await wait_until(lambda: writer.failed, 4, "an abandoned commit")
        (a,) = [a for a in writer.attempts() if a.outcome == FAILED][:1]
        assert "abandoned" in a.error
        assert 0.9 <= a.finished - a.started < 2.0
        t0 = time.monotonic()
        assert writer.stop(timeout=3)
        assert time.monotonic() - t0 < 1.0
        assert writer.stats()["outage_open"]
        assert writer.longest_outage() >= 1.0
    finally:
        writer.stop()
        if stopped:
            signal_all(pg_node.proc, signal.SIGCONT)


async def test_stop_is_prompt_with_nothing_listening():
    """Refused connects count as connect failures; no id is spent on them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when we leave: nothing listens there
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    calls = []

    def find():
        calls.append(time.monotonic())
        return dsn if len(calls) % 2 else None  # and sometimes no primary at all

    writer = RecordingWriter(find, retry_interval=0.02).start()
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    assert await writer.astop()
    assert time.monotonic() - t0 < 0.5
    st = writer.stats()
    assert st["connect_failures"] >= 3 and st["no_primary"] >= 3
    assert st["attempts"] == 0 and st["outages"] == 0  # no outage before a first success
    assert "connect/setup" in st["last_error"] or "no primary" in st["last_error"]
    with pytest.raises(Exception, match="successful commits"):
        writer.wait_for_acks(1, timeout=0.2)


async def test_sync_wait_abandoned_is_failed_and_cancelled_is_warned(pg_node):
    """With a synchronous standby configured but absent, commits block. The writer abandons
    them (failed, never cancelled: no warning in the server log); a cancel from elsewhere
    makes COMMIT succeed with a WARNING, which the writer records as warned, not acked."""
    dsn = pg_node.connect_dsn(tcp=True)
    writer = RecordingWriter(lambda: dsn, table=TABLE, interval=0.005, connect_timeout=1, commit_timeout=1.0)
    writer.start()
    try:
        await writer.await_acks(10, timeout=10)
        await pg_node.execute("alter system set synchronous_standby_names = 'nosuchstandby'")
        await pg_node.execute("select pg_reload_conf()")

        # 1. blocked commits are abandoned after commit_timeout and recorded as failed
        await wait_until(lambda: len(writer.failed) >= 2, 6, "abandoned commits")
        log_text = pg_node.log_file.read_text(errors="replace")
        assert "canceling wait for synchronous replication" not in log_text

        # 2. another session cancels a blocked commit: success with a WARNING → warned
        writer.commit_timeout = None
        before = len(writer.attempts())

        async def blocked_pids():
            # the writer's in-flight commit, and abandoned ones still waiting server-side
            rows = await pg_node.psql("select pid from pg_stat_activity where wait_event = 'SyncRep'")
            return [r["pid"] for r in rows]

        deadline = time.monotonic() + 6
        while not writer.warned:
            assert time.monotonic() < deadline, f"no warned commit: {writer.stats()}"
            if len(writer.attempts()) > before or writer.failed:
                for pid in await blocked_pids():
                    await pg_node.psql("select pg_cancel_backend(%s)", (pid,))
            await asyncio.sleep(0.1)
        (w,) = [a for a in writer.attempts() if a.outcome == WARNED][:1]
        assert any("synchronous replication" in n for n in w.notices), w.notices

        # 3. sync requirement lifted: the writer recovers on its own
        await pg_node.execute("alter system reset synchronous_standby_names")
        await pg_node.execute("select pg_reload_conf()")
        await writer.await_acks(10, timeout=10)
    finally:
        assert await writer.astop()

    ids = set(await asyncio.to_thread(fetch_ids, dsn, TABLE))
    assert missing_acked(writer.acked, ids) == []
    assert writer.warned <= ids  # committed locally
    assert not (writer.warned & writer.acked) and not (writer.failed & writer.acked)
    # released by the reset, the abandoned commits committed too: failed means "unknown", not "absent"
    assert writer.failed & ids
    problems = unconfirmed_commits(writer.warned, pg_node.ip)
    assert len(problems) == 1 and problems[0].startswith("S5:")
    assert {a.outcome for a in writer.attempts()} == {ACKED, WARNED, FAILED}
    assert_ids_strictly_increasing(writer)


async def test_read_only_primary_fails_and_writer_follows_a_new_dsn(pg_node):
    """Read-only errors are failures (retried); a changed answer from find_primary moves the
    writer while it is healthy; the node column tells the two connections apart."""
    tcp = pg_node.connect_dsn(tcp=True)
    unix = pg_node.connect_dsn()
    current = [tcp]
    writer = RecordingWriter(lambda: current[0], table=TABLE, interval=0.005, follow_primary=0.2)
    writer.start()
    try:
        await writer.await_acks(10, timeout=10)
        await pg_node.execute("alter system set default_transaction_read_only = on")
        await pg_node.execute("select pg_reload_conf()")
        await wait_until(lambda: len(writer.failed) >= 2, 5, "read-only failures")
        errors = [a.error for a in writer.attempts() if a.outcome == FAILED]
        assert all("read-only transaction" in e for e in errors), errors
        await pg_node.execute("alter system reset default_transaction_read_only")
        await pg_node.execute("select pg_reload_conf()")
        await writer.await_acks(5, timeout=10)

        current[0] = unix
        await wait_until(
            lambda: any(a.dsn == unix and a.outcome == ACKED for a in writer.attempts()), 5, "writes over the new dsn"
        )
    finally:
        assert await writer.astop()

    assert len(writer.outages()) == 1 and writer.outages()[0].failures >= 2
    dsns = [a.dsn for a in writer.attempts()]
    switch = dsns.index(unix)
    assert set(dsns[:switch]) == {tcp} and set(dsns[switch:]) == {unix}
    rows = await asyncio.to_thread(fetch_rows, tcp, TABLE)
    assert missing_acked(writer.acked, [r.id for r in rows]) == []
    by_id = {r.id: r.node for r in rows}
    assert by_id[writer.attempts()[0].id] == f"{pg_node.ip}:{pg_node.port}"
    last_acked = max(writer.acked)
    assert by_id[last_acked] == f"local:{pg_node.port}"
    assert two_writers(rows, acked=writer.acked) == []  # one switch: tcp run, then unix run

    # check_data glues fetching and checking: clean here, and it does report problems
    primary = (pg_node.ip, tcp)
    assert await asyncio.to_thread(check_data, writer.acked, primary, {"same-node": unix}, table=TABLE) == []
    bad = await asyncio.to_thread(
        check_data, writer.acked | {10**9}, primary, {"same-node": unix}, table=TABLE, warned={last_acked}
    )
    assert [p[:3] for p in bad] == ["S2:", "S5:"], bad
    assert await asyncio.to_thread(fetch_rows, tcp, "no_such_table") == []
