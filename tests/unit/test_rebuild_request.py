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
