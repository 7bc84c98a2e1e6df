"""tests/shard_pool.py's decisions, on stand-ins for pytest items and shards (no shard is
brought up): which modules run next to each other, and when a shard is handed on or removed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import shard_pool
from tests.shard_fixture import SharedShard


def _module(name: str, spec: SharedShard | None) -> SimpleNamespace:
    return SimpleNamespace(__name__=name, SHARD=spec) if spec else SimpleNamespace(__name__=name)


def _items(*mods: tuple[SimpleNamespace, list[str]]) -> list[SimpleNamespace]:
    """(module, [test names]) -> items; a test named own_* does not use the module's shard."""
    return [SimpleNamespace(path=Path(f"{m.__name__}.py"), module=m, name=t,
                            fixturenames=["tmp_path"] if t.startswith("own_") else ["shard", "shared"])
            for m, tests in mods for t in tests]


def _order(items) -> list[str]:
    shard_pool.pytest_collection_modifyitems(items)
    return [f"{it.module.__name__}.{it.name}" for it in items]


def test_modules_of_one_pool_key_run_together_retiring_ones_last():
    a = _module("a", SharedShard("a", 5000, retire=True))
    b = _module("b", None)
    c = _module("c", SharedShard("c", 4000))
    d = _module("d", SharedShard("d", 5000))
    e = _module("e", SharedShard("e", 5000, heal_each_test=False))  # keeps its own shard
    f = _module("f", SharedShard("f", 5000, zk_servers=3))  # another key
    g = _module("g", SharedShard("g", 5000))
    items = _items((a, ["own_t0", "t1"]), (b, ["t"]), (c, ["t"]), (d, ["t1", "t2"]), (e, ["t"]), (f, ["t"]),
                   (g, ["t"]))
    assert _order(items) == ["a.own_t0", "d.t1", "d.t2", "g.t", "a.t1", "b.t", "c.t", "e.t", "f.t"]


def test_a_single_module_keeps_its_order():
    a = _module("a", SharedShard("a", 5000, retire=True))
    assert _order(_items((a, ["t1", "own_t2", "t3"]))) == ["a.own_t2", "a.t1", "a.t3"]
    b = _module("b", SharedShard("b", 5000))
    assert _order(_items((b, ["t1", "t2"]))) == ["b.t1", "b.t2"]


def test_pool_key_is_what_the_shard_is_made_of():
    assert SharedShard("x", 5000, undo=print).pool_key() == SharedShard("y", 5000).pool_key()
    assert SharedShard("x", 5000).pool_key() != SharedShard("x", 4000).pool_key()
    assert SharedShard("x", secure=True).pool_key() == SharedShard("x", secure=True, zk_auth=True).pool_key()
    assert SharedShard("x", zk_auth=True).pool_key() != SharedShard("x").pool_key()
    assert SharedShard("x", heal_each_test=False).pool_key() is None


class _Shard:
    """Just what pooled_shard asks of a shard."""

    def __init__(self) -> None:
        self.sb = SimpleNamespace(exists=lambda: self.is_up)
        self.is_up, self.config, self.pristine, self.events = False, "c0", "c0", []

    def up(self):
        self.is_up = True
        self.events.append("up")

    def down(self):
        self.is_up = False
        self.events.append("down")
        return []

    def handed_over(self):
        self.events.append("handed over")

    def makeup(self):
        return self.config


KEY = SharedShard("x", 5000).pool_key()


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(shard_pool, "_idle", {})
    return shard_pool._idle


def _next(key_spec: SharedShard | None):
    """Stand in for pytest's nextitem: a test of a module with `key_spec` (None: no next test)."""
    shard_pool._next_item[0] = None if key_spec is None else _items((_module("n", key_spec), ["t"]))[0]


def _use(pool, made: list, *, retire=False, change=None, fail=None, then=SharedShard("n", 5000)):
    """One module's use of the pooled shard; returns the shard it had."""
    def make():
        made.append(_Shard())
        return made[-1]

    def finish(sh):
        sh.events.append("finish")
        if fail:
            raise RuntimeError(fail)

    gen = shard_pool.pooled_shard(pool, KEY, make, "m", finish, retire)
    sh = next(gen)
    if change:
        sh.config = change
    _next(then)
    with pytest.raises(StopIteration):
        next(gen)
    shard_pool._next_item[0] = None
    return sh


def test_a_shard_is_handed_to_the_next_module_of_its_key(pool):
    made: list = []
    first = _use(pool, made)
    assert pool == {KEY: first} and first.events == ["up", "finish"]
    second = _use(pool, made, then=None)  # the last module: down
    assert second is first and len(made) == 1
    assert first.events == ["up", "finish", "handed over", "finish", "down"] and pool == {}


@pytest.mark.parametrize("how", ["retire", "changed", "cleanup failed", "next is another key", "next keeps its own"])
def test_a_shard_goes_down_when_it_cannot_be_handed_on(pool, how):
    made: list = []
    sh = _use(pool, made, retire=how == "retire", change="c1" if how == "changed" else None,
              fail="boom" if how == "cleanup failed" else None,
              then={"next is another key": SharedShard("n", 4000),
                    "next keeps its own": SharedShard("n", 5000, heal_each_test=False)}.get(how, SharedShard("n")))
    assert sh.events[-1] == "down" and pool == {}


def test_an_idle_shard_goes_down_when_the_next_test_does_not_use_it(pool):
    sh = _Shard()
    sh.up()
    pool[KEY] = sh
    item = _items((_module("n", SharedShard("n")), ["t"]))[0]
    gen = shard_pool.pytest_runtest_teardown(item, item)
    next(gen)
    with pytest.raises(StopIteration):
        gen.send(None)
    assert pool == {KEY: sh}  # the next test takes it
    other = _items((_module("o", None), ["t"]))[0]
    gen = shard_pool.pytest_runtest_teardown(item, other)
    next(gen)
    with pytest.raises(StopIteration):
        gen.send(None)
    assert pool == {} and sh.events == ["up", "down"]
