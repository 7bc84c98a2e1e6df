"""ZooKeeper loses the shard's state, on a real shard under writes (sandbox trial 2026-12-05).

- The state znode deleted (an operator's mistake) while the election's head is not the
  primary: before, the head declared a new generation 1 with itself as primary. Now the
  primary, whose session was never lost, re-creates the znode as it was; same generation,
  no new leader, writes go on.
- ZooKeeper restarted with an empty data directory: before, every sitter stayed SUSPENDED
  for good (the server refuses clients that saw newer zxids), and a restarted sitter at the
  head would have declared generation 1. Now each sitter abandons the session ZooKeeper
  will not resume, starts a new one and holds the state it remembers: the primary serves
  again after a short outage, nobody writes a state, `manatee-adm show/verify` name the
  lost state, and `manatee-adm state-restore` puts it back; no acknowledged write is lost.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say, zk_back
from tests.shard_ops import adm

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]

SHARD = SharedShard("zklost", 5000, undo=zk_back, heal_each_test=False)


def _lost_everywhere(sh: Shard) -> bool:
    states = [sh.state_of(n) or {} for n in sh.nodes]
    return all(s.get("stateLost") and s.get("zk") == "connected" for s in states)


def _election_says(sh: Shard) -> dict[str, object]:
    """{election node: its `remembers`} ("absent" when it does not say)."""
    path = f"{sh.sb.st.shard_path}/election"
    said = {}
    for child in sh.zk.get_children(path):
        data, _ = sh.zk.get(f"{path}/{child}")
        said[child] = json.loads(data).get("remembers", "absent")
    return said


def test_a_deleted_state_znode_is_recreated_by_the_primary(shard: Shard):
    sh = shard
    assert adm(sh, "switchover", "--wait", "60").returncode == 0  # the head (a) is no longer the primary
    sh.wait_healthy(120)
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    # each election node says the generation its sitter knows (they joined with null at bring-up)
    sh.wait(lambda: set(_election_says(sh).values()) == {prev["generation"]}, 20,
            f"every election node saying generation {prev['generation']}")
    head = sh.zk.get_children(f"{sh.sb.st.shard_path}/election")
    say(f"election {sorted(head, key=lambda x: x.rsplit('-', 1)[1])}, primary {p}")
    w = sh.writer("deleted").start()
    try:
        w.wait_for_acks(20, 60)
        sh.zk.delete(sh.sb.st.layout.state)
        t0 = time.monotonic()
        sh.wait(lambda: sh.zk_state() is not None, 20, "the state znode back")
        back = sh.zk_state()
        say(f"state znode re-created {time.monotonic() - t0:.2f}s after the delete")
        assert back == prev, f"the state came back changed:\n{json.dumps(back)}\nwas\n{json.dumps(prev)}"
        log = sh.sitter_log(sh.node(p))
        assert "state_lost.recreate" in log, "the primary did not re-create it"
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    assert not sh.leaders_after(prev["generation"]) and sh.topology()["primary"] == p
    sh.assert_checks(w, prev)


def _wipe_zookeeper(sh: Shard) -> None:
    """ZooKeeper back with an empty data directory (the test's own client is refused too)."""
    sh.sb.zk_stop()
    shutil.rmtree(sh.sb.dir / "zookeeper" / "data" / "version-2")
    sh.sb.zk_start()
    sh.drop_zk_client()


def _held_then_restored(sh: Shard, w, what: str) -> None:
    """Every sitter holds the lost state and the primary takes writes, nobody writes a state;
    then `manatee-adm state-restore` and the shard is healthy again."""
    t0 = time.monotonic()
    sh.wait(lambda: _lost_everywhere(sh), 60, what)
    say(f"{what}: {time.monotonic() - t0:.1f}s")
    n0 = len(w.acked)
    sh.wait(lambda: len(w.acked) > n0 + 20, 90, "the primary takes writes again")
    assert sh.zk_state() is None, "a sitter wrote a state over the lost one"
    rules = {n.name: (sh.state_of(n) or {}).get("rule") for n in sh.nodes}
    assert all(r and r.startswith("state_lost.") for r in rules.values()), rules
    r = adm(sh, "verify")
    assert r.returncode == 2 and "state-restore" in r.stdout + r.stderr, r.stdout
    r = adm(sh, "state-restore", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    sh.wait_healthy(120)
    w.wait_for_acks(20, 60)


def _back_as_before(sh: Shard, w, prev: dict, what: str) -> None:
    st = sh.zk_state()
    assert st["generation"] == prev["generation"] and st["primary"]["id"] == prev["primary"]["id"]
    r = adm(sh, "verify")  # a warning may remain (this shard runs without ZooKeeper auth), not the lost state
    assert r.returncode in (0, 1) and "state znode" not in r.stdout, r.stdout
    say(f"{what}: longest write outage {w.longest_outage():.2f}s, {len(w.acked)} acknowledged")
    sh.assert_checks(w, prev)


def test_zookeeper_wiped_the_shard_holds_and_the_operator_restores_the_state(shard: Shard):
    sh = shard
    sh.wait_healthy(120)
    prev = sh.zk_state()
    w = sh.writer("wiped").start()
    try:
        w.wait_for_acks(20, 60)
        _wipe_zookeeper(sh)
        _held_then_restored(sh, w, "every sitter in a new session, holding the lost state")
    finally:
        w.stop()
    _back_as_before(sh, w, prev, "ZooKeeper wiped")


def test_power_cut_with_zookeeper_data_lost_the_datasets_remember(shard: Shard):
    """Every node and ZooKeeper down, ZooKeeper back empty, the nodes back (the async
    first, so that it heads the election): each dataset's `manatee:state-memory` holds the
    whole state, so the primary serves again, nobody declares a new shard, and
    state-restore puts the state back from what the sitters show."""
    sh = shard
    sh.wait_healthy(120)
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    w = sh.writer("powercut").start()
    try:
        w.wait_for_acks(20, 60)
        for n in (p, s, a):
            sh.sb.kill(n)
        _wipe_zookeeper(sh)
        for n in (a, s, p):
            sh.sb.start(n)
        _held_then_restored(sh, w, "every restarted sitter holding the state its dataset remembers")
    finally:
        w.stop()
    _back_as_before(sh, w, prev, "power cut with ZooKeeper's data lost")


def test_an_older_state_written_back_is_held_not_followed(shard: Shard):
    """ZooKeeper restored from a copy taken before the last failover: its state names the old
    primary. Every sitter that knows the newer generation holds it (state_older.*): the new
    primary keeps taking writes, nobody follows the old state; the runbook (delete the old
    znode, state-restore) brings the newer one back."""
    sh = shard
    sh.wait_healthy(120)
    old = sh.zk_state()
    p, s, _a = names(sh.topology())
    w = sh.writer("older").start()
    try:
        w.wait_for_acks(20, 60)
        sh.sb.kill(p)
        sh.wait(lambda: sh.topology()["primary"] == s, 60, f"{s} takes over")
        sh.sb.start(p)
        sh.wait_healthy(120)
        prev = sh.zk_state()
        assert prev["generation"] > old["generation"]
        sh.zk.set(sh.sb.st.layout.state, json.dumps(old).encode())  # the older copy comes back
        sh.wait(lambda: all((sh.state_of(n) or {}).get("stateOlder") for n in sh.nodes), 30,
                "every sitter holds the newer state it remembers")
        n0 = len(w.acked)
        sh.wait(lambda: len(w.acked) > n0 + 20, 60, f"the new primary {s} keeps taking writes")
        assert sh.zk_state() == old, "a sitter wrote over the older state"
        rules = {n.name: (sh.state_of(n) or {}).get("rule") for n in sh.nodes}
        assert all(r and r.startswith("state_older.") for r in rules.values()), rules
        r = adm(sh, "verify")
        assert r.returncode == 2 and "older than I remember" in r.stdout, r.stdout
        sh.zk.delete(sh.sb.st.layout.state)  # the runbook: delete the old znode, then restore
        sh.wait(lambda: _lost_everywhere(sh) or sh.zk_state() == prev, 30, "the sitters hold, or the primary re-created it")
        if sh.zk_state() is None:
            assert adm(sh, "state-restore", "--yes").returncode == 0
        else:
            say("the primary re-created the newer state itself (its session was never lost)")
        sh.wait_healthy(120)
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    st = sh.zk_state()
    assert st["generation"] == prev["generation"] and st["primary"]["id"] == prev["primary"]["id"]
    say(f"older state written back: longest write outage {w.longest_outage():.2f}s (the failover's included)")
    sh.assert_checks(w, prev)


def test_a_state_naming_other_leaders_at_its_generation_is_held_not_followed(shard: Shard):
    """A state written back by hand at its own generation but with the async as primary (the
    leaders pieced together from another copy). Every change of primary or sync is a new
    generation, so no sitter writes that; following it would promote the async, which may
    lack acknowledged writes. Every sitter holds what it remembers (state_older.*), the
    primary keeps taking writes, `verify` names it; writing the right state back resumes."""
    sh = shard
    sh.wait_healthy(120)
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    forged = {**prev, "primary": prev["async"][0], "sync": prev["primary"], "async": [prev["sync"]]}
    w = sh.writer("forged").start()
    try:
        w.wait_for_acks(20, 60)
        sh.zk.set(sh.sb.st.layout.state, json.dumps(forged).encode())
        sh.wait(lambda: all((sh.state_of(n) or {}).get("stateOlder") for n in sh.nodes), 30,
                "every sitter holding the state it remembers")
        n0 = len(w.acked)
        sh.wait(lambda: len(w.acked) > n0 + 20, 60, f"the primary {p} keeps taking writes")
        pg_a = (sh.state_of(sh.node(a)) or {}).get("pg") or {}
        assert pg_a.get("inRecovery") is True, f"the async {a} left recovery: {pg_a}"
        rules = {n.name: (sh.state_of(n) or {}).get("rule") for n in sh.nodes}
        assert all(r and r.startswith("state_older.") for r in rules.values()), rules
        r = adm(sh, "verify")
        assert r.returncode == 2 and "names other leaders than I remember" in r.stdout, r.stdout
        assert "written by hand" in r.stdout, r.stdout
        sh.zk.set(sh.sb.st.layout.state, json.dumps(prev).encode())  # the right one back
        sh.wait_healthy(120)
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    assert sh.zk_state()["generation"] == prev["generation"] and sh.topology()["primary"] == p
    sh.assert_checks(w, prev)
