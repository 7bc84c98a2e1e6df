"""The gray-failure latches as operators see them (issue 8): what the loop publishes in its
snapshot (write probe, sync flush stall, start back-off, the latest decision), how /state and
/metrics render it, and the dataset's space read again soon while it is low."""

from __future__ import annotations

import asyncio
import time
import dataclasses
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manatee.shard import latches
from manatee.sitter.metrics import MetricsView, render_view
from manatee.sitter.statememory import StateMemory
from manatee.sitter.snapshot import SitterSnapshot, debug_state, gray_latches, snapshot_of, start_held_s
from manatee.sitter.status import STATE_SPACE_WAIT_S, StatusServer
from manatee.sitter.zfsview import SLOW_CACHE_S, SPACE_CACHE_S, DatasetCache, parse_space
from tests.observations import A
from tests.metrics_fakes import parse, sitter, value

GRAY_GAUGES = ("manatee_write_probe_failures", "manatee_sync_flush_stalled_seconds", "manatee_pg_start_failures",
               "manatee_pg_start_held_seconds", "manatee_pg_wraparound_refusal_seconds", "manatee_cycle_failures")


def view(**kw) -> MetricsView:
    return MetricsView(**{"peer_id": "p", "zone_id": "z", "shard": "/manatee/1", "role": "primary",
                          "local_role": "primary", **kw})


# ---------------------------------------------------------------------------- /metrics

def test_the_gray_gauges_are_there_and_zero_on_a_healthy_node():
    fams = parse(render_view(view(), 0))
    assert {name: value(fams, name) for name in GRAY_GAUGES} == dict.fromkeys(GRAY_GAUGES, 0)
    assert "manatee_sync_flush_stall_bound_seconds" not in fams  # no bound known: no series
    assert "manatee_decision_info" not in fams  # nothing decided yet


def test_the_gray_gauges_carry_the_latches_and_the_decision_rule():
    v = view(write_probe_failures=3, sync_flush_stalled_s=7.25, sync_flush_stall_bound_s=8.0,
             pg_start_failures=4, pg_start_held_s=3.5, rule="primary.step_down", wraparound_refused_s=12.5,
             cycle_failures=7)
    fams = parse(render_view(v, 0))
    assert value(fams, "manatee_write_probe_failures") == 3
    assert value(fams, "manatee_sync_flush_stalled_seconds") == 7.25
    assert value(fams, "manatee_sync_flush_stall_bound_seconds") == 8.0
    assert value(fams, "manatee_pg_start_failures") == 4
    assert value(fams, "manatee_pg_start_held_seconds") == 3.5
    assert value(fams, "manatee_pg_wraparound_refusal_seconds") == 12.5
    assert value(fams, "manatee_cycle_failures") == 7
    assert value(fams, "manatee_decision_info", rule="primary.step_down") == 1


# ---------------------------------------------------------------------------- the snapshot

def _loop(*, stall=None, probe=(0, None), starts=latches.StartTries(), last_pg_at=100.0,
          restores=latches.RestoreTries(), paused_since=None, wraparound=(None, None), cycles=(0, None),
          diverged=False, pending=False):
    """A stand-in for the loop with the attributes snapshot_of reads."""
    health = SimpleNamespace(probe_failures=probe[0], probe_error=probe[1], stall=stall, sync_stall_bound=8.0,
                             starts=starts, sick_since=None, sick_why=None, cannot_serve=None, hung_kills=0,
                             hb_withheld=False, wraparound_since=wraparound[0], wraparound_error=wraparound[1])
    view_ = SimpleNamespace(state=None, error=None, election=(), zk_state="connected", quarantined=(),
                            state_unreadable=None, session_timeout=4.0, state_missing=False, state_older=None)
    return SimpleNamespace(memory=StateMemory(None, None, None),
        view=view_, health=health, last=SimpleNamespace(reason="my sync has not flushed", rule="primary.replace_sync"),
        me=A, role="primary", target=None, last_pg=None, last_pg_at=last_pg_at,
        pg=SimpleNamespace(config_error=None, parameters_gen=0, raised_to_primary={}, running=True), steps=SimpleNamespace(restore_progress=None, restore_tries=restores),
        pg_restarts=0, restart_request=None, transitions={}, slots=None,
        session=SimpleNamespace(negotiated_session_timeout=4.0), started=0.0, diverged=diverged,
        rebuild_pending=lambda: pending,
        heartbeats=SimpleNamespace(beats={}, expiration_s=6.0),
        hb_sender=SimpleNamespace(refused=None), replay=SimpleNamespace(paused_since=paused_since),
        failures=cycles[0], failure_msg=cycles[1])


def test_snapshot_of_publishes_the_latches():
    s = snapshot_of(_loop(stall=(("g", "sync"), 10, 93.5), probe=(2, "could not write: No space left"),
                          starts=latches.StartTries(4, False, 130.0),
                          restores=latches.RestoreTries(3, "ZfsError: out of space", 140.0)))
    assert (s.write_probe_failures, s.write_probe_error) == (2, "could not write: No space left")
    assert s.sync_flush_stalled_s == 6.5  # as of the last observation of PostgreSQL (last_pg_at 100)
    assert s.sync_flush_stall_bound == 8.0
    assert (s.start_failures, s.start_retry_at) == (4, 130.0)
    assert s.restore_tries == latches.RestoreTries(3, "ZfsError: out of space", 140.0)
    assert (s.rule, s.reason) == ("primary.replace_sync", "my sync has not flushed")
    assert (s.wraparound_since, s.wraparound_error) == (None, None)
    assert (s.cycle_failures, s.cycle_error) == (0, None)
    f = snapshot_of(_loop(cycles=(12, "NoAuthError")))
    assert (f.cycle_failures, f.cycle_error) == (12, "NoAuthError")
    w = snapshot_of(_loop(wraparound=(90.0, "database is not accepting commands to avoid wraparound data loss")))
    assert (w.wraparound_since, w.wraparound_error) == (90.0, "database is not accepting commands to avoid "
                                                              "wraparound data loss")


def test_a_stall_started_after_the_last_observation_counts_zero_not_negative():
    assert snapshot_of(_loop(stall=(("g", "sync"), 10, 100.2))).sync_flush_stalled_s == 0.0
    assert snapshot_of(_loop(stall=None)).sync_flush_stalled_s == 0.0


# ---------------------------------------------------------------------------- /state

def test_state_shows_the_latches():
    s = SitterSnapshot(me=A, write_probe_failures=2, write_probe_error="FATAL: could not write",
                       sync_flush_stalled_s=5.04, sync_flush_stall_bound=8.0, start_failures=3,
                       start_retry_at=112.0, rule="primary.step_down", reason="it cannot commit",
                       restore_tries=latches.RestoreTries(2, "ZfsError: out of space", 112.5))
    got = gray_latches(s, now=110.0)
    assert got == {"writeProbe": {"failures": 2, "limit": latches.WRITE_PROBE_FAILURES,
                                  "lastError": "FATAL: could not write", "wraparoundFor": None,
                                  "wraparoundError": None},
                   "syncFlushStall": {"seconds": 5.0, "bound": 8.0},
                   "startBackoff": {"failures": 3, "nextTryIn": 2.0},
                   "restoreBackoff": {"failures": 2, "nextTryIn": 2.5, "lastError": "ZfsError: out of space"},
                   "cycles": {"failedInARow": 0, "lastError": None}}
    cfg = SimpleNamespace(insecure=False, zkCfg=SimpleNamespace(auth=None, session_timeout_s=4.0))
    body = debug_state(s, cfg, 110.0)
    assert body["writeProbe"] == got["writeProbe"] and body["startBackoff"]["nextTryIn"] == 2.0
    assert (body["rule"], body["reason"]) == ("primary.step_down", "it cannot commit")


def test_state_says_a_rebuild_only_requested_is_no_divergence():
    """manatee-adm rebuild marks the node (Sitter.diverged) but, until a restore begins, its data
    is as it was: /state says requested, not diverged (the core sees Observation.rebuild_requested)."""
    cfg = SimpleNamespace(insecure=False, zkCfg=SimpleNamespace(auth=None, session_timeout_s=4.0))
    from manatee.sitter.pgmanager import PgStatus
    pg = PgStatus(True, True, True, None, True, False, None, 1)
    for diverged, pending, shown in ((True, True, (False, True)), (True, False, (True, False)),
                                     (False, False, (False, False))):
        s = dataclasses.replace(snapshot_of(_loop(diverged=diverged, pending=pending)), last_pg=pg)
        body = debug_state(s, cfg, 110.0)["pg"]
        assert (body["diverged"], body["rebuildRequested"]) == shown, (diverged, pending, body)
    seen = PgStatus(True, True, True, None, False, True, None, 1)  # PostgreSQL itself says so: always shown
    s = dataclasses.replace(snapshot_of(_loop(diverged=True, pending=True)), last_pg=seen)
    assert debug_state(s, cfg, 110.0)["pg"]["diverged"] is True


def test_state_shows_a_replay_paused_by_hand():
    from manatee.sitter.pgmanager import PgStatus
    s = snapshot_of(_loop(paused_since=90.0))
    assert s.replay_paused_since == 90.0
    s = dataclasses.replace(s, last_pg=PgStatus(True, True, True, None, True, False, None, 1, replay_paused=True))
    cfg = SimpleNamespace(insecure=False, zkCfg=SimpleNamespace(auth=None, session_timeout_s=4.0))
    assert debug_state(s, cfg, 110.0)["pg"]["replayPausedFor"] == 20.0
    assert debug_state(dataclasses.replace(s, replay_paused_since=None), cfg, 110.0)["pg"]["replayPausedFor"] is None


def test_state_shows_how_long_the_primary_refuses_new_xids():
    s = SitterSnapshot(me=A, wraparound_since=95.0, wraparound_error="database is not accepting commands ...")
    assert gray_latches(s, now=110.0)["writeProbe"] == {
        "failures": 0, "limit": latches.WRITE_PROBE_FAILURES, "lastError": None, "wraparoundFor": 15.0,
        "wraparoundError": "database is not accepting commands ..."}
    over = dataclasses.replace(s, wraparound_since=None)  # over: the error is kept, the clock is not
    assert gray_latches(over, now=110.0)["writeProbe"]["wraparoundFor"] is None


@pytest.mark.parametrize("retry_at, now, held", [(None, 5.0, 0.0), (4.0, 5.0, 0.0), (7.25, 5.0, 2.2)])
def test_start_held_is_never_negative(retry_at, now, held):
    assert start_held_s(SitterSnapshot(me=A, start_retry_at=retry_at), now) == held


# ---------------------------------------------------------------------------- the dataset's space

class Dataset:
    """zfs as the cache sees it: each space() answers the next of `answers`."""

    def __init__(self, *answers: str):
        self.answers, self.space_calls, self.list_calls = list(answers), 0, 0

    async def list_snapshots(self):
        self.list_calls += 1
        return []

    async def space(self):
        self.space_calls += 1
        return self.answers[min(self.space_calls, len(self.answers)) - 1]

    async def interrupted_copies(self):
        return ["p/d-restore-1000"]

    async def snapshot_bases(self):
        return {"p/d@1796000000000": "127.0.0.12", "p/d@1796000000001": "127.0.0.13,127.0.0.14",
                "p/d@1796000000002": "-"}


def _cache(dataset) -> DatasetCache:
    """A DatasetCache over `dataset` for a sitter of dataset p/d."""
    return DatasetCache(SimpleNamespace(snapshot=SitterSnapshot(me=A), dataset=dataset,
                                        cfg=SimpleNamespace(postgresMgrCfg=SimpleNamespace(
                                            zfsClientCfg=SimpleNamespace(dataset="p/d")))))


FULL = "available\t0\nused\t1000\nquota\t1000\n"
FREED = "available\t1000000\nused\t1000\nquota\t0\n"


async def test_the_space_is_read_every_few_seconds_and_the_snapshots_every_slow_period():
    ds = Dataset(FREED, FULL, FREED)
    cache = _cache(ds)
    await cache.refresh()
    assert cache.space["available"] == 1000000 and cache.stale() == (False, False)
    await cache.refresh()
    assert ds.space_calls == 1, "bounded: not on every call"
    cache._space_at -= SPACE_CACHE_S  # as if SPACE_CACHE_S passed: the disk filled meanwhile
    assert cache.stale() == (False, True)
    await cache.refresh()
    assert cache.space["available"] == 0 and (ds.space_calls, ds.list_calls) == (2, 1)
    cache._space_at -= SPACE_CACHE_S
    cache._snap_at -= SLOW_CACHE_S
    assert cache.stale() == (True, True)
    await cache.refresh()
    assert cache.space["available"] == 1000000 and (ds.space_calls, ds.list_calls) == (3, 2)


@pytest.mark.parametrize("before, after", [(FULL, FREED), (FREED, FULL)], ids=["freed", "filled"])
async def test_state_waits_briefly_for_a_stale_space_and_shows_the_disk_as_it_is_now(before, after):
    s = sitter()
    s.dataset = Dataset(before, after)
    srv = StatusServer(s, SimpleNamespace(info=lambda *a, **k: None, debug=lambda *a, **k: None,
                                          warning=lambda *a, **k: None))
    await srv.collector.zfs.refresh()  # the disk as last read
    c = TestClient(TestServer(srv.app))
    await c.start_server()
    try:
        first = await (await c.get("/state")).json()
        assert first["dataset"] == parse_space(before) and s.dataset.space_calls == 1
        srv.collector.zfs._space_at -= SPACE_CACHE_S  # the disk filled, or the operator freed it, since
        t0 = time.monotonic()
        second = await (await c.get("/state")).json()
        assert second["dataset"] == parse_space(after), "shown on this request, not the next"
        assert time.monotonic() - t0 < STATE_SPACE_WAIT_S + 0.5
        assert second["writeProbe"]["failures"] == 0 and second["startBackoff"] == {"failures": 0, "nextTryIn": 0.0}
        assert second["oldCopiesKept"] == ["p/d-restore-1000"]  # read with the snapshots, shown by manatee-adm
        assert second["bases"] == {"127.0.0.12": "1796000000000", "127.0.0.13": "1796000000001",
                                   "127.0.0.14": "1796000000001"}  # the snapshot kept for each peer
    finally:
        await c.close()


async def test_state_does_not_wait_past_its_bound_for_a_hung_zfs():
    release = asyncio.Event()

    class Hung(Dataset):
        async def space(self):
            self.space_calls += 1
            if self.space_calls > 1:
                await release.wait()
            return FREED

    s = sitter()
    s.dataset = Hung()
    srv = StatusServer(s, SimpleNamespace(info=lambda *a, **k: None, debug=lambda *a, **k: None,
                                          warning=lambda *a, **k: None))
    await srv.collector.zfs.refresh()
    c = TestClient(TestServer(srv.app))
    await c.start_server()
    try:
        srv.collector.zfs._space_at -= SPACE_CACHE_S
        t0 = time.monotonic()
        body = await (await c.get("/state")).json()
        assert STATE_SPACE_WAIT_S - 0.1 <= time.monotonic() - t0 < STATE_SPACE_WAIT_S + 0.5
        assert body["dataset"] == parse_space(FREED), "the value last read, while the new read hangs"
        t0 = time.monotonic()
        await c.get("/state")  # the read still in flight: no second wait
        assert time.monotonic() - t0 < 0.5
    finally:
        release.set()
        await c.close()


@pytest.mark.parametrize("broken, unknown, known", [("interrupted_copies", "interrupted_copies", "bases"),
                                                    ("snapshot_bases", "bases", "interrupted_copies")])
async def test_a_read_zfs_cannot_answer_is_unknown_and_the_others_stand(broken, unknown, known):
    async def fail(*_):
        raise TimeoutError()

    ds = Dataset(FREED)
    setattr(ds, broken, fail)
    cache = _cache(ds)
    await cache.refresh()
    assert getattr(cache, unknown) is None and getattr(cache, known) is not None
    assert cache.space["available"] == 1000000


# ---------------------------------------------------------------------------- the real loop publishes them

def test_the_loop_publishes_a_failing_write_probe_and_the_decision_in_its_snapshot():
    """The simulated shard drives the real Sitter loop: what /state and /metrics read is its
    published snapshot, not the live PgHealth."""
    from tests.sim.shard import new_shard

    sh = new_shard()
    p = sh.nodes[0]
    assert p.sitter.snapshot.write_probe_failures == 0
    sh.pg_fault(p, "no_commit")
    for _ in range(20):
        sh.tick()
        if p.sitter.snapshot.write_probe_failures >= latches.WRITE_PROBE_FAILURES:
            break
    snap = p.sitter.snapshot
    assert snap.write_probe_failures >= latches.WRITE_PROBE_FAILURES, sh.describe()
    assert snap.write_probe_error and snap.rule is not None and snap.reason
    body = gray_latches(snap, sh.clock.now)
    assert body["writeProbe"]["failures"] == snap.write_probe_failures and body["writeProbe"]["lastError"]


def test_the_loop_publishes_a_standbys_failed_starts_and_its_back_off():
    from tests.sim.shard import PST_TICKS, new_shard

    sh = new_shard()
    n = sh.nodes[2]
    sh.pg_fault(n, "hang_sticky")
    held = None
    for _ in range(20 * PST_TICKS):
        sh.tick()
        s = n.sitter.snapshot
        if s.start_failures >= latches.START_FAILURES_BEFORE_BACKOFF and start_held_s(s, sh.clock.now) > 0:
            held = s
            break
    assert held is not None, sh.describe()
    assert gray_latches(held, sh.clock.now)["startBackoff"]["nextTryIn"] > 0


def test_the_loop_publishes_the_primarys_sync_flush_stall_growing_towards_its_bound():
    from tests.sim.shard import new_shard

    sh = new_shard()
    p, s, _ = sh.nodes
    sh.pg_fault(s, "stall")
    seen = []
    for _ in range(40):
        sh.tick()
        snap = p.sitter.snapshot
        seen.append(snap.sync_flush_stalled_s)
        if sh.zk.state().sync.id != s.id:
            break
    assert snap.sync_flush_stall_bound == p.sitter.health.sync_stall_bound
    assert max(seen) >= snap.sync_flush_stall_bound, (seen, sh.describe())  # replaced once at the bound
    rising = seen[:seen.index(max(seen)) + 1]
    assert rising == sorted(rising) and rising[0] == 0.0, seen  # from 0, growing to it


def test_state_shows_who_heartbeats_me_and_who_gave_way():
    """/state `standbys`: a primary's operator sees its sync heartbeating and the one that gave
    way, with why (the last heartbeat of each standby, as the loop's table holds it)."""
    from manatee.sitter.heartbeat import Heartbeat
    from manatee.sitter.snapshot import standbys

    s = SitterSnapshot(me=A, hb_expiration_s=6.0, standbys=(
        Heartbeat("127.0.0.13:5432:10002:5433", "u3", None, False, 95.0, leaving="my PostgreSQL cannot serve: x"),
        Heartbeat("127.0.0.12:5432:10002:5433", "u2", "0/3000060", True, 109.55),
    ))
    got = standbys(s, now=110.0)
    assert got == {"expirationS": 6.0, "heard": {
        "127.0.0.12:5432:10002:5433": {"ageS": 0.5, "wal": "0/3000060", "streaming": True, "leaving": None},
        "127.0.0.13:5432:10002:5433": {"ageS": 15.0, "wal": None, "streaming": False,
                                       "leaving": "my PostgreSQL cannot serve: x"}}}
    cfg = SimpleNamespace(insecure=False, zkCfg=SimpleNamespace(auth=None, session_timeout_s=4.0))
    assert debug_state(s, cfg, 110.0)["standbys"] == got
    assert standbys(SitterSnapshot(me=A), now=1.0) == {"expirationS": 0.0, "heard": {}}


def test_the_loop_publishes_the_standby_that_gave_way():
    from tests.sim.shard import new_shard

    sh = new_shard()
    p, s, _a = sh.nodes
    s.free = 1 << 20
    sh.pg_fault(s, "no_start")
    for _ in range(10):
        sh.tick()
        heard = {hb.peer_id: hb for hb in p.sitter.snapshot.standbys}
        if s.id in heard and heard[s.id].leaving:
            break
    assert s.id in heard and "disk is full" in heard[s.id].leaving, sh.describe()
