"""A sync that detaches to take over (manatee.sitter.steps.StepRunner) configures the
takeover's sync and mode in the detach's reload, so that after its state write the promotion
starts at once: no second reload between them (one switchover's write gap paid ~40 ms for it)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from manatee.shard import transitions as T
from manatee.shard.state import PRIMARY, STANDBY, ClusterState, Target
from manatee.sitter.steps import StepRunner
from tests.factories import peer

ME, OLD, NEXT = peer("10.0.0.2"), peer("10.0.0.1"), peer("10.0.0.3")


class Log:
    def __getattr__(self, level):
        return lambda event, **kw: None


class Pg:
    """Records what reaches PostgreSQL: a reload only when the written settings changed (as
    PgManager.apply_pending), and the promotion."""

    running = True

    def __init__(self):
        self.spec = None
        self.pending = False
        self.events: list[tuple] = []

    async def configure(self, spec, members):
        if spec != self.spec:
            self.pending = True
        self.spec = spec

    async def apply_pending(self):
        if self.pending:
            self.pending = False
            self.events.append(("reload", self.spec))
            return "reloaded"
        return "unchanged"

    async def promote(self):
        self.events.append(("promote",))


class Store:
    async def read_state(self):
        return ClusterState(generation=2, primary=ME, sync=NEXT, init_wal=0x9000), 3


def _run(then: Target | None):
    pg = Pg()
    r = StepRunner(me=ME, pg=pg, store=Store(), dataset=None, log=Log(), clock=None,
                   one_node_write_mode=False, ttl=30, on_restored=lambda: None)
    detach = Target(STANDBY, upstream=None, then=then)
    for step in (T.CONFIGURE_STANDBY, T.RELOAD_PG):
        asyncio.run(r.step(step, detach, ()))
    takeover = then or Target(PRIMARY, sync=NEXT, downstream=NEXT, read_only=False)
    asyncio.run(r.promote_if_still_primary(takeover, ()))
    return pg.events


def test_the_detach_reload_carries_the_takeovers_settings_and_the_promotion_follows_at_once():
    events = _run(Target(PRIMARY, sync=NEXT, downstream=NEXT, read_only=False))
    assert [e[0] for e in events] == ["reload", "promote"]
    spec = events[0][1]
    assert spec.role == "standby" and spec.upstream is None
    assert spec.sync_app_name == NEXT.pg_url and spec.read_only is False


def test_without_a_prepared_target_the_promotion_reloads_first():
    events = _run(None)
    assert [e[0] for e in events] == ["reload", "reload", "promote"]
    assert events[0][1].sync_app_name is None and events[1][1].sync_app_name == NEXT.pg_url


def test_a_prepared_failover_takeover_stays_read_only_and_names_its_sync():
    events = _run(Target(PRIMARY, sync=NEXT, downstream=NEXT, read_only=True))
    assert [e[0] for e in events] == ["reload", "promote"]
    assert events[0][1].read_only is True and events[0][1].sync_app_name == NEXT.pg_url


# -- the real sitter loop in the simulated shard ------------------------------------------
def test_a_switchovers_new_primary_says_writable_at_the_end_of_its_promoting_cycle():
    """/primary (writable_primary of the published snapshot) answers for the new primary as
    soon as the cycle that promoted it read-write ends, not one cycle later; the detach's
    reload already named its new sync."""
    from manatee.shard.state import Switchover
    from manatee.sitter.metrics import writable_primary
    from tests.sim import shard as sim

    for seed in range(8):
        sh = sim.new_shard(3, seed=seed)
        st = sh.zk.state()
        s = sh.node(st.sync.id)
        assert sh.zk.cas_state(st.evolve(switchover=Switchover(to=s.id)), sh.zk.version)
        detached_conf = None
        for _ in range(40):
            sh.tick()
            if s.conf.upstream is None and s.mode == "standby" and detached_conf is None:
                detached_conf = (s.conf.sync, s.conf.standby_signal)
            if s.mode == "primary" and s.cycle is None:
                break
        assert s.mode == "primary" and s.cycle is None, sh.describe()
        assert s.sitter.target.role == PRIMARY and not s.sitter.target.read_only
        # (the snapshot's freshness is on the real clock; the simulation's is fake)
        snap = dataclasses.replace(s.sitter.snapshot, last_pg_at=time.monotonic())
        assert writable_primary(snap), (seed, snap.last_pg)
        assert detached_conf is not None and detached_conf[0] == sh.zk.state().sync.pg_url, (seed, detached_conf)
