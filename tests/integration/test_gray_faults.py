"""ACCEPTANCE F18–F23 on a real shard: gray failures, where a node is alive, keeps its
ZooKeeper session, and is sick (testbed/manatee_testbed/grayfaults/ injects them).

- F18 PostgreSQL hung (SIGSTOP of PostgreSQL only; the sitter runs on) on the primary, the
  sync, the async; and on the primary a sticky hang (every new postgres process stopped
  too, so that restarting PostgreSQL does not cure it).
- F19 disk full (dataset quota just above its use, filled by a burst through the primary) on
  the primary and on the sync; the run stops if zfs-fuse died (see the `shard` fixture).
- F20 connection exhaustion (every slot, superuser ones too) on each role.
- F21 a malformed election node; an unparsable state znode.
- F22 PostgreSQL crash loop on the primary (killed every second).
- F23 a flaky primary: 30 % packet loss to/from ZooKeeper and its peers, 200 ms latency.
- A sync that heartbeats but does not flush (its walreceiver alone SIGSTOPped).

What each test demands (ACCEPTANCE / issue 8): 0 acknowledged writes lost, no fork, S1–S5/S7
(Shard.assert_checks); no rebuild or safe mode where the data is intact; a primary that
cannot serve (hung, crash-looping, out of disk) gives way: writes are accepted by the sync
within primaryStartTimeout + T + 2 s (+ LOADED_SLACK_S for this shared 2-core machine); a
hung or storm-loaded standby is not rebuilt and writes go on. Each prints its measured
outage as `Fnn ... outage: X s`.

One shard for the module (session timeout T = 4 s), healthy at the start of each test;
every gray fault is undone between tests (grayfaults.undo_all).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from manatee.shard import latches
from manatee_testbed import grayfaults as gf
from manatee_testbed import network, zfspool
from manatee_testbed.grayfaults.pgfaults import pg_pids
from manatee_testbed.proctable import cmdline, postmaster_pid
from manatee_testbed.writer import WriterError
from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, first_ack_on, log_since, longest_ack_gap, names, say
from tests.shard_ops import adm, sql

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(600)]

SESSION_MS = 4000
#: On this shared 2-core machine the bounds get this much on top (the measured figure is printed).
LOADED_SLACK_S = 6.0
COMMIT_TIMEOUT_S = 3.0
REJOIN_S = 150


def _undo(sh: Shard) -> None:
    for line in gf.undo_all(sh.sb):
        say(f"undo: {line}")


SHARD = SharedShard("gray", SESSION_MS, undo=_undo)


@pytest.fixture(autouse=True)
def _zfs_fuse_survives(zfs_fuse, request) -> Iterator[None]:
    """After each test the machine's zfs-fuse daemon must still be the one that served it,
    answering: if it died (a fault drove it into a bug), every later test on the machine fails
    on dead mounts, so the run stops here, saying so."""
    daemons = set(zfspool.zfs_fuse_pids())
    yield
    if not daemons & set(zfspool.zfs_fuse_pids()) or not zfspool.zpool_answers():
        pytest.exit(f"zfs-fuse (pid {sorted(daemons)}) died during {request.node.name}: every ZFS mount on the "
                    f"machine is gone; restart it (manatee_testbed.zfspool.ensure_zfs_fuse) and see its log "
                    f"{zfs_fuse.log_path or '(started by another run)'}", returncode=3)


def primary_start_timeout_s(sh: Shard) -> float:
    """The sitter's primaryStartTimeout (ms in its config) if it has one, else its default
    (latches.primary_start_timeout)."""
    cfg = json.loads(sh.node("a").config_path("sitter").read_text())
    explicit = next((w["primaryStartTimeout"] / 1000 for w in (cfg, cfg.get("postgresMgrCfg") or {})
                     if isinstance(w.get("primaryStartTimeout"), (int, float))), None)
    return latches.primary_start_timeout(explicit, sh.session_s, cfg["postgresMgrCfg"]["healthChkTimeout"] / 1000)


def _marks(sh: Shard) -> dict[str, list[str]]:
    """Per node: the transitions to rebuild or safe mode its sitter has logged so far, each
    with the decision that led to it."""
    out = {}
    for n in sh.nodes:
        lines = sh.sitter_log(n).splitlines()
        marks = []
        for i, ln in enumerate(lines):
            if " transition " in ln and (" to=rebuild" in ln or " to=safe_mode" in ln):
                why = next((x for x in reversed(lines[max(0, i - 3):i]) if " decision " in x), "")
                marks.append(f"{ln[:30]} {why[why.find('reason='):][:300]}")
        out[n.name] = marks
    return out


def _assert_no_rebuild_or_safe_mode(sh: Shard, before: dict[str, list[str]], what: str) -> None:
    after = _marks(sh)
    new = {n: after[n][len(before.get(n, [])):] for n in after}
    grew = {n: v for n, v in new.items() if v}
    assert not grew, f"{what}: rebuild or safe mode although the data is intact: {grew}"
    assert not sh.safe_mode(), f"{what}: the shard is in safe mode: {sh.safe_mode()}"


def _standby_streaming(sh: Shard, name: str) -> bool:
    top = sh.topology()
    if name != top["sync"] and name not in top["async"]:
        return False
    s = sh.state_of(sh.node(name))
    return bool(s and s.get("role") in ("sync", "async") and sh.streaming(sh.node(name)))


def _primary_gives_way(sh: Shard, tag: str, apply, undo, *, may_heal_in_place: bool = False,
                       others_intact: bool = False) -> None:
    """Common body for a primary that cannot serve: the sync takes writes within the bound;
    the old primary, once the fault is undone, rejoins as a standby; the data checks.
    may_heal_in_place: a fault that a restart of PostgreSQL cures (a single SIGSTOP: the
    sitter kills the hung processes and starts PostgreSQL again in its role) may instead
    end with the same primary taking writes again within the bound. others_intact: once the
    fault is undone, only the old primary may be rebuilt (its rejoining must not make the
    new sync or the async rebuild)."""
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    pst = primary_start_timeout_s(sh)
    bound = pst + sh.session_s + 2
    w = sh.writer(tag.lower(), commit_timeout=COMMIT_TIMEOUT_S).start()
    undone = False
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        apply(p)
        say(f"{tag}: fault on the primary {p}; sync {s}, async {a}; bound {bound:.0f}s "
            f"(primaryStartTimeout {pst:.0f}s + T + 2s)")
        def resumed() -> tuple[str, float] | None:
            for n in ([s, p] if may_heal_in_place else [s]):
                t = first_ack_on(w, sh.node(n), t0 + 0.5)
                if t is not None and (n == s or sh.topology()["primary"] == p):
                    return n, t
            return None

        # wait past the bound, so that a late recovery is measured, not just failed
        who, first = sh.wait(resumed, bound + LOADED_SLACK_S + 40, f"a committed write on the sync {s} after "
                             f"the fault on {p}" + (f" (or on {p} again)" if may_heal_in_place else ""))
        took = first - t0
        say(f"{tag} outage: {took:.1f} s (first commit on {'the new primary' if who == s else 'the same primary'} "
            f"{who}; bound {bound:.0f} s)")
        assert took <= bound + LOADED_SLACK_S, f"{tag}: writes resumed {took:.1f}s after the fault (bound {bound:.0f}s)"
        if who == p:
            w.wait_for_acks(20, 60)
            undo(p)
            undone = True
            w.stop()
            assert not sh.leaders_after(gen0), f"{tag}: healed in place yet a new primary: {sh.leaders_after(gen0)}"
            sh.assert_checks(w, prev)
            return
        assert sh.topology()["primary"] == s, f"{tag}: {s} takes writes but the state says {sh.topology()}"
        w.wait_for_acks(20, 60)
        marks = _marks(sh)
        undo(p)
        undone = True
        t_undo = time.monotonic()
        sh.wait(lambda: _standby_streaming(sh, p), REJOIN_S, f"the old primary {p} to rejoin as a standby")
        say(f"{tag}: {p} streams as {sh.roles()[p]} {time.monotonic() - t_undo:.1f}s after the fault was undone")
        assert sh.topology()["primary"] == s, f"{tag}: the primary changed again: {sh.topology()}"
        w.wait_for_acks(20, 60)
        if others_intact:
            after = _marks(sh)
            grew = {n: after[n][len(marks[n]):] for n in (s, a) if after[n][len(marks[n]):]}
            assert not grew, f"{tag}: rebuild or safe mode of an intact node when {p} rejoined: {grew}"
    finally:
        w.stop()
        if not undone:
            with contextlib.suppress(Exception):
                undo(p)
    late = [x for x in w.attempts() if x.outcome == "acked" and f"host={sh.node(p).ip} " in x.dsn
            and x.finished > first]
    assert not late, f"{tag}: S1: {len(late)} commit(s) acknowledged by the old primary {p} after the failover"
    assert len(sh.leaders_after(gen0)) == 1, f"{tag}: more than one new primary: {sh.leaders_after(gen0)}"
    sh.assert_checks(w, prev, expect_leader=s, since_gen=gen0)


def _standby_fault(sh: Shard, tag: str, role: str, apply, undo, hold_s: float, max_gap: float,
                   during=None) -> None:
    """Common body for a sick standby: no failover, no rebuild, no safe mode; the longest
    write outage stays under `max_gap` (a sync that cannot ack may be replaced). `during(victim)`,
    if given, runs while the fault holds (within hold_s)."""
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    victim = s if role == "sync" else a
    marks = _marks(sh)
    w = sh.writer(tag.lower(), commit_timeout=COMMIT_TIMEOUT_S).start()
    undone = False
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        apply(victim)
        say(f"{tag}: fault on the {role} {victim} for {hold_s:.0f}s; primary {p}")
        if during is not None:
            during(victim)
        time.sleep(max(0.0, hold_s - (time.monotonic() - t0)))
        with contextlib.suppress(WriterError):  # a stall shows as the gap below, with its length
            w.wait_for_acks(10, 60)
        t1 = time.monotonic()
        undo(victim)
        undone = True
        sh.wait_healthy(REJOIN_S)
        w.wait_for_acks(20, 60)
        t2 = time.monotonic()
    finally:
        w.stop()
        if not undone:
            with contextlib.suppress(Exception):
                undo(victim)
    gap = longest_ack_gap(w, t0, t2)
    say(f"{tag} outage: {gap:.1f} s (longest gap between acknowledged writes; fault held {t1 - t0:.0f} s); "
        f"chain now {sh.topology()}")
    assert sh.topology()["primary"] == p, f"{tag}: the primary changed for a sick {role}: {sh.topology()}"
    assert not sh.leaders_after(gen0), f"{tag}: a new primary was assumed"
    assert gap <= max_gap, f"{tag}: writes stopped for {gap:.1f}s (allowed {max_gap:.0f}s) with a sick {role}"
    _assert_no_rebuild_or_safe_mode(sh, marks, tag)
    sh.assert_checks(w, prev)


# ---------------------------------------------------------------------------------- F18
def test_f18_pg_hung_on_primary_writes_resume_within_bound(shard: Shard):
    """One SIGSTOP of the primary's PostgreSQL: killing the hung processes and starting
    PostgreSQL again cures it, so writes may resume on the same primary or on the sync."""
    _primary_gives_way(shard, "F18-primary", lambda n: gf.pg_hang(shard.sb, n),
                       lambda n: gf.pg_resume(shard.sb, n), may_heal_in_place=True)


def test_f18_pg_stays_hung_on_primary_sync_takes_over(shard: Shard):
    """The primary's PostgreSQL hangs again whenever it is started (every new postgres
    process SIGSTOPped, as under a stuck disk): only a step-down restores writes. The sync's
    PostgreSQL is also killed once the primary hangs (as a busy machine's health check did
    in CI): restarted by its sitter, it cannot stream from the hung primary, yet it still
    holds every acknowledged write and must take over."""
    sh = shard
    pst = primary_start_timeout_s(sh)

    def apply(n: str) -> None:
        sync = sh.topology()["sync"]
        gf.crash_loop(sh.sb, n, for_s=pst + 3 * sh.session_s + 30, every_s=0.2, sig="STOP")
        time.sleep(1.0)
        pm = postmaster_pid(sh.sb.st.node(sync).data_dir)
        assert pm is not None, f"the sync {sync}'s PostgreSQL is not running"
        os.kill(pm, signal.SIGKILL)

    _primary_gives_way(sh, "F18-primary-sticky", apply,
                       lambda n: (gf.crash_stop(sh.sb, n), gf.pg_resume(sh.sb, n)))


@pytest.mark.parametrize("role", ["sync", "async"])
def test_f18_pg_hung_on_standby_no_rebuild_writes_go_on(shard: Shard, role: str):
    sh = shard
    # a hung sync blocks commits until its sitter restarts PostgreSQL (healthChkTimeout) or
    # the primary gives the sync role away; a hung async blocks nothing
    max_gap = sh.session_s + 2 + LOADED_SLACK_S if role == "sync" else 3.0
    _standby_fault(sh, f"F18-{role}", role, lambda n: gf.pg_hang(sh.sb, n), lambda n: gf.pg_resume(sh.sb, n),
                   hold_s=2 * sh.session_s + 1, max_gap=max_gap)


def _wait_no_sickness(sh: Shard, name: str, limit: float = 30.0) -> None:
    """Until the node's sitter has no sickness clock running (/state pg.unhealthyFor null). On
    the shared shard a node that an earlier test left sick (a rejoin that did not stream yet)
    may still be within its stable time: a new hard fault then counts from that clock and the
    sync gives way at once, before a switchover could wait on it (seen 2026-12-05 with the
    F18/F22 tests run just before)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        pg = sh.sb.node_status(sh.node(name)).get("pg") or {}
        if pg.get("known") and pg.get("unhealthyFor") is None:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name}'s sitter still counts its PostgreSQL unhealthy after {limit:.0f}s: {pg}")


def test_a_switchover_to_a_sync_that_keeps_hanging_is_not_made(shard: Shard):
    """Sandbox trial, 2026-12-05: `manatee-adm switchover` while the sync's PostgreSQL hangs
    at every start (a stuck disk). Its sitter restarted it between hangs, the primary released
    to it, it took over and hung again: 24 s without writes, two more generations. Now the
    sync's heartbeats say its PostgreSQL is not healthy, the primary waits (adm says why) and
    replaces the sick sync as for F18; the request is dropped, the primary never changes."""
    sh = shard

    def request(victim: str) -> None:
        time.sleep(0.3)  # the hang has begun
        r = adm(sh, "switchover", "--node", sh.node(victim).ip, "--wait", "20", limit=40)
        out = r.stdout + r.stderr
        assert r.returncode != 0, f"a switchover to the hung sync {victim} went through: {out}"
        assert "says its PostgreSQL is not healthy" in out, f"manatee-adm did not say why the primary waits: {out}"

    _standby_fault(sh, "switchover-to-hung-sync", "sync",
                   lambda n: (_wait_no_sickness(sh, n), gf.crash_loop(sh.sb, n, for_s=120, every_s=0.2, sig="STOP")),
                   lambda n: (gf.crash_stop(sh.sb, n), gf.pg_resume(sh.sb, n)),
                   hold_s=2 * sh.session_s + 1, max_gap=sh.session_s + 2 + LOADED_SLACK_S, during=request)


# ---------------------------------------------------------------------------------- F19
#: zfs-fuse aborts on a write into a full quota unless it runs with max_write=4096 (see
#: grayfaults/diskfull.py); the harness starts it so. A daemon that another run started
#: without it is not ours to restart: then these tests are skipped, saying why.
def _disk_full(sh: Shard, name: str) -> None:
    """Quota just above the node's use, filled by a burst through the primary (committed MB by MB)."""
    unsafe = zfspool.full_dataset_unsafe()
    if unsafe:
        pytest.skip(unsafe)
    gf.disk_full(sh.sb, name, wait=False)


def test_f19_disk_full_on_primary_sync_takes_over(shard: Shard):
    """The primary's disk fills half-way through a WAL record: its sync may have received
    the record's first part and take over with initWal past its new timeline's start (the
    new primary then lowers it, or it waited ~50 s in wait_sync); when the old primary
    rejoins below the new sync with that torn WAL, the sync must not read the refusal it
    logs as its own divergence (it rebuilt itself). Issue 8."""
    _primary_gives_way(shard, "F19-primary", lambda n: _disk_full(shard, n),
                       lambda n: gf.disk_lift(shard.sb, n), others_intact=True)


def test_f19_disk_full_on_sync_writes_go_on(shard: Shard):
    sh = shard

    def named_full(victim: str) -> None:
        """manatee-adm verify names the full disk within seconds, whatever the node's role by then."""
        ip = sh.node(victim).ip
        t0 = time.monotonic()

        def found() -> str | None:
            r = adm(sh, "verify", "--json")
            msgs = [p["message"] for p in json.loads(r.stdout or "{}").get("problems", [])]
            return next((m for m in msgs if f"{ip}: its dataset is full" in m), None)

        msg = sh.wait(found, 20, f"manatee-adm verify to name {victim}'s full dataset")
        say(f"F19-sync: manatee-adm verify named it {time.monotonic() - t0:.1f}s after the fill: {msg}")

    primary, sync = names(sh.topology())[:2]
    log0, sync0 = len(sh.sitter_log(sh.node(primary))), len(sh.sitter_log(sh.node(sync)))
    _standby_fault(sh, "F19-sync", "sync", lambda n: _disk_full(sh, n), lambda n: gf.disk_lift(sh.sb, n),
                   hold_s=2 * sh.session_s + 1, max_gap=sh.session_s + 2 + LOADED_SLACK_S, during=named_full)
    # the sync said why it gave way (its last heartbeat), so the primary did not wait for the expiry
    gave = [ln for ln in sh.sitter_log(sh.node(primary))[log0:].splitlines() if "standby_gave_way" in ln]
    # the reason names the full disk: its own words, or the error of the first write it refused
    # (CI, 2026-12-05: "I cannot write its config: [Errno 122] Disk quota exceeded")
    full = ("disk is full", "Disk quota exceeded", "No space left on device")
    said = [ln[:300] for ln in sh.sitter_log(sh.node(sync))[sync0:].splitlines()
            if any(k in ln for k in ("pg_", "heartbeat", "dataset_space"))][:30]  # the sync's side, for a failure
    assert gave and any(f in gave[0] for f in full), \
        f"F19-sync: the primary never heard the sync give way: {gave}; the sync logged: {said}"
    say(f"F19-sync: {gave[0][:300]}")


# ---------------------------------------------------------------------------------- F20
@pytest.mark.parametrize("role", ["sync", "async"])
def test_f20_connection_storm_on_standby_no_rebuild(shard: Shard, role: str):
    sh = shard
    _standby_fault(sh, f"F20-{role}", role, lambda n: gf.storm(sh.sb, n, hold_s=60),
                   lambda n: gf.storm_release(sh.sb, n), hold_s=2 * sh.session_s + 1, max_gap=3.0)


def test_f20_connection_storm_on_primary_no_failover(shard: Shard):
    """Clients holding every slot of the primary is load, not a fault of the node: no
    failover, no rebuild, no safe mode; the writer's own open connection keeps committing,
    and new connections work again once the storm is released."""
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    marks = _marks(sh)
    w = sh.writer("f20p", commit_timeout=COMMIT_TIMEOUT_S).start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        gf.storm(sh.sb, p, hold_s=60)
        say(f"F20-primary: every connection slot of the primary {p} taken")
        time.sleep(3 * sh.session_s)
        roles = sh.roles()
        gf.storm_release(sh.sb, p)
        t1 = time.monotonic()
        w.wait_for_acks(20, 60)
        t2 = time.monotonic()
    finally:
        w.stop()
        gf.storm_release(sh.sb, p)
    gap = longest_ack_gap(w, t0, t2)
    say(f"F20-primary outage: {gap:.1f} s (storm held {t1 - t0:.0f} s; roles during it {roles})")
    assert roles[p] == "primary" and roles[s] == "sync", f"F20-primary: roles during the storm: {roles}"
    assert not sh.leaders_after(gen0), "F20-primary: a failover for client load"
    _assert_no_rebuild_or_safe_mode(sh, marks, "F20-primary")
    sh.assert_checks(w, prev)


# ---------------------------------------------------------------------------------- F21
def test_f21_rogue_election_node_ignored_failover_still_works(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("f21e", commit_timeout=COMMIT_TIMEOUT_S).start()
    try:
        w.wait_for_acks(30, 60)
        path = gf.rogue_election_node(sh.sb)
        say(f"F21: rogue election node {path}")
        time.sleep(2 * sh.session_s)
        assert sh.topology()["primary"] == p, f"F21: the rogue node moved the primary: {sh.topology()}"
        w.wait_for_acks(20, 30)
        t0 = time.monotonic()
        sh.sb.kill(p)
        bound = sh.session_s + 2 + 2 * LOADED_SLACK_S
        first = sh.wait(lambda: first_ack_on(w, sh.node(s), t0), bound + 20,
                        f"failover to {s} with the rogue election node present")
        say(f"F21-election outage: {first - t0:.1f} s (primary killed with a rogue election node present)")
        gf.remove_rogue_election_node(sh.sb)
        sh.sb.start(p)
        sh.wait(lambda: _standby_streaming(sh, p), REJOIN_S, f"{p} to rejoin as a standby")
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
        gf.remove_rogue_election_node(sh.sb)
    assert first - t0 <= bound, f"F21: failover took {first - t0:.1f}s (bound {bound:.0f}s)"
    sh.assert_checks(w, prev, expect_leader=s, since_gen=gen0)


def test_f21_a_deleted_election_node_is_joined_again(shard: Shard):
    """The sync's election node deleted by hand while its sitter's session lives: before, the
    sitter stayed out of the election until its session ended (never, while it ran), and the
    primary replaced it for good. Now it joins again at once (sandbox trial 2026-12-05: back
    in 0.12 s, the primary read-only for 0.05 s, no new generation)."""
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    election = f"{sh.sb.st.shard_path}/election"
    w = sh.writer("f21d", commit_timeout=COMMIT_TIMEOUT_S).start()
    try:
        w.wait_for_acks(30, 60)
        mine = next(c for c in sh.zk.get_children(election) if c.startswith(f"{sh.node(s).ip}:"))
        t0 = time.monotonic()
        sh.zk.delete(f"{election}/{mine}")
        back = sh.wait(lambda: next((c for c in sh.zk.get_children(election)
                                     if c.startswith(f"{sh.node(s).ip}:") and c != mine), None), 10,
                       f"{s}'s sitter to join the election again")
        say(f"F21-deleted election node: {s} back as {back} {time.monotonic() - t0:.2f} s after the delete")
        assert "election_node_gone" in sh.sitter_log(sh.node(s))
        w.wait_for_acks(30, 60)
    finally:
        w.stop()
    gens = sh.zk_state()["generation"] - prev["generation"]
    assert gens <= 1, f"F21: {gens} new generations for one deleted election node"
    assert sh.topology()["primary"] == p
    sh.assert_checks(w, prev)


def test_an_alter_system_override_of_the_primarys_sync_is_reset(shard: Shard):
    """`ALTER SYSTEM SET synchronous_standby_names = ''` and a reload on the primary: before,
    it acknowledged commits its sync never received, unnoticed (sandbox trial 2026-12-06).
    The sitter resets every ALTER SYSTEM override of a setting it manages at its next status
    check and reloads (`pg_override_removed`)."""
    from tests.shard_ops import sql

    sh = shard
    dsn = sh.find_primary()
    assert dsn, "no writable primary"
    p, s, _a = names(sh.topology())
    want = sql(dsn, "show synchronous_standby_names")[0]
    assert want, "the primary names no sync"
    t0 = time.monotonic()
    sql(dsn, "ALTER SYSTEM SET synchronous_standby_names = ''", "select pg_reload_conf()")
    sh.wait(lambda: sql(dsn, "show synchronous_standby_names")[0] == want, 10,
            "the primary to name its sync again")
    say(f"ALTER SYSTEM override of synchronous_standby_names undone {time.monotonic() - t0:.2f} s later")
    assert "pg_override_removed" in sh.sitter_log(sh.node(p))
    assert sql(dsn, "select count(*) from pg_file_settings where sourcefile like '%/postgresql.auto.conf'")[0] == 0


def test_an_operators_nologin_or_closed_database_for_the_sitters_is_undone(shard: Shard):
    """`ALTER ROLE postgres NOLOGIN` (a hardening guide's advice) replicates to every node and
    locked each sitter out at its next new connection: sandbox trial 2026-12-06, the primary's
    PostgreSQL killed once, its sitter could not log in to the restarted server and stepped
    down (13.3 s without writes). The primary's sitter now undoes it, and `ALLOW_CONNECTIONS
    false` on its database, at its next status check (`pg_access_restored`)."""
    import psycopg2

    from tests.shard_ops import sql

    sh = shard
    dsn = sh.find_primary()
    assert dsn, "no writable primary"
    p, s, _a = names(sh.topology())
    check = ("select r.rolcanlogin and d.datallowconn from pg_roles r, pg_database d"
             " where r.rolname = current_user and d.datname = current_database()")

    def open_to(d: str) -> bool:
        try:
            return sql(d, check)[0] is True
        except psycopg2.Error:  # locked out, as the sitters would be
            return False

    # a session that outlives the lock-out, in another database (PostgreSQL refuses to close
    # the database of the session that asks)
    keep = psycopg2.connect(dsn + " dbname=template1", connect_timeout=3)
    keep.autocommit = True
    try:
        for lock in ("ALTER ROLE CURRENT_USER NOLOGIN", "ALTER DATABASE postgres ALLOW_CONNECTIONS false"):
            t0 = time.monotonic()
            with keep.cursor() as cur:
                cur.execute(lock)
            assert not open_to(dsn), lock
            sh.wait(lambda: open_to(dsn), 10, f"the primary's sitter to undo {lock}")
            say(f"{lock} undone {time.monotonic() - t0:.2f} s later")
        assert sh.sitter_log(sh.node(p)).count("pg_access_restored") >= 2
        sh.wait(lambda: open_to(sh.dsn(sh.node(s))), 10, "the sync to replay the fix")
    finally:
        with keep.cursor() as cur:
            cur.execute("ALTER ROLE CURRENT_USER LOGIN; ALTER DATABASE postgres ALLOW_CONNECTIONS true")
        keep.close()


def test_a_query_on_the_sync_that_holds_its_replay_does_not_hold_a_switchover(shard: Shard):
    """Sandbox trial 2026-12-06: an open transaction on the sync that had read a table, an
    ALTER TABLE of it on the primary (replayed as an AccessExclusiveLock the session blocks),
    then the primary killed: the promotion waited out max_standby_streaming_delay (30 s), writes
    out 24.8 s at T = 6 s. A promotion now ends the sessions that hold its replay
    (`promotion_replay_unblocked`). Shown here by a switchover, which shares the promotion: the
    old primary is read-only until the sync has promoted."""
    import psycopg2

    from tests.shard_ops import sql

    sh = shard
    prev = sh.zk_state()
    p, s, _a = names(sh.topology())
    dsn = sh.find_primary()
    assert dsn, "no writable primary"
    sql(dsn, "drop table if exists replay_held", "create table replay_held (id int)", "insert into replay_held values (1)")
    sh.wait(lambda: sql(sh.dsn(sh.node(s)), "select count(*) from pg_class where relname = 'replay_held'")[0] == 1,
            10, f"{s} to replay the table")
    holder = psycopg2.connect(sh.dsn(sh.node(s)), connect_timeout=3, application_name="report")
    w = sh.writer("replay-held").start()
    try:
        with holder.cursor() as cur:
            cur.execute("select count(*) from replay_held")  # its transaction stays open
        sql(dsn, "alter table replay_held add column v int")
        w.wait_for_acks(20, 30)
        log0 = len(sh.sitter_log(sh.node(s)))
        t0 = time.monotonic()
        r = adm(sh, "switchover", "--to", sh.node(s).ip, "--wait", "25", limit=40)
        assert r.returncode == 0 and "switchover done" in r.stdout, r.stdout + r.stderr
        w.wait_for_acks(20, 30)
        gap = longest_ack_gap(w, t0, time.monotonic())
        say(f"switchover with the sync's replay held by a query: done in {r.secs:.2f} s, write gap {gap:.2f} s")
        assert gap < 10, f"the write gap {gap:.1f} s: the promotion waited for the query"
        assert "promotion_replay_unblocked" in sh.sitter_log(sh.node(s))[log0:]
        with pytest.raises(psycopg2.Error), holder.cursor() as cur:
            cur.execute("select 1")
    finally:
        w.stop()
        holder.close()
    sh.assert_checks(w, prev, expect_leader=s, since_gen=prev["generation"])
    sql(sh.find_primary(), "drop table replay_held")


def test_f21_unparsable_state_znode_never_promotes_or_rebuilds(shard: Shard):
    """While the state znode holds garbage the sitters hold (the primary serves, nobody is
    promoted or rebuilt); `manatee-adm verify` names the fix and `manatee-adm state-restore`
    writes back the state the sitters remember, by compare-and-set on the garbage's version."""
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    marks = _marks(sh)
    w = sh.writer("f21s", commit_timeout=COMMIT_TIMEOUT_S).start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        gf.corrupt_state(sh.sb)
        say("F21: state znode unparsable")
        seen = []
        while time.monotonic() - t0 < 3 * sh.session_s:
            seen.append(sh.roles())
            time.sleep(0.5)
        v = adm(sh, "verify")
        assert v.returncode == 2 and "'manatee-adm state-restore' writes back" in v.stdout, v.stdout
        r = adm(sh, "state-restore", "--yes")
        assert r.returncode == 0 and "cannot be read" in r.stdout, r.stdout + r.stderr
        restored = sh.zk_state()
        assert restored == prev, f"F21: state-restore wrote {restored}, not the state before the garbage {prev}"
        sh.wait_healthy(REJOIN_S)
        w.wait_for_acks(20, 60)
        t2 = time.monotonic()
    finally:
        w.stop()
        with contextlib.suppress(Exception):
            gf.restore_state(sh.sb)
    gap = longest_ack_gap(w, t0, t2)
    say(f"F21-state outage: {gap:.1f} s")
    promoted = [r for r in seen if r[s] == "primary" or r[a] in ("primary", "sync")]
    assert not promoted, f"F21: a standby was promoted on an unparsable state: {promoted[:3]}"
    assert not sh.leaders_after(gen0), "F21: a new primary was assumed on an unparsable state"
    _assert_no_rebuild_or_safe_mode(sh, marks, "F21-state")
    sh.assert_checks(w, prev)


# ---------------------------------------------------------------------------------- F22
def test_f22_crash_loop_on_primary_sync_takes_over(shard: Shard):
    sh = shard
    pst = primary_start_timeout_s(sh)
    _primary_gives_way(sh, "F22", lambda n: gf.crash_loop(sh.sb, n, for_s=pst + 3 * sh.session_s + 30),
                       lambda n: gf.crash_stop(sh.sb, n))


# ---------------------------------------------------------------------------------- F23
def test_f23_flaky_primary_at_most_one_failover_nothing_lost(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("f23", commit_timeout=COMMIT_TIMEOUT_S).start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        gf.flaky(sh.sb, p, loss_pct=30, delay_ms=200, for_s=120)
        say(f"F23: primary {p}: 30% packet loss, 200 ms latency to ZooKeeper and from its peers")
        primaries = set()
        while time.monotonic() - t0 < 5 * sh.session_s:
            primaries.add(sh.topology()["primary"])
            time.sleep(0.5)
        gf.unflaky(sh.sb, p)
        t1 = time.monotonic()
        sh.wait_healthy(REJOIN_S)
        w.wait_for_acks(20, 60)
        t2 = time.monotonic()
    finally:
        w.stop()
        gf.unflaky(sh.sb, p)
    leaders = sh.leaders_after(gen0)
    gap = longest_ack_gap(w, t0, t2)
    say(f"F23 outage: {gap:.1f} s (flaky for {t1 - t0:.0f} s; {len(leaders)} failover(s); "
        f"primaries seen {sorted(x for x in primaries if x)})")
    assert len(leaders) <= 1, f"F23: {len(leaders)} failovers (flapping): {leaders}"
    sh.assert_checks(w, prev)


# --- issue 8: a sync that heartbeats but does not flush (SIGSTOP of its walreceiver alone: its sitter
# and status query answer on, pg_stat_wal_receiver still says streaming, its flush never moves);
# the primary replaces it by the async once it has left the primary's WAL unflushed, without
# advancing, for primaryStartTimeout (T = 4 s: 8 s), read-only first.
STALL_BOUND_S = 8.0  # primaryStartTimeout's default at T = 4 s (2 x T); above healthChkTimeout + expirationTime


def _walreceivers(sh: Shard, name: str) -> list[int]:
    return [p for p in pg_pids(sh.sb.st.node(name)) if "walreceiver" in (cmdline(p) or "")]


def _said(log: str, most: int = 40) -> list[str]:
    """A sitter's newest informative log lines (not debug), for a failure's message."""
    return [line for line in log.splitlines() if "[debug" not in line][-most:]


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def test_sync_that_heartbeats_but_does_not_flush_is_replaced_by_the_async(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    w = sh.writer("stall", commit_timeout=3.0).start()
    stopped: list[int] = []
    try:
        w.wait_for_acks(30, 60)
        stopped = _walreceivers(sh, s)
        assert stopped, f"no walreceiver found on the sync {s}"
        logs0 = {n: len(sh.sitter_log(sh.node(n))) for n in (p, a)}
        t0 = time.monotonic()
        _signal(stopped, signal.SIGSTOP)
        say(f"stall: walreceiver {stopped} of the sync {s} stopped; primary {p}, async {a}")
        sh.wait(lambda: sh.topology()["sync"] == a, STALL_BOUND_S + sh.session_s + LOADED_SLACK_S + 10,
                f"the primary {p} to name the async {a} its sync")
        t_new = time.monotonic() - t0
        w.wait_for_acks(10, 60)  # writes go on with the new sync, the old one still stuck
        t1 = time.monotonic()
        _signal(stopped, signal.SIGCONT)
        stopped = []
        sh.wait_healthy(150)
        w.wait_for_acks(20, 60)
        t2 = time.monotonic()
    finally:
        w.stop()
        _signal(stopped, signal.SIGCONT)
    gap = longest_ack_gap(w, t0, t2)
    log = sh.sitter_log(sh.node(p))
    say(f"stall outage: {gap:.1f} s (sync replaced after {t_new:.1f} s; fault held {t1 - t0:.0f} s); "
        f"chain now {sh.topology()}")
    assert "still heartbeats but has not flushed my WAL" in log, "the primary's decision does not say why"
    assert sh.topology()["primary"] == p and not sh.leaders_after(gen0), "a failover for a stuck sync"
    assert gap <= STALL_BOUND_S + sh.session_s + 2 + LOADED_SLACK_S, (
        f"writes stopped for {gap:.1f}s; what the sitters said meanwhile:\n"
        + "\n".join(f"{n}: {line}" for n in (p, a) for line in _said(sh.sitter_log(sh.node(n))[logs0[n]:])))
    assert not sh.safe_mode()
    sh.assert_checks(w, prev)


def test_a_query_that_holds_the_asyncs_replay_does_not_hold_writes_when_the_sync_dies(shard: Shard):
    """Sandbox trial 2026-12-06 (T = 6 s): a report's open transaction on the async that had
    read a table, an ALTER TABLE of it on the primary (replayed as an AccessExclusiveLock the
    session blocks), then the sync killed. PostgreSQL starts a standby's walreceiver for a new
    primary_conninfo only once its replay asks for more WAL: the async, named the new sync,
    streamed from nobody, and the primary stayed read-only until max_standby_streaming_delay
    (30 s) cancelled the report: 26 s without writes. As the sync, its sitter now ends the
    sessions that hold its replay (`sync_replay_unblocked`)."""
    from manatee_testbed.grayfaults import replayhold
    from tests.shard_ops import sql

    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    dsn = sh.find_primary()
    assert dsn, "no writable primary"
    w = sh.writer("async-report", commit_timeout=COMMIT_TIMEOUT_S).start()
    report = None
    try:
        report = replayhold.hold_replay(sh.dsn(sh.node(a)), dsn, timeout=10)
        w.wait_for_acks(20, 30)
        log0 = len(sh.sitter_log(sh.node(a)))
        t0 = time.monotonic()
        sh.sb.kill(s)
        say(f"report on the async {a} holds its replay; killed the sync {s}; primary {p}")
        first = sh.wait(lambda: first_ack_on(w, sh.node(p), t0 + 0.5), 60, f"writes to resume on {p}")
        say(f"first commit {first - t0:.2f} s after the kill (sync now {sh.topology()['sync']})")
        assert sh.topology()["sync"] == a, f"the async {a} is not the sync"
        assert "sync_replay_unblocked" in sh.sitter_log(sh.node(a))[log0:], "the sync did not end the report"
        assert first - t0 <= sh.session_s + 2 + LOADED_SLACK_S, f"writes resumed {first - t0:.1f} s after the kill"
        assert not replayhold.release_replay(report), "the report's session outlived the takeover"
        sh.sb.start(s)
        sh.wait(lambda: sh.rejoined_at_tail(s), 150, f"the old sync {s} to rejoin at the tail and stream")
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
        replayhold.release_replay(report)
    sh.assert_checks(w, prev)
    sql(sh.find_primary(), f"drop table {replayhold.TABLE}")


# ------------------------------------------------------------------- a sitter that crashes
def _orphans_killed(sh: Shard, name: str) -> int:
    return sh.sitter_log(sh.node(name)).count("pg_orphan_killed")


def test_sitter_crash_on_primary_restarted_no_failover(shard: Shard):
    """The primary's sitter alone dies (SIGKILL) and its supervisor starts a new one 0.5 s
    later; PostgreSQL ran on meanwhile, no longer anyone's child. The new sitter kills that
    PostgreSQL and starts it again as the primary: a write pause of about a second, no
    failover. Before (2026-12-05 sandbox trial) every start failed on it ("postgres already
    running ... not starting another"): after primaryStartTimeout the primary stepped down
    (13 s of outage, a new generation), and the node then backed off as a standby."""
    sh = shard
    prev = sh.zk_state()
    gen0 = prev["generation"]
    p, s, a = names(sh.topology())
    marks, killed0 = _marks(sh), _orphans_killed(sh, p)
    w = sh.writer("sitcrash", commit_timeout=COMMIT_TIMEOUT_S).start()
    try:
        w.wait_for_acks(30, 60)
        # The orphan is SIGKILLed: its restart replays the WAL since the last checkpoint, which
        # after the module's earlier tests may be a lot (a CI run: 8.7 s without writes, 1.1-1.3 s
        # in every run here). That is PostgreSQL's crash recovery, not what this test measures.
        sql(sh.dsn(sh.node(p)), "CHECKPOINT")
        log_from = len(sh.sitter_log(sh.node(p)))
        sync_log_from = len(sh.sitter_log(sh.node(s)))
        sync_pg_log = Path(sh.node(s).mountpoint) / "postgresql.log"
        sync_pg_from = sync_pg_log.stat().st_size if sync_pg_log.exists() else 0
        t0 = time.monotonic()
        old, new = sh.sb.crash_sitter(p, 0.5)
        say(f"sitter crash: the primary {p}'s sitter {old} killed, {new} started 0.5 s later")
        sh.wait(lambda: _orphans_killed(sh, p) > killed0, 30, f"{p}'s new sitter to kill its orphan PostgreSQL")
        sh.wait(lambda: first_ack_on(w, sh.node(p), t0 + 1.0) is not None, 30, f"a commit on {p} again")
        w.wait_for_acks(20, 60)
        t2 = time.monotonic()
    finally:
        w.stop()
    gap = longest_ack_gap(w, t0, t2)
    say(f"sitter crash on the primary: outage {gap:.1f} s (longest gap between acknowledged writes)")
    assert sh.topology()["primary"] == p and not sh.leaders_after(gen0), f"a failover: {sh.topology()}"
    pg_lines = [ln for ln in sh.sitter_log(sh.node(p))[log_from:].splitlines() if " pg_" in ln or "transition" in ln]
    # (CI, 2026-12-08: 9.0 s, the restarted primary waiting for its sync, which neither caught
    # up nor was replaced for 8 s; the sync's side was not kept: it is, from now on)
    sync_lines = [ln for ln in sh.sitter_log(sh.node(s))[sync_log_from:].splitlines()
                  if any(k in ln for k in (" pg_", "transition", "decision", "heartbeat", "cycle_failed"))]
    # (and the sync's PostgreSQL: its walreceiver starts again only once its replay asks for more WAL)
    sync_pg = log_since(sync_pg_log, sync_pg_from).splitlines()
    assert gap < sh.session_s, (f"writes stopped for {gap:.1f}s, as long as a failover (T = {sh.session_s}s); "
                                f"its new sitter's PostgreSQL steps:\n" + "\n".join(pg_lines[:20])
                                + f"\nits sync {s}'s sitter meanwhile:\n" + "\n".join(sync_lines[:30])
                                + f"\nits sync {s}'s PostgreSQL log meanwhile:\n" + "\n".join(sync_pg[:40]))
    _assert_no_rebuild_or_safe_mode(sh, marks, "sitter crash on the primary")
    sh.assert_checks(w, prev)


@pytest.mark.parametrize("role", ["sync", "async"])
def test_sitter_crash_on_standby_restarted_streams_again(shard: Shard, role: str):
    sh = shard
    victim = names(sh.topology())[1 if role == "sync" else 2]
    killed0 = _orphans_killed(sh, victim)
    _standby_fault(sh, f"sitter-crash-{role}", role, lambda n: sh.sb.crash_sitter(n, 0.5), lambda n: None,
                   hold_s=4.0, max_gap=3.0)
    assert _orphans_killed(sh, victim) == killed0 + 1


# --- F23's reconnect: PostgreSQL's walreceiver connects asynchronously and ignores connect_timeout, so
# the SYNs of a connect begun on a lossy link are retried on the kernel's back-off (on this kernel 1 s
# four times, then 2, 4, 8, 16 s): after 20 s of lost SYNs it streamed again 15.7 s after the link
# was fine (sandbox, 2026-12-06). primary_conninfo's tcp_user_timeout (5 s) ends such a connect and
# PostgreSQL starts a new one wal_retrieve_retry_interval (1 s) later: measured 0.15 s.
SYN_LOSS_S = 20.0
STREAMS_AGAIN_S = 8.0  # without the bound: 14 s here (the next SYN at 34 s), 11 s on a kernel without linear retries
SYN_TABLE = "manatee_syndrop"


def test_a_walreceiver_whose_syns_were_lost_streams_again_soon_after_the_link_is_fine(shard: Shard):
    sh = shard
    _p, s, a = names(sh.topology())
    up, me = sh.node(s), sh.node(a)
    pg_log = Path(me.mountpoint) / "postgresql.log"
    timed_out0 = pg_log.read_text(errors="replace").count("Connection timed out")
    try:
        network.drop_syns(me.ip, up.ip, up.pg_port, SYN_TABLE)
        ended = sql(sh.dsn(up), f"select count(pg_terminate_backend(pid)) from pg_stat_replication "
                                f"where client_addr = '{me.ip}'")
        assert ended == (1,), f"the async {a}'s walsender on {s}: {ended}"
        t0 = time.monotonic()
        sh.wait(lambda: not sh.streaming(me), 10, f"the async {a} to stop streaming")
        time.sleep(max(0.0, SYN_LOSS_S - (time.monotonic() - t0)))
        assert not sh.streaming(me), f"{a} streamed while its SYNs to {s} were dropped: the test proves nothing"
    finally:
        network.heal(me.ip, SYN_TABLE)
    t1 = time.monotonic()
    sh.wait(lambda: sh.streaming(me), 60, f"the async {a} to stream again")
    took = time.monotonic() - t1
    say(f"walreceiver reconnect: {a} streams from {s} again {took:.1f} s after {SYN_LOSS_S:.0f} s of lost SYNs")
    assert took < STREAMS_AGAIN_S, f"{a} streamed again {took:.1f} s after its SYNs got through again"
    timed_out = pg_log.read_text(errors="replace").count("Connection timed out") - timed_out0
    assert timed_out >= 2, f"{a}'s PostgreSQL logged {timed_out} connects that timed out in {SYN_LOSS_S:.0f} s"
