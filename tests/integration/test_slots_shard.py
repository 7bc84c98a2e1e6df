"""Real shard: the replication slot an upstream keeps for its downstream (issue 11).

With wal_keep_size 0 (postgresMgrCfg.parameters), the async is stopped while the primary
writes and switches WAL segments and both upstreams checkpoint: without a slot the sync would
recycle the segments the async still needs and the async could only come back by a rebuild.
Its slot on the sync holds them (the slot gauge shows it), and the restarted async streams
again without a restore."""

from __future__ import annotations

import subprocess
import time

import psycopg2
import pytest

from manatee.core.slotname import slot_name
from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say
from tests.shard_ops import adm, set_pg_parameters

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(400)]

SEGMENT = 16 << 20


SHARD = SharedShard("slots", 4000)


def _sql(sh: Shard, node, sql: str, *, fetch: bool = True):
    with psycopg2.connect(sh.dsn(node), connect_timeout=3) as c:
        c.autocommit = True
        with c.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if fetch else None


def _slot(sh: Shard, node, name: str) -> tuple | None:
    rows = _sql(sh, node, "select active, wal_status from pg_replication_slots where slot_name = '%s'" % name)
    return rows[0] if rows else None


def _retained_gauge(node, name: str) -> float | None:
    text = subprocess.run(["curl", "-s", f"{node.status_url}/metrics"], capture_output=True, text=True,
                          timeout=10).stdout
    for ln in text.splitlines():
        if ln.startswith("manatee_replication_slot_retained_bytes{") and f'slot="{name}"' in ln:
            return float(ln.rsplit(" ", 1)[1])
    return None


def test_stopped_async_streams_again_without_rebuild_thanks_to_its_slot(shard: Shard):
    sh = shard
    p, s, a = (sh.node(x) for x in names(sh.topology()))
    a_slot, s_slot = slot_name(a.pg_url), slot_name(s.pg_url)
    # each upstream keeps its downstream's slot, in use
    sh.wait(lambda: _slot(sh, p, s_slot) == (True, "reserved"), 30, f"{s_slot} active on the primary")
    sh.wait(lambda: _slot(sh, s, a_slot) == (True, "reserved"), 30, f"{a_slot} active on the sync")
    assert _sql(sh, a, "show primary_slot_name") == [(a_slot,)]
    restores_before = sh.sitter_log(a).count("restore_starting")
    try:
        set_pg_parameters(sh, {"wal_keep_size": "0"})
        assert adm(sh, "reload").returncode == 0
        assert all(_sql(sh, n, "show wal_keep_size") == [("0",)] for n in sh.nodes)

        t0 = time.monotonic()
        sh.sb.stop(a.name)
        _sql(sh, p, "create table slot_t (i int, pad text)", fetch=False)
        for batch in range(6):  # ~6 segments of WAL the async has not seen, each switched out
            _sql(sh, p, f"insert into slot_t select {batch}, repeat('x', 900) from generate_series(1, 12000)",
                 fetch=False)
            _sql(sh, p, "select pg_switch_wal()")
        for n in (p, s):  # a checkpoint (restartpoint on the sync) removes what nothing keeps
            _sql(sh, n, "checkpoint", fetch=False)
        want = _sql(sh, p, "select count(*) from slot_t")[0][0]
        sh.wait(lambda: _sql(sh, s, "select count(*) from slot_t")[0][0] == want, 30, "the sync caught up")
        _sql(sh, s, "checkpoint", fetch=False)
        held = _slot(sh, s, a_slot)
        assert held is not None and held[0] is False and held[1] != "lost", held
        retained = sh.wait(lambda: (_retained_gauge(s, a_slot) or 0) >= 4 * SEGMENT and _retained_gauge(s, a_slot),
                           20, "the slot gauge showing the WAL held for the stopped async")
        say(f"async stopped {time.monotonic() - t0:.1f}s; its slot on the sync holds {retained / 2**20:.0f} MiB")

        sh.sb.start(a.name)
        t1 = time.monotonic()
        sh.wait(lambda: sh.streaming(a), 90, "the async streaming again")
        sh.wait(lambda: _sql(sh, a, "select count(*) from slot_t")[0][0] == want, 30, "the async caught up")
        say(f"async streaming and caught up {time.monotonic() - t1:.1f}s after its restart")
        assert sh.sitter_log(a).count("restore_starting") == restores_before, "the async was rebuilt"
        assert _slot(sh, s, a_slot) == (True, "reserved")
    finally:
        set_pg_parameters(sh, {})
        adm(sh, "reload")
        _sql(sh, p, "drop table if exists slot_t", fetch=False)


def test_async_whose_wal_is_gone_upstream_rebuilds_itself(shard: Shard):
    """Past max_slot_wal_keep_size PostgreSQL marks the slot lost and the sitter drops it (here:
    dropped by hand while the async is stopped, the same end). The sync then recycles the WAL
    the async needs next, and the restarted async's walreceiver is refused every second
    ("requested WAL segment ... has already been removed"). Its sitter reads that and
    rebuilds the node from the sync by itself: before, it stayed out of the chain for good."""
    sh = shard
    p, s, a = (sh.node(x) for x in names(sh.topology()))
    a_slot = slot_name(a.pg_url)
    sh.wait(lambda: _slot(sh, s, a_slot) == (True, "reserved"), 30, f"{a_slot} active on the sync")
    before = sh.sitter_log(a)
    starts_before, done_before = before.count("restore_starting"), before.count("restore_done")
    try:
        set_pg_parameters(sh, {"wal_keep_size": "0"})
        assert adm(sh, "reload").returncode == 0
        sh.sb.stop(a.name)
        sh.wait(lambda: _slot(sh, s, a_slot) is not None and _slot(sh, s, a_slot)[0] is False, 30,
                "the async's slot inactive")
        _sql(sh, s, f"select pg_drop_replication_slot('{a_slot}')")
        _sql(sh, p, "create table gone_t (i int, pad text)", fetch=False)
        for batch in range(6):
            _sql(sh, p, f"insert into gone_t select {batch}, repeat('x', 900) from generate_series(1, 12000)",
                 fetch=False)
            _sql(sh, p, "select pg_switch_wal()")
        want = _sql(sh, p, "select count(*) from gone_t")[0][0]
        sh.wait(lambda: _sql(sh, s, "select count(*) from gone_t")[0][0] == want, 30, "the sync caught up")
        for n in (p, s):
            _sql(sh, n, "checkpoint", fetch=False)
        assert _slot(sh, s, a_slot) is None, "the sync re-created the stopped async's slot"

        sh.sb.start(a.name)
        t1 = time.monotonic()
        sh.wait(lambda: sh.sitter_log(a).count("restore_done") > done_before
                and sh.sitter_log(a).count("restore_starting") > starts_before, 90, "the async rebuilding itself")
        sh.wait(lambda: sh.streaming(a), 90, "the async streaming again")
        sh.wait(lambda: _sql(sh, a, "select count(*) from gone_t")[0][0] == want, 30, "the async caught up")
        log = sh.sitter_log(a)
        assert "is no longer kept on" in log and "rule=async.rebuild" in log, "the decision did not say why"
        assert "pg_rewind has nothing to rewind" in log
        path = [ln for ln in log.splitlines() if "restore_done" in ln and "path=" in ln][-1]
        say(f"async rebuilt and caught up {time.monotonic() - t1:.1f}s after its restart: "
            f"{path[path.find('bytes='):][:160]}")
        sh.wait(lambda: _slot(sh, s, a_slot) == (True, "reserved"), 30, "the async's slot back on the sync")
    finally:
        set_pg_parameters(sh, {})
        adm(sh, "reload")
        _sql(sh, p, "drop table if exists gone_t", fetch=False)


def test_the_slot_of_an_async_that_left_goes_when_it_is_reaped(shard: Shard):
    """An async that left (its sitter stopped) keeps its slot on the sync, for its return; once
    an operator reaps it (manatee-adm reap --node), the sync's sitter drops that slot (it reads
    the history's reaped addresses while it keeps such a slot). Started again, the node is a
    newcomer and streams through a new slot."""
    sh = shard
    p, s, a = (sh.node(x) for x in names(sh.topology()))
    a_slot = slot_name(a.pg_url)
    sh.wait(lambda: _slot(sh, s, a_slot) == (True, "reserved"), 30, f"{a_slot} active on the sync")
    log_from = len(sh.sitter_log(s))
    started = False
    sh.sb.stop(a.name)
    try:
        sh.wait(lambda: (st := sh.zk_state()) is not None and a.ip not in {x["ip"] for x in st.get("async", [])},
                30, "the async out of the state")
        time.sleep(3)  # several of the sync's cycles: a slot of a node that left is kept
        assert _slot(sh, s, a_slot) == (False, "reserved"), "the sync dropped the slot of an async merely stopped"
        r = adm(sh, "reap", "--node", a.ip)
        assert r.returncode == 0 and "drops the replication slot" in r.stdout, (r.stdout, r.stderr)
        t0 = time.monotonic()
        sh.wait(lambda: _slot(sh, s, a_slot) is None, 30, f"the sync to drop {a_slot}")
        say(f"the reaped async's slot dropped by the sync {time.monotonic() - t0:.1f}s after the reap")
        dropped = [ln for ln in sh.sitter_log(s)[log_from:].splitlines() if "replication_slot_dropped" in ln]
        assert dropped and a_slot in dropped[-1], dropped
        assert _slot(sh, p, slot_name(s.pg_url)) == (True, "reserved"), "a member's slot was touched"
        sh.sb.start(a.name)
        started = True
        sh.wait(lambda: sh.streaming(a), 90, "the reaped async streaming again, as a newcomer")
        sh.wait(lambda: _slot(sh, s, a_slot) == (True, "reserved"), 30, "its slot back on the sync")
    finally:
        if not started:
            sh.sb.start(a.name)
