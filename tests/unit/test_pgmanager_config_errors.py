"""F19: PostgreSQL's config cannot be written (a full disk). PgManager reports it as
PgConfigError, keeps why in `config_error` for /state and the step-down clock, and logs it
once per change, not on every attempt."""

from __future__ import annotations

import asyncio
import errno
from types import SimpleNamespace

import pytest

from manatee.shard.state import ClusterState
from manatee.sitter.pglog import CROWDED
from manatee.sitter.pgmanager import PgConfigError, RoleSpec
from tests.observations import A, B, C
from tests.pgmanager_fakes import bare_pg_manager
from tests.sim.standalone import ScriptedPg, standalone_sitter


def _manager(monkeypatch, outcomes):
    seq = iter(outcomes)

    def write(*_a, **_k):
        o = next(seq)
        if isinstance(o, Exception):
            raise o
        return SimpleNamespace(restart_needed=False, reload_needed=False, changed=[])

    return bare_pg_manager(monkeypatch, write)


def test_a_config_write_failure_is_reported_once_and_cleared_when_it_works(monkeypatch):
    full = OSError(errno.EDQUOT, "Disk quota exceeded", "/d/.manatee.conf.tmp")
    m = _manager(monkeypatch, [full, full, full, "ok"])
    for _ in range(3):
        with pytest.raises(PgConfigError, match="Disk quota exceeded"):
            asyncio.run(m.configure(RoleSpec("primary"), ()))
    assert "Disk quota exceeded" in m.config_error
    assert [e for lvl, e, _ in m.log.lines if lvl == "error"] == ["pg_config_write_failed"]
    asyncio.run(m.configure(RoleSpec("primary"), ()))
    assert m.config_error is None and ("info", "pg_config_write_restored") in [(lvl, e) for lvl, e, _ in m.log.lines]


@pytest.mark.parametrize("msg,crowded", [
    ('connection to server on socket "/tmp/x/.s.PGSQL.5432" failed: FATAL:  sorry, too many clients already', True),
    ("FATAL:  remaining connection slots are reserved for non-replication superuser connections", True),
    ("FATAL:  the database system is in recovery mode", False),
    ("query on /tmp/x:5432 timed out after 1.0s: select 1", False),
])
def test_a_full_house_is_told_from_other_failures(msg, crowded):
    assert bool(CROWDED.search(msg)) is crowded


async def test_a_cycle_that_cannot_write_postgresqls_config_says_why_in_its_failures():
    """verify's "its last N cycles failed (last: ...)" names the config error (a full disk),
    not "?" (sandbox, 2026-12-07: disk-full on the sync)."""
    s = standalone_sitter(B, pg=ScriptedPg(), state=ClusterState(generation=3, primary=A, sync=B, async_=(C,)))

    async def cycle():
        raise PgConfigError("[Errno 122] Disk quota exceeded: '.manatee.conf.tmp'")

    s.cycle = cycle
    await s.cycle_once()
    assert s.failures == 1 and "Disk quota exceeded" in s.failure_msg
