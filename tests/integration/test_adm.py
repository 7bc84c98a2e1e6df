"""manatee-adm against a real sandbox shard (ZooKeeper, zfs-fuse, three nodes of sitter +
snapshotter + backupserver, PostgreSQL 15), run as the operator runs it: the console
module in a subprocess.

- show / verify / pg-status on a healthy shard match the real roles;
- freeze: killing the primary causes no failover (same state, nobody promoted) until
  unfreeze, after which the sync takes over; show and verify name the freeze;
- switchover: the primary moves to the sync with no acknowledged write lost (S1–S7 on the
  data) and a short write gap, measured with a RecordingWriter and printed (several runs);
  the old primary rejoins as a standby; history shows the flips as a table;
- rebuild: an async is restored from its upstream, with progress, and streams again;
- F17: unreachable ZooKeeper, unknown shard, bad arguments → one stderr line, non-zero exit,
  bounded time, no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say
from tests.shard_ops import adm, start_and_rejoin

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(1200)]

SESSION_MS = 5000
GAP_BOUND_S = 3.0  # P2 is ≤ 1 s median (benchmark); a loaded 2-core box gets slack, the figure is printed


# ZooKeeper auth on: verify warns about a sitter without it (adm() passes the credential)
SHARD = SharedShard("adm", SESSION_MS, zk_auth=True)


def _row(out: str, role: str) -> list[str]:
    return next(ln.split() for ln in out.splitlines() if ln.startswith(role + " "))


# ---------------------------------------------------------------------------------- show / verify
def test_show_verify_and_pg_status_on_a_healthy_shard(shard: Shard):
    sh = shard
    p, s, a = names(sh.topology())
    gen = sh.topology()["generation"]
    r = adm(sh, "show")
    assert r.returncode == 0, r.stderr
    assert f"generation:  {gen}" in r.stdout and "not frozen" in r.stdout
    for role, name in (("primary", p), ("sync", s), ("async", a)):
        row = _row(r.stdout, role)
        assert row[1] == sh.node(name).ip and row[4] in ("primary", "standby") and row[5] == "up", row
    assert _row(r.stdout, "primary")[6] == "read-write"
    assert r.stdout.rstrip().endswith("none"), r.stdout

    r = adm(sh, "verify")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout

    r = adm(sh, "pg-status")
    assert r.returncode == 0
    for role in ("sync", "async"):
        row = _row(r.stdout, role)
        assert row[2:5] == ["up", "standby", row[4]] and row[5] == "streaming", row

    # repeating pg-status: two samples, then Ctrl-C ends it cleanly
    env = dict(os.environ, PGPASSFILE=str(sh.dir / "test.pgpass"))
    proc = subprocess.Popen([sys.executable, "-m", "manatee.cli.adm", "pg-status", sh.shard,
                             sh.sb.st.zk_connect, "0.5"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while sum(f"shard {sh.shard} generation" in line for line in seen) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()  # two samples printed: it is in its loop now
        if not line:
            break
        seen.append(line)
    proc.send_signal(2)
    rest, err = proc.communicate(timeout=20)
    out = "".join(seen) + rest
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert out.count(f"shard {sh.shard} generation") >= 2, out


# ---------------------------------------------------------------------------------- freeze
def test_freeze_stops_failover_until_unfreeze(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    w = sh.writer("freeze").start()
    try:
        w.wait_for_acks(20, 60)
        r = adm(sh, "freeze", "-r", "adm test: planned maintenance")
        assert r.returncode == 0 and "frozen" in r.stdout
        assert sh.zk_state()["freeze"]["reason"] == "adm test: planned maintenance"
        r = adm(sh, "show")
        assert "freeze:      frozen: adm test: planned maintenance" in r.stdout
        r = adm(sh, "verify")
        assert r.returncode == 1 and any(ln.startswith("warning: frozen: adm test") for ln in r.stdout.splitlines())

        frozen_state = sh.zk_state()
        sh.sb.kill(p)
        say(f"freeze: killed the primary {p}; waiting 3 session timeouts")
        t_end = time.monotonic() + 3 * sh.session_s
        while time.monotonic() < t_end:
            assert not sh.writable(sh.node(s)), f"the sync {s} became a writable primary while frozen"
            time.sleep(0.5)
        after = sh.zk_state()
        assert after == frozen_state, f"the state changed while frozen: {after}"
        assert not [x for x in sh.history() if x["action"] == "AssumeLeader" and x["ip"] == sh.node(s).ip
                    and (x.get("generation") or 0) > prev["generation"]]

        t0 = time.monotonic()
        r = adm(sh, "unfreeze")
        assert r.returncode == 0 and "unfrozen" in r.stdout
        sh.wait(lambda: sh.topology()["primary"] == s and sh.writable(sh.node(s)), 60,
                f"the sync {s} to take over after unfreeze")
        say(f"freeze: {s} writable {time.monotonic() - t0:.2f}s after unfreeze")
        w.wait_for_acks(20, 60)
        start_and_rejoin(sh, p)
        w.wait_for_acks(10, 60)
    finally:
        w.stop()
        if (sh.zk_state() or {}).get("freeze"):
            adm(sh, "unfreeze")
    sh.assert_checks(w, prev, expect_leader=s, since_gen=prev["generation"])


# ---------------------------------------------------------------------------------- reap
def test_reap_forgets_a_deposed_primary_that_is_gone_and_it_may_still_come_back(shard: Shard):
    """A primary killed for good stays deposed, and verify warns about it, naming reap; reap
    removes it (same generation, a Reaped record); started again after all, it rejoins as a
    newcomer at the tail. Reap refuses a node that is not deposed."""
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    ip = sh.node(p).ip
    w = sh.writer("reap").start()
    try:
        w.wait_for_acks(20, 60)
        sh.sb.kill(p)
        sh.wait(lambda: sh.topology()["primary"] == s and sh.writable(sh.node(s))
                and ip in [d["ip"] for d in sh.zk_state()["deposed"]], 60, f"{s} to take over, {p} deposed")
        r = adm(sh, "verify")
        assert r.returncode == 1 and f"deposed {ip}: a former primary that is down (if it is gone for good: " \
            f"manatee-adm reap --node {ip})" in r.stdout, r.stdout
        r = adm(sh, "reap", "--node", sh.node(s).ip)
        assert r.returncode == 1 and "is the primary, not a deposed former primary" in r.stderr, r.stderr
        r = adm(sh, "reap", "--node", sh.node(a).ip)
        assert r.returncode == 1 and "is the sync, not a deposed former primary" in r.stderr, r.stderr
        hba = Path(sh.node(s).data_dir) / "pg_hba.conf"
        assert f"{ip}/32" in hba.read_text()  # a deposed node may still replicate (it may rejoin)
        before = sh.zk_state()
        r = adm(sh, "reap", "--node", ip)
        assert r.returncode == 0 and f"{ip}: removed from the deposed list" in r.stdout, (r.stdout, r.stderr)
        after = sh.zk_state()
        assert after["deposed"] == [] and after["generation"] == before["generation"], after
        assert after["primary"] == before["primary"] and after["sync"] == before["sync"], after
        [rec] = [x for x in sh.history() if x["action"] == "Reaped"]
        assert rec["ip"] == ip and rec["generation"] == after["generation"], rec
        r = adm(sh, "verify")
        assert f"deposed {ip}" not in r.stdout, r.stdout
        sh.wait(lambda: f"{ip}/32" not in hba.read_text(), 30, f"the primary's pg_hba.conf to drop {ip}")
        w.wait_for_acks(20, 60)
        say(f"reap: {p} reaped at generation {after['generation']}; starting it again")
        start_and_rejoin(sh, p, " after its reap")
        w.wait_for_acks(10, 60)
    finally:
        w.stop()
    sh.assert_checks(w, prev, expect_leader=s, since_gen=prev["generation"])


# ---------------------------------------------------------------------------------- switchover
def test_switchover_moves_the_primary_with_no_acknowledged_write_lost(shard: Shard):
    sh = shard
    gaps = []
    for run in range(3):
        sh.ensure_healthy()
        prev = sh.zk_state()
        p, s, a = names(sh.topology())
        w = sh.writer(f"sw{run}").start()
        try:
            w.wait_for_acks(30, 60)
            log0 = len(sh.sitter_log(sh.node(p)))
            t0 = time.monotonic()
            r = adm(sh, "switchover", "--to", sh.node(s).ip, "--wait", "30")
            assert r.returncode == 0, r.stderr
            assert "switchover done" in r.stdout
            w.wait_for_acks(30, 60)
            outs = [o for o in w.outages() if o.end is not None and o.end >= t0]
            gap = max((o.gap or 0.0) for o in outs) if outs else 0.0
            gaps.append(gap)
            top = sh.topology()
            say(f"switchover run {run}: {p} -> {s}; write gap {gap:.3f}s; CLI {r.secs:.2f}s; topology {top}")
            assert top["primary"] == s and top["generation"] == prev["generation"] + 1, top
            # the old primary rejoins as a standby (without a rebuild when its WAL did not fork)
            sh.wait(lambda: p in sh.topology()["async"] + [sh.topology()["sync"]] and sh.streaming(sh.node(p)),
                    150, f"the old primary {p} to stream as a standby")
            rebuilt = "restore_starting" in sh.sitter_log(sh.node(p))[log0:]
            say(f"switchover run {run}: old primary {p} streams again ({'rebuilt' if rebuilt else 'no rebuild'})")
            w.wait_for_acks(20, 60)
        finally:
            w.stop()
        sh.assert_checks(w, prev, expect_leader=s, since_gen=prev["generation"])
        assert gap <= GAP_BOUND_S, f"switchover write gap {gap:.2f}s"
    gaps.sort()
    say(f"switchover write gaps: {[round(g, 3) for g in gaps]}; median {gaps[len(gaps) // 2]:.3f}s (P2: <= 1 s)")

    r = adm(sh, "history")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["TIME", "ACTION", "IP", "ROLE", "MASTER", "SLAVE", "GEN"]
    gen = sh.topology()["generation"]
    leader = sh.node(sh.topology()["primary"]).ip
    assert any(ln.split()[1:3] == ["AssumeLeader", leader] and ln.split()[-1] == str(gen) for ln in lines[1:]), \
        r.stdout


def test_switchover_refused_with_a_clear_message(shard: Shard):
    sh = shard
    p, s, a = names(sh.topology())
    gen = sh.topology()["generation"]
    r = adm(sh, "switchover", "--to", sh.node(a).ip)
    assert r.returncode == 1 and "not the sync" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    adm(sh, "freeze", "-r", "no switchover now")
    try:
        r = adm(sh, "switchover")
        assert r.returncode == 1 and "frozen" in r.stderr
    finally:
        adm(sh, "unfreeze")
    r = adm(sh, "switchover", "--cancel")
    assert r.returncode == 0 and "nothing to cancel" in r.stdout
    assert sh.topology()["generation"] == gen and "switchover" not in sh.zk_state()


# ---------------------------------------------------------------------------------- rebuild
def test_rebuild_restores_an_async_from_its_upstream(shard: Shard):
    sh = shard
    p, s, a = names(sh.topology())
    r = adm(sh, "rebuild", "--node", sh.node(p).ip)
    assert r.returncode == 1 and "primary" in r.stderr
    r = adm(sh, "rebuild", "--node", sh.node(s).ip)
    assert r.returncode == 1 and "--force" in r.stderr
    r = adm(sh, "rebuild", "--node", sh.node(a).ip, "--wait", "240", limit=300)
    assert r.returncode == 0, r.stderr
    assert "rebuild of" in r.stdout and "done" in r.stdout and "from http" in r.stdout
    assert "restore_done" in sh.sitter_log(sh.node(a))
    sh.wait(lambda: sh.streaming(sh.node(a)), 60, f"{a} to stream after its rebuild")


# ---------------------------------------------------------------------------------- F17
def test_f17_unreachable_zookeeper_unknown_shard_and_bad_arguments(shard: Shard):
    sh = shard
    cases = [
        (dict(zk="127.0.0.1:1"), ("show", "-t", "2"), 1, "cannot connect to ZooKeeper"),
        (dict(zk="127.0.0.1:1"), ("freeze", "-r", "x", "-t", "2"), 1, "cannot connect to ZooKeeper"),
        (dict(shard="no-such-shard"), ("show",), 1, "not found"),
        (dict(shard="no-such-shard"), ("switchover",), 1, "not found"),
        (dict(shard="no-such-shard"), ("rebuild", "--node", "x"), 1, "not found"),
        (dict(shard="no-such-shard"), ("freeze", "-r", "x"), 1, "not found"),
        (dict(), ("rebuild", "--node", "10.9.9.9"), 1, "no node '10.9.9.9'"),
        (dict(), ("freeze",), 2, "--reason"),
        (dict(), ("pg-status", "soon"), 2, "PERIOD"),
        (dict(shard="bad/name"), ("show",), 2, "bad shard name"),
    ]
    for kw, args, code, needle in cases:
        r = adm(sh, *args, **kw)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert needle in r.stderr, (needle, r.stderr)
        assert r.secs < 10, f"{args} took {r.secs:.1f}s"
