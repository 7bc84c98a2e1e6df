"""ACCEPTANCE F6, F7, F8, F9 on a real shard: a hung primary, and network partitions of
the primary, the sync and the async (nftables packet drops from ZooKeeper and the peers).

Each test runs a RecordingWriter (it follows the sitters' /primary, as a client would)
through the fault and the recovery, then checks S1–S5/S7 on the data (Shard.assert_checks,
with the ZooKeeper state from before the fault for S3). It prints the longest write
outage it measured (longest gap between two acknowledged commits) for the docs.

F6 and F7 also run a "rogue" client pinned to the old primary's address (it does not
ask /primary): the test process is not cut off from any node, so clients can still
reach a partitioned or resumed old primary. S1 demands that none of its commits is
acknowledged once the fault began: a commit there can only return success if the old
primary stopped waiting for its (promoted) sync.

All tests share one shard (module scope); each starts from a healthy primary + sync +
async (restarting what an earlier test left down, healing what it left partitioned).
"""

from __future__ import annotations

import time

import pytest

from manatee_testbed.writer import RecordingWriter
from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, acks_on, first_ack_on, names, say
from tests.shard_ops import logs_kept, standby_streaming, undo_faults

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]

SESSION_MS = 5000
#: Failover must finish within session timeout + this (loaded shared cores: generous;
#: the measured figure is printed).
FAILOVER_SLACK_S = 25
#: How long a fault lasts past the session timeout before it is cleared.
PAST_EXPIRY_S = 4.0
#: The writer abandons a commit after this long (a commit to a hung or cut-off primary
#: never returns), so that it moves on to the new primary soon after the failover.
COMMIT_TIMEOUT_S = 3.0
REJOIN_S = 180


SHARD = SharedShard("hard", SESSION_MS, undo=undo_faults, before_down=logs_kept)


def _gap(w: RecordingWriter, t0: float, t1: float) -> float:
    """The longest time between consecutive acknowledged commits around [t0, t1]."""
    ok = sorted(a.finished for a in w.attempts() if a.outcome == "acked" and t0 - 2 <= a.finished <= t1)
    return max((b - a for a, b in zip(ok, ok[1:])), default=0.0)


def _rogue(sh: Shard, name: str, w: RecordingWriter) -> RecordingWriter:
    """A client pinned to `name` (never asks /primary), writing far above the main
    writer's ids into its table, so that any row it leaves is seen by the checks."""
    dsn = sh.dsn(sh.node(name))
    return RecordingWriter(lambda: dsn, name=f"rogue-{name}", table=w.table, interval=0.05,
                           commit_timeout=COMMIT_TIMEOUT_S, connect_timeout=1.0, follow_primary=None,
                           start_id=10**9)


def _assert_no_rogue_acks(rogue: RecordingWriter, name: str, since: float) -> None:
    ok = [a for a in rogue.attempts() if a.outcome != "failed" and a.finished >= since]
    assert not ok, (f"S1: the old primary {name} acknowledged {len(ok)} commit(s) from a client pinned to "
                    f"it after the fault began: {ok[:3]}; rogue: {rogue.stats()}")


def _assert_old_primary_silent(w: RecordingWriter, sh: Shard, old: str, since: float) -> None:
    late = acks_on(w, sh.node(old), since)
    assert not late, (f"S1: the writer had {len(late)} commit(s) acknowledged by the old primary {old} "
                      f"after the new primary took writes (first {late[0] - since:.2f}s after)")


def _outage_line(fault: str, gap: float, sh: Shard, extra: str = "") -> None:
    say(f"{fault} outage: {gap:.1f} s (session timeout {sh.session_s:.0f} s){extra}")


# ---------------------------------------------------------------------------------- F6
def test_f6_hung_primary_fails_over_and_resumed_node_never_commits(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("f6", commit_timeout=COMMIT_TIMEOUT_S).start()
    rogue = _rogue(sh, p, w)
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        sh.sb.hang(p)
        say(f"F6: SIGSTOP every process of the primary {p}; sync {s}, async {a}")
        first = sh.wait(lambda: first_ack_on(w, sh.node(s), t0), sh.session_s + FAILOVER_SLACK_S,
                        f"a committed write on the sync {s} while {p} hangs")
        took = first - t0
        say(f"F6: first commit on the new primary {s} {took:.2f}s after the hang")
        assert sh.topology()["primary"] == s, f"F6: {s} takes writes but the state says {sh.topology()}"
        # keep it hung past the session timeout and while the new primary takes writes
        w.wait_for_acks(20, 60)
        time.sleep(max(0.0, t0 + sh.session_s + PAST_EXPIRY_S - time.monotonic()))
        t_resume = time.monotonic()
        rogue.start()
        sh.sb.resume(p)
        say(f"F6: SIGCONT {p} {t_resume - t0:.1f}s after the hang; a client pinned to it writes on")
        # the resumed node must find out it is no longer primary, and commit nothing meanwhile
        sh.wait(lambda: standby_streaming(sh, p), REJOIN_S, f"the resumed old primary {p} to rejoin as a standby")
        say(f"F6: {p} streams as {sh.roles()[p]} {time.monotonic() - t_resume:.1f}s after SIGCONT")
        rogue.stop()
        _assert_no_rogue_acks(rogue, p, t0)
        assert sh.topology()["primary"] == s, f"F6: the primary changed again: {sh.topology()}"
        w.wait_for_acks(20, 60)
        t1 = time.monotonic()
    finally:
        rogue.stop()
        w.stop()
    _assert_old_primary_silent(w, sh, p, first)
    _outage_line("F6", _gap(w, t0, t1), sh, f"; first commit on the new primary {took:.1f} s after SIGSTOP")
    sh.assert_checks(w, prev, expect_leader=s, since_gen=gen0)


# ---------------------------------------------------------------------------------- F7
def test_f7_partitioned_primary_sync_promoted_old_primary_commits_nothing(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("f7", commit_timeout=COMMIT_TIMEOUT_S).start()
    rogue = _rogue(sh, p, w)
    healed = False
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        sh.sb.partition(p)
        rogue.start()
        say(f"F7: partitioned the primary {p} from ZooKeeper and its peers; sync {s}, async {a}; "
             f"a client pinned to {p} writes on")
        first = sh.wait(lambda: first_ack_on(w, sh.node(s), t0), sh.session_s + FAILOVER_SLACK_S,
                        f"a committed write on the sync {s} while {p} is cut off")
        took = first - t0
        say(f"F7: first commit on the new primary {s} {took:.2f}s after the partition")
        assert took >= sh.session_s * 0.8, (f"F7: {s} took writes {took:.2f}s after the partition, before "
                                            f"{p}'s session ({sh.session_s}s) could have expired")
        assert sh.topology()["primary"] == s, f"F7: {s} takes writes but the state says {sh.topology()}"
        w.wait_for_acks(20, 60)
        # the cut-off old primary: still running, reachable by clients, yet it must not
        # say it is writable, nor commit anything
        time.sleep(max(0.0, t0 + sh.session_s + PAST_EXPIRY_S - time.monotonic()))
        assert not sh.writable(sh.node(p)), f"F7: the cut-off old primary {p} answers /primary 200"
        t_heal = time.monotonic()
        sh.sb.heal(p)
        healed = True
        say(f"F7: healed {p} {t_heal - t0:.1f}s after the partition")
        sh.wait(lambda: standby_streaming(sh, p), REJOIN_S, f"the old primary {p} to rejoin as a standby")
        say(f"F7: {p} streams as {sh.roles()[p]} {time.monotonic() - t_heal:.1f}s after the heal")
        rogue.stop()
        _assert_no_rogue_acks(rogue, p, t0 + 0.5)
        assert sh.topology()["primary"] == s, f"F7: the primary changed again: {sh.topology()}"
        w.wait_for_acks(20, 60)
        t1 = time.monotonic()
    finally:
        rogue.stop()
        w.stop()
        if not healed:
            sh.sb.heal(p)
    _assert_old_primary_silent(w, sh, p, first)
    _outage_line("F7", _gap(w, t0, t1), sh, f"; first commit on the new primary {took:.1f} s after the partition")
    sh.assert_checks(w, prev, expect_leader=s, since_gen=gen0)


# ---------------------------------------------------------------------------------- F8
def test_f8_partitioned_sync_replaced_by_async_rejoins_as_async(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("f8", commit_timeout=COMMIT_TIMEOUT_S).start()
    healed = False
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        sh.sb.partition(s)
        say(f"F8: partitioned the sync {s}; primary {p}, async {a}")
        sh.wait(lambda: sh.topology()["sync"] == a, sh.session_s + FAILOVER_SLACK_S + 30,
                f"the async {a} to become sync")
        first = sh.wait(lambda: first_ack_on(w, sh.node(p), t0 + 0.5), 90,
                        f"writes to resume on {p} with the new sync {a}")
        say(f"F8: {a} is sync; writes resume {first - t0:.2f}s after the partition")
        assert sh.topology()["primary"] == p, "F8: the primary changed although only the sync was cut off"
        w.wait_for_acks(20, 60)
        t_heal = time.monotonic()
        sh.sb.heal(s)
        healed = True
        sh.wait(lambda: standby_streaming(sh, s, "async"), REJOIN_S, f"the old sync {s} to rejoin as async")
        say(f"F8: {s} streams as async {time.monotonic() - t_heal:.1f}s after the heal")
        w.wait_for_acks(20, 60)
        t1 = time.monotonic()
    finally:
        w.stop()
        if not healed:
            sh.sb.heal(s)
    assert sh.topology()["primary"] == p and sh.topology()["sync"] == a, f"F8: chain is {sh.topology()}"
    _outage_line("F8", _gap(w, t0, t1), sh)
    sh.assert_checks(w, prev)
    assert not [r for r in sh.history() if r["action"] == "AssumeLeader"
                and isinstance(r.get("generation"), int) and r["generation"] > gen0], \
        "F8: a new primary was assumed although the primary was never cut off"


# ---------------------------------------------------------------------------------- F9
def test_f9_partitioned_async_dropped_and_rejoins(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    w = sh.writer("f9", commit_timeout=COMMIT_TIMEOUT_S).start()
    healed = False
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        sh.sb.partition(a)
        say(f"F9: partitioned the async {a}; primary {p}, sync {s}")
        sh.wait(lambda: a not in sh.topology()["async"], sh.session_s + FAILOVER_SLACK_S + 30,
                f"the async {a} dropped from the chain")
        say(f"F9: {a} dropped {time.monotonic() - t0:.1f}s after the partition")
        w.wait_for_acks(30, 60)
        t_heal = time.monotonic()
        sh.sb.heal(a)
        healed = True
        sh.wait(lambda: standby_streaming(sh, a, "async"), REJOIN_S, f"{a} to rejoin as async and stream")
        say(f"F9: {a} streams as async {time.monotonic() - t_heal:.1f}s after the heal")
        w.wait_for_acks(20, 60)
        t1 = time.monotonic()
    finally:
        w.stop()
        if not healed:
            sh.sb.heal(a)
    gap = _gap(w, t0, t1)
    failed = [x for x in w.attempts() if x.outcome != "acked" and t0 <= x.started <= t1]
    _outage_line("F9", gap, sh)
    assert gap <= 1.5, f"F9: the primary blocked for {gap:.2f}s while only the async was cut off"
    assert not failed, f"F9: {len(failed)} commit(s) failed while only the async was cut off: {failed[:3]}"
    assert sh.topology()["primary"] == p and sh.topology()["sync"] == s, f"F9: chain is {sh.topology()}"
    sh.assert_checks(w, prev)
