"""Real shards shared between test modules (issue 12): bringing a shard up (12–28 s) and down
(3–7 s) once per module was a quarter of the suite's time.

A module's `SHARD = SharedShard(...)` with heal_each_test=True can share: modules whose specs
agree on what the shard is made of (`SharedShard.pool_key`: session timeout, ZooKeeper servers,
TLS, ZooKeeper auth) use one running shard, one module after the other.

- Order (`pytest_collection_modifyitems`): the modules of one pool key run next to each other, at
  the place of the first of them in file order (all other modules keep file order); those that
  change the shard for good (`retire=True`) run last of their group; a test of such a module that
  does not use the module's shard (test_sitter_faults' F2 brings up its own) runs before the group.
- Hand-over (`pooled_shard`): at a module's end its `undo` and `before_down` run as before; the
  shard stays up only if pytest's very next test uses a shard of the same key, the module did not
  say `retire`, nothing failed in its clean-up, and its nodes and daemon configs are those it came
  up with (`Shard.makeup`); otherwise it goes down right there, as before. So at most one shard is
  up at any time in a run, as without the pool (scripts/with-shard-slot.sh counts one per run).
- The next module takes it as the previous one left it: its first test heals it (`healthy()`: its
  `undo`, start what is down, wait for primary + sync + async; a shard that cannot be healed is
  replaced), and its sitter logs are read from where they ended (`Shard.handed_over`).
- At the session's end what is still up goes down (`scripts/check-leftovers.sh` finds nothing).

A single module, a single test, `-m 'not slow'`: one module per shard, exactly as before.

Today: two groups, T = 4 s (gray, pgparams, slots, then rolling and tags, which retire) and T = 5 s
(hard, incr, rejoin, security, pgcreds, zkdata, zkquar, zkorder, then faults, which retires): 3
bring-ups for 14 modules. One session timeout for all would not save one more (each retiring
module still needs a shard of its own), so each module kept the one its bounds were tuned with.
Measured on the 14 modules (one pytest run, loaded 2 cores): setup 226 s -> 70 s, teardown
48 s -> 12 s.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

_next_item: list[Any] = [None]  # pytest's `nextitem` while a test is torn down
_idle: dict[tuple, Any] = {}  # pool key -> the running shard no module holds now


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    _next_item[0] = nextitem
    try:
        return (yield)
    finally:
        _next_item[0] = None
        # a shard handed back for a module that then did not take it (all its tests skipped)
        for key in [k for k in _idle if not uses_pool(nextitem, k)]:
            _down(_idle.pop(key))


def _down(sh: Any) -> None:
    problems = sh.down()
    assert not problems, f"down left things behind: {problems}"


def _spec(item) -> Any:
    return getattr(getattr(item, "module", None), "SHARD", None)


def _key(item) -> tuple | None:
    """The pool key of the shard `item`'s module declares (None: it keeps its own or has none)."""
    spec = _spec(item)
    return spec.pool_key() if spec is not None and hasattr(spec, "pool_key") else None


def uses_pool(item, key: tuple) -> bool:
    return item is not None and _key(item) == key and "shared" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list) -> None:
    first: dict[Any, int] = {}  # module -> index of its first test
    for i, it in enumerate(items):
        first.setdefault(it.path, i)
    group_at: dict[tuple, int] = {}  # pool key -> index of the first test of its first module
    for it in items:
        k = _key(it)
        if k is not None:
            group_at[k] = min(group_at.get(k, first[it.path]), first[it.path])

    def order(ix: tuple[int, Any]) -> tuple:
        i, it = ix
        k = _key(it)
        if k is None:
            return (first[it.path], 0, 0, first[it.path], i)
        if "shared" not in getattr(it, "fixturenames", ()):
            return (group_at[k], 0, 0, first[it.path], i)  # its own shard: before the group's
        return (group_at[k], 1, int(bool(_spec(it).retire)), first[it.path], i)

    items[:] = [it for _, it in sorted(enumerate(items), key=order)]


@pytest.fixture(scope="session")
def shard_pool(zfs_fuse) -> Iterator[dict]:
    """The running shards no module holds now; what is left goes down at the end."""
    yield _idle
    while _idle:
        _down(_idle.popitem()[1])


def pooled_shard(pool: dict, key: tuple, make: Callable[[], Any], user: str,
                 finish: Callable[[Any], None], retire: bool) -> Iterator[Any]:
    """Body of the module-scoped `shared` fixture for a pooled spec: the pool's shard of `key`
    (or a new one from `make`), handed back at the end or removed (see the module's doc)."""
    sh = pool.pop(key, None)
    if sh is not None:
        sh.handed_over()
    ready = False
    try:
        if sh is None:
            sh = make()
            sh.up()
        sh.user = user
        ready = True
        yield sh
    finally:
        if sh is not None and sh.sb.exists():
            try:
                finish(sh)
            except Exception as e:  # noqa: BLE001 - reported; the shard is then not handed on
                print(f"clean-up of {user}'s shard failed: {e!r}")
                ready = False
        if (ready and not retire and sh.sb.exists() and uses_pool(_next_item[0], key)
                and sh.makeup() == sh.pristine):
            pool[key] = sh
        elif sh is not None:
            _down(sh)
