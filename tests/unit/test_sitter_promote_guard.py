"""The shell's promotion (issue 10): it re-reads the state and promotes only while that still
names this node primary, and a detached standby names its new sync before it promotes (so the
promoted node needs no reload before its first commit). The production Sitter with fakes for
ZooKeeper and PostgreSQL (tests/sim): what is tested is the order and the refusal."""

from __future__ import annotations

import asyncio

import pytest

from manatee.sitter.pgmanager import RoleSpec
from manatee.shard.state import PRIMARY, Target
from tests.observations import A, B, C, STATE
from tests.sim.standalone import ScriptedPg, standalone_sitter


def _sitter(me, state, spec):
    return standalone_sitter(me, pg=ScriptedPg(spec=spec), state=state)


TARGET = Target(PRIMARY, sync=C, downstream=C, read_only=True)


def test_a_detached_sync_names_its_new_sync_then_promotes():
    new = STATE.evolve(generation=STATE.generation + 1, primary=B, sync=C, async_=(A,))
    s = _sitter(B, new, RoleSpec("standby", upstream=None))
    asyncio.run(s.steps.promote_if_still_primary(TARGET, ()))
    assert [c[0] for c in s.pg.calls] == ["configure", "apply_pending", "promote"]
    spec = s.pg.calls[0][1]
    assert spec.role == "standby" and spec.upstream is None and spec.sync_app_name == C.pg_url


def test_no_promotion_when_the_state_names_another_primary():
    s = _sitter(B, STATE, RoleSpec("standby", upstream=None))  # STATE names A
    with pytest.raises(RuntimeError, match="not promoting"):
        asyncio.run(s.steps.promote_if_still_primary(TARGET, ()))
    assert s.pg.calls == []


def test_no_promotion_without_a_state():
    s = _sitter(B, None, RoleSpec("standby", upstream=None))
    with pytest.raises(RuntimeError, match="not promoting"):
        asyncio.run(s.steps.promote_if_still_primary(TARGET, ()))
    assert s.pg.calls == []


def test_no_promotion_when_the_state_cannot_be_read():
    new = STATE.evolve(generation=STATE.generation + 1, primary=B, sync=C, async_=(A,))
    s = _sitter(B, new, RoleSpec("standby", upstream=None))
    s.store.zk.up = False  # ZooKeeper does not answer
    s.session.poll(s.clock.now)
    with pytest.raises(Exception, match="not connected"):
        asyncio.run(s.steps.promote_if_still_primary(TARGET, ()))
    assert s.pg.calls == []


def test_no_promotion_when_another_took_over_while_the_sync_reloaded():
    """Random simulation, seed 1200440: a sitter stopped during the reload before its
    promotion (after its state read) promoted on resuming, two takeovers later. The state is
    read again after a reload."""
    new = STATE.evolve(generation=STATE.generation + 1, primary=B, sync=C, async_=(A,))
    s = _sitter(B, new, RoleSpec("standby", upstream=None))
    later = new.evolve(generation=new.generation + 1, primary=C, sync=A, async_=(B,))
    apply_pending = s.pg.apply_pending

    async def reload_while_another_takes_over():
        s.store.zk.set_raw(later.dumps())
        return await apply_pending()

    s.pg.apply_pending = reload_while_another_takes_over
    with pytest.raises(RuntimeError, match="not promoting"):
        asyncio.run(s.steps.promote_if_still_primary(TARGET, ()))
    assert [c[0] for c in s.pg.calls] == ["configure", "apply_pending"]
