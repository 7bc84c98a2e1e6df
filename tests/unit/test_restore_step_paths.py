"""The restore step (manatee.sitter.steps.StepRunner.restore) tries pg_rewind first and
streams when it does not rewind; the result says which path ran and why."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from manatee.shard import rebuildpath as rp
from manatee.sitter.steps import StepRunner
from tests.factories import peer


class Log:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((event, kw))


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
    r = StepRunner(me=peer("10.0.0.2"), pg=Pg(), store=Store(), dataset=dataset, log=log, clock=None,
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
