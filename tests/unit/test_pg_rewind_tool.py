"""pg_rewind's command line and what it prints (manatee.core.pg.rewind), and the rewind
role's access in pg_hba.conf (manatee.core.pgconfig)."""

from __future__ import annotations

from pathlib import Path

import pytest

from manatee.core.auth import ShardSecret
from manatee.core.pg import rewind
from manatee.core.pgconfig import RoleConfig, render_pg_hba

DRY = """pg_rewind: servers diverged at WAL location 0/5A000000 on timeline 2
pg_rewind: rewinding from last common checkpoint at 0/59000060 on timeline 2
pg_rewind: need to copy 133 MB (total source directory size is 2274 MB)
"""
PROGRESS = "\r0/136177 kB (0%) copied\r136177/136177 kB (100%) copied\n"
REAL = DRY + PROGRESS + "pg_rewind: creating backup label and updating control file\npg_rewind: syncing target data directory\npg_rewind: Done!\n"


def test_argv_names_the_target_and_the_source_and_never_a_password():
    argv = rewind.rewind_argv(Path("/d"), "host=10.0.0.1 port=5432 user=manatee_rewind", bindir=Path("/b"))
    assert argv == ["/b/pg_rewind", "--target-pgdata", "/d", "--source-server",
                    "host=10.0.0.1 port=5432 user=manatee_rewind", "--progress"]
    assert rewind.rewind_argv(Path("/d"), "x", bindir=Path("/b"), dry_run=True)[-1] == "--dry-run"
    assert "--no-sync" not in argv


def test_parse_a_dry_run_and_a_real_run():
    r = rewind.parse_output(DRY)
    assert (r.copy_mb, r.source_mb, r.needed, r.done) == (133, 2274, True, False)
    assert r.diverged_at == "0/5A000000 on timeline 2"
    assert rewind.parse_output(REAL).done


def test_parse_no_rewind_and_garbage():
    r = rewind.parse_output("pg_rewind: source and target cluster are on the same timeline\n"
                            "pg_rewind: no rewind required\n")
    assert (r.copy_mb, r.needed, r.done) == (None, False, False)
    g = rewind.parse_output("something else entirely\n")
    assert (g.copy_mb, g.source_mb, g.needed, g.diverged_at, g.done) == (None, None, True, None, False)


def test_parse_controldata():
    text = ("pg_control version number:            1300\nDatabase cluster state:               in production\n"
            "wal_log_hints setting:                off\nData page checksum version:           1\nno colon here\n")
    c = rewind.parse_controldata(text)
    assert c["Database cluster state"] == "in production"
    assert c["Data page checksum version"] == "1"
    assert c["wal_log_hints setting"] == "off"


def test_the_rewind_password_derives_from_the_shard_secret():
    a, b = ShardSecret.of("a" * 32), ShardSecret.of("b" * 32)
    assert rewind.rewind_password(a) == rewind.rewind_password(ShardSecret.of("a" * 32))
    assert rewind.rewind_password(a) != rewind.rewind_password(b)
    assert rewind.rewind_password(None) is None and rewind.rewind_password(a, enabled=False) is None
    assert "a" * 32 not in rewind.rewind_password(a)


def test_grants_are_the_four_functions_pg_rewind_calls_and_checkpoint():
    assert len(rewind.GRANTS) == 5 and all(g.endswith(f"TO {rewind.REWIND_ROLE}") for g in rewind.GRANTS)
    assert sum("FUNCTION" in g for g in rewind.GRANTS) == 4 and "pg_checkpoint" in rewind.GRANTS[-1]


def _rc(**kw):
    return RoleConfig(role="primary", listen_address="10.0.0.1", port=5432, socket_dir="/s", application_name="a",
                      replication_user="replicator", replication_password="pw", members=("10.0.0.1", "10.0.0.2"),
                      **kw)


def test_pg_hba_lets_the_rewind_role_in_from_members_only_with_a_password():
    hba = render_pg_hba(_rc(rewind_user=rewind.REWIND_ROLE))
    rows = [line.split() for line in hba.splitlines() if not line.startswith("#")]
    mine = [r for r in rows if r[2] == rewind.REWIND_ROLE]
    assert [r for r in mine if r[-1] != "reject"] == [
        ["host", "postgres", rewind.REWIND_ROLE, "10.0.0.1/32", "scram-sha-256"],
        ["host", "postgres", rewind.REWIND_ROLE, "10.0.0.2/32", "scram-sha-256"]]
    # every other TCP session of the role is rejected before the client networks' rows
    reject = rows.index(["host", "all", rewind.REWIND_ROLE, "all", "reject"])
    assert all(rows.index(r) < reject for r in mine if r[-1] != "reject")
    assert reject < next(i for i, r in enumerate(rows) if r[:3] == ["host", "all", "all"])


def test_pg_hba_without_the_rewind_role_is_as_before():
    assert rewind.REWIND_ROLE not in render_pg_hba(_rc())


def test_a_bad_rewind_role_name_is_refused():
    with pytest.raises(ValueError):
        _rc(rewind_user="bad name")
