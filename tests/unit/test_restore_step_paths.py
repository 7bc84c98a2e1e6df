"""The restore step (manatee.sitter.steps.StepRunner.restore) tries pg_rewind first and
streams when it does not rewind; the result says which path ran and why."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from manatee.shard import rebuildpath as rp
import pytest

from manatee.shard import latches
from manatee.sitter.steps import RestoreHeld, StepRunner
from tests.factories import peer


class Log:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((event, kw))


class Clock:
    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now


class Pg:
    killed = 0

    async def kill(self):
        self.killed += 1


class Store:
    async def read_state(self):
        return None, -1


class Dataset:
    def __init__(self, rewound):
        self.rewound, self.calls = rewound, []

    async def check_upstream(self, upstream):
        pass

    async def rewind(self, upstream, cause, progress, ahead=()):
        self.calls.append(("rewind", cause))
        return self.rewound

    async def restore(self, upstream, progress, also=()):
        self.calls.append(("restore",))
        return SimpleNamespace(bytes=100, seconds=1.0, path="full", reason="no common snapshot", source=None)


def _runner(dataset):
    restored = []
    log = Log()
    r = StepRunner(me=peer("10.0.0.2"), pg=Pg(), store=Store(), dataset=dataset, log=log, clock=Clock(),
                   one_node_write_mode=False, ttl=30, on_restored=lambda: restored.append(1))
    return r, log, restored


def test_a_rewind_that_ran_is_the_restore():
    ds = Dataset(SimpleNamespace(bytes=5 << 20, seconds=2.0, path="rewind", reason="copies 5 MB of 900 MB",
                                 source="tcp://postgres@10.0.0.1:5432/postgres"))
    r, log, restored = _runner(ds)
    r.rebuild_cause = rp.CAUSE_DIVERGED
    asyncio.run(r.restore(peer("10.0.0.1")))
    assert ds.calls == [("rewind", rp.CAUSE_DIVERGED)]
    assert r.restore_progress["path"] == "rewind" and r.restore_progress["reason"] == "copies 5 MB of 900 MB"
    assert r.rebuild_cause is None and restored == [1]
    done = dict(log.lines)["restore_done"]
    assert done["path"] == "rewind" and done["why"] == "copies 5 MB of 900 MB"


def test_the_kill_at_a_restores_start_is_published_before_anything_else_runs():
    """The loop publishes only at a cycle's end, and a restore runs inside one cycle: the kill
    must be published at once, or /replica answers 200 from the look before it (stop 40)."""
    seen = []

    class Slow(Dataset):
        async def rewind(self, upstream, cause, progress, ahead=()):
            seen.append(("rewind", r.pg.killed, published[:]))
            return "not diverged"

    published = []
    r, _log, _restored = _runner(Slow(None))
    r.on_progress = lambda: published.append(r.pg.killed)
    asyncio.run(r.restore(peer("10.0.0.1")))
    assert seen == [("rewind", 1, [1])]


def test_no_rewind_streams_and_says_why():
    ds = Dataset("an operator asked for this rebuild")
    r, log, restored = _runner(ds)
    r.rebuild_cause = rp.CAUSE_REQUESTED
    asyncio.run(r.restore(peer("10.0.0.1")))
    assert ds.calls == [("rewind", rp.CAUSE_REQUESTED), ("restore",)]
    assert r.restore_progress["path"] == "full"
    assert r.restore_progress["reason"] == "no common snapshot (no pg_rewind: an operator asked for this rebuild)"
    assert r.rebuild_cause is None and restored == [1]


def test_a_failed_stream_keeps_the_cause():
    class Failing(Dataset):
        async def restore(self, upstream, progress, also=()):
            raise RuntimeError("the upstream went away")

    r, _, restored = _runner(Failing("pg_rewind failed: timeout"))
    r.rebuild_cause = rp.CAUSE_DIVERGED
    try:
        asyncio.run(r.restore(peer("10.0.0.1")))
    except RuntimeError:
        pass
    assert r.rebuild_cause == rp.CAUSE_DIVERGED and restored == []
    # no progress came from the stream: /state says the attempt failed and why, not "starting"
    assert r.restore_progress["phase"] == "failed" and "the upstream went away" in r.restore_progress["reason"]


def test_an_attempt_that_passed_the_upstreams_check_is_marked_begun_before_the_kill():
    """Phase "starting" from then on: an operator's request no longer lapses
    (rebuildpath.withdrawn_request), as the data may be going."""
    seen = []

    class Watching(Dataset):
        async def rewind(self, upstream, cause, progress, ahead=()):
            seen.append(dict(r.restore_progress))
            return "not diverged"

    r, _log, _restored = _runner(Watching(None))
    r.restore_progress = {"phase": rp.PHASE_REQUESTED, "completed": 0, "size": 0, "source": None}
    asyncio.run(r.restore(peer("10.0.0.1")))
    assert seen[0]["phase"] == "starting" and r.pg.killed == 1
    assert rp.withdrawn_request(False, "sync", seen[0]["phase"]) is None


def test_failed_rebuilds_back_off_and_a_success_starts_over():
    """Each attempt costs the upstream a snapshot and a stream: the first failure is retried
    at once, then the waits double (latches.restore_failed); the wait itself starts nothing,
    says why, and an upstream that is not ready yet is no failure."""
    class Flaky(Dataset):
        fail = True

        async def restore(self, upstream, progress, also=()):
            self.calls.append(("restore",))
            if self.fail:
                raise RuntimeError("cannot receive: out of space")
            return await super().restore(upstream, progress, also)

    ds = Flaky("no divergence")
    r, log, restored = _runner(ds)
    up = peer("10.0.0.1")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="out of space"):
            asyncio.run(r.restore(up))
    assert r.restore_tries.failures == 2 and r.restore_tries.retry_at == 100.0 + latches.RESTORE_RETRY_BASE_S
    assert [kw["failures"] for ev, kw in log.lines if ev == "restore_held"] == [2]
    calls = len(ds.calls)
    with pytest.raises(RestoreHeld, match="my last 2 rebuilds failed in a row .*out of space.* waits 2s more"):
        asyncio.run(r.restore(up))
    assert len(ds.calls) == calls  # nothing started while held
    r.clock.now += latches.RESTORE_RETRY_BASE_S
    with pytest.raises(RuntimeError):
        asyncio.run(r.restore(up))
    assert r.restore_tries.retry_at == r.clock.now + 2 * latches.RESTORE_RETRY_BASE_S
    r.clock.now += 1000
    ds.fail = False
    asyncio.run(r.restore(up))
    assert r.restore_tries == latches.RestoreTries() and restored == [1]


@pytest.mark.parametrize("failures, wait", [(1, None), (2, 2.0), (3, 4.0), (6, 32.0), (7, 64.0), (8, 120.0),
                                            (50, 120.0)])
def test_restore_back_off_schedule(failures, wait):
    t = latches.RestoreTries()
    for _ in range(failures):
        t = latches.restore_failed(t, "boom", now=10.0)
    assert t.failures == failures and t.last_error == "boom"
    assert latches.restore_held_s(t, 10.0) == wait and latches.restore_held_s(t, 10.0 + (wait or 0)) is None


def test_a_requested_restart_publishes_its_stop_before_the_start():
    """manatee-adm restart stops PostgreSQL and starts it again inside one cycle (the start may
    take opsTimeout): the stop is published at once, so /replica does not say 200 meanwhile."""
    events = []

    class RestartPg(Pg):
        async def stop(self, mode):
            events.append(("stop", mode))

        async def start(self):
            events.append("start")

    r, log, _restored = _runner(Dataset(None))
    r.pg = RestartPg()
    r.on_progress = lambda: events.append("published")
    from manatee.shard.state import STANDBY, Target

    assert asyncio.run(r.restart_in_role(Target(STANDBY, upstream=peer("10.0.0.1")), force=False)) is True
    assert events == [("stop", "fast"), "published", "start"]
    assert "pg_restarted" in dict(log.lines)


def test_the_stop_step_is_published_before_the_steps_after_it():
    """A step-down (or any plan that stops PostgreSQL) runs its start or restore in the same
    cycle: the stop is published at once, so /primary and /replica do not say 200 meanwhile."""
    from manatee.shard import transitions as T
    from manatee.shard.state import STANDBY, Target

    events = []

    class StopPg(Pg):
        async def kill(self):
            events.append("kill")

    r, _log, _restored = _runner(Dataset(None))
    r.pg, r.configured_upstream = StopPg(), peer("10.0.0.1")
    r.on_progress = lambda: events.append("published")
    asyncio.run(r.step(T.STOP_PG, Target(STANDBY, upstream=peer("10.0.0.1")), ()))
    assert events == ["kill", "published"] and r.configured_upstream is None
