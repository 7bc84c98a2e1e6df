"""The declarative transition table: complete, consistent, and safe in what it orders."""

import itertools

import pytest

from manatee.shard import transitions as T
from manatee.shard.state import (
    DEPOSED, FENCED, PRIMARY, REBUILD, ROLES, SAFE_MODE, STANDBY, UNASSIGNED, Peer, Target,
)
from tests import factories


def peer(n: int) -> Peer:
    return factories.peer(f"10.0.0.{n}", f"z{n}")


A, B = peer(1), peer(2)


def targets(role: str) -> list[Target]:
    """Every shape of target a role can take (peers from a small pool)."""
    out = []
    pool = (None, A, B)
    if role == PRIMARY:
        for s, ro in itertools.product(pool, (True, False)):
            out.append(Target(PRIMARY, sync=s, downstream=s, read_only=ro))
    elif role in (STANDBY, REBUILD):
        for up, down in itertools.product(pool, pool):
            out.append(Target(role, upstream=up, downstream=down))
    else:
        for down in pool:
            out.append(Target(role, downstream=down))
    return out


def test_every_role_pair_is_in_the_table_or_explicitly_impossible():
    rows = {(t.frm, t.to) for t in T.TRANSITIONS if t.change == T.ANY}
    for frm, to in itertools.product(ROLES, ROLES):
        assert ((frm, to) in rows) != ((frm, to) in T.IMPOSSIBLE), (frm, to)


def test_every_change_between_same_role_targets_has_its_own_row():
    index = {(t.frm, t.to, t.change) for t in T.TRANSITIONS}
    for role in ROLES:
        for cur, new in itertools.product(targets(role), repeat=2):
            change = T.classify(role, cur, new)
            assert (role, role, change) in index, (role, change, cur, new)


def test_plan_covers_every_pair_of_targets():
    for frm, to in itertools.product(ROLES, ROLES):
        for cur, new in itertools.product([None, *targets(frm)], targets(to)):
            if (frm, to) in T.IMPOSSIBLE:
                with pytest.raises(T.ImpossibleTransition, match=f"{frm} -> {to}"):
                    T.plan(frm, cur, new)
                continue
            tr = T.plan(frm, cur, new)
            assert tr.frm == frm and tr.to == to and tr.comment


def test_unknown_role_is_rejected():
    with pytest.raises(ValueError, match="unknown current role"):
        T.plan("leader", None, Target(PRIMARY))


def test_table_has_no_duplicates_and_only_known_steps():
    keys = [(t.frm, t.to, t.change) for t in T.TRANSITIONS]
    assert len(keys) == len(set(keys))
    used = {s for t in T.TRANSITIONS for s in t.steps}
    assert used <= set(T.STEPS)
    assert used == set(T.STEPS), f"steps never used: {set(T.STEPS) - used}"


def test_classify():
    ro = Target(PRIMARY, sync=A, read_only=True)
    rw = Target(PRIMARY, sync=A, read_only=False)
    assert T.classify(PRIMARY, ro, rw) == T.READ_ONLY_OFF
    assert T.classify(PRIMARY, rw, ro) == T.READ_ONLY_ON
    assert T.classify(PRIMARY, rw, Target(PRIMARY, sync=B, read_only=True)) == T.NEW_SYNC_READ_ONLY_ON
    assert T.classify(PRIMARY, ro, Target(PRIMARY, sync=B, read_only=True)) == T.NEW_SYNC
    assert T.classify(PRIMARY, ro, ro) == T.SAME
    assert T.classify(PRIMARY, None, ro) == T.ANY
    assert T.classify(STANDBY, Target(PRIMARY), Target(STANDBY, upstream=A)) == T.ANY  # role mismatch
    assert T.classify(STANDBY, Target(STANDBY, upstream=A), Target(STANDBY, upstream=None)) == T.NEW_UPSTREAM
    assert T.classify(STANDBY, Target(STANDBY, upstream=A), Target(STANDBY, upstream=A, downstream=B)) == T.NEW_DOWNSTREAM


# -- what the steps promise -----------------------------------------------------------------

def test_a_primary_leaving_the_primary_role_stops_postgres_first():
    """S1: a demoted primary must stop acknowledging at once, before anything else."""
    for t in T.TRANSITIONS:
        if t.frm == PRIMARY and t.to in (UNASSIGNED, DEPOSED, FENCED, STANDBY, REBUILD):
            assert t.steps[0] == T.STOP_PG, t


def test_fencing_is_an_immediate_stop():
    assert T.plan(PRIMARY, Target(PRIMARY, sync=A), Target(FENCED)).steps == (T.STOP_PG,)
    for t in T.TRANSITIONS:
        if t.to in (FENCED, DEPOSED) and t.change == T.ANY:
            assert T.STOP_PG in t.steps, t


def test_promotion_only_into_primary_and_always_with_the_registrar():
    for t in T.TRANSITIONS:
        if T.PROMOTE in t.steps:
            assert t.to == PRIMARY
        if t.to == PRIMARY and t.frm != PRIMARY:
            assert T.PROMOTE in t.steps and T.WRITE_REGISTRAR in t.steps
            assert t.steps.index(T.CONFIGURE_PRIMARY) < t.steps.index(T.PROMOTE), t


def test_sync_promotion_does_not_restart_postgres():
    tr = T.plan(STANDBY, Target(STANDBY, upstream=None), Target(PRIMARY, sync=B))
    assert T.STOP_PG not in tr.steps and T.PROMOTE in tr.steps


def test_joining_restores_only_an_empty_node_and_rebuild_always_restores():
    assert T.plan(UNASSIGNED, None, Target(STANDBY, upstream=A)).steps[0] == T.RESTORE_IF_EMPTY
    for t in T.TRANSITIONS:
        if t.to == REBUILD and t.steps:
            assert T.RESTORE_FROM_UPSTREAM in t.steps
            assert t.steps.index(T.STOP_PG) < t.steps.index(T.RESTORE_FROM_UPSTREAM)


def test_a_rebuild_that_is_needed_again_runs_again():
    cur = Target(REBUILD, upstream=A)
    assert T.RESTORE_FROM_UPSTREAM in T.plan(REBUILD, cur, cur).steps


def test_primary_in_place_changes_are_reloads():
    rw = Target(PRIMARY, sync=A, read_only=False)
    ro = Target(PRIMARY, sync=A, read_only=True)
    assert T.plan(PRIMARY, ro, rw).steps == (T.SET_READ_WRITE, T.RELOAD_PG)
    assert T.plan(PRIMARY, rw, ro).steps == (T.SET_READ_ONLY, T.RELOAD_PG)
    assert T.plan(PRIMARY, ro, Target(PRIMARY, sync=B, read_only=True)).steps == (T.SET_SYNC, T.RELOAD_PG)
    assert T.plan(PRIMARY, rw, Target(PRIMARY, sync=B, read_only=True)).steps == (
        T.SET_READ_ONLY, T.SET_SYNC, T.RELOAD_PG)
    assert T.plan(PRIMARY, rw, rw).steps == ()


def test_standby_upstream_change_is_a_reload_not_a_restart():
    tr = T.plan(STANDBY, Target(STANDBY, upstream=A), Target(STANDBY, upstream=B))
    assert tr.steps == (T.CONFIGURE_STANDBY, T.RELOAD_PG)


def test_safe_mode_makes_whatever_runs_out_of_recovery_read_only_and_keeps_standbys_as_they_are():
    """SAFE_READ_ONLY looks at PostgreSQL itself: a primary's config on a standby would remove its
    standby.signal (a fork at its next start), and a standby's PostgreSQL may run out of recovery
    (a fork, a promotion cut short) with writes on (test_steps.py covers the step)."""
    assert T.plan(PRIMARY, Target(PRIMARY, sync=A, read_only=False), Target(SAFE_MODE)).steps == (T.SAFE_READ_ONLY,)
    for frm in (STANDBY, UNASSIGNED, REBUILD, SAFE_MODE):
        assert T.plan(frm, None, Target(SAFE_MODE)).steps == (T.SAFE_READ_ONLY,)
    for frm in (DEPOSED, FENCED):  # PostgreSQL stopped
        assert T.plan(frm, None, Target(SAFE_MODE)).steps == ()
    assert T.plan(SAFE_MODE, Target(SAFE_MODE), Target(SAFE_MODE)).steps == ()


def test_render_table_lists_every_row():
    table = T.render_table()
    assert table.count("\n") == len(T.TRANSITIONS) + len(T.IMPOSSIBLE) + 1
    for t in T.TRANSITIONS:
        assert t.comment in table


# -- plan_from: the role the shell plans from ------------------------------------------------
@pytest.mark.parametrize("role", [PRIMARY, STANDBY])
def test_plan_from_a_crashed_pg_starts_from_scratch(role):
    assert T.plan_from(role, role, running=False, out_of_recovery=False, step_down_stop=False) == UNASSIGNED


@pytest.mark.parametrize("target", [STANDBY, UNASSIGNED, REBUILD, DEPOSED, FENCED, SAFE_MODE])
def test_plan_from_a_forked_standby_is_stopped_as_a_running_primary(target):
    """A PG that runs out of recovery where the state makes me no primary takes writes if its
    configuration lets it (a sync detached for a switchover): S→S would only reload it."""
    frm = T.plan_from(STANDBY, target, running=True, out_of_recovery=True, step_down_stop=False)
    assert frm == PRIMARY
    steps = T.plan(frm, None, Target(target)).steps
    assert (steps[:1] == (T.STOP_PG,)) if target != SAFE_MODE else steps == (T.SAFE_READ_ONLY,)


@pytest.mark.parametrize("role,target,running,out,stop,want", [
    (STANDBY, PRIMARY, True, True, False, STANDBY),       # my own promotion, cut short: promote on
    (STANDBY, STANDBY, True, False, False, STANDBY),      # an ordinary standby
    (SAFE_MODE, SAFE_MODE, True, True, False, SAFE_MODE),  # safe mode's own step looks at PG itself
    (REBUILD, STANDBY, True, True, False, REBUILD),
    (UNASSIGNED, UNASSIGNED, True, True, False, UNASSIGNED),  # a fresh sitter: PG may be the primary's
    (UNASSIGNED, STANDBY, True, False, False, UNASSIGNED),   # a standby left running: reconfigured
    (UNASSIGNED, STANDBY, True, True, False, PRIMARY),    # promoted by a plan to primary that then failed
    (UNASSIGNED, STANDBY, True, True, True, PRIMARY),
    (UNASSIGNED, DEPOSED, True, True, False, UNASSIGNED),  # U→D stops it anyway
    (STANDBY, UNASSIGNED, True, False, True, PRIMARY),    # a step-down whose promotion never ran
    (PRIMARY, UNASSIGNED, True, False, True, PRIMARY),
])
def test_plan_from_keeps_the_role_unless_a_convention_applies(role, target, running, out, stop, want):
    assert T.plan_from(role, target, running=running, out_of_recovery=out, step_down_stop=stop) == want
