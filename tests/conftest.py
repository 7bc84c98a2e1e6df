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


#: Settings the suite reads from the developer's shell; every other MANATEE_* and libpq PG*
#: variable is dropped at start. A shell that sourced a sandbox's tool settings (PGPASSFILE,
#: MANATEE_SECRET_FILE, MANATEE_ZK_AUTH_FILE, ...) would otherwise hand them to the tools
#: and clients the tests start against their own shards: once that sandbox is gone, every
#: manatee-adm call fails ("MANATEE_ZK_AUTH_FILE=...: cannot read it").
KEPT_FROM_SHELL = frozenset({"MANATEE_KEEP_LOGS"})


def _inherited_settings() -> list[str]:
    return sorted(k for k in os.environ if (k.startswith("MANATEE_") or k.startswith("PG"))
                  and k not in KEPT_FROM_SHELL)


DROPPED_FROM_SHELL = _inherited_settings()
for _k in DROPPED_FROM_SHELL:
    del os.environ[_k]


def pytest_report_header(config):
    if DROPPED_FROM_SHELL:
        return f"ignoring the shell's settings: {', '.join(DROPPED_FROM_SHELL)}"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
