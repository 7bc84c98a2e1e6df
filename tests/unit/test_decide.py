"""The decision core, rule by rule, then every combination of the inputs that matter."""

import itertools
from dataclasses import replace

import pytest

from manatee.shard.decide import decide
from manatee.shard.decision import Observation, lsn_text
from manatee.shard.state import (
    CONNECTED, DEPOSED, FENCED, LOST, PRIMARY, REBUILD, SAFE_MODE, STANDBY, SUSPENDED, UNASSIGNED,
    UNKNOWN_MEMORY, ClusterState, Freeze,
)
from tests.observations import A, B, C, D, E, INIT, STATE, obs


# ---------------------------------------------------------------- rule 1: safe mode
@pytest.mark.parametrize("me", [A, B, C, D])
def test_error_node_means_safe_mode_whatever_my_place(me):
    d = decide(obs(me, error={"primary": "10.0.0.1", "reason": "sync diverged"}))
    assert d.target.role == SAFE_MODE and d.target.read_only
    assert d.write_state is None and d.write_error is None
    assert "sync diverged" in d.reason


# ---------------------------------------------------------------- rule 2: ZooKeeper session
def test_primary_whose_session_expired_is_fenced():
    d = decide(obs(A, zk=LOST, sync_caught_up=True))
    assert d.target.role == FENCED and d.write_state is None
    assert "expired" in d.reason


def test_primary_suspended_keeps_serving_and_writes_nothing():
    d = decide(obs(A, zk=SUSPENDED, sync_caught_up=True, election=(A, C)))  # even with the sync gone
    assert d.target.role == PRIMARY and d.target.sync == B
    assert d.write_state is None


def test_primary_suspended_past_expiry_fences_once_its_sync_stops_streaming():
    d = decide(obs(A, zk=SUSPENDED, sync_caught_up=True, expiry_passed=True, sync_streaming=True))
    assert d.target.role == PRIMARY  # F10: all of ZooKeeper down, the sync still follows me
    d = decide(obs(A, zk=SUSPENDED, sync_caught_up=True, expiry_passed=True, sync_streaming=False))
    assert d.target.role == FENCED and d.rule == "primary.fence_suspended"


def test_primary_suspended_past_expiry_fences_when_its_sync_stops_heartbeating():
    # F7: a partition hides from PostgreSQL that the sync is gone until wal_sender_timeout;
    # the sync's heartbeats tell at once. Not before the session may have expired (F10).
    stale = {B.id: False, C.id: True}
    d = decide(obs(A, zk=SUSPENDED, sync_caught_up=True, expiry_passed=True, sync_streaming=True, heartbeats=stale))
    assert d.target.role == FENCED and d.rule == "primary.fence_suspended" and "heartbeat" in d.reason
    d = decide(obs(A, zk=SUSPENDED, sync_caught_up=True, expiry_passed=False, sync_streaming=True, heartbeats=stale))
    assert d.target.role == PRIMARY
    d = decide(obs(A, zk=SUSPENDED, sync_caught_up=True, expiry_passed=True, sync_streaming=True,
                   heartbeats={B.id: True, C.id: False}))
    assert d.target.role == PRIMARY  # only the async is silent: the sync still follows me


@pytest.mark.parametrize("expiry_passed", [False, True])
@pytest.mark.parametrize("sync_streaming", [False, True])
def test_a_fenced_primary_stays_fenced_until_its_session_is_connected(expiry_passed, sync_streaming):
    # F7, 2026-12-06: between the server's "session expired" reply and the LOST event, an
    # observation said SUSPENDED with a fresh expiry deadline, and the fenced primary started
    # PostgreSQL again as the primary of the stale state. Fenced is left only once connected.
    d = decide(obs(A, zk=SUSPENDED, fenced=True, sync_caught_up=True, expiry_passed=expiry_passed,
                   sync_streaming=sync_streaming))
    assert d.target.role == FENCED and d.rule == "primary.fence_held" and d.write_state is None
    d = decide(obs(A, zk=CONNECTED, fenced=True, sync_caught_up=True, sync_streaming=sync_streaming))
    assert d.target.role == PRIMARY  # the state read in a connected session still names me


def test_primary_suspended_in_one_node_write_mode_without_sync_is_fenced():
    st = ClusterState(generation=1, primary=A, one_node_write_mode=True)
    d = decide(obs(A, state=st, zk=SUSPENDED, one_node_write_mode=True, election=(A,)))
    assert d.target.role == FENCED


@pytest.mark.parametrize("zk", [SUSPENDED, LOST])
def test_standbys_keep_following_without_zookeeper(zk):
    assert decide(obs(B, zk=zk)).target == decide(obs(B)).target
    assert decide(obs(C, zk=zk)).target == decide(obs(C)).target


@pytest.mark.parametrize("zk", [SUSPENDED, LOST])
def test_sync_never_takes_over_without_zookeeper(zk):
    d = decide(obs(B, zk=zk, election=(B, C), streaming=False, upstream_id=None))
    assert d.target.role == STANDBY and d.write_state is None and zk in d.reason


# ---------------------------------------------------------------- rule 3: no state yet
def test_head_of_election_declares_generation_1():
    d = decide(obs(A, state=None, state_version=-1, wal=0x1000, election=(A, B, C)))
    st = d.write_state
    assert st == ClusterState(generation=1, primary=A, sync=B, async_=(C,), init_wal=0x1000)
    assert d.target.role == PRIMARY and d.target.read_only and d.target.sync == B


def test_others_wait_for_the_head():
    d = decide(obs(B, state=None, state_version=-1, election=(A, B, C)))
    assert d.target.role == UNASSIGNED and d.write_state is None and "10.0.0.1 heads" in d.reason


def test_a_lone_head_waits_for_a_second_peer():
    d = decide(obs(A, state=None, state_version=-1, election=(A,)))
    assert d.target.role == UNASSIGNED and d.write_state is None


def test_a_lone_head_in_one_node_write_mode_declares_and_writes():
    d = decide(obs(A, state=None, state_version=-1, election=(A,), one_node_write_mode=True))
    assert d.write_state.sync is None and d.write_state.one_node_write_mode
    assert d.target.role == PRIMARY and not d.target.read_only


def test_no_declaration_while_disconnected():
    d = decide(obs(A, state=None, state_version=-1, zk=SUSPENDED))
    assert d.target.role == UNASSIGNED and d.write_state is None


def test_duplicate_election_entries_keep_the_latest():
    d = decide(obs(B, state=None, state_version=-1, election=(A, B, A)))
    assert d.write_state is not None and d.write_state.primary == B and d.write_state.sync == A


# ---------------------------------------------------------------- rule 4: the primary
def test_primary_waits_read_only_until_its_sync_catches_up():
    d = decide(obs(A))
    assert d.target == decide(obs(A)).target and d.target.read_only and d.target.sync == B
    assert d.write_state is None and d.rule == "primary.wait_sync"


def test_primary_takes_writes_once_its_sync_caught_up():
    d = decide(obs(A, sync_caught_up=True))
    assert not d.target.read_only and d.write_state is None and d.rule == "primary.steady"


def test_primary_goes_read_only_before_naming_a_new_sync():
    d = decide(obs(A, election=(A, C), read_only=False, sync_caught_up=True))
    assert d.write_state is None and d.target.read_only and d.target.sync == B
    assert d.rule == "primary.replace_sync_read_only_first"


def test_primary_names_the_first_live_async_as_sync_once_read_only():
    d = decide(obs(A, election=(A, C, D), read_only=True, wal=0x9000))
    st = d.write_state
    assert st.generation == 4 and st.primary == A and st.sync == C and st.async_ == (D,) and st.init_wal == 0x9000
    assert d.target.sync == C and d.target.read_only
    assert "0/9000" in d.reason and "10.0.0.3" in d.reason


def test_sync_with_stale_heartbeats_is_replaced_and_rejoins_at_the_tail():
    d = decide(obs(A, heartbeats={B.id: False}, read_only=True))
    assert d.write_state.sync == C and d.write_state.async_ == (B,)
    assert "heartbeats" in d.reason


def test_fresh_or_unknown_heartbeats_keep_the_sync():
    for hb in ({B.id: True}, {}):
        assert decide(obs(A, heartbeats=hb, read_only=True)).write_state is None


def test_primary_without_any_standby_stays_read_only():
    d = decide(obs(A, election=(A,), read_only=False, sync_caught_up=False))
    assert d.target.role == PRIMARY and d.target.read_only and d.write_state.async_ == ()
    d = decide(obs(A, election=(A,), state=STATE.evolve(async_=()), sync_caught_up=True))
    assert d.write_state is None and d.rule == "primary.sync_gone_no_candidate"


def test_primary_without_wal_position_does_not_name_a_sync():
    d = decide(obs(A, election=(A, C), wal=None))
    assert d.write_state is None and d.target.read_only


def test_newcomer_is_appended_without_a_generation_bump():
    d = decide(obs(A, election=(D, A, B, C), sync_caught_up=True))
    assert d.write_state.generation == 3 and d.write_state.async_ == (C, D)
    assert not d.target.read_only


def test_dead_async_is_dropped_without_a_generation_bump():
    d = decide(obs(A, election=(A, B), sync_caught_up=True))
    assert d.write_state.generation == 3 and d.write_state.async_ == ()


def test_live_deposed_peer_moves_to_the_tail_and_dead_ones_stay_deposed():
    st = STATE.evolve(deposed=(D, E))
    d = decide(obs(A, state=st, election=(A, B, C, D), sync_caught_up=True))
    assert d.write_state.async_ == (C, D) and d.write_state.deposed == (E,)


def test_nothing_changed_means_no_write():
    assert decide(obs(A, sync_caught_up=True)).write_state is None


def test_frozen_primary_changes_nothing():
    st = STATE.evolve(freeze=Freeze(reason="upgrade"))
    d = decide(obs(A, state=st, election=(A, C, D), read_only=True))
    assert d.write_state is None and d.target.sync == B and "frozen" in d.reason


def test_primary_with_empty_data_dir_after_generation_1_refuses():
    d = decide(obs(A, has_data=False, running=False, wal=None))
    assert d.target.role == UNASSIGNED and "empty" in d.reason
    d = decide(obs(A, state=STATE.evolve(generation=1), has_data=False, running=False, wal=None))
    assert d.target.role == PRIMARY  # a new shard: the shell creates the database


def test_one_node_write_mode_primary_drops_its_gone_sync_and_takes_writes():
    st = STATE.evolve(async_=(), one_node_write_mode=True)
    d = decide(obs(A, state=st, election=(A,), one_node_write_mode=True, read_only=True))
    assert d.write_state.sync is None and not d.target.read_only and d.write_state.generation == 4


# ---------------------------------------------------------------- rule 5: the sync
def test_sync_follows_a_live_primary():
    d = decide(obs(B))
    assert d.target.role == STANDBY and d.target.upstream == A and d.target.downstream == C


def test_diverged_sync_with_live_primary_rebuilds():
    assert decide(obs(B, diverged=True)).target.role == REBUILD
    assert decide(obs(B, has_data=False)).target.role == REBUILD
    forked = decide(obs(B, in_recovery=False))  # running as a primary it is not: forked
    assert forked.target.role == REBUILD and forked.target.upstream == A


def test_sync_detaches_before_taking_over():
    d = decide(obs(B, election=(B, C)))
    assert d.target.role == STANDBY and d.target.upstream is None and d.write_state is None
    assert d.rule == "sync.detach"


def test_sync_takes_over_when_detached():
    d = decide(obs(B, election=(B, C, D), streaming=False, upstream_id=None, wal=0x6000))
    st = d.write_state
    assert st.generation == 4 and st.primary == B and st.sync == C and st.async_ == (D,)
    assert st.deposed == (A,) and st.init_wal == 0x6000
    assert d.target.role == PRIMARY and d.target.read_only and d.target.sync == C


def test_sync_behind_init_wal_may_not_take_over():
    d = decide(obs(B, election=(B, C), streaming=False, upstream_id=None, wal=0x3000))
    assert d.target.role == STANDBY and d.write_state is None
    assert d.reason == ("the primary 10.0.0.1 is gone but my WAL 0/3000 is behind 0/5000 that the primary had "
                        "when I became sync, so I may not take over")


def test_sync_that_has_not_streamed_may_not_take_over():
    d = decide(obs(B, election=(B, C), streaming=False, upstream_id=None, wal=None))
    assert d.write_state is None and d.rule == "sync.no_wal"


def test_sync_without_another_standby_waits_unless_one_node_write_mode():
    d = decide(obs(B, election=(B,), streaming=False, upstream_id=None))
    assert d.write_state is None and d.rule == "sync.no_candidate"
    d = decide(obs(B, election=(B,), streaming=False, upstream_id=None, one_node_write_mode=True))
    assert d.write_state.primary == B and d.write_state.sync is None and not d.target.read_only


def test_diverged_sync_with_the_primary_gone_enters_safe_mode():
    d = decide(obs(B, election=(B, C), diverged=True))
    assert d.target.role == SAFE_MODE and d.write_state is None
    assert d.write_error["standby"] == B.ip and d.write_error["primary"] == A.ip
    assert d.write_error["reason"] == d.reason and "diverged" in d.reason


def test_an_operators_rebuild_request_rebuilds_from_a_live_upstream_but_is_no_divergence():
    """manatee-adm rebuild, its restore not begun: the data is as it was. With the primary
    alive the sync rebuilds from it (and an async from its upstream); with the primary gone
    the sync takes over as any sync holding every acknowledged write would (before: it put the
    shard in safe mode, "my WAL has diverged", with its data intact)."""
    d = decide(obs(B, rebuild_requested=True))
    assert d.target.role == REBUILD and d.target.upstream == A and d.rule == "sync.rebuild"
    assert "an operator asked me to rebuild (manatee-adm rebuild) from the primary 10.0.0.1" in d.reason
    a = decide(obs(C, rebuild_requested=True))
    assert a.target.role == REBUILD and a.rule == "async.rebuild"
    gone = dict(election=(B, C), streaming=False, upstream_id=None, wal=0x6000)
    detached = decide(obs(B, **gone, rebuild_requested=True))
    assert detached.target.role != SAFE_MODE and detached.write_error is None
    assert detached.write_state is not None and detached.write_state.primary == B, detached.reason
    assert decide(obs(B, **gone, diverged=True)).target.role == SAFE_MODE  # a real divergence still does


def test_frozen_sync_does_not_take_over():
    st = STATE.evolve(freeze=Freeze(reason="upgrade"))
    d = decide(obs(B, state=st, election=(B, C), streaming=False, upstream_id=None))
    assert d.write_state is None and "frozen" in d.reason


def test_sync_not_registered_in_the_election_does_not_take_over():
    d = decide(obs(B, election=(C,), streaming=False, upstream_id=None))
    assert d.write_state is None and "not registered" in d.reason


# ---------------------------------------------------------------- rule 6: asyncs
def test_async_follows_its_nearest_live_predecessor():
    st = STATE.evolve(async_=(C, D))
    assert decide(obs(C, state=st, election=(A, B, C, D))).target.upstream == B
    assert decide(obs(D, state=st, election=(A, B, C, D))).target.upstream == C
    assert decide(obs(D, state=st, election=(A, D))).target.upstream == A
    assert decide(obs(C, state=st, election=(A, B, C, D))).target.downstream == D


def test_async_with_nobody_ahead_waits_and_never_takes_over():
    d = decide(obs(C, election=(C,), streaming=False, upstream_id=None, wal=0x99999))
    assert d.target.role == UNASSIGNED and d.write_state is None


def test_diverged_async_rebuilds_from_its_upstream():
    d = decide(obs(C, diverged=True))
    assert d.target.role == REBUILD and d.target.upstream == B


# ---------------------------------------------------------------- rules 7, 8
def test_deposed_stays_stopped():
    d = decide(obs(D, state=STATE.evolve(deposed=(D,)), election=(A, B, C, D)))
    assert d.target.role == DEPOSED and d.write_state is None


def test_stranger_waits_to_be_appended():
    d = decide(obs(D, election=(A, B, C, D)))
    assert d.target.role == UNASSIGNED and "appends me" in d.reason


# =============================================================== every combination
PLACES = ("primary", "sync", "async", "deposed", "none")
ME_FOR = {"primary": A, "sync": B, "async": C, "deposed": D, "none": E}
WALS = {"none": None, "below": INIT - 1, "at": INIT}


def _combo_obs(place, zk, p_live, s_live, a_live, wal, diverged, frozen, error, read_only, streaming, onwm,
               pg_known=True, gray=False):
    st = ClusterState(generation=5, primary=A, sync=B, async_=(C,), deposed=(D,), init_wal=INIT,
                      freeze=Freeze(reason="ops") if frozen else None, one_node_write_mode=onwm)
    me = ME_FOR[place]
    live = [p for p, up in ((A, p_live), (B, s_live), (C, a_live)) if up]
    election = tuple(dict.fromkeys([*live, me]))
    if gray:  # the primary's sync has stalled; a standby's PostgreSQL is stopped in start back-off
        down = place != "primary"
        return replace(_combo_obs(place, zk, p_live, s_live, a_live, wal, diverged, frozen, error, read_only,
                                  streaming and not down, onwm, pg_known),
                       sync_stalled_s=30.0, start_held="failed to start 3 times in a row and waits 4s",
                       **(dict(running=False, in_recovery=False, pg_known=True, wal=None, read_only=None)
                          if down else {}))
    return Observation(
        me=me, zk=zk, election=election, state=st, state_version=11,
        error={"reason": "operator test"} if error else None,
        running=True, in_recovery=(place != "primary") if pg_known else None, pg_known=pg_known,
        wal=WALS[wal] if pg_known else None, streaming=streaming and pg_known,
        upstream_id=A.id if streaming else None, read_only=read_only if pg_known else None, diverged=diverged,
        sync_caught_up=True, has_data=True, one_node_write_mode=onwm,
        expiry_passed=zk == SUSPENDED and not streaming, sync_streaming=s_live and streaming)


COMBOS = list(itertools.product(PLACES, (CONNECTED, SUSPENDED, LOST), (True, False), (True, False), (True, False),
                                tuple(WALS), (False, True), (False, True), (False, True), (True, False),
                                (True, False), (False, True), (True, False), (False, True)))


def test_combination_count():
    assert len(COMBOS) == 5 * 3 * 2 ** 3 * 3 * 2 ** 8


@pytest.mark.parametrize("chunk", range(8))
def test_every_combination_respects_the_invariants(chunk):
    for combo in COMBOS[chunk::8]:
        (place, zk, p_live, s_live, a_live, wal, diverged, frozen, error, read_only, streaming, onwm,
         pg_known, gray) = combo
        o = _combo_obs(*combo)
        d = decide(o)
        ctx = f"{combo} -> {d}"
        # one plain sentence, always
        assert d.reason and "\n" not in d.reason and ". " not in d.reason and d.rule, ctx
        writes = d.write_state is not None or d.write_error is not None
        assert not (d.write_state is not None and d.write_error is not None), ctx
        if error:
            assert d.target.role == SAFE_MODE and not writes, ctx
            continue
        if writes:  # only a connected, registered, unfrozen primary or sync writes
            assert zk == CONNECTED and not frozen and place in ("primary", "sync"), ctx
        if d.target.role == FENCED:
            assert place == "primary" and (zk == LOST or (zk == SUSPENDED and (onwm or o.expiry_passed))), ctx
            if zk == SUSPENDED and not onwm:
                assert not o.sync_streaming, ctx
        if place == "primary" and zk == LOST:
            assert d.target.role == FENCED, ctx
        if place == "primary" and zk == SUSPENDED and not onwm and (o.sync_streaming or not o.expiry_passed):
            assert d.target.role == PRIMARY, ctx  # F10: keeps serving while its sync follows it
        if d.target.role == PRIMARY:
            assert place == "primary" or (place == "sync" and d.write_state is not None), ctx
            if not d.target.read_only:
                assert onwm or (place == "primary" and d.target.sync is not None), ctx
        if place in ("async", "deposed", "none"):
            assert d.target.role != PRIMARY and not writes, ctx  # S3: never an async
        if place == "deposed":
            assert d.target.role == DEPOSED, ctx
        if d.target.role in (STANDBY, REBUILD) and d.target.upstream is not None:
            waits_for_primary = place == "sync" and d.target.upstream.id == A.id  # resumes if it returns
            assert d.target.upstream.id in {p.id for p in o.election} or waits_for_primary, ctx
            assert d.target.upstream.id != o.me.id, ctx
            assert d.target.upstream.id not in {p.id for p in o.state.deposed}, ctx
        if d.write_error is not None:
            assert place == "sync" and diverged and not p_live, ctx
        if not pg_known:  # unknown is not a fact: only PG's own word or its log justify these
            assert d.target.role != REBUILD or diverged, ctx
            assert (d.target.role != SAFE_MODE and d.write_error is None) or diverged, ctx
            assert not (place == "sync" and d.target.role == PRIMARY), ctx
            if place != "primary" and not diverged:
                assert d.target.role in (STANDBY, UNASSIGNED, DEPOSED), ctx
                assert "did not answer" in d.reason or d.target.role != STANDBY or place == "none", ctx
        if gray and place in ("sync", "async"):  # a standby whose starts fail: out of the chain, never rebuilt
            assert d.target.role != PRIMARY and (d.target.role != REBUILD or diverged), ctx
            assert d.target.role == UNASSIGNED or diverged, ctx
        new = d.write_state
        if new is not None:
            old = o.state
            changed = new.primary.id != old.primary.id or getattr(new.sync, "id", None) != getattr(old.sync, "id", None)
            assert new.generation == old.generation + (1 if changed else 0), ctx
            if new.primary.id != old.primary.id:  # a takeover: S2, S3, S4
                assert place == "sync" and new.primary.id == B.id and not p_live, ctx
                assert o.wal is not None and o.wal >= old.init_wal and not diverged, ctx
                assert not streaming and o.upstream_id is None, ctx  # detached first
                assert new.init_wal == o.wal and A in new.deposed, ctx
            elif changed:  # the primary named a new sync: it went read-only first
                assert place == "primary" and read_only is True and new.init_wal == o.wal, ctx
            elif new.init_wal != old.init_wal:  # only lowered to the primary's own WAL, on PG's word
                assert place == "primary" and pg_known and o.wal is not None and new.init_wal == o.wal, ctx
                assert o.wal < old.init_wal, ctx
            members = [p.id for p in new.members()]
            assert len(members) == len(set(members)), ctx
            assert all(p.id in {q.id for q in o.election} for p in new.async_), ctx


# =============================================================== unknown is not a fact (issue 8)
UNKNOWN_PG = dict(running=True, pg_known=False, in_recovery=None, wal=None, read_only=None, streaming=False)


def test_unknown_pg_status_on_an_async_is_not_divergence():
    d = decide(obs(C, **UNKNOWN_PG))
    assert d.target.role == STANDBY and d.rule == "async.pg_unknown" and "did not answer" in d.reason


def test_unknown_pg_status_on_a_sync_with_its_primary_gone_is_not_safe_mode():
    d = decide(obs(B, election=(B, C), **UNKNOWN_PG))
    assert d.target.role == STANDBY and d.rule == "sync.pg_unknown"
    assert d.write_error is None and d.write_state is None


def test_unknown_pg_status_on_a_sync_with_its_primary_alive_keeps_following():
    d = decide(obs(B, **UNKNOWN_PG))
    assert d.target.role == STANDBY and d.target.upstream == A and d.rule == "sync.pg_unknown"


def test_unknown_pg_status_on_the_primary_changes_nothing():
    d = decide(obs(A, sync_caught_up=True, heartbeats={B.id: True}, **UNKNOWN_PG))
    assert d.target.role == PRIMARY and d.write_state is None and d.rule == "primary.pg_unknown"


def test_a_standby_whose_pg_says_it_is_a_primary_has_forked():
    d = decide(obs(C, in_recovery=False))
    assert d.target.role == REBUILD


# =============================================================== S9: a primary that cannot serve steps down
SICK = "its status query has not been answered for 8.0s"


def test_primary_that_cannot_serve_kills_postgres_first():
    d = decide(obs(A, cannot_serve=SICK, heartbeats={B.id: True}, sync_holds_init_wal=True, **UNKNOWN_PG))
    assert d.rule == "primary.step_down_stop" and d.target.role == UNASSIGNED and d.write_state is None


def test_primary_that_cannot_serve_releases_to_its_sync_once_postgres_is_stopped():
    d = decide(obs(A, cannot_serve=SICK, heartbeats={B.id: True}, sync_holds_init_wal=True, running=False, in_recovery=None, wal=None))
    assert d.rule == "primary.step_down" and d.target.role == UNASSIGNED
    sw = d.write_state.switchover
    assert sw.to == B.id and sw.released and sw.released_wal == INIT and sw.by == "step-down"
    assert d.write_state.generation == STATE.generation and d.write_state.primary == A


@pytest.mark.parametrize("why,kw", [
    ("sync not heartbeating", dict(heartbeats={})),
    ("sync silent", dict(heartbeats={B.id: False})),
    ("sync not live", dict(heartbeats={B.id: True}, election=(A, C))),
    ("suspended", dict(heartbeats={B.id: True}, zk=SUSPENDED)),
    ("frozen", dict(heartbeats={B.id: True}, state=STATE.evolve(freeze=Freeze(reason="ops")))),
])
def test_primary_that_cannot_serve_keeps_trying_without_a_healthy_sync(why, kw):
    d = decide(obs(A, cannot_serve=SICK, running=False, in_recovery=None, wal=None, **kw))
    assert d.target.role == PRIMARY, why
    assert d.write_state is None or d.write_state.switchover is None, why


@pytest.mark.parametrize("free, steps_down", [(1 << 20, False), (0, False), (16 << 20, True), (None, True)])
def test_primary_that_cannot_serve_does_not_step_down_to_a_sync_whose_disk_is_full_too(free, steps_down):
    """The sync's heartbeats say how much room it has: below latches.DISK_FULL_BELOW it would
    fail the same way (each handover a new generation, each old primary a rebuild). Unknown
    room (an older sitter, a failed zfs check) is no reason to keep a primary that cannot serve."""
    room = {} if free is None else {B.id: free}
    for running in (True, False):
        d = decide(obs(A, cannot_serve=SICK, heartbeats={B.id: True}, sync_holds_init_wal=True, standby_free=room, running=running,
                       **({} if running else dict(in_recovery=None, wal=None))))
        if steps_down:
            assert d.rule.startswith("primary.step_down"), (free, running, d)
        else:
            assert d.rule == "primary.cannot_serve" and d.target.role == PRIMARY and d.write_state is None, d
            assert f"my sync {B}'s disk is full too ({free} bytes free)" in d.reason, d.reason


@pytest.mark.parametrize("caught_up, said, steps_down", [
    (True, None, True), (False, None, False), (False, INIT - 1, False), (False, INIT, True), (False, INIT + 9, True),
])
def test_primary_that_cannot_serve_steps_down_only_to_a_sync_that_holds_its_wal_up_to_init_wal(caught_up, said,
                                                                                             steps_down):
    """2026-12-05 sandbox trial: the sync gave way (full disk), the primary named the async
    its sync and, its own disk full, stepped down to it a moment later: the new sync had not
    received the primary's WAL up to initWal, refused to take over (sync.behind), and the
    stopped primary could not send it the rest: release, withdraw, release, 47 s and four
    StepDown entries. The step-down now waits until the sync has caught up (the shell's
    latch) or its heartbeat says it has received initWal."""
    d = decide(obs(A, cannot_serve=SICK, heartbeats={B.id: True}, sync_holds_init_wal=caught_up,
                   standby_wal={} if said is None else {B.id: said}, running=False, in_recovery=None, wal=None))
    if steps_down:
        assert d.rule == "primary.step_down", d
    else:
        assert d.rule == "primary.cannot_serve" and d.write_state is None, d
        assert f"has not shown that it holds my WAL up to {lsn_text(INIT)}" in d.reason, d.reason


def test_primary_after_its_step_down_stays_stopped_while_its_sync_takes_over():
    st = decide(obs(A, cannot_serve=SICK, heartbeats={B.id: True}, sync_holds_init_wal=True, running=False, wal=None)).write_state
    d = decide(obs(A, state=st, cannot_serve=SICK, heartbeats={B.id: True}, sync_holds_init_wal=True, running=False, wal=None))
    assert d.target.role == UNASSIGNED and d.write_state is None


def test_sync_takes_over_from_a_stepped_down_primary_after_detaching():
    st = decide(obs(A, cannot_serve=SICK, heartbeats={B.id: True}, sync_holds_init_wal=True, running=False, wal=None)).write_state
    d = decide(obs(B, state=st))
    assert d.rule == "sync.detach" and "stepped down" in d.reason
    d = decide(obs(B, state=st, streaming=False, upstream_id=None))
    assert d.rule == "sync.switchover" and d.write_state.primary == B and d.write_state.generation == 4
    assert d.write_state.switchover is None


def test_sync_behind_init_wal_does_not_take_over_from_a_stepped_down_primary():
    st = decide(obs(A, cannot_serve=SICK, heartbeats={B.id: True}, sync_holds_init_wal=True, running=False, wal=None)).write_state
    d = decide(obs(B, state=st, streaming=False, upstream_id=None, wal=INIT - 1))
    assert d.target.role == STANDBY and d.write_state is None


STEP_DOWN_COMBOS = list(itertools.product((CONNECTED, SUSPENDED, LOST), (True, False), (True, False),
                                          (None, True, False), (True, False), (True, False), (True, False),
                                          (True, False), (None, 1 << 20, 1 << 30), (True, False)))


def _step_down_obs(combo: tuple, st, election, **kw) -> Observation:
    """The primary A's observation for one of STEP_DOWN_COMBOS."""
    zk, _s_live, _a_live, hb, running, known, _frozen, onwm, room, caught_up = combo
    return obs(A, election=election, state=st, zk=zk, heartbeats={} if hb is None else {B.id: hb},
               running=running, pg_known=known, in_recovery=False if known else None,
               wal=0x9000 if known and running else None, read_only=True if known and running else None,
               one_node_write_mode=onwm, standby_free={} if room is None else {B.id: room},
               sync_holds_init_wal=caught_up, **kw)


def test_every_step_down_combination_is_safe():
    """place primary, cannot_serve set: × zk × sync live × async live × sync heartbeat
    (none/fresh/stale) × PG running × PG known × frozen × ONWM × the sync's room (unknown,
    full, plenty) × the sync caught up with initWal."""
    for combo in STEP_DOWN_COMBOS:
        zk, s_live, a_live, hb, running, known, frozen, onwm, room, caught_up = combo
        st = STATE.evolve(freeze=Freeze(reason="ops") if frozen else None, one_node_write_mode=onwm)
        election = tuple(p for p, up in ((A, True), (B, s_live), (C, a_live)) if up)
        d = decide(_step_down_obs(combo, st, election, cannot_serve="not healthy for 9.0s: it is not running"))
        ctx = f"{combo} -> {d}"
        assert d.reason and "\n" not in d.reason and ". " not in d.reason, ctx
        if d.rule.startswith("primary.step_down"):
            assert zk == CONNECTED and not frozen and s_live and hb is True and room != 1 << 20 and caught_up, ctx
            assert d.target.role == UNASSIGNED, ctx
        if d.write_state is not None and d.write_state.switchover is not None:
            sw = d.write_state.switchover
            assert d.rule == "primary.step_down" and not running, ctx  # PostgreSQL killed first (S1)
            assert sw.released and sw.to == B.id and sw.released_wal == st.init_wal, ctx
            assert d.write_state.primary == A and d.write_state.generation == st.generation, ctx
        if zk == LOST:
            assert d.target.role == FENCED, ctx
        if d.write_state is not None or d.write_error is not None:
            assert zk == CONNECTED and not frozen, ctx


def test_F19_sync_that_withholds_heartbeats_is_replaced_by_the_async_that_followed_it():
    """F19 on the sync after a failover (issue 8): the sync's disk is full, its PostgreSQL
    down, its heartbeats expired; the async followed it and streams from nobody. The primary
    still names the async (it then streams from me) and stays read-only until it has flushed
    my whole WAL — so it holds every acknowledged commit before any new one (S1/S2)."""
    sick = dict(heartbeats={B.id: False}, sync_streaming=False, sync_flush=None, sync_caught_up=False)
    d = decide(obs(A, read_only=False, **sick))
    assert d.rule == "primary.replace_sync_read_only_first" and d.write_state is None and d.target.read_only
    d = decide(obs(A, read_only=True, wal=0xA000, **sick))
    new = d.write_state
    assert d.rule == "primary.replace_sync" and new.sync == C and new.async_ == (B,) and new.init_wal == 0xA000
    assert d.target.read_only and d.target.sync == C
    # the new generation: read-only until C has flushed my WAL (the shell's latch), then writes
    d = decide(obs(A, state=new, read_only=True, wal=0xA000, sync_streaming=True, sync_flush=0x9000))
    assert d.rule == "primary.wait_sync" and d.target.read_only and d.write_state is None
    d = decide(obs(A, state=new, read_only=True, wal=0xA000, sync_streaming=True, sync_flush=0xA000,
                   sync_caught_up=True))
    assert d.rule == "primary.steady" and not d.target.read_only


def test_F19_new_primary_whose_wal_is_below_init_wal_records_its_own_wal():
    """F19 on the primary (issue 8): it died half-way through writing a record, its sync had
    received the first part and took over with that position as initWal; PostgreSQL dropped
    the incomplete record when it ended recovery, so the new primary's WAL (read-only, barely
    growing) lies below initWal, and its sync's flush could not reach initWal for a minute.
    The primary lowers initWal to its own WAL, same generation; then its sync catches up."""
    torn = ClusterState(generation=4, primary=B, sync=C, async_=(A,), init_wal=0x9CC000)
    d = decide(obs(B, state=torn, wal=0x9CBEA8, sync_streaming=True, sync_flush=0x9CBEA8))
    assert d.rule == "primary.trim_init_wal" and d.target.read_only and d.target.sync == C
    new = d.write_state
    assert new.init_wal == 0x9CBEA8 and new.generation == 4 and new.sync == C and new.async_ == (A,)
    d = decide(obs(B, state=new, wal=0x9CBEA8, sync_streaming=True, sync_flush=0x9CBEA8))
    assert d.rule == "primary.wait_sync" and d.write_state is None  # the shell's latch: caught up next
    d = decide(obs(B, state=new, wal=0x9CBEA8, sync_streaming=True, sync_flush=0x9CBEA8, sync_caught_up=True))
    assert d.rule == "primary.steady" and not d.target.read_only


@pytest.mark.parametrize("why, kw", [
    ("unknown", dict(pg_known=False, in_recovery=None, wal=None, read_only=None)),
    ("still in recovery", dict(in_recovery=True)),
    ("not running", dict(running=False, in_recovery=False, wal=None)),
    ("suspended", dict(zk=SUSPENDED)),
    ("frozen", dict(state=ClusterState(generation=4, primary=B, sync=C, async_=(A,), init_wal=0x9CC000,
                                       freeze=Freeze(reason="ops")))),
    ("at init_wal", dict(wal=0x9CC000)),
])
def test_init_wal_is_lowered_only_on_my_running_primary_s_own_word(why, kw):
    torn = ClusterState(generation=4, primary=B, sync=C, async_=(A,), init_wal=0x9CC000)
    o = dict(state=torn, wal=0x9CBEA8, sync_streaming=True, sync_flush=0x9CBEA8)
    o.update(kw)
    d = decide(obs(B, **o))
    assert d.rule != "primary.trim_init_wal" and (d.write_state is None or d.write_state.init_wal == 0x9CC000), why


@pytest.mark.parametrize("hb", [True, None])
def test_a_sync_that_heartbeats_or_has_no_verdict_is_not_replaced_even_when_not_streaming(hb):
    """Not streaming alone is not "gone": a restarting sync reconnects within seconds, and its
    own sitter withholds its heartbeats once it has been sick for healthChkTimeout."""
    d = decide(obs(A, heartbeats={} if hb is None else {B.id: hb}, sync_streaming=False, sync_flush=None,
                   read_only=True))
    assert d.write_state is None and d.rule == "primary.wait_sync" and d.target.read_only


def test_expired_heartbeats_with_unknown_pg_on_the_primary_change_nothing():
    d = decide(obs(A, heartbeats={B.id: False}, running=True, pg_known=False, in_recovery=None, wal=None,
                   read_only=None))
    assert d.write_state is None and d.target.read_only and d.target.sync == B


# =============================================================== issue 8: three more gray failures
def test_sync_that_heartbeats_but_does_not_flush_is_replaced_by_the_async():
    o = obs(A, heartbeats={B.id: True}, sync_stalled_s=9.0, sync_flush=0x7000, read_only=False,
            sync_streaming=True, sync_caught_up=True)
    d = decide(o)
    assert d.write_state is None and d.target.read_only and d.rule == "primary.replace_sync_read_only_first"
    d = decide(replace(o, read_only=True))
    assert d.rule == "primary.replace_sync" and d.write_state.sync == C and d.write_state.async_ == (B,)
    assert d.write_state.init_wal == 0x9000 and d.target.read_only
    assert "still heartbeats" in d.reason and "0/7000" in d.reason and "0/9000" in d.reason


def test_sync_that_does_not_stream_at_all_is_replaced_once_stalled():
    d = decide(obs(A, heartbeats={B.id: True}, sync_stalled_s=9.0, sync_flush=None, read_only=True))
    assert d.rule == "primary.replace_sync" and "does not stream from me" in d.reason


def test_sync_not_stalled_or_unknown_pg_keeps_the_sync():
    kept = [obs(A, heartbeats={B.id: True}, sync_flush=0x7000, sync_caught_up=True, read_only=False),
            obs(A, heartbeats={B.id: True}, sync_stalled_s=9.0, **UNKNOWN_PG),
            obs(A, heartbeats={B.id: True}, sync_stalled_s=9.0, wal=None)]
    for o in kept:
        d = decide(o)
        assert d.write_state is None and d.target.sync == B, (o, d)
    assert decide(kept[0]).rule == "primary.steady"


def test_stalled_sync_without_a_candidate_stays_and_says_why():
    d = decide(obs(A, election=(A, B), state=STATE.evolve(async_=()), heartbeats={B.id: True}, sync_stalled_s=9.0,
                   sync_caught_up=True, read_only=False))
    assert d.write_state is None and d.rule == "primary.sync_gone_no_candidate" and "still heartbeats" in d.reason


@pytest.mark.parametrize("me", [B, C])
def test_standby_in_start_backoff_stays_out_of_the_chain_and_is_never_rebuilt(me):
    held = "failed to start 3 times in a row and its next start waits 4s"
    down = dict(running=False, in_recovery=False, wal=None, streaming=False, start_held=held)
    d = decide(obs(me, **down))
    place = "sync" if me == B else "async"
    assert d.target.role == UNASSIGNED and d.rule == f"{place}.start_backoff" and held in d.reason
    assert d.write_state is None and d.write_error is None
    assert decide(obs(me, **down, diverged=True)).target.role == REBUILD  # a real divergence still rebuilds
    assert decide(obs(me, start_held=held)).target.role == STANDBY  # running (a start succeeded): follows
    if me == B:  # the primary gone: still out, no safe mode, no takeover
        d = decide(obs(me, election=(B, C), **down))
        assert d.target.role == UNASSIGNED and d.write_state is None and d.write_error is None


# =============================================================== a primary whose data was lost
NO_DATA = dict(has_data=False, running=False, in_recovery=None, wal=None, read_only=None)
GEN1 = STATE.evolve(generation=1, init_wal=0)


def test_a_new_shards_first_primary_with_no_data_creates_the_database():
    """Generation 1 and no peer holding data of the shard: the unassigned -> primary steps run initdb."""
    d = decide(obs(A, state=GEN1, **NO_DATA))
    assert d.target.role == PRIMARY and d.write_state is None, d


@pytest.mark.parametrize("state, holders", [
    (GEN1, {B.id: 1}),                      # the sync was built from my data: it was wiped, or is not mounted
    (GEN1, {C.id: 1}),
    (GEN1, {B.id: UNKNOWN_MEMORY}),         # an election node that does not say: unknown is not "none"
    (GEN1, {}),                             # none says yet, but my sync has flushed my WAL (the latch)
    (STATE, {}),                            # generation > 1: my data existed
])
def test_a_primary_whose_data_was_lost_steps_down_instead_of_creating_an_empty_database(state, holders):
    """2026-12-06: at generation 1 a primary whose dataset was destroyed (or not mounted) ran
    initdb and its standbys rebuilt from the empty database (the simulation lost every
    acknowledged write); at generation > 1 it held for ever with the shard unwritable. Now it
    steps down to its sync as a primary that cannot serve does (S9)."""
    election = tuple(replace(p, remembers=holders.get(p.id)) for p in (A, B, C))
    d = decide(obs(A, state=state, election=election, heartbeats={B.id: True}, sync_holds_init_wal=True, **NO_DATA))
    assert d.rule == "primary.step_down" and d.target.role == UNASSIGNED, d
    assert "data directory is empty" in d.reason and "an empty database must not be the primary" in d.reason
    sw = d.write_state.switchover
    assert sw.to == B.id and sw.released and d.write_state.generation == state.generation
    # once released it stays stopped while its sync takes over
    d = decide(obs(A, state=d.write_state, election=election, heartbeats={B.id: True}, sync_holds_init_wal=True,
                   **NO_DATA))
    assert d.target.role == UNASSIGNED and d.write_state is None, d


def test_a_first_primary_with_no_data_whose_standby_streamed_from_it_does_not_create_the_database():
    """Random simulation, seed 100661: a new shard's primary acknowledged a write and its
    dataset was destroyed a tick later; the election it had read was from before its standbys
    said they held data, so it ran initdb and the write was lost. A heartbeat claiming a WAL
    position (streamed from me) says it holds data as well as its election node would."""
    d = decide(obs(A, state=GEN1, standby_wal={C.id: 0x3000000}, **NO_DATA))
    assert d.target.role != PRIMARY and d.rule == "primary.no_data", d
    assert f"although {C} holds data of this shard" in d.reason, d.reason
    assert decide(obs(A, state=GEN1, standby_wal={C.id: None}, **NO_DATA)).target.role == PRIMARY


def test_a_primary_whose_data_is_gone_but_postgres_still_runs_kills_it_first():
    d = decide(obs(A, has_data=False, heartbeats={B.id: True}, sync_holds_init_wal=True))
    assert d.rule == "primary.step_down_stop" and d.target.role == UNASSIGNED and d.write_state is None


@pytest.mark.parametrize("kw, why", [
    (dict(heartbeats={}), f"my sync {B} is not heartbeating me"),
    (dict(heartbeats={B.id: True}, election=(A, C)), f"my sync {B} is not in the election"),
    (dict(heartbeats={B.id: True}, state=STATE.evolve(freeze=Freeze(reason="ops"))), "frozen"),
    (dict(heartbeats={B.id: True}, zk=SUSPENDED), "suspended"),
])
def test_a_primary_whose_data_was_lost_holds_stopped_when_it_cannot_step_down(kw, why):
    d = decide(obs(A, sync_holds_init_wal=True, **{**NO_DATA, **kw}))
    assert d.target.role != PRIMARY, d  # never the steps that run initdb
    assert d.write_state is None or d.write_state.switchover is None, d
    if d.rule == "primary.no_data":
        assert "so I do not start an empty primary" in d.reason and why in d.reason, d.reason


def test_no_combination_starts_an_empty_primary_over_a_shard_with_data():
    for combo in STEP_DOWN_COMBOS:
        zk, s_live, a_live, hb, running, known, frozen, onwm, room, caught_up = combo
        for gen, holder in ((1, 1), (1, UNKNOWN_MEMORY), (4, None)):
            st = STATE.evolve(generation=gen, freeze=Freeze(reason="ops") if frozen else None,
                              one_node_write_mode=onwm)
            election = tuple(replace(p, remembers=holder if p.id == C.id else None)
                             for p, up in ((A, True), (B, s_live), (C, True)) if up)
            d = decide(_step_down_obs(combo, st, election, has_data=False))
            ctx = f"{combo} gen {gen} -> {d}"
            assert d.target.role != PRIMARY, ctx
            if d.write_state is not None and d.write_state.switchover is not None:
                assert d.rule == "primary.step_down" and not running, ctx


def test_a_first_primary_with_no_data_and_a_member_out_of_the_election_cannot_tell_and_waits():
    """Generation 1 and nobody in the election holds data, but the async named in the state is
    not in the election: it may hold data built from mine (found by the random simulation: the
    standbys restarting while the primary's dataset was gone). Unknown is not "a new shard":
    no initdb, no step-down (a sync without data could not take over); it waits."""
    d = decide(obs(A, state=GEN1, election=(A, B), **NO_DATA))
    assert d.rule == "primary.no_data_unknown" and d.target.role == UNASSIGNED and d.write_state is None, d
    assert f"{C}, named in the state, is not in the election" in d.reason, d.reason
    d = decide(obs(A, state=GEN1, election=(A,), **NO_DATA))
    assert d.rule == "primary.no_data_unknown" and f"{B}, {C}, named in the state, are not" in d.reason, d.reason
    # back in the election, saying they hold nothing: a new shard after all
    assert decide(obs(A, state=GEN1, **NO_DATA)).target.role == PRIMARY
