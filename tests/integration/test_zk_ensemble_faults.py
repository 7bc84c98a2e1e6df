"""ZooKeeper faults on a shard whose ZooKeeper is a three-server ensemble (manatee-sandbox
`up --zk-servers 3`: three servers on ZooKeeper's loopback address, each with its own
client, quorum and election port), in the style of test_zk_data_faults.py: one shared shard
(session timeout 5 s), healthy at the start of each test, a RecordingWriter throughout, and
Shard.assert_checks (S1–S4, S7) at the end. Each test prints its measured write outage.

- F10 on the ensemble: every server stopped (Sandbox.zk_stop) for twice the session timeout
  and started again on the same ports and data: the ensemble elects a leader, restores the
  sessions with a fresh timeout, and no topology change follows.
- The ensemble's leader killed (SIGKILL, Sandbox.zk_stop_server(zk_leader(), kill=True)):
  the other two elect a new leader, the sitters' sessions move to them, and nothing about
  the shard changes.
"""

from __future__ import annotations

import time

import pytest

from tests.shard_fixture import (NEEDS_SHARD, Shard, SharedShard, acks_on, assert_roles_held,
                                 assert_topology_unchanged, longest_ack_gap, names, say, zk_back)

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]

SESSION_MS = 5000


SHARD = SharedShard("zkens", SESSION_MS, undo=zk_back, zk_servers=3)


@pytest.fixture(autouse=True)
def _an_ensemble(shard: Shard) -> None:
    sh = shard
    assert len(sh.sb.st.zk_servers) == 3 and sh.sb.st.zk_connect.count(",") == 2, sh.sb.st.zk_connect


def _watch(sh: Shard, seconds: float, seen_roles: list[dict], writable: set[str]) -> list[tuple[float, list[str]]]:
    """Sample roles, /primary and each sitter's ZooKeeper connection for `seconds`;
    returns (time, sitters not connected to ZooKeeper) per sample."""
    t_end = time.monotonic() + seconds
    off: list[tuple[float, list[str]]] = []
    while time.monotonic() < t_end:
        t = time.monotonic()
        states = {n.name: sh.state_of(n) for n in sh.nodes}
        seen_roles.append({k: str(v.get("role")) if v else "down" for k, v in states.items()})
        off.append((t, sorted(k for k, v in states.items() if not v or v.get("zk") != "connected")))
        writable |= {n.name for n in sh.nodes if sh.writable(n)}
        time.sleep(0.5)
    return off


def test_f10_ensemble_all_servers_down_twice_session_timeout_no_topology_change(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("f10e").start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        assert sh.sb.zk_stop() is True
        assert sh.sb.zk_pids() == [None, None, None]
        down_for = 2 * sh.session_s
        say(f"F10 ensemble: all 3 ZooKeeper servers stopped for {down_for:.0f}s; primary {p}, sync {s}, async {a}")
        seen_roles: list[dict] = []
        writable: set[str] = set()
        _watch(sh, down_for, seen_roles, writable)
        t1 = time.monotonic()
        sh.sb.zk_start()
        t2 = time.monotonic()
        assert sh.sb.zk_running() and sh.sb.zk_leader() is not None
        sh.drop_zk_client()
        during = [x for x in acks_on(w, sh.node(p), t0) if x <= t1]
        gap = longest_ack_gap(w, t0, t2)
        say(f"F10 ensemble: {len(during)} commits on {p} while ZooKeeper was down ({t1 - t0:.1f}s); "
            f"ensemble serving again {t2 - t1:.1f}s after the start")
        say(f"F10 ensemble outage: {gap:.2f} s (longest gap between acknowledged writes; all of ZooKeeper "
            f"down {t1 - t0:.1f} s)")
        assert len(during) >= 20, f"F10 ensemble: only {len(during)} commits while ZooKeeper was down"
        assert [x for x in during if x >= t0 + 2 * (t1 - t0) / 3], "F10 ensemble: writes stopped during the outage"
        assert gap < 3.0, f"F10 ensemble: the primary stalled for {gap:.2f}s while ZooKeeper was down"
        assert_roles_held("F10 ensemble", seen_roles, writable, p, s, a)
        assert_topology_unchanged(sh, "F10 ensemble", gen0, p, s, a, t2)
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    assert not sh.leaders_after(gen0), "F10 ensemble: a new primary was assumed"
    sh.assert_checks(w, prev)


# ---------------------------------------------------------------------- ensemble leader
def test_ensemble_leader_killed_no_topology_change_writes_continue(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    lead = sh.wait(lambda: (i := sh.sb.zk_leader()) is not None and str(i), 30, "the ensemble's leader")
    lead = int(lead)
    w = sh.writer("zkl").start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        assert sh.sb.zk_stop_server(lead, kill=True) is True
        say(f"ZK leader: killed ensemble server {lead} (the leader); primary {p}, sync {s}, async {a}")

        def other_leader() -> str | None:
            i = sh.sb.zk_leader()
            return None if i is None or i == lead else str(i)

        new_lead = int(sh.wait(other_leader, 30, "a new leader among the other two servers", interval=0.05))
        t_elected = time.monotonic()
        say(f"ZK leader: server {new_lead} leads {t_elected - t0:.2f}s after the kill")
        seen_roles: list[dict] = []
        writable: set[str] = set()
        off = _watch(sh, max(3.0, 2 * sh.session_s - (time.monotonic() - t0)), seen_roles, writable)
        t1 = time.monotonic()
        lost = sorted({x for _t, xs in off for x in xs})
        last_off = max((t for t, xs in off if xs), default=None)
        say(f"ZK leader: sitters seen without ZooKeeper after the kill: {lost or 'none'}"
            + (f" (last seen {last_off - t0:.1f}s after the kill)" if last_off else ""))
        assert not off[-1][1], f"ZK leader: sitters still not connected {t1 - t0:.0f}s after the kill: {off[-1][1]}"
        pid = sh.sb.zk_start_server(lead, timeout=60)
        assert sh.sb.zk_running() and sh.sb.zk_pids()[lead] == pid
        sh.wait(lambda: sh.sb.zk_modes()[lead] == "follower", 30, f"server {lead} to rejoin as a follower")
        t2 = time.monotonic()
        sh.drop_zk_client()
        gap = longest_ack_gap(w, t0, t1)
        during = [x for x in acks_on(w, sh.node(p), t0) if x <= t1]
        say(f"ZK leader: {len(during)} commits on {p} in the {t1 - t0:.1f}s with two servers; "
            f"old leader back as a follower {t2 - t1:.1f}s after its start")
        say(f"ZK leader outage: {gap:.2f} s (longest gap between acknowledged writes; new ZooKeeper leader "
            f"after {t_elected - t0:.2f} s)")
        assert len(during) >= 20, f"ZK leader: only {len(during)} commits after the leader was killed"
        assert gap < 3.0, f"ZK leader: the primary stalled for {gap:.2f}s"
        assert_roles_held("ZK leader", seen_roles, writable, p, s, a)
        assert_topology_unchanged(sh, "ZK leader", gen0, p, s, a, t2)
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    assert not sh.leaders_after(gen0), "ZK leader: a new primary was assumed"
    sh.assert_checks(w, prev)
