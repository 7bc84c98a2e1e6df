"""Start order on a real shard (issue 8 item 5; manatee-sandbox: ZooKeeper, zfs-fuse, three
nodes, PostgreSQL 15): a sitter started while ZooKeeper is down joins the shard within a few
seconds of ZooKeeper's start, and a whole site that comes back with ZooKeeper last (every node
and ZooKeeper down at once: a power cut) returns to primary + sync + async with the previous
primary or sync leading and nothing acknowledged lost.

ZooKeeper stays down longer than the sitters' connectTimeout (10 s in the sandbox), so their
first connect attempt fails: before the fix every later attempt failed with
"ZKClient.start() called twice" and the sitter never connected.
"""

from __future__ import annotations

import time

import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say, zk_back

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]

SESSION_MS = 5000
ZK_DOWN_S = 13.0  # > the sandbox's zkCfg.connectTimeout (10 s): the first attempt fails


SHARD = SharedShard("zkorder", SESSION_MS, undo=zk_back)


def _joined(sh: Shard, name: str) -> bool:
    node = sh.node(name)
    st = sh.state_of(node)
    return bool(st and st.get("zk") == "connected" and node.ip in " ".join(st.get("election") or []))


def test_a_sitter_started_while_zookeeper_is_down_joins_once_it_is_up(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    w = sh.writer("order1").start()
    try:
        w.wait_for_acks(20, 60)
        sh.sb.zk_stop()
        sh.sb.kill(a)
        sh.sb.start(a)  # the host boots before ZooKeeper
        say(f"start order: ZooKeeper down, async {a} killed and started again; ZooKeeper down {ZK_DOWN_S:.0f}s")
        time.sleep(ZK_DOWN_S)
        assert not _joined(sh, a)
        assert "zk_unreachable" in sh.sitter_log(sh.node(a)), "the first connect attempt did not fail"
        sh.sb.zk_start()
        t_zk = time.monotonic()
        sh.drop_zk_client()
        sh.wait(lambda: _joined(sh, a), 30, f"{a} connected and in the election")
        took = time.monotonic() - t_zk
        say(f"start order: {a} joined {took:.1f}s after ZooKeeper started")
        assert took < 8.0, f"{a} joined only {took:.1f}s after ZooKeeper's start"
        assert "called twice" not in sh.sitter_log(sh.node(a))
        sh.wait_healthy(120)
        assert names(sh.topology()) == (p, s, a)
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    sh.assert_checks(w, prev)


def test_whole_site_restarted_with_zookeeper_last(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("order2").start()
    try:
        w.wait_for_acks(30, 60)
        sh.sb.zk_stop()
        for n in (p, s, a):
            sh.sb.kill(n)
        t_cut = time.monotonic()
        for n in (p, s, a):
            sh.sb.start(n)
        say(f"power cut: {p}, {s}, {a} and ZooKeeper down; nodes started again, ZooKeeper in {ZK_DOWN_S:.0f}s")
        time.sleep(ZK_DOWN_S)
        sh.sb.zk_start()
        t_zk = time.monotonic()
        sh.drop_zk_client()
        sh.wait(lambda: all(_joined(sh, n) for n in (p, s, a)), 30, "every sitter connected and in the election")
        joined = time.monotonic() - t_zk
        sh.wait_healthy(180)
        healed = time.monotonic() - t_zk
        w.wait_for_acks(20, 90)
        first = min((x for x in (a_.finished for a_ in w.attempts() if a_.outcome == "acked") if x > t_zk),
                    default=None)
        say(f"power cut: all joined {joined:.1f}s, healthy {healed:.1f}s, first write "
            f"{(first - t_zk) if first else float('nan'):.1f}s after ZooKeeper's start "
            f"({t_zk - t_cut:.1f}s after the cut)")
        assert joined < 10.0, f"sitters joined only {joined:.1f}s after ZooKeeper's start"
    finally:
        w.stop()
    top = sh.topology()
    assert top["primary"] in (p, s), f"{top['primary']} leads; only the previous primary {p} or sync {s} may"
    assert top["sync"] and len(top["async"]) == 1, top
    leaders = [r["ip"] for r in sh.leaders_after(gen0)]
    assert set(leaders) <= {sh.node(p).ip, sh.node(s).ip}, leaders
    sh.assert_checks(w, prev)
