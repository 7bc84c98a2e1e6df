"""Real shard: postgresMgrCfg.parameters changed in every sitter's config, then
`manatee-adm reload`: the reloadable parameter takes effect on every node without a restart
of anything; the restart-only one is reported pending restart (adm output, /state,
manatee_pg_pending_restart) and PostgreSQL keeps running (the same postmaster)."""

from __future__ import annotations

import subprocess

import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard
from tests.shard_ops import adm, pg_setting, set_pg_parameters

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(600)]


SHARD = SharedShard("pgparams", 4000)


def test_reload_applies_parameters_on_every_node_and_reports_pending_restart(shard: Shard):
    sh = shard
    pids = {n.name: sh.postmaster(n) for n in sh.nodes}
    before = {n.name: pg_setting(sh, n, "work_mem") for n in sh.nodes}
    assert set(before.values()) == {"4MB"}
    try:
        set_pg_parameters(sh, {"work_mem": "5MB", "shared_buffers": "40MB"})
        r = adm(sh, "reload")
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("pending restart: shared_buffers") == len(sh.nodes)
        for n in sh.nodes:
            assert pg_setting(sh, n, "work_mem") == "5MB", n.name
            st = sh.state_of(n)
            assert st["pg"]["pendingRestart"] == ["shared_buffers"]
            assert sh.postmaster(n) == pids[n.name], f"{n.name}: PostgreSQL was restarted"
            metrics = subprocess.run(["curl", "-s", f"{n.status_url}/metrics"], capture_output=True,
                                     text=True, timeout=10).stdout
            assert any(ln.startswith("manatee_pg_pending_restart{") and ln.endswith(" 1.0")
                       for ln in metrics.splitlines()), metrics[:2000]
        # a bad config is refused by every sitter, which keeps running on what it has
        set_pg_parameters(sh, {"port": 1})
        r = adm(sh, "reload")
        assert r.returncode == 1 and r.stdout.count("postgresMgrCfg.parameters") == len(sh.nodes)
        assert all(pg_setting(sh, n, "work_mem") == "5MB" for n in sh.nodes)
    finally:
        set_pg_parameters(sh, {})
        r = adm(sh, "reload")
    assert r.returncode == 0 and "pending restart" not in r.stdout  # shared_buffers back to the value it runs with
    assert all(pg_setting(sh, n, "work_mem") == "4MB" for n in sh.nodes)
    assert {n.name: sh.postmaster(n) for n in sh.nodes} == pids
