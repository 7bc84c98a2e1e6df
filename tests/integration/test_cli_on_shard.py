"""manatee-stat, manatee-history and manatee-clear against a real sandbox shard (issue 5):
the tools' view must match what the sitters themselves report, before and after a failover.

One shard for the module (three nodes, session timeout 5 s). The CLIs run as the operator
runs them: separate processes, given the sandbox's ZooKeeper address and shard name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(600)]


def tool(name: str, *args: str, env: dict | None = None, limit: float = 30) -> subprocess.CompletedProcess:
    cp = subprocess.run([sys.executable, "-m", f"manatee.cli.{name}", *args], capture_output=True,
                        text=True, timeout=limit, env=dict(os.environ, **(env or {})))
    assert "Traceback" not in cp.stderr, cp.stderr
    return cp


SHARD = SharedShard("clishard", heal_each_test=False)


def _addr(sh: Shard, name: str | None) -> dict | None:
    if name is None:
        return None
    n = sh.node(name)
    return {"ip": n.ip, "pgUrl": n.pg_url}


def _stat(sh: Shard, *extra: str) -> dict:
    st = sh.sb.st
    cp = tool("stat", *extra, "-s", st.shard, st.zk_connect, env={"PGPASSWORD": st.admin_password})
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert list(doc) == [st.shard], doc
    return doc[st.shard]


def test_stat_matches_the_sitters_roles_with_and_without_p(shard: Shard):
    shard.wait_healthy()
    top = shard.topology()
    roles = shard.roles()
    assert roles[top["primary"]] == "primary" and roles[top["sync"]] == "sync", (roles, top)

    plain = _stat(shard)
    for key, name in (("primary", top["primary"]), ("sync", top["sync"]), ("async", top["async"][0])):
        got = plain[key]
        assert {k: got[k] for k in ("ip", "pgUrl")} == _addr(shard, name), (key, got)
        assert got["zoneId"], got
        assert "repl" not in got  # only with -p
    assert plain["registrar"]["database"]["primary"] == shard.node(top["primary"]).pg_url
    assert "error" not in plain

    detailed = _stat(shard, "-p")
    prepl, srepl = detailed["primary"]["repl"], detailed["sync"]["repl"]
    # the primary's row is its sync streaming synchronously; the sync's row is the async
    assert prepl["state"] == "streaming" and prepl["sync_state"] == "sync", prepl
    assert prepl["client_addr"] == shard.node(top["sync"]).ip, prepl
    assert srepl["state"] == "streaming" and srepl["client_addr"] == shard.node(top["async"][0]).ip, srepl
    for col in ("sent_lsn", "write_lsn", "flush_lsn", "replay_lsn", "application_name", "backend_start"):
        assert col in prepl, (col, prepl)
    assert detailed["async"]["repl"] == {}  # the tail has nobody downstream
    assert "time_lag" in detailed["async"]["lag"], detailed["async"]


def test_history_lists_every_transition_after_a_failover_and_clear_refuses(shard: Shard):
    shard.wait_healthy()
    st = shard.sb.st
    before = shard.topology()
    old, sync = before["primary"], before["sync"]
    seen_before = len(tool("history", st.shard, st.zk_connect).stdout.splitlines())

    shard.sb.kill(old)
    shard.wait(lambda: shard.topology()["primary"] == sync and shard.writable(shard.node(sync)),
               120, f"{sync} promoted after {old} was killed")
    cp = tool("history", st.shard, st.zk_connect)
    assert cp.returncode == 0, cp.stderr
    records = [json.loads(line) for line in cp.stdout.splitlines()]
    assert len(records) > seen_before
    times = [int(r["time"]) for r in records]
    assert times == sorted(times), "not sorted by time"
    for r in records:
        assert {"time", "date", "ip", "action", "role", "master", "slave", "zkSeq"} <= set(r), r
    new = records[seen_before:]
    ip_sync = shard.node(sync).ip
    assert any(r["action"] == "AssumeLeader" and r["ip"] == ip_sync for r in new), new
    # the new primary takes a new standby (the former async) and says so
    assert any(r["action"] == "NewStandby" and r["ip"] == ip_sync for r in new), new
    # the same records as ZooKeeper holds, nothing invented
    assert [int(r["zkSeq"]) for r in records] == [int(r["zkSeq"]) for r in shard.history()]

    # not in safe mode: manatee-clear refuses and changes nothing
    cp = tool("clear", st.shard, st.zk_connect)
    assert cp.returncode != 0 and "not in safe mode" in cp.stderr, (cp.returncode, cp.stderr)
    assert len(cp.stderr.strip().splitlines()) == 1

    after = _stat(shard)
    assert after["primary"]["ip"] == ip_sync and "error" not in after
    shard.ensure_healthy()
