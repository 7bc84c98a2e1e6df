"""A standby's WAL replay paused by hand, on real PostgreSQL 15 (manatee/sitter/replaypause.py).

Sandbox trial 2026-12-06: `select pg_wal_replay_pause()` on the sync; commits went on (it
still flushed), `show` and `verify` said "ok" for 20 s while its replay stood still. The
sitter's status now reads the pause, and its guard resumes a sync's replay (an async's is
the operator's: left paused, reported)."""

from __future__ import annotations

import time

from manatee.core.lsn import Lsn
from manatee.sitter.replaypause import ReplayGuard
from manatee_testbed.postgres import PgNode
from tests.async_wait import eventually
from tests.fixtures_pg import pg_manager_for, primary_and_standby
from tests.pgmanager_fakes import RecordingLog


class _Clock:
    monotonic = staticmethod(time.monotonic)


async def _replay_lsn(s: PgNode) -> Lsn:
    return Lsn.parse((await s.psql("select pg_last_wal_replay_lsn()::text as l"))[0]["l"])


async def _paused(s: PgNode) -> bool:
    return bool((await s.psql("select pg_is_wal_replay_paused() as p"))[0]["p"])


async def test_a_paused_replay_is_seen_left_on_an_async_and_resumed_on_the_sync(pg_node_factory):
    p, s = await primary_and_standby(pg_node_factory, "create table t (id int primary key)")
    await s.psql("select pg_wal_replay_pause()")
    await eventually(lambda: _paused(s), what="the standby's replay paused")
    await p.execute("insert into t select generate_series(1, 1000)")
    primary_wal = Lsn.parse((await p.psql("select pg_current_wal_lsn()::text as l"))[0]["l"])
    pm_s, pm_p = pg_manager_for(s), pg_manager_for(p)
    try:
        st = await pm_s.status()
        assert st.known and st.in_recovery and st.replay_paused is True, st
        assert (await pm_p.status()).replay_paused is False
        stood = await _replay_lsn(s)
        assert stood < primary_wal  # it received the insert but does not replay it

        log = RecordingLog()
        guard = ReplayGuard(log, _Clock())
        await guard.check(pm_s.client, st.replay_paused, "async", False, 5.0)
        assert await _paused(s) and [ev for _, ev, _ in log.lines] == ["pg_replay_paused"]
        await guard.check(pm_s.client, st.replay_paused, "sync", True, 5.0)  # frozen: left too
        assert await _paused(s)

        await guard.check(pm_s.client, st.replay_paused, "sync", False, 5.0)
        assert [ev for _, ev, _ in log.lines] == ["pg_replay_paused", "pg_replay_resumed"], log.lines

        async def caught_up():
            return await _replay_lsn(s) >= primary_wal
        await eventually(caught_up, what="the standby replaying the insert once resumed")
        assert (await pm_s.status()).replay_paused is False
        assert (await s.psql("select count(*) as n from t"))[0]["n"] == 1000
    finally:
        pm_s.client.close()
        pm_p.client.close()
