"""ACCEPTANCE F10, F11, F13, F15, F16 on a real shard (manatee-sandbox: ZooKeeper, zfs-fuse,
three nodes of sitter + snapshotter + backupserver, PostgreSQL 15), in the style of
test_sitter_faults.py: one shared shard (module scope, session timeout 5 s), healthy at the
start of each test; a RecordingWriter runs throughout; each test ends with Shard.assert_checks
(S1–S4 and S7 on the data and the history). Each prints its measured write outage as
`Fnn outage: X s` for the docs table.

- F10/F11 stop the sandbox's (standalone) ZooKeeper with Sandbox.zk_stop — all of ZooKeeper
  down — and start it again on the same address and data dir (sessions are restored with a
  fresh timeout, so no session of a live node expires).
- F15 destroys the async's dataset the safe way: the node is killed first (every process:
  nothing holds the filesystem), then a plain `zfs destroy -r` (never forced: a forced
  unmount can wedge zfs-fuse), then its daemons are started on the empty node.
- F16 forks the sync's WAL (its PostgreSQL promoted by hand and written to), with the
  primary's backupserver down so that the forked sync cannot be rebuilt, then kills the
  primary: the only candidate has diverged, so the shard must enter safe mode. The test then
  follows the safe-mode runbook (docs/operators-guide.md) with manatee-stat, manatee-history,
  a state edit and manatee-clear, back to a healthy shard (issue 5's runbook test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from manatee.backupserver.sender import HOLD_TAG
from manatee.core.lsn import Lsn
from manatee.core.procs import pid_alive
from manatee_testbed.sandbox_config import PG_BIN, ZFS_BIN
from manatee_testbed.sandbox_health import tail
from tests.shard_fixture import (NEEDS_SHARD, Shard, SharedShard, acks_on, assert_roles_held,
                                 assert_topology_unchanged, first_ack_on, longest_ack_gap, names, say,
                                 zk_back)

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]

SESSION_MS = 5000


SHARD = SharedShard("zkdata", SESSION_MS, undo=zk_back)


def _last_ack_before(w, t: float) -> float | None:
    done = [a.finished for a in w.attempts() if a.outcome == "acked" and a.finished <= t]
    return max(done) if done else None


def _outage_from(w, t_fault: float, t_first: float) -> float:
    """Write outage: from the last commit acknowledged before the fault to the first after."""
    last = _last_ack_before(w, t_fault)
    return t_first - (last if last is not None else t_fault)


def _tool(name: str, *args: str, env: dict | None = None, limit: float = 30) -> subprocess.CompletedProcess:
    cp = subprocess.run([sys.executable, "-m", f"manatee.cli.{name}", *args], capture_output=True,
                        text=True, timeout=limit, env=dict(os.environ, **(env or {})))
    assert "Traceback" not in cp.stderr, cp.stderr
    return cp


# ---------------------------------------------------------------------------------- F10
def test_f10_zookeeper_down_twice_session_timeout_no_topology_change(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("f10").start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        sh.sb.zk_stop()
        down_for = 2 * sh.session_s
        say(f"F10: ZooKeeper stopped for {down_for:.0f}s; primary {p}, sync {s}, async {a}")
        seen_roles: list[dict] = []
        writable: set[str] = set()
        while time.monotonic() - t0 < down_for:
            seen_roles.append(sh.roles())
            writable |= {n.name for n in sh.nodes if sh.writable(n)}
            time.sleep(0.5)
        t1 = time.monotonic()
        sh.sb.zk_start()
        t2 = time.monotonic()
        sh.drop_zk_client()
        during = [x for x in acks_on(w, sh.node(p), t0) if x <= t1]
        gap = longest_ack_gap(w, t0, t2)
        say(f"F10: {len(during)} commits on {p} while ZooKeeper was down ({t1 - t0:.1f}s); "
             f"longest gap between commits {gap:.2f}s; ZooKeeper back after {t2 - t1:.1f}s")
        say(f"F10 outage: {gap:.2f} s (longest gap between acknowledged writes; ZooKeeper down {t1 - t0:.1f} s)")
        assert len(during) >= 20, f"F10: only {len(during)} commits while ZooKeeper was down"
        # acks continued through the outage: in its last third too, not just at its start
        assert [x for x in during if x >= t0 + 2 * (t1 - t0) / 3], "F10: writes stopped during the outage"
        assert gap < 3.0, f"F10: the primary stalled for {gap:.2f}s while ZooKeeper was down"
        assert_roles_held("F10", seen_roles, writable, p, s, a)
        # every sitter reconnects with its session (no expiry, so no election change)
        assert_topology_unchanged(sh, "F10", gen0, p, s, a, t2)
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    assert not sh.leaders_after(gen0), "F10: a new primary was assumed"
    sh.assert_checks(w, prev)


# ---------------------------------------------------------------------------------- F11
def test_f11_zookeeper_down_primary_killed_sync_promoted_only_after_zk_returns(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    S, A = sh.node(s), sh.node(a)
    w = sh.writer("f11").start()
    try:
        w.wait_for_acks(30, 60)
        sh.sb.zk_stop()
        time.sleep(1.0)
        t0 = time.monotonic()
        sh.sb.kill(p)
        say(f"F11: ZooKeeper down, then killed the primary {p}; sync {s}, async {a}")
        bad: list[str] = []
        while time.monotonic() - t0 < 2 * sh.session_s:
            for n in (S, A):
                st = sh.state_of(n)
                if st and (st.get("role") == "primary" or st.get("localRole") == "primary"):
                    bad.append(f"{n.name} says role {st.get('role')}/{st.get('localRole')}")
                if st and st.get("pg") and st["pg"].get("running") and st["pg"].get("inRecovery") is False:
                    bad.append(f"{n.name}'s PostgreSQL left recovery")
                if sh.writable(n):
                    bad.append(f"{n.name} answers /primary 200")
            time.sleep(0.3)
        assert not bad, f"F11: promotion while ZooKeeper was down: {sorted(set(bad))}"
        assert not [x for x in w.attempts() if x.outcome == "acked" and x.finished > t0 + 0.5], \
            "F11: a write was acknowledged while ZooKeeper was down and the primary dead"
        t1 = time.monotonic()
        zk_back_wall_ms = time.time() * 1000
        sh.sb.zk_start()
        sh.drop_zk_client()
        first = sh.wait(lambda: first_ack_on(w, S, t1), sh.session_s + 60,
                        f"a committed write on the sync {s} after ZooKeeper came back")
        outage = _outage_from(w, t0, first)
        say(f"F11: first commit on {s} {first - t1:.2f}s after ZooKeeper was back "
             f"({first - t0:.2f}s after the kill)")
        say(f"F11 outage: {outage:.1f} s (ZooKeeper down {t1 - t0 + 1:.0f} s, session timeout {sh.session_s:.0f} s)")
        rec = sh.leaders_after(gen0)
        assert rec and rec[0]["ip"] == S.ip, f"F11: leaders after generation {gen0}: {rec}"
        assert int(rec[0]["time"]) >= zk_back_wall_ms - 500, "F11: the sync assumed leadership before ZooKeeper was back"
        sh.wait(lambda: sh.topology()["sync"] == a, 60, f"the async {a} to become sync")
        w.wait_for_acks(20, 60)
        sh.sb.start(p)
        sh.wait(lambda: sh.rejoined_at_tail(p), 150, f"old primary {p} to rejoin at the tail and stream")
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    sh.assert_checks(w, prev, expect_leader=s, since_gen=gen0)


# ---------------------------------------------------------------------------------- F13
def test_f13_back_to_back_failovers_kill_the_newly_promoted_primary(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    A = sh.node(a)
    w = sh.writer("f13").start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        sh.sb.kill(p)
        say(f"F13: killed the primary {p}; waiting for the sync {s} to be promoted")
        sh.wait(lambda: sh.topology()["primary"] == s, sh.session_s + 60, f"the sync {s} promoted in ZooKeeper")
        prev2 = sh.zk_state()
        t1 = time.monotonic()
        sh.sb.kill(s)
        say(f"F13: {s} promoted {t1 - t0:.1f}s after the kill (generation {prev2['generation']}, "
             f"sync {sh.topology()['sync']}); killed it at once")
        # the remaining node alone: it may lead only by the rules (it is the new state's sync and
        # holds every acknowledged write), and it needs a sync to take writes
        t_end = time.monotonic() + sh.session_s + 10
        alone_writable = False
        while time.monotonic() < t_end:
            alone_writable |= sh.writable(A)
            time.sleep(0.3)
        say(f"F13: {a} alone for {sh.session_s + 10:.0f}s: roles {sh.roles()}, writable {alone_writable}, "
             f"state {sh.topology()}")
        assert not alone_writable, f"F13: {a} took writes alone (no sync to acknowledge them)"
        t2 = time.monotonic()
        sh.sb.start(s)
        sh.sb.start(p)
        sh.wait_healthy(240)
        first = sh.wait(lambda: w.first_ack_after(t2), 90, "writes to resume")
        w.wait_for_acks(20, 90)
        new_p = sh.topology()["primary"]
        say(f"F13: converged with primary {new_p} {first - t2:.1f}s after the restarts")
        longest = max((o.duration() for o in w.outages() if o.start >= t0 - 1), default=0.0)
        say(f"F13 outage: {longest:.1f} s (longest write outage from the first kill on; both killed "
             f"nodes restarted {t2 - t0:.1f} s after it, writes {first - t2:.1f} s after the restart)")
        assert new_p in (s, a), f"F13: {new_p} leads; only {s} (primary) or {a} (its sync) may"
    finally:
        w.stop()
    sh.assert_checks(w, prev2, expect_leader=None if new_p == s else new_p, since_gen=prev2["generation"])
    # the dead node that had been deposed never led again
    assert not [r for r in sh.leaders_after(gen0) if r["ip"] == sh.node(p).ip], \
        f"F13: the first killed primary {p} assumed leadership again without rejoining first"


# ---------------------------------------------------------------------------------- F15
def _zfs(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run([ZFS_BIN, *args], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0 or not check, f"zfs {' '.join(args)}: exit {cp.returncode}: {cp.stderr.strip()}"
    return cp


def _destroy_dataset(dataset: str) -> None:
    """`zfs destroy -r`, never forced. A snapshot still held by the killed node's
    backupserver (its send was cut off by the kill; the hold is what a restarted
    backupserver would release) makes the destroy "busy": release that hold, then retry."""
    for _ in range(10):
        cp = _zfs("destroy", "-r", dataset, check=False)
        if cp.returncode == 0:
            return
        assert "busy" in cp.stderr, f"zfs destroy -r {dataset}: exit {cp.returncode}: {cp.stderr.strip()}"
        snaps = _zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset).stdout.split()
        for snap in snaps:
            _zfs("release", HOLD_TAG, snap, check=False)
        time.sleep(1.0)
    raise AssertionError(f"zfs destroy -r {dataset} stays busy: {cp.stderr.strip()}")


def test_f15_standby_dataset_destroyed_restored_from_leader(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    A, S = sh.node(a), sh.node(s)
    w = sh.writer("f15").start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        # A broken disk, done safely: every process of the node killed first so that nothing
        # holds its filesystem; then a plain (never forced) destroy.
        sh.sb.kill(a)
        _destroy_dataset(A.dataset)
        gone = subprocess.run([ZFS_BIN, "list", A.dataset], capture_output=True, text=True)
        assert gone.returncode != 0, f"{A.dataset} still exists"
        say(f"F15: destroyed {A.dataset} of the async {a} (killed first); primary {p}, sync {s}")
        sh.sb.start(a)
        sh.wait(lambda: sh.rejoined_at_tail(a), 240, f"{a} restored, at the tail and streaming")
        took = time.monotonic() - t0
        st = sh.state_of(A)
        assert st["restore"] and st["restore"].get("phase") == "done", f"F15: restore: {st['restore']}"
        assert st["restore"]["source"] == f"http://{S.ip}:{S.backup_port}", \
            f"F15: restored from {st['restore']['source']}, not from its leader {s}"
        assert "restore_done" in sh.sitter_log(A), f"F15: no restore_done in {A.log_path('sitter')}"
        # catches up: a commit acknowledged after the restore reaches the restored node
        w.wait_for_acks(30, 60)
        target = max(w.acked)

        def has_target() -> bool:
            try:
                with psycopg2.connect(sh.dsn(A)) as c, c.cursor() as cur:
                    cur.execute(f"select count(*) from {w.table} where id = %s", (target,))
                    return cur.fetchone()[0] == 1
            except psycopg2.Error:
                return False

        sh.wait(has_target, 30, f"the restored {a} to replay write {target}")
        say(f"F15: {a} restored from {s}, streaming and caught up {took:.1f}s after the destroy")
        outs = [o for o in w.outages() if o.start >= t0 - 0.5]
        longest = max((o.duration() for o in outs), default=0.0)
        say(f"F15 outage: {longest:.2f} s (writes on the primary while the async was rebuilt)")
        assert longest <= 1.0, f"F15: the primary blocked while the async was rebuilt: {outs}"
        assert sh.topology()["primary"] == p and sh.topology()["sync"] == s
    finally:
        w.stop()
    sh.assert_checks(w, prev)


def test_f15_primary_dataset_destroyed_never_becomes_an_empty_primary(shard: Shard):
    """The primary's dataset destroyed while the shard is frozen (so that the ordinary failover
    after its old session expires cannot come first). Before 2026-12-06 its restarted sitter
    ran initdb at generation 1 (the standbys would have rebuilt from the empty database) and
    held for ever, stopped, at a later generation. Now it holds, stopped, without creating a
    database (`primary.no_data`, the freeze named), and after unfreeze steps down to its sync;
    then it is restored at the tail with every acknowledged row."""
    from tests.shard_ops import adm

    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    P = sh.node(p)
    w = sh.writer("f15p").start()
    try:
        w.wait_for_acks(30, 60)
        assert adm(sh, "freeze", "-r", "f15 test: the primary's disk is replaced").returncode == 0
        sh.sb.kill(p)
        _destroy_dataset(P.dataset)
        say(f"F15: destroyed {P.dataset} of the primary {p} (killed first) in generation {prev['generation']}")
        sh.sb.start(p)
        sh.wait(lambda: (sh.state_of(P) or {}).get("rule") == "primary.no_data", 60,
                f"{p}'s sitter to hold as a primary with no data")
        t_end = time.monotonic() + 2 * sh.session_s
        while time.monotonic() < t_end:
            assert not (Path(P.data_dir) / "PG_VERSION").exists(), f"F15: {p} created an empty database"
            time.sleep(0.25)
        why = sh.state_of(P)["reason"]
        assert "so I do not start an empty primary" in why and "frozen" in why, why
        v = adm(sh, "verify")
        assert v.returncode == 2 and "its data directory is empty and its sitter keeps PostgreSQL stopped" in v.stdout, \
            v.stdout
        t0 = time.monotonic()
        assert adm(sh, "unfreeze").returncode == 0
        sh.wait(lambda: sh.topology()["primary"] == s and sh.writable(sh.node(s)), 60,
                f"the sync {s} to take over after {p} stepped down")
        say(f"F15: {s} writable {time.monotonic() - t0:.2f}s after unfreeze ({p} stepped down: no data)")
        sh.wait(lambda: sh.rejoined_at_tail(p), 240, f"{p} restored, at the tail and streaming")
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
        if (sh.zk_state() or {}).get("freeze"):
            adm(sh, "unfreeze")
    assert "primary.step_down" in sh.sitter_log(P), f"F15: no step-down in {P.log_path('sitter')}"
    sh.assert_checks(w, prev, expect_leader=s, since_gen=prev["generation"])


# ---------------------------------------------------------------------------------- F16
def _sql(node, q: str, params=None, autocommit: bool = True):
    """As postgres over the node's unix socket (the operator's psql)."""
    conn = psycopg2.connect(host=node.socket_dir, port=node.pg_port, user="postgres", dbname="postgres",
                            connect_timeout=3)
    try:
        conn.autocommit = autocommit
        with conn.cursor() as cur:
            cur.execute(q, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def _stop_sitter(node, timeout: float = 60) -> None:
    """`systemctl stop manatee-sitter` on one node: SIGTERM its sitter and wait."""
    pid = node.pids.get("sitter")
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(pid), f"sitter of {node.name} (pid {pid}) did not stop"


def _wal_position_by_hand(node) -> tuple[int, int]:
    """Runbook step 2 on one node whose sitter is stopped: run its PostgreSQL as a standby
    that follows nobody, read how far its WAL goes once replay stops moving, stop it."""
    data = Path(node.data_dir)
    sig = data / "standby.signal"
    if not sig.exists():
        sig.touch()
        shutil.chown(sig, "postgres", "postgres")
    log_path = Path(node.dir) / "runbook-postgres.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", f"{PG_BIN}/postgres", "-D", str(data),
         "-c", "primary_conninfo=", "-c", "listen_addresses=", "-c", "hot_standby=on"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        last, stable_since, deadline, err = None, None, time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                (lsn, tli), = _sql(node, "select pg_last_wal_replay_lsn()::text, "
                                         "(select timeline_id from pg_control_checkpoint())")
            except psycopg2.Error as e:
                lsn, tli, err = None, None, str(e).strip()
            if lsn is not None and lsn == last:
                if time.monotonic() - (stable_since or 0) > 1.5:
                    return Lsn.parse(lsn).value, int(tli)
            else:
                last, stable_since = lsn, time.monotonic()
            time.sleep(0.3)
        raise AssertionError(f"{node.name}: no stable WAL replay position within 60s (last error: {err}); "
                             f"postgres exit status {proc.poll()}, its log {log_path}:\n{tail(log_path, 25)}")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # fast shutdown
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_f16_safe_mode_runbook_end_to_end(shard: Shard):
    sh = shard
    st0 = sh.sb.st
    env = {"PGPASSWORD": st0.admin_password}
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    P, S, A = sh.node(p), sh.node(s), sh.node(a)
    error_path = f"{st0.shard_path}/error"
    w = sh.writer("f16").start()
    try:
        w.wait_for_acks(30, 60)
        # -- force the divergence ----------------------------------------------------------
        # (1) the primary's backupserver down, so the sync cannot simply be rebuilt from it
        bs = P.pids["backupserver"]
        os.kill(bs, signal.SIGKILL)
        sh.wait(lambda: not pid_alive(bs), 10, f"{p}'s backupserver gone")
        # (2) the sync's WAL forks: its PostgreSQL promoted by hand and written to
        #     (its sitter paused meanwhile, ~1 s, so that the fork exists before it can react)
        os.kill(S.pids["sitter"], signal.SIGSTOP)
        try:
            _sql(S, "select pg_promote(true, 30)")
            _sql(S, "begin read write; create table f16_fork (note text); "
                    "insert into f16_fork values ('only on the fork'); commit")
        finally:
            os.kill(S.pids["sitter"], signal.SIGCONT)
        t_fork = time.monotonic()
        say(f"F16: {s}'s PostgreSQL promoted by hand and written to; {p}'s backupserver killed")
        # (3) the sync's sitter learns from PostgreSQL that it cannot follow the primary
        sh.wait(lambda: (st := sh.state_of(S)) and (st.get("pg") or {}).get("diverged"), 90,
                f"{s}'s PostgreSQL to report that it cannot follow {p}", interval=0.1)
        # (4) the primary dies: the only candidate has a forked WAL
        t0 = time.monotonic()
        sh.sb.kill(p)
        say(f"F16: killed the primary {p} ({t0 - t_fork:.1f}s after the fork)")
        err = sh.wait(lambda: sh.zk.exists(error_path) and json.loads(sh.zk.get(error_path)[0]),
                      sh.session_s + 60, "the error node (safe mode)")
        say(f"F16: safe mode {time.monotonic() - t0:.1f}s after the kill: {err}")
        assert err.get("reason") and "diverged" in err["reason"], f"F16: error without a reason: {err}"
        assert err["standby"] in (S.ip, A.ip) and err["primary"] == P.ip, err
        sh.wait(lambda: all((st := sh.state_of(n)) and st.get("localRole") == "safe_mode" for n in (S, A)),
                30, "both live sitters in safe mode")

        # -- safe mode: readable, not writable, visible ------------------------------------
        time.sleep(2)
        assert not [n.name for n in sh.nodes if sh.writable(n)], "F16: a node answers /primary 200 in safe mode"
        readable = []
        for n in (S, A):
            try:
                with psycopg2.connect(sh.dsn(n)) as c, c.cursor() as cur:
                    cur.execute(f"select count(*) from {w.table}")
                    readable.append((n.name, cur.fetchone()[0]))
            except psycopg2.Error:
                continue
            try:
                with psycopg2.connect(sh.dsn(n)) as c, c.cursor() as cur:
                    cur.execute(f"insert into {w.table} (id, node, payload) values (-1, 'x', 'x')")
                raise AssertionError(f"F16: an insert on {n.name} succeeded in safe mode")
            except psycopg2.Error as e:
                assert "read-only" in str(e) or "recovery" in str(e), f"F16: insert on {n.name} failed oddly: {e}"
        assert readable, "F16: no node serves reads in safe mode"
        say(f"F16: reads in safe mode: {readable}")
        acked_in_safe_mode = [x for x in w.attempts() if x.outcome == "acked" and x.finished > t0 + 0.5]
        assert not acked_in_safe_mode, f"F16: writes acknowledged after the kill: {acked_in_safe_mode[:3]}"

        # -- the runbook -------------------------------------------------------------------
        # 1. Read why.
        cp = _tool("stat", "-s", st0.shard, st0.zk_connect, env=env)
        assert cp.returncode == 0, cp.stderr
        stat = json.loads(cp.stdout)[st0.shard]
        assert stat.get("error", {}).get("reason") == err["reason"], f"manatee-stat: {stat}"
        cp = _tool("history", st0.shard, st0.zk_connect)
        assert cp.returncode == 0, cp.stderr
        hist = [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]
        leaders = [r for r in hist if r.get("action") == "AssumeLeader"]
        assert leaders and leaders[-1]["ip"] == P.ip, f"manatee-history: last AssumeLeader {leaders[-1:]}"
        # 2. Find the node with the most WAL: manatee-adm pg-status for a first view while the
        #    sitters still run; then, the sitters stopped, each node's replay position read by
        #    hand as a standby that follows nobody. Not pg-status's WAL column: a standby's
        #    received position can run past its last complete record by the rest of a page, and
        #    so made the async look ahead of the sync holding the very same records (CI,
        #    2026-12-06: 0/1BD3A000 received against 0/1BD39CD8 replayed).
        live = [S, A]
        cp = _tool("adm", "pg-status", st0.shard, st0.zk_connect, env=env)
        assert cp.returncode == 0, cp.stderr
        lines = [ln.split() for ln in cp.stdout.splitlines() if ln.strip()]
        col = {h: i for i, h in enumerate(lines[0])}
        seen = {r[col["ADDRESS"]]: r for r in lines[1:]}
        assert {n.ip for n in live} <= set(seen), cp.stdout
        for n in live:
            _stop_sitter(n)
        pos = {n.name: _wal_position_by_hand(n) for n in live}
        say(f"F16 runbook: pg-status said {({n.name: seen[n.ip][col['WAL']] for n in live})}")
        best = max(live, key=lambda n: (pos[n.name][0], n is S))  # tie: the previous sync
        say(f"F16 runbook: WAL positions {({k: (str(Lsn(v[0])), v[1]) for k, v in pos.items()})}; "
             f"new primary {best.name}")
        # 3. Make it the primary in the state: manatee-adm set-primary.
        gen_before = json.loads(sh.zk.get(f"{st0.shard_path}/state")[0])["generation"]
        cp = _tool("adm", "set-primary", st0.shard, st0.zk_connect, best.ip)
        assert cp.returncode == 0, cp.stderr
        state = json.loads(sh.zk.get(f"{st0.shard_path}/state")[0])
        assert state["primary"]["ip"] == best.ip and state["sync"] is None and state["async"] == [], state
        assert state["generation"] == gen_before + 1, state
        # 4. Clear safe mode.
        cp = _tool("clear", st0.shard, st0.zk_connect)
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout)["removed"] == error_path
        assert not sh.zk.exists(error_path)
        # 5. The new primary's sitter first; then the others.
        sh.sb.start(best.name)
        sh.wait(lambda: (st := sh.state_of(best)) and st.get("localRole") == "primary"
                and (st.get("pg") or {}).get("inRecovery") is False, 90, f"{best.name} running as primary")
        cp = _tool("stat", "-s", st0.shard, st0.zk_connect, env=env)
        assert json.loads(cp.stdout)[st0.shard]["primary"]["ip"] == best.ip, cp.stdout
        assert _sql(best, f"select count(*) from {w.table}")[0][0] >= len(w.acked)
        for n in sh.nodes:
            if n is not best:
                sh.sb.start(n.name)
        # 6. Verify.
        sh.wait_healthy(300)
        t_ok = time.monotonic()
        first = sh.wait(lambda: first_ack_on(w, best, t0), 60, f"writes on the new primary {best.name}")
        cp = _tool("stat", "-p", "-s", st0.shard, st0.zk_connect, env=env)
        assert cp.returncode == 0, cp.stderr
        doc = json.loads(cp.stdout)[st0.shard]
        assert doc["primary"]["ip"] == best.ip and "error" not in doc, doc
        assert doc["primary"]["repl"].get("sync_state") == "sync", doc["primary"]
        say(f"F16 outage: {_outage_from(w, t0, first):.1f} s (kill → safe mode → runbook by a test "
             f"→ first commit; healthy {t_ok - t0:.1f} s after the kill)")
        cp = _tool("clear", st0.shard, st0.zk_connect)
        assert cp.returncode != 0 and "not in safe mode" in cp.stderr, (cp.returncode, cp.stderr)
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    sh.assert_checks(w, prev, expect_leader=best.name, since_gen=gen0)
