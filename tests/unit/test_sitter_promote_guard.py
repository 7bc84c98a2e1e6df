"""The shell's promotion (issue 10): it re-reads the state and promotes only while that still
names this node primary, and a detached standby names its new sync before it promotes (so the
promoted node needs no reload before its first commit). Fakes stand in for ZooKeeper and
PostgreSQL: what is tested is the order and the refusal, not their I/O."""

from __future__ import annotations

import asyncio

import pytest

from manatee.sitter.pgmanager import RoleSpec
from manatee.sitter.sitter import Sitter
from manatee.shard.state import PRIMARY, Target
from tests.observations import A, B, C, STATE


class FakeStore:
    def __init__(self, state):
        self.state = state

    async def read_state(self):
        return self.state, 7


class FakePg:
    def __init__(self, spec):
        self.spec, self.calls = spec, []

    async def configure(self, spec, members):
        self.calls.append(("configure", spec))
        self.spec = spec

    async def apply_pending(self):
        self.calls.append(("apply_pending",))
        return "reloaded"

    async def promote(self):
        self.calls.append(("promote",))


def _sitter(me, state, spec) -> Sitter:
    s = Sitter.__new__(Sitter)
    s.me, s.store, s.pg = me, FakeStore(state), FakePg(spec)
    s.cfg = type("Cfg", (), {"postgresMgrCfg": type("P", (), {"oneNodeWriteMode": False})()})()
    return s


TARGET = Target(PRIMARY, sync=C, downstream=C, read_only=True)


def test_a_detached_sync_names_its_new_sync_then_promotes():
    new = STATE.evolve(generation=STATE.generation + 1, primary=B, sync=C, async_=(A,))
    s = _sitter(B, new, RoleSpec("standby", upstream=None))
    asyncio.run(s._promote_if_still_primary(TARGET, ()))
    assert [c[0] for c in s.pg.calls] == ["configure", "apply_pending", "promote"]
    spec = s.pg.calls[0][1]
    assert spec.role == "standby" and spec.upstream is None and spec.sync_app_name == C.pg_url


def test_no_promotion_when_the_state_names_another_primary():
    s = _sitter(B, STATE, RoleSpec("standby", upstream=None))  # STATE names A
    with pytest.raises(RuntimeError, match="not promoting"):
        asyncio.run(s._promote_if_still_primary(TARGET, ()))
    assert s.pg.calls == []


def test_no_promotion_without_a_state():
    s = _sitter(B, None, RoleSpec("standby", upstream=None))
    with pytest.raises(RuntimeError, match="not promoting"):
        asyncio.run(s._promote_if_still_primary(TARGET, ()))
    assert s.pg.calls == []


def test_no_promotion_when_the_state_cannot_be_read():
    s = _sitter(B, None, RoleSpec("standby", upstream=None))

    async def fails():
        raise TimeoutError("zookeeper did not answer")

    s.store.read_state = fails
    with pytest.raises(TimeoutError):
        asyncio.run(s._promote_if_still_primary(TARGET, ()))
    assert s.pg.calls == []
