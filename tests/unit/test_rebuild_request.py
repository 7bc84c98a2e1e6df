"""POST /rebuild on the production loop: a rebuild that is running is reported, not
restarted; one that has just finished (its node not yet out of the rebuild role) does not
swallow the next request (manatee-adm rebuild would otherwise return the last one's result)."""
from manatee.shard.state import REBUILD, ClusterState
from tests.observations import A, B, C
from tests.sim.standalone import ScriptedPg, standalone_sitter

STATE = ClusterState(generation=3, primary=A, sync=B, async_=(C,))


def _async_in_rebuild(phase: str):
    s = standalone_sitter(C, pg=ScriptedPg(), state=STATE)
    s.role = REBUILD
    s.steps.restore_progress = {"phase": phase, "completed": 10, "size": 10, "source": "x"}
    s.diverged = False
    s.publish()
    return s


def test_a_running_rebuild_is_reported_not_restarted():
    s = _async_in_rebuild("receiving")
    code, body = s.request_rebuild()
    assert (code, body["rebuild"]) == (202, "running") and not s.diverged
    assert s.snapshot.restore_progress["phase"] == "receiving"


def test_a_finished_rebuild_does_not_swallow_the_next_request():
    s = _async_in_rebuild("done")
    code, body = s.request_rebuild()
    assert (code, body["rebuild"]) == (202, "requested") and s.diverged
    assert s.snapshot.restore_progress["phase"] == "requested"


# ---- an unforced request lapses if its async is named the sync before the restore began

import pytest  # noqa: E402

from manatee.core.lsn import Lsn  # noqa: E402
from manatee.shard.rebuildpath import PHASE_REQUESTED, withdrawn_request  # noqa: E402
from manatee.sitter.pgmanager import PgStatus  # noqa: E402
from tests.sim.standalone import run_now  # noqa: E402

NAMED_SYNC = ClusterState(generation=4, primary=A, sync=C, async_=())  # B gone: the async C named the sync


UNREADY = "upstream 10.0.0.1 has no running, healthy PostgreSQL"


@pytest.mark.parametrize("forced, place, phase, unready, lapses", [
    (False, "sync", "requested", None, "--force"),
    (True, "sync", "requested", None, None),        # the operator forced it: a sync may be rebuilt
    (True, "sync", "requested", UNREADY, "my primary cannot be restored from"),  # ... but not from nothing
    (None, "sync", "requested", UNREADY, None),     # no request pending, or my WAL was seen to diverge
    (False, "async", "requested", UNREADY, None),   # still an async: the rebuild goes on (or moves upstream)
    (False, None, "requested", None, None),         # not in the state (or it cannot be read): not a fact
    (True, "primary", "requested", None, "a primary is never rebuilt"),  # took over first (no divergence)
    (False, "sync", "starting", UNREADY, None),     # begun: the data may be going
    (True, "primary", "receiving", None, None),
    (False, "sync", None, None, None),
])
def test_which_requests_lapse(forced, place, phase, unready, lapses):
    why = withdrawn_request(forced, place, phase, unready)
    assert (why is None) if lapses is None else (lapses in why), why


def _standby(*, diverged=False) -> PgStatus:
    return PgStatus(True, True, True, Lsn(0x5000), False, diverged, None, 1, False)


def _asked(force: bool, statuses):
    s = standalone_sitter(C, pg=ScriptedPg(statuses), state=STATE)
    code, body = s.request_rebuild(force)
    assert (code, body["rebuild"]) == (202, "requested") and s.diverged
    return s


def _named_sync(s) -> None:
    s.store.zk.set_raw(NAMED_SYNC.dumps())
    run_now(s.view.refresh())
    run_now(s.observe())


def test_an_unforced_request_lapses_when_its_async_is_named_the_sync_before_the_restore():
    """Random simulation, seed 560392 (4 nodes): the async 13 accepted an unforced rebuild,
    the primary's data was then destroyed, so the restore waited for it; the primary named 13
    its sync, which then decided to rebuild every cycle and sent no heartbeats, while the
    primary waited for its sync's heartbeats to step down to it. Now the request lapses: the
    sync keeps its data (every acknowledged write) and serves."""
    s = _asked(False, lambda _app: _standby())
    run_now(s.observe())  # still the async: the request stands
    assert s.diverged and s.steps.restore_progress["phase"] == PHASE_REQUESTED and s.snapshot.restoring
    _named_sync(s)
    assert not s.diverged and s.steps.rebuild_cause is None and s.rebuild_forced is None
    r = s.snapshot.restore_progress
    assert r["phase"] == "withdrawn" and "--force" in r["reason"], r
    assert [kw["reason"] for _t, _w, _lv, ev, kw in s.records if ev == "rebuild_request_withdrawn"] == [r["reason"]]
    assert not s.snapshot.restoring  # /state and /metrics: no rebuild in progress


def test_a_forced_rebuild_of_the_sync_stands():
    s = standalone_sitter(B, pg=ScriptedPg(lambda _app: _standby()), state=STATE)
    assert s.request_rebuild(True)[0] == 202 and s.rebuild_forced is True
    run_now(s.observe())
    assert s.diverged and s.steps.restore_progress["phase"] == PHASE_REQUESTED


def test_a_forced_rebuild_of_the_sync_lapses_once_its_primary_cannot_serve():
    """Random simulation, seed 602738: a forced rebuild of the sync was taken while the primary
    served; the primary then fenced and lost its data before the restore began. Its restore
    waited for the primary, which waited for its sync's heartbeats to give way to it. Now the
    attempt that finds the primary unable to serve withdraws the request (a timeout of the
    primary's sitter does not: unknown is not a fact)."""
    s = standalone_sitter(B, pg=ScriptedPg(lambda _app: _standby()), state=STATE)
    assert s.request_rebuild(True)[0] == 202
    o = run_now(s.observe())
    assert o.rebuild_requested and not o.diverged  # the data is as it was: no divergence
    s.upstream_unready = "upstream 10.0.0.1 has no running, healthy PostgreSQL"  # the cycle's restore attempt
    o = run_now(s.observe())
    assert not o.rebuild_requested and not o.diverged and s.upstream_unready is None
    r = s.snapshot.restore_progress
    assert r["phase"] == "withdrawn" and "no running, healthy PostgreSQL" in r["reason"], r


def test_force_on_an_asyncs_request_forces_nothing_it_lapses_too():
    """--force overrides only the sync's refusal: an async's request given it is no forced
    rebuild of a sync, and lapses like any other when the async is named the sync."""
    s = _asked(True, lambda _app: _standby())
    assert s.rebuild_forced is False
    _named_sync(s)
    assert not s.diverged and s.steps.restore_progress["phase"] == "withdrawn"


@pytest.mark.parametrize("seen", ["before", "after"])
def test_a_divergence_postgresql_reported_is_never_withdrawn(seen):
    """The request is only an operator's: a WAL divergence PostgreSQL reported, before the
    request or after it, must be rebuilt whatever the node's place."""
    statuses = iter([_standby(diverged=True), _standby(), _standby()])
    if seen == "before":
        s = standalone_sitter(C, pg=ScriptedPg(lambda _app: next(statuses)), state=STATE)
        run_now(s.observe())
        assert s.diverged
        assert s.request_rebuild(False)[0] == 202
    else:
        s = _asked(False, lambda _app: next(statuses))
        run_now(s.observe())
    _named_sync(s)
    assert s.diverged and s.steps.restore_progress["phase"] == PHASE_REQUESTED


@pytest.mark.parametrize("unknown", [False, True])
def test_the_cycle_notes_an_upstream_that_cannot_serve_but_not_one_that_does_not_answer(unknown):
    from manatee.sitter.dataset import UpstreamNotReady, UpstreamUnknown

    class Dataset:
        async def check_upstream(self, upstream):
            if unknown:
                raise UpstreamUnknown(f"cannot ask {upstream.status_url} whether it can be restored from: timeout")
            raise UpstreamNotReady(f"upstream {upstream.id}: its PostgreSQL does not run")

    s = standalone_sitter(C, pg=ScriptedPg(lambda _app: _standby()), state=STATE, election=(A, B, C))
    assert s.request_rebuild(False)[0] == 202
    s.dataset = s.steps.dataset = Dataset()
    run_now(s.cycle_once())
    assert s.last_decided.rule == "async.rebuild", s.last_decided
    assert s.upstream_unready == (None if unknown else f"upstream {B.id}: its PostgreSQL does not run")
    assert s.steps.restore_progress["phase"] == PHASE_REQUESTED  # nothing begun
