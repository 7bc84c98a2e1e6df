"""Real shard: a restart-only PostgreSQL setting (shared_buffers through postgresMgrCfg.parameters
and `manatee-adm reload`) leaves every node pending a restart; `manatee-adm restart --pending`
restarts them node by node (the async, the sync, a switchover, the old primary) through their
sitters: afterwards no node is pending, every PostgreSQL runs the new value in a new postmaster,
the sync took over in one new generation, and a RecordingWriter lost no acknowledged write
(S1–S7) with only one switchover's write gap. `--node` on the primary is refused."""

from __future__ import annotations

import json
import time

import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say
from tests.shard_ops import adm, pg_setting, set_pg_parameters

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(600)]

GAP_BOUND_S = 3.0  # as test_adm's switchover: a loaded 2-core box gets slack, the figures are printed


SHARD = SharedShard("rolling", 4000, retire=True)  # shared_buffers stays changed


def test_restart_pending_rolls_through_the_shard_with_one_switchover(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    r = adm(sh, "restart", "--node", sh.node(p).ip, limit=120)
    assert r.returncode == 1 and "is the primary: switch over first" in r.stderr, r.stderr

    set_pg_parameters(sh, {"shared_buffers": "40MB"})
    assert adm(sh, "reload", limit=120).returncode == 0
    for n in sh.nodes:
        assert sh.state_of(n)["pg"]["pendingRestart"] == ["shared_buffers"], n.name
    pids = {n.name: sh.postmaster(n) for n in sh.nodes}

    w = sh.writer("rolling").start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        r = adm(sh, "restart", "--pending", "--wait", "60", limit=300)
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert out.index(f"{sh.node(a).ip} (async): restarted") < out.index(f"{sh.node(s).ip} (sync): restarted") \
            < out.index("switchover done") < out.index("rolling restart done"), out
        w.wait_for_acks(30, 60)
        outs = [o for o in w.outages() if o.end is not None and o.end >= t0]
        gaps = sorted(((o.gap or 0.0) for o in outs), reverse=True)
    finally:
        w.stop()
    say(f"rolling restart: {took:.1f}s; write gaps after it started (longest first): "
        f"{[round(g, 3) for g in gaps]}")
    top = sh.topology()
    assert top["primary"] == s and top["generation"] == prev["generation"] + 1, top  # one switchover
    sh.wait(lambda: all(sh.streaming(sh.node(x)) for x in (p, a)), 60, "the standbys to stream")
    for n in sh.nodes:
        assert sh.state_of(n)["pg"]["pendingRestart"] == [], n.name
        assert pg_setting(sh, n, "shared_buffers") == "40MB", n.name
        assert sh.postmaster(n) != pids[n.name], f"{n.name}: PostgreSQL was not restarted"
    sh.assert_checks(w, prev, expect_leader=s, since_gen=prev["generation"])
    assert gaps and gaps[0] <= GAP_BOUND_S, gaps
    assert len([g for g in gaps if g > 1.0]) <= 1, f"more than one switchover's write gap: {gaps}"

    # nothing pending any more: --pending does nothing, not even a switchover
    r = adm(sh, "restart", "--pending", "--json", limit=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["ok"] and {st["action"] for st in summary["steps"]} == {"skip"}, summary
    assert sh.topology()["generation"] == top["generation"]


def _setting_now(sh: Shard, node, name: str) -> str | None:
    """pg_setting, or None while that PostgreSQL does not answer (its sitter restarts it)."""
    import psycopg2

    try:
        return pg_setting(sh, node, name)
    except psycopg2.Error:
        return None


def test_standbys_below_the_primarys_max_connections_are_raised_by_their_sitters(shard: Shard):
    """Only the primary's config raises max_connections, and it restarts in place (`restart
    --node PRIMARY --in-place`). Its standbys' PostgreSQL 15 then pauses their replay
    ("insufficient parameter settings": no promotion possible, and a resume would shut them
    down). Each sitter reads the primary's value in its log, restarts its PostgreSQL with it,
    and says so; the shard never fails over and no acknowledged write is lost."""
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    np_ = sh.node(p)
    base = json.loads(np_.config_path("sitter").read_text())["postgresMgrCfg"].get("parameters", {})
    want = int(pg_setting(sh, np_, "max_connections")) + 20
    set_pg_parameters(sh, {**base, "max_connections": str(want)}, [np_])
    assert adm(sh, "reload", "--wait", "60", limit=120).returncode == 0
    logs_from = {x: len(sh.sitter_log(sh.node(x))) for x in (s, a)}
    w = sh.writer("raise").start()
    try:
        w.wait_for_acks(30, 60)
        r = adm(sh, "restart", "--node", np_.ip, "--wait", "60", limit=120)
        assert r.returncode == 1 and "--in-place" in r.stderr, r.stderr  # not without it
        t0 = time.monotonic()
        r = adm(sh, "restart", "--node", np_.ip, "--in-place", "--wait", "60", limit=120)
        assert r.returncode == 0 and "serves again and its standbys stream" in r.stdout, (r.stdout, r.stderr)
        for x in (s, a):
            sh.wait(lambda x=x: _setting_now(sh, sh.node(x), "max_connections") == str(want)
                    and sh.streaming(sh.node(x)), 90, f"{x} raised to the primary's max_connections")
        took = time.monotonic() - t0
        w.wait_for_acks(30, 60)
    finally:
        w.stop()
        set_pg_parameters(sh, base, [np_])
        adm(sh, "reload", "--wait", "60", limit=120)
    say(f"primary restarted in place with max_connections {want}; both standbys raised and streaming "
        f"{took:.1f}s later; write gaps: {sorted((round(o.gap or 0, 2) for o in w.outages()), reverse=True)[:3]}")
    for x in (s, a):
        log = sh.sitter_log(sh.node(x))[logs_from[x]:]
        assert "pg_settings_raised_to_primary" in log, log[-2000:]
        assert "pg_replay_resumed" not in log, "a replay PostgreSQL paused for the setting was resumed"
        assert sh.state_of(sh.node(x))["pg"]["raisedToPrimary"] == {"max_connections": want}
    r = adm(sh, "verify", limit=60)
    assert r.returncode == 1 and f"its sitter raised max_connections {want} to the primary's value" in r.stdout, r.stdout
    top = sh.topology()
    assert top["primary"] == p and top["generation"] == prev["generation"], top  # no failover
    sh.assert_checks(w, prev)
