"""Bad data in ZooKeeper on a real shard (issue 8 item 4; the F21 fault tests proper are in
the fault-injection suite): a rogue election node is quarantined by every sitter and a failover
still happens around it; an unparsable state znode makes the shard hold — the primary keeps
taking writes, nobody writes a state or declares a new generation — until the operator writes
the last good state back."""

from __future__ import annotations

import json
import time

import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say, zk_back

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]


SHARD = SharedShard("zkquar", 5000, undo=zk_back)


def _quarantined(sh: Shard, what: str) -> bool:
    return all(any(what in q for q in (sh.state_of(n) or {}).get("quarantined") or ["?"]) for n in sh.nodes
               if sh.sb.node_pids(n))


def test_a_rogue_election_node_is_quarantined_and_failover_still_works(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    path = sh.sb.st.shard_path
    rogue = sh.zk.create(f"{path}/election/127.0.0.99:5432:10002:5433-", b'{"ip": "127.0.0.99"}', sequence=True)
    w = sh.writer("rogue").start()
    try:
        w.wait_for_acks(20, 60)
        sh.wait(lambda: _quarantined(sh, "zoneId: missing"), 20, "every sitter quarantines the rogue node")
        t0 = time.monotonic()
        sh.sb.kill(p)
        sh.wait(lambda: sh.topology()["primary"] == s, 60, f"{s} takes over around the rogue node")
        w.wait_for_acks(10, 60)
        say(f"rogue election node: {s} took over {time.monotonic() - t0:.1f}s after {p} was killed")
        log = sh.sitter_log(sh.node(s))
        assert log.count("zk_data_quarantined") == 1, "the rogue node is logged once, not every cycle"
        assert not [ln for ln in log.splitlines() if "cycle_failed" in ln and "zoneId" in ln]
        sh.sb.start(p)
        sh.wait_healthy(180)
    finally:
        w.stop()
        sh.zk.delete(rogue)
    sh.wait(lambda: all(not (sh.state_of(n) or {}).get("quarantined") for n in sh.nodes), 20,
            "the quarantine cleared once the node is gone")
    sh.assert_checks(w, prev)


def test_an_unparsable_state_holds_the_shard_and_the_primary_keeps_serving(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    path = f"{sh.sb.st.shard_path}/state"
    good, _ = sh.zk.get(path)
    w = sh.writer("badstate").start()
    try:
        w.wait_for_acks(20, 60)
        sh.zk.set(path, b'{"generation": "garbage"')
        t0 = time.monotonic()
        sh.wait(lambda: all((sh.state_of(n) or {}).get("stateUnreadable") for n in sh.nodes), 20,
                "every sitter sees the state as unreadable")
        n0 = len(w.acked)
        time.sleep(2 * sh.session_s)
        assert len(w.acked) > n0 + 20, "the primary stopped taking writes while the state was unreadable"
        raw, _ = sh.zk.get(path)
        assert raw == b'{"generation": "garbage"', "a sitter overwrote the unreadable state"
        roles = sh.roles()
        assert (roles[p], roles[s], roles[a]) == ("primary", "sync", "async"), roles
        rules = {n.name: (sh.state_of(n) or {}).get("rule") for n in sh.nodes}
        assert all(r and r.startswith("state_unreadable.") for r in rules.values()), rules
        say(f"unreadable state: {len(w.acked) - n0} writes in {time.monotonic() - t0:.1f}s; rules {rules}")
        sh.zk.set(path, good)  # the runbook: write the last good state back
        sh.wait(lambda: all(not (sh.state_of(n) or {}).get("stateUnreadable") for n in sh.nodes), 20,
                "the sitters read the repaired state")
        w.wait_for_acks(10, 60)
    finally:
        if sh.zk.get(path)[0] != good:
            sh.zk.set(path, good)
        w.stop()
    assert json.loads(sh.zk.get(path)[0])["generation"] == gen0
    assert not sh.leaders_after(gen0)
    sh.assert_checks(w, prev)
