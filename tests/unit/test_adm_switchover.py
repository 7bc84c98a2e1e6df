"""The planned switchover (manatee-adm switchover) in the decision core: rule by rule, then
in the simulated shard of test_shard_simulation (real decide → CAS → plan loop, S1–S4
checked every tick) with the two inputs the switchover adds (the sync's flush position and
the shell's "stopped for the switchover" latch) modelled as the real shell supplies them."""

from __future__ import annotations

import dataclasses

import pytest

from manatee.shard.decide import decide
from manatee.shard.state import (
    PRIMARY, STANDBY, UNASSIGNED, ClusterState, Freeze, Switchover, Target,
)
from manatee.shard import transitions as T
from tests.sim import shard as sim
from tests.observations import A, B, C, D, INIT, STATE, obs

REQ = Switchover(to=B.id, requested="2024-01-01T00:00:00Z", by="test")
SW = STATE.evolve(switchover=REQ)
SW_LIMIT = 15  # ticks: the shell's SWITCHOVER_LIMIT_S
REL = SW.evolve(switchover=dataclasses.replace(REQ, released=True, released_wal=0x9000))
READY = dict(sync_caught_up=True, sync_streaming=True, read_only=False, wal=0x9000, sync_flush=0x9000)


# ------------------------------------------------------------------------- state JSON
def test_switchover_round_trips_and_is_absent_when_not_requested():
    assert "switchover" not in STATE.to_json()
    d = SW.evolve(switchover=dataclasses.replace(REQ, released=True, released_wal=0x9000)).to_json()
    assert d["switchover"] == {"to": B.id, "requested": "2024-01-01T00:00:00Z", "by": "test",
                               "released": True, "releasedWal": "0/9000"}
    assert ClusterState.from_json(d).switchover.released_wal == 0x9000
    assert ClusterState.from_json(STATE.to_json()).switchover is None


@pytest.mark.parametrize("bad", [{"requested": "x"}, {"to": ""}, 3, {"to": B.id, "releasedWal": "zz"}])
def test_malformed_switchover_is_refused_naming_the_field(bad):
    d = {**STATE.to_json(), "switchover": bad}
    with pytest.raises(ValueError, match="state.switchover"):
        ClusterState.from_json(d)


# ------------------------------------------------------------------------- the primary
def test_primary_goes_read_only_first():
    d = decide(obs(A, state=SW, **READY))
    assert d.rule == "primary.switchover_read_only" and d.write_state is None
    assert d.target.role == PRIMARY and d.target.read_only and d.target.sync == B


def test_primary_waits_for_the_sync_to_flush_its_whole_wal():
    d = decide(obs(A, state=SW, **{**READY, "read_only": True, "sync_flush": 0x8f00}))
    assert d.rule == "primary.switchover_wait_flush" and d.target.read_only and d.write_state is None
    assert "0/8F00" in d.reason


def test_primary_releases_and_stops_postgres_in_one_step_once_the_sync_has_its_wal():
    d = decide(obs(A, state=SW, **{**READY, "read_only": True}))
    assert d.rule == "primary.switchover_stop" and d.target.role == UNASSIGNED
    # the state first (the shell CASes it before it applies the target): the sync's takeover
    # does not wait for the stop, and the release names the WAL the sync has flushed
    assert d.write_state.switchover.released and d.write_state.switchover.released_wal == 0x9000
    assert d.write_state.generation == STATE.generation and d.write_state.primary == A
    tr = T.plan(PRIMARY, None, d.target)
    assert tr.steps[0] == T.STOP_PG  # immediate: no shutdown checkpoint the sync lacks


@pytest.mark.parametrize("flush", [None, 0x8fff])
def test_primary_never_releases_before_the_sync_has_flushed_its_whole_wal(flush):
    d = decide(obs(A, state=SW, **{**READY, "read_only": True, "sync_flush": flush}))
    assert d.write_state is None and d.target.role == PRIMARY and d.target.read_only


def test_primary_never_releases_while_it_may_still_take_writes():
    for ro in (False, None):
        d = decide(obs(A, state=SW, **{**READY, "read_only": ro}))
        assert d.write_state is None and d.target.role == PRIMARY and d.target.read_only


def test_primary_already_stopped_for_the_switchover_releases():
    d = decide(obs(A, state=SW, running=False, wal=None, read_only=None, switchover_stopped_wal=0x9000))
    assert d.rule == "primary.switchover_release" and d.target.role == UNASSIGNED
    assert d.write_state.switchover.released and d.write_state.switchover.released_wal == 0x9000
    assert d.write_state.generation == STATE.generation and d.write_state.primary == A


def test_released_primary_waits_and_withdraws_if_its_sync_dies():
    rel = SW.evolve(switchover=dataclasses.replace(REQ, released=True, released_wal=0x9000))
    d = decide(obs(A, state=rel, running=False, wal=None))
    assert d.rule == "primary.switchover_released" and d.target.role == UNASSIGNED and d.write_state is None
    d = decide(obs(A, state=rel, running=False, wal=None, election=(A, C)))
    assert d.rule == "primary.switchover_withdraw" and d.write_state.switchover is None
    assert d.target.role == PRIMARY and d.target.read_only


@pytest.mark.parametrize("kw, why", [
    (dict(sync_caught_up=False), "has not caught up"),
    (dict(sync_streaming=False), "has not caught up"),
    (dict(standby_free={B.id: 1 << 20}), "disk is full (1048576 bytes free): it could not serve"),
    (dict(standby_free={B.id: 1 << 20}, read_only=True), "disk is full"),  # found full once read-only
    # its PostgreSQL hung a moment ago (sandbox trial: it took over and hung again, 24 s without writes)
    (dict(standby_sick={B.id: "it did not answer its status query"}), "says its PostgreSQL is not healthy"),
    (dict(standby_sick={B.id: "it is not running"}, read_only=True), "not healthy (it is not running)"),
])
def test_primary_not_ready_keeps_serving_and_says_why(kw, why):
    d = decide(obs(A, state=SW, **{**READY, **kw}))
    assert d.rule == "primary.switchover_waiting" and d.write_state is None and why in d.reason


@pytest.mark.parametrize("free", [None, 16 << 20, 10 << 30])
def test_a_sync_with_room_or_of_unknown_room_may_take_a_switchover(free):
    room = {} if free is None else {B.id: free}
    assert decide(obs(A, state=SW, **READY, standby_free=room)).rule == "primary.switchover_read_only"
    d = decide(obs(A, state=SW, **{**READY, "read_only": True}, standby_free=room))
    assert d.rule == "primary.switchover_stop"


def test_frozen_primary_ignores_the_request():
    st = SW.evolve(freeze=Freeze(reason="upgrade"))
    d = decide(obs(A, state=st, **READY))
    assert d.target.role == PRIMARY and not d.target.read_only and d.write_state is None


def test_request_pending_too_long_is_withdrawn_whatever_its_phase():
    for st, kw in ((SW, READY), (REL, dict(running=False, wal=None))):
        d = decide(obs(A, state=st, switchover_expired=True, **kw))
        assert d.rule == "primary.switchover_expired" and d.write_state.switchover is None
        assert d.target.role == PRIMARY and d.target.read_only


def test_request_for_a_node_that_is_not_the_sync_is_dropped():
    st = STATE.evolve(switchover=Switchover(to=C.id))
    d = decide(obs(A, state=st, **READY))
    assert d.rule == "primary.switchover_invalid" and d.write_state.switchover is None
    assert d.write_state.generation == STATE.generation


def test_replacing_a_dead_sync_drops_the_request():
    d = decide(obs(A, state=SW, election=(A, C), read_only=True, wal=0x9000))
    assert d.rule == "primary.replace_sync" and d.write_state.switchover is None


# ------------------------------------------------------------------------- the sync


def test_sync_follows_while_the_request_is_not_released():
    d = decide(obs(B, state=SW, wal=0x9000))
    assert d.rule == "sync.follow" and d.target.upstream == A


def test_sync_detaches_then_takes_over_after_the_release():
    d = decide(obs(B, state=REL, wal=0x9000, streaming=False))
    assert d.rule == "sync.detach" and d.target.upstream is None and d.write_state is None
    d = decide(obs(B, state=REL, wal=0x9000, streaming=False, upstream_id=None))
    assert d.rule == "sync.switchover"
    new = d.write_state
    assert new.generation == STATE.generation + 1 and new.primary == B and new.sync == C
    assert new.async_ == (A,) and new.deposed == () and new.switchover is None and new.init_wal == 0x9000
    # read-write from the promotion: each commit waits for the new sync's flush (synchronous
    # replication); no sitter cycle between the promotion and the first commit
    assert d.target.role == PRIMARY and not d.target.read_only and d.target.sync == C
    # a failover (no release) keeps the new primary read-only until its sync catches up
    gone = decide(obs(B, state=STATE, election=(B, C), wal=0x9000, streaming=False, upstream_id=None))
    assert gone.rule == "sync.takeover" and gone.target.read_only


def test_the_detach_prepares_the_takeover_it_leads_to():
    """The detach names the primary target the next cycle takes (its sync, read-write after a
    release, read-only after a failure), so the shell configures both in the detach's reload
    and the promotion needs none; the target the takeover then decides is that one."""
    for state, election, ro in ((REL, None, False), (STATE, (B, C), True)):
        kw = {} if election is None else {"election": election}
        d = decide(obs(B, state=state, wal=0x9000, streaming=False, **kw))
        assert d.rule == "sync.detach" and d.target.then is not None
        assert d.target.then.role == PRIMARY and d.target.then.sync == C and d.target.then.read_only is ro
        t = decide(obs(B, state=state, wal=0x9000, streaming=False, upstream_id=None, **kw))
        assert t.target == d.target.then
    with pytest.raises(ValueError, match="detached standby"):
        Target(STANDBY, upstream=A, then=Target(PRIMARY))


def test_a_switchovers_new_primary_stays_read_write_while_its_sync_catches_up():
    """The primary rules do not turn a read-write primary read-only for a sync that has not
    caught up yet (a switchover's); one that is still read-only stays so until it has."""
    st = ClusterState(generation=3, primary=B, sync=C, async_=(A,), init_wal=0x9000)
    d = decide(obs(B, state=st, wal=0x9100, read_only=False, sync_streaming=True, sync_caught_up=False))
    assert d.target.role == PRIMARY and not d.target.read_only, d
    d = decide(obs(B, state=st, wal=0x9100, read_only=False, sync_streaming=False, sync_caught_up=False))
    assert d.target.read_only, "a sync that is not connected: read-only (S5)"
    d = decide(obs(B, state=st, wal=0x9100, read_only=True, sync_streaming=True, sync_caught_up=False))
    assert d.target.read_only, d
    d = decide(obs(B, state=st, wal=0x9100, read_only=None, sync_streaming=True, sync_caught_up=False))
    assert d.target.read_only, "unknown is not read-write"
    d = decide(obs(B, state=st, wal=0x9100, read_only=True, sync_streaming=True, sync_caught_up=True))
    assert not d.target.read_only, d


def test_two_node_switchover_makes_the_old_primary_the_sync():
    st = ClusterState(generation=2, primary=A, sync=B, init_wal=INIT, switchover=REL.switchover)
    d = decide(obs(B, state=st, election=(A, B), wal=0x9000, streaming=False, upstream_id=None))
    assert d.write_state.primary == B and d.write_state.sync == A and d.write_state.async_ == ()


def test_sync_behind_the_released_position_does_not_take_over():
    d = decide(obs(B, state=REL, wal=0x8000, streaming=False, upstream_id=None))
    assert d.rule == "sync.behind_release" and d.write_state is None


def test_release_for_another_node_does_not_make_the_sync_take_over():
    st = STATE.evolve(switchover=Switchover(to=D.id, released=True, released_wal=0x9000))
    d = decide(obs(B, state=st, wal=0x9000))
    assert d.rule == "sync.follow"


def test_the_released_primary_rejoins_as_a_standby():
    new = decide(obs(B, state=REL, wal=0x9000, streaming=False, upstream_id=None)).write_state
    d = decide(obs(A, state=new, election=(A, B, C), running=False, wal=None, in_recovery=False,
                   streaming=False, upstream_id=None))
    assert d.target.role == STANDBY and d.target.upstream == C
    assert T.plan(UNASSIGNED, None, d.target).steps[0] == T.RESTORE_IF_EMPTY  # no rebuild: it has data


# ------------------------------------------------------------------------- simulation
class SwShard(sim.Shard):
    """The simulation plus the switchover's two inputs, as the real shell supplies them."""

    def _observe(self, n):
        o = super()._observe(n)
        st = o.state
        flush = None
        if st is not None and st.primary.id == n.id and st.sync is not None and n.running and n.mode == "primary":
            s = self.sync_connected(n)
            if s is not None and s.id == st.sync.id:
                k = 0
                while k < min(len(s.log), len(n.log)) and s.log[k] == n.log[k]:
                    k += 1
                flush = k
        latch = getattr(n, "sw_stopped", None)
        if n.running:
            latch = n.sw_stopped = None
        stopped = (latch[2] if latch and st is not None and st.switchover is not None
                   and latch[:2] == (st.generation, st.switchover.to) else None)
        sw = st.switchover if st is not None else None
        key = (st.generation, sw.to, sw.requested) if sw is not None and st.primary.id == n.id else None
        seen = getattr(n, "sw_seen", None)
        if key is None:
            seen = None
        elif seen is None or seen[0] != key:
            seen = (key, self.now)
        n.sw_seen = seen
        expired = seen is not None and self.now - seen[1] > SW_LIMIT
        return dataclasses.replace(o, sync_flush=flush, switchover_stopped_wal=stopped, switchover_expired=expired)

    def _apply(self, n, d, o):
        super()._apply(n, d, o)
        if d.rule == "primary.switchover_stop" and n.target is d.target and o.wal is not None:
            n.sw_stopped = (o.state.generation, o.state.switchover.to, o.wal)

    def request(self) -> None:
        st = self.zk.state()
        assert self.zk.cas_state(st.evolve(switchover=Switchover(to=st.sync.id)), self.zk.version)


@pytest.mark.parametrize("seed", range(40))
def test_simulated_switchover_moves_the_primary_with_no_acknowledged_write_lost(seed):
    sh = SwShard(3, seed=seed, commits_per_tick=3).bootstrap()
    p, s, a = (sh.node(x.id) for x in sh.zk.state().chain())
    gen = sh.zk.state().generation
    sh.request()
    for _ in range(60):
        sh.tick()  # S1/S2/S4 are checked every tick, S3 on every CAS
        st = sh.zk.state()
        if st.primary.id == s.id:
            break
    st = sh.zk.state()
    assert st.primary.id == s.id and st.generation == gen + 1, sh.describe()
    assert st.switchover is None and p.id in {x.id for x in st.chain()}, sh.describe()
    ticks = sh.settle()
    assert acked_after(sh, s)
    # the old primary stopped at a WAL position its sync had: it follows without a rebuild
    assert p.role == STANDBY and not p.diverged, (ticks, sh.describe())


@pytest.mark.parametrize("seed", range(20))
def test_simulated_switchover_whose_sync_dies_after_the_release_is_withdrawn(seed):
    sh = SwShard(3, seed=seed, commits_per_tick=3).bootstrap()
    p, s, a = (sh.node(x.id) for x in sh.zk.state().chain())
    sh.request()
    for _ in range(60):
        sh.tick()
        sw = sh.zk.state().switchover
        if sw is not None and sw.released:
            break
    if sh.zk.state().primary.id == s.id:
        pytest.skip("the sync took over in the same tick as the release")
    sh.kill(s)
    sh.run(3 * sim.SESSION_TIMEOUT)
    sh.start(s)
    sh.settle()
    st = sh.zk.state()
    assert st.switchover is None and st.primary.id in (p.id, s.id)


def test_simulated_switchover_with_random_faults_keeps_the_invariants():
    import random

    for seed in range(30):
        sh = SwShard(3, seed=seed, commits_per_tick=2).bootstrap()
        rng = random.Random(seed)
        sh.request()
        sh.run(rng.randrange(0, 8))
        victim = rng.choice(sh.nodes)
        getattr(sh, rng.choice(["kill", "kill_pg", "hang"]))(victim)
        sh.run(3 * sim.SESSION_TIMEOUT)
        sh.heal_all()
        sh.run(SW_LIMIT + 2)  # a request that cannot finish is withdrawn by the primary
        sh.settle()
        assert sh.zk.state().switchover is None, sh.describe()


def acked_after(sh: SwShard, node, ticks: int = 10) -> bool:
    before = len(sh.acked)
    sh.run(ticks)
    return len(sh.acked) > before and sh.ackers[-1] == node.id
