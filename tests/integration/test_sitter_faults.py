"""ACCEPTANCE F1, F2, F3, F4, F5, F12, F14 on a real shard (manatee-sandbox: ZooKeeper,
zfs-fuse, three nodes of sitter + snapshotter + backupserver, PostgreSQL 15).

Each test runs a RecordingWriter while it breaks the shard; the writer finds the primary
the way a client would (the sitter whose /primary answers 200) and records every COMMIT
that returned success. After the fault and the recovery the test checks, on the data:
S2 (every acked id on the final primary), S4 (every standby's rows a subset of the
primary's, same payloads), S1 (the nodes that executed the writes form non-interleaving
tenures, in the order of the history's AssumeLeader records), S5 where it is reliably
observable; S3 (the new primary was the previous primary or sync, against the ZooKeeper
state before the fault); S7 (history from ZooKeeper: one primary per generation, and an
AssumeLeader for a newly promoted primary).

F1/F3/F4/F5/F12/F14 share one shard (module scope): each test starts from a healthy
primary + sync + async (restarting what an earlier test left down). F2 needs a longer
session timeout, so it brings up its own shard, first, before the shared one exists
(two shards at once are too much for two cores).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from itertools import permutations

import pytest

from tests.shard_fixture import (NEEDS_SHARD, Shard, SharedShard, acks_on, first_ack_on, names, say,
                                 wall_to_mono)
from tests.shard_ops import FAILOVER_SLACK_S, f1_primary_host_death, zfs

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]

SESSION_MS = 5000
F2_SESSION_MS = 10000
F2_BOUND_S = 5.0


SHARD = SharedShard("faults", SESSION_MS, retire=True)  # F14 leaves a fourth node


def _history_after(sh: Shard, gen: int, action: str = "AssumeLeader") -> list[dict]:
    return [r for r in sh.history()
            if r["action"] == action and isinstance(r.get("generation"), int) and r["generation"] > gen]


# ---------------------------------------------------------------------------------- F2
def test_f2_graceful_stop_of_primary_sitter_fails_over_before_session_expiry(zfs_fuse, tmp_path):
    sh = Shard(tmp_path, session_timeout_ms=F2_SESSION_MS)
    w = None
    try:
        sh.up()
        prev = sh.zk_state()
        p, s, a = names(sh.topology())
        w = sh.writer("f2").start()
        w.wait_for_acks(30, 60)

        sitter_pid = sh.node(p).pids["sitter"]
        t0 = time.monotonic()
        os.kill(sitter_pid, signal.SIGTERM)
        say(f"F2: SIGTERM to {p}'s sitter (pid {sitter_pid}); sync {s}")
        # wait well past the bound, so that a failure says how long it really took
        first = sh.wait(lambda: first_ack_on(w, sh.node(s), t0), sh.session_s + FAILOVER_SLACK_S,
                        f"a committed write on the sync {s} after SIGTERM of {p}'s sitter")
        took = first - t0
        gap = max((o.gap or 0.0) for o in w.outages() if o.start >= t0 - 1) if w.outages() else 0.0
        say(f"F2: first commit on {s} {took:.2f}s after SIGTERM (session timeout {sh.session_s:.0f}s); "
             f"write gap {gap:.2f}s")
        assert took < F2_BOUND_S, (f"F2: graceful stop took {took:.2f}s to a writable new primary (bound "
                                   f"{F2_BOUND_S}s, session timeout {sh.session_s}s): the sync waited for "
                                   f"session expiry?\n{sh.describe()}")

        sh.wait(lambda: sh.topology()["sync"] == a, 60, f"the async {a} to become sync")
        w.wait_for_acks(20, 60)
        sh.sb.start(p)  # only its sitter is down: snapshotter and backupserver kept running
        sh.wait(lambda: sh.rejoined_at_tail(p), 120, f"old primary {p} to rejoin as async and stream")
        w.wait_for_acks(20, 60)
        w.stop()
        sh.assert_checks(w, prev, expect_leader=s, since_gen=prev["generation"])
    finally:
        if w is not None:
            w.stop()
        problems = sh.down()
    assert not problems, f"down left things behind: {problems}"


# ---------------------------------------------------------------------------------- F1
def test_f1_primary_host_death_sync_promoted_old_primary_rejoins(shard: Shard):
    f1_primary_host_death(shard)


# ---------------------------------------------------------------------------------- F3
def test_f3_sync_death_async_becomes_sync_old_sync_rejoins(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("f3").start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        sh.sb.kill(s)
        say(f"F3: killed the sync {s}; primary {p}, async {a}")
        sh.wait(lambda: sh.topology()["sync"] == a, sh.session_s + 60, f"the async {a} to become sync")
        first = sh.wait(lambda: first_ack_on(w, sh.node(p), t0 + 0.5), 90,
                        f"writes to resume on {p} with the new sync {a}")
        say(f"F3: {a} is sync; first commit after the kill {first - t0:.2f}s after it")
        assert sh.topology()["primary"] == p, "F3: the primary changed although only the sync died"

        # S5: between the sync's death and the primary naming its new sync, no standby was
        # connected to the primary (the async streamed from the dead sync): nothing may have
        # been acknowledged then. The primary's NewStandby record dates the new sync.
        rec = sh.wait(lambda: [r for r in sh.history() if r["action"] == "NewStandby" and r["ip"] == sh.node(p).ip
                               and r["slave"] == sh.node(a).ip and (r.get("generation") or 0) >= gen0
                               and wall_to_mono(r["time"]) > t0 - 1],
                      30, f"the primary's NewStandby record for {a}")
        t_new = wall_to_mono(rec[0]["time"])
        unsynced = [x for x in acks_on(w, sh.node(p), t0 + 0.5) if x < t_new - 0.2]
        assert not unsynced, (f"S5: {len(unsynced)} commit(s) acknowledged by {p} between the sync's death "
                              f"and the new sync ({t_new - t0:.2f}s after the kill): first "
                              f"{unsynced[0] - t0:.2f}s after the kill")

        sh.sb.start(s)
        sh.wait(lambda: sh.rejoined_at_tail(s), 150, f"old sync {s} to rejoin at the tail and stream")
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    sh.assert_checks(w, prev)
    assert not _history_after(sh, gen0), "F3: a new primary was assumed although the primary lived"


# ---------------------------------------------------------------------------------- F4
def test_f4_async_death_never_blocks_the_primary(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    w = sh.writer("f4").start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        sh.sb.kill(a)
        say(f"F4: killed the async {a}; primary {p}, sync {s}")
        sh.wait(lambda: a not in sh.topology()["async"], sh.session_s + 60, f"the async {a} dropped from the chain")
        w.wait_for_acks(50, 60)
        sh.sb.start(a)
        sh.wait(lambda: sh.rejoined_at_tail(a), 150, f"{a} to rejoin at the tail and stream")
        w.wait_for_acks(30, 60)
        t1 = time.monotonic()
    finally:
        w.stop()
    outs = [o for o in w.outages() if o.start >= t0 - 0.5 and o.start <= t1]
    failed = [x for x in w.attempts() if x.outcome != "acked" and t0 <= x.started <= t1]
    ok = sorted(x.finished for x in w.attempts() if x.outcome == "acked" and t0 - 1 <= x.finished <= t1)
    gap = max((b - a_ for a_, b in zip(ok, ok[1:])), default=0.0)
    longest = max((o.duration() for o in outs), default=0.0)
    say(f"F4: from the kill to the rejoin: {len(ok)} commits, {len(failed)} failed, longest outage "
         f"{longest:.2f}s, longest gap between commits {gap:.2f}s")
    assert longest <= 1.0, f"F4: the primary blocked: writer outage {longest:.2f}s: {outs}"
    assert not failed, f"F4: {len(failed)} commit(s) failed while only the async was down: {failed[:3]}"
    assert sh.topology()["primary"] == p and sh.topology()["sync"] == s
    sh.assert_checks(w, prev)


# ---------------------------------------------------------------------------------- F5
def test_f5_postgres_killed_on_primary_restarted_or_failed_over(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("f5").start()
    try:
        w.wait_for_acks(30, 60)
        pm = sh.postmaster(sh.node(p))
        assert pm, f"no postmaster found for {p}"
        t0 = time.monotonic()
        os.kill(pm, signal.SIGKILL)
        say(f"F5: SIGKILL to {p}'s postmaster (pid {pm})")
        first = sh.wait(lambda: w.first_ack_after(t0 + 0.5), sh.session_s + 90, "writes to resume")
        new_p = sh.topology()["primary"]
        say(f"F5: writes resume {first - t0:.2f}s after the kill, primary now {new_p} "
             f"({'restarted' if new_p == p else 'failed over'})")
        assert sh.postmaster(sh.node(p)) != pm
        sh.ensure_healthy()
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    new_p = sh.topology()["primary"]
    sh.assert_checks(w, prev, expect_leader=None if new_p == p else new_p, since_gen=gen0)


# ---------------------------------------------------------------------------------- F12
class _PrimaryWatch:
    """Polls every node's /primary while nodes restart: who ever answered 200."""

    def __init__(self, sh: Shard):
        self.sh, self.seen = sh, {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for n in self.sh.nodes:
                if self.sh.writable(n):
                    self.seen.setdefault(n.name, time.monotonic())
            self._stop.wait(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)


def test_f12_all_nodes_restart_in_every_order_async_never_leads(shard: Shard):
    sh = shard
    results = []
    for order in permutations(["primary", "sync", "async"]):
        sh.ensure_healthy()
        prev = sh.zk_state()
        gen0 = prev["generation"]
        p, s, a = names(sh.topology())
        by_role = {"primary": p, "sync": s, "async": a}
        start_order = [by_role[r] for r in order]
        w = sh.writer("f12").start()
        t_start = time.monotonic()
        try:
            w.wait_for_acks(20, 60)
            # all at once: freeze every process of every node, then SIGKILL them
            for n in (p, s, a):
                sh.sb.hang(n)
            for n in (p, s, a):
                sh.sb.kill(n)
            say(f"F12: killed all; restarting {' then '.join(f'{n} ({r})' for n, r in zip(start_order, order))}")
            with _PrimaryWatch(sh) as watch:
                for i, n in enumerate(start_order):
                    sh.sb.start(n)
                    node = sh.node(n)
                    sh.wait(lambda: (st := sh.state_of(node)) and st.get("id") in (st.get("election") or []),
                            60, f"{n} to join the election")
                    if i == 0:
                        # the first one really alone: the killed nodes' election znodes gone
                        # (session expiry), as when one host of a shard boots long before the rest
                        sh.wait(lambda: (st := sh.state_of(node)) and st.get("election") == [st.get("id")],
                                sh.session_s + 30, f"{n} alone in the election")
                    time.sleep(1.0)  # let it act on what it sees before the next one comes
                sh.wait_healthy(240)
                w.wait_for_acks(20, 90)
            new_p = sh.topology()["primary"]
        finally:
            w.stop()
        took = time.monotonic() - t_start
        say(f"F12 order {order}: leader {new_p} (was primary {p}, sync {s}, async {a}); "
             f"ever writable: {sorted(watch.seen)}; {took:.0f}s")
        results.append((order, new_p, took))
        assert new_p in (p, s), f"F12 {order}: {new_p} leads but was the async (primary {p}, sync {s})"
        assert a not in watch.seen, f"F12 {order}: the async {a} answered /primary 200 during the restart"
        wrong = [r for r in _history_after(sh, gen0) if r["ip"] == sh.node(a).ip]
        assert not wrong, f"F12 {order}: the async {a} assumed leadership: {wrong}"
        sh.assert_checks(w, prev, expect_leader=None if new_p == p else new_p, since_gen=gen0)
    say("F12: " + "; ".join(f"{'/'.join(o)} -> {n} ({t:.0f}s)" for o, n, t in results))


def _memory(node) -> dict:
    """The node's manatee:state-memory (what its dataset says it belongs to and streamed from)."""
    value = zfs("get", "-H", "-o", "value", "manatee:state-memory", node.dataset).strip()
    return json.loads(value) if value not in ("", "-") else {}


def test_f12_all_nodes_restart_and_the_primary_never_returns_the_sync_takes_over(shard: Shard):
    """A site-wide restart after which the primary's host does not come back: the sync, whose
    dataset says it streamed from this generation's primary, holds every acknowledged write on
    its disk and takes over without streaming again (until 2026-12-06 the shard waited for the
    primary for ever: the design's documented limit)."""
    sh = shard
    sh.ensure_healthy()
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("f12-gone").start()
    try:
        w.wait_for_acks(30, 60)
        sh.wait(lambda: _memory(sh.node(s)).get("streamed") == prev["primary"]["id"]
                and _memory(sh.node(s)).get("generation") == gen0, 30,
                f"the sync {s}'s dataset to say it streamed from {p} in generation {gen0}")
        for n in (p, s, a):
            sh.sb.hang(n)
        for n in (p, s, a):
            sh.sb.kill(n)
        t0 = time.monotonic()
        say(f"F12: killed all; restarting the sync {s} and the async {a}; the primary {p} stays down")
        sh.sb.start(s)
        sh.sb.start(a)
        first = sh.wait(lambda: first_ack_on(w, sh.node(s), t0), 120, f"a committed write on the sync {s}")
        say(f"F12: the sync {s} took writes {first - t0:.1f}s after the restart began, {p} still down")
        assert sh.zk_state()["primary"]["id"] != prev["primary"]["id"]
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    sh.sb.start(p)
    sh.wait_healthy(240)
    sh.assert_checks(w, prev, expect_leader=s, since_gen=gen0)


# ---------------------------------------------------------------------------------- F14
def test_f14_fourth_node_bootstrapped_by_zfs_and_appended(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    w = sh.writer("f14").start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        d = sh.add_node()
        say(f"F14: added node {d.name} ({d.ip}); chain {p} -> {s} -> {a}")
        sh.wait(lambda: sh.rejoined_at_tail(d.name), 240, f"the new node {d.name} appended as async and streaming")
        say(f"F14: {d.name} streams {time.monotonic() - t0:.1f}s after it was started")
        top = sh.topology()
        assert top["async"] == [a, d.name], f"F14: chain is {top}"
        st = sh.state_of(d)
        assert st["restore"] and st["restore"].get("phase") == "done", f"F14: restore: {st['restore']}"
        assert st["restore"]["source"] == f"http://{sh.node(a).ip}:{sh.node(a).backup_port}", \
            f"F14: restored from {st['restore']['source']}, not from its leader {a}"
        log = sh.sitter_log(d)
        assert "restore_done" in log, f"F14: no restore_done in {d.log_path('sitter')}"
        w.wait_for_acks(30, 60)
    finally:
        w.stop()
    sh.assert_checks(w, prev)
