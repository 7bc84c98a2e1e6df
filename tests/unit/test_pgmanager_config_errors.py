"""F19: PostgreSQL's config cannot be written (a full disk). PgManager reports it as
PgConfigError, keeps why in `config_error` for /state and the step-down clock, and logs it
once per change, not on every attempt."""

from __future__ import annotations

import asyncio
import errno
from types import SimpleNamespace

import pytest

from manatee.sitter.pglog import CROWDED
from manatee.sitter.pgmanager import PgConfigError, RoleSpec
from tests.pgmanager_fakes import bare_pg_manager


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
