"""Shared pytest set-up.

Integration fixtures live in tests/fixtures_*.py, one file per real component, and in
tests/shard_fixture.py (`shared`/`shard`: the real shard a module declares as
`SHARD = SharedShard(...)`) and tests/shard_pool.py (modules with compatible specs share one running
shard, and run next to each other for it); all are loaded as plugins here. Integration tests need root and the system packages that
scripts/install-deps.sh installs; they are marked `integration`.
"""

import os

import pytest

pytest_plugins = [
    p
    for p in ("tests.fixtures_zk", "tests.fixtures_zfs", "tests.fixtures_pg", "tests.shard_pool",
              "tests.shard_fixture")
    if os.path.exists(os.path.join(os.path.dirname(__file__), p.split(".")[1] + ".py"))
]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
