"""Issue 8's primary-side rule for a sync that heartbeats but does not flush, on a real shard.

The fault: SIGSTOP of the sync's walreceiver alone. Its sitter and the rest of its PostgreSQL
run on: its status query answers, pg_stat_wal_receiver still says "streaming", so it keeps
heartbeating the primary — but its flush position never moves again, and every commit waits
for it. Before the rule nothing replaced such a sync (the writes stopped for as long as the
fault lasted); now the primary replaces it by the async once it has left the primary's WAL
unflushed, without advancing, for primaryStartTimeout (T = 4 s: 8 s), read-only first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from manatee_testbed.grayfaults.pgfaults import pg_pids
from manatee_testbed.proctable import cmdline
from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, longest_ack_gap, names, say

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(400)]

SESSION_MS = 4000
STALL_BOUND_S = 8.0  # primaryStartTimeout's default at T = 4 s (2 x T); above healthChkTimeout + expirationTime
LOADED_SLACK_S = 6.0  # this shared 2-core machine

SHARD = SharedShard("grayrules", SESSION_MS)


def _walreceivers(sh: Shard, name: str) -> list[int]:
    return [p for p in pg_pids(sh.sb.st.node(name)) if "walreceiver" in (cmdline(p) or "")]


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def test_sync_that_heartbeats_but_does_not_flush_is_replaced_by_the_async(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("stall", commit_timeout=3.0).start()
    stopped: list[int] = []
    try:
        w.wait_for_acks(30, 60)
        stopped = _walreceivers(sh, s)
        assert stopped, f"no walreceiver found on the sync {s}"
        t0 = time.monotonic()
        _signal(stopped, signal.SIGSTOP)
        say(f"stall: walreceiver {stopped} of the sync {s} stopped; primary {p}, async {a}")
        sh.wait(lambda: sh.topology()["sync"] == a, STALL_BOUND_S + sh.session_s + LOADED_SLACK_S + 10,
                f"the primary {p} to name the async {a} its sync")
        t_new = time.monotonic() - t0
        w.wait_for_acks(10, 60)  # writes go on with the new sync, the old one still stuck
        t1 = time.monotonic()
        _signal(stopped, signal.SIGCONT)
        stopped = []
        sh.wait_healthy(150)
        w.wait_for_acks(20, 60)
        t2 = time.monotonic()
    finally:
        w.stop()
        _signal(stopped, signal.SIGCONT)
    gap = longest_ack_gap(w, t0, t2)
    log = sh.sitter_log(sh.node(p))
    say(f"stall outage: {gap:.1f} s (sync replaced after {t_new:.1f} s; fault held {t1 - t0:.0f} s); "
        f"chain now {sh.topology()}")
    assert "still heartbeats but has not flushed my WAL" in log, "the primary's decision does not say why"
    assert sh.topology()["primary"] == p and not sh.leaders_after(gen0), "a failover for a stuck sync"
    assert gap <= STALL_BOUND_S + sh.session_s + 2 + LOADED_SLACK_S, f"writes stopped for {gap:.1f}s"
    assert not sh.safe_mode()
    sh.assert_checks(w, prev)
