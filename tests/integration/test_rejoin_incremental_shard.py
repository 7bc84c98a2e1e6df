"""A diverged old primary rejoins by an incremental stream, on a real shard (ZooKeeper,
zfs-fuse, three nodes of sitter + snapshotter + backupserver, PostgreSQL 15).

(pg_rewind is turned off on P here: test_rewind_shard.py rejoins by pg_rewind.)

The story (issue 10): primary P, sync S, async A. S was (re)built from P, so P and S
share a snapshot; A was built from S's earlier copy and shares none with P. P commits
WAL S never receives (S's walreceiver stopped, a client not waiting for the sync), and
P's host dies. S takes over, A becomes its sync, P is deposed. Restarted, P rejoins at
the tail behind A and must be rebuilt (its WAL forked). A shares no snapshot with P, the
primary S does: P receives an increment from S (manatee.core.restore.source), far
smaller than its dataset, then streams from A and every acknowledged row is there.
(A node with no common snapshot anywhere still rebuilds in full:
test_incremental_rebuild_shard.py's second test.)
"""

from __future__ import annotations

import contextlib
import time

import pytest

from manatee.core.restore.swap import REPLACED_PROP
from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say
from tests.shard_ops import (fill, finish_fork_story, fork_and_fail_over, rebuild, set_sitter_config, sql,
                             standby_streaming, undo_faults, zfs)

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]


SHARD = SharedShard("rejoin", 5000, undo=undo_faults, before_down=finish_fork_story)
COMMIT_TIMEOUT_S = 3.0  # the writer abandons a commit to the killed primary after this long
REJOIN_S = 300
#: a topology unchanged this long after the sync's rebuild is the one the fork runs on (CI 2026-12-06:
#: the primary named the async its sync 0.1 s after the rebuilt sync streamed, and the fork then
#: stalled a node that was no longer the sync)
SETTLE_S = 3.0


def _guids(dataset: str) -> dict[str, str]:
    """guid -> snapshot of `dataset`'s snapshots."""
    out = zfs("get", "-H", "-p", "-o", "name,value", "-r", "-d", "1", "guid", dataset)  # zfs-fuse: no -t
    return {guid: name for name, guid in (line.split("\t") for line in out.splitlines() if "@" in line)}


def _bases(snapshot: str) -> str:
    """The snapshot's local `manatee:bases` mark ("-": none)."""
    name, value, source = zfs("get", "-H", "-p", "-o", "name,value,source", "manatee:bases", snapshot).strip().split("\t")
    return value if source == "local" else "-"


def _old_copies(dataset: str) -> list[str]:
    """The old copies of `dataset` a rebuild set aside that are still there."""
    out = zfs("list", "-H", "-o", "name", "-t", "filesystem", "-r", dataset.rpartition("/")[0])
    return [n for n in out.split() if n.startswith(f"{dataset}-restore-")]


def _sync_shares_with_primary(sh: Shard) -> tuple[str, str, str]:
    """Rebuild the sync (forced: the primary may name the async its sync meanwhile) until the
    sync holds a snapshot of the primary's taken after the bulk: (primary, sync, async)."""
    for _ in range(3):
        p, s, a = names(sh.topology())
        before = set(_guids(sh.node(p).dataset))
        r = rebuild(sh, s, force=True)
        say(f"rebuild of the sync {s}: {r['path']} ({r['reason']}), {r['completed']} bytes")
        sh.wait(lambda: sh.topology()["sync"] and sh.streaming(sh.node(sh.topology()["sync"])), 90,
                "a streaming sync")
        gen = sh.zk_state()["generation"]
        time.sleep(SETTLE_S)  # the primary may still replace the sync it lost during the rebuild
        if sh.zk_state()["generation"] != gen:
            continue
        p2, s2, a2 = names(sh.topology())
        fresh = set(_guids(sh.node(p2).dataset)) - before
        if p2 == p and fresh & set(_guids(sh.node(s2).dataset)):
            return p2, s2, a2
    raise AssertionError(f"the sync shares no fresh snapshot with the primary: {sh.topology()}")


def test_diverged_old_primary_rejoins_by_an_increment_from_the_primary(shard: Shard):
    sh = shard
    fill(sh, 60)
    p, s, a = _sync_shares_with_primary(sh)
    np_, ns, na = sh.node(p), sh.node(s), sh.node(a)
    for guid in set(_guids(np_.dataset)) & set(_guids(na.dataset)):
        zfs("destroy", _guids(na.dataset)[guid])  # A keeps nothing P has
    sql(sh.wait(sh.find_primary, 60, "a writable primary"), "CREATE TABLE rejoin_fork (id int, pad text)")

    prev = sh.zk_state()
    gen0 = prev["generation"]
    w = sh.writer("rejoin", commit_timeout=COMMIT_TIMEOUT_S).start()
    killed = False
    try:
        w.wait_for_acks(30, 60)
        killed = True
        fork_and_fail_over(sh, w, p, s)
        set_sitter_config(sh, p, rebuildRewind=False)  # the ZFS increment, not pg_rewind (test_rewind_shard.py)
        sh.sb.start(p)
        killed = False
        t_heal = time.monotonic()
        sh.wait(lambda: standby_streaming(sh, p, "async"), REJOIN_S, f"the old primary {p} to rejoin")
        took = time.monotonic() - t_heal
        restore = (sh.state_of(np_) or {}).get("restore")
        used = int(zfs("get", "-H", "-p", "-o", "value", "used", np_.dataset).strip())
        say(f"{p} streams as the async {took:.1f}s after its restart; its rebuild: {restore}; dataset used {used}")
        assert restore and restore["phase"] == "done", f"{p} rejoined without a rebuild: {restore}"
        assert restore["source"].endswith(f"{ns.ip}:{ns.backup_port}"), restore
        assert restore["path"].startswith(f"incremental from {np_.dataset}@"), restore
        assert "shares no snapshot" in restore["reason"] and na.ip in restore["reason"], restore
        assert restore["completed"] < used / 5, (restore, used)
        assert sh.topology()["primary"] == s
        for n in (np_, ns):  # the forked commit is nowhere: P follows S's history
            assert sql(sh.dsn(n), "SELECT count(*) FROM rejoin_fork") == (0,), f"{n.name} has P's forked rows"
        # Both ends mark the snapshot they now share, so that their snapshotters keep it
        # (manatee.core.bases): P's with S's address, S's with P's.
        shared = restore["snapshot"].partition("@")[2]
        sh.wait(lambda: (_bases(f"{np_.dataset}@{shared}"), _bases(f"{ns.dataset}@{shared}")) == (ns.ip, np_.ip),
                30, f"{p} and {s} to mark {shared} as their base")
        # P's old copy, set aside by the rebuild, is destroyed after PostgreSQL started on the new one
        sh.wait(lambda: not _old_copies(np_.dataset), 60, f"{p}'s replaced old copy to be destroyed")
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
        set_sitter_config(sh, p, rebuildRewind=None)  # read at its next start
        if killed:
            sh.sb.start(p)
    sh.assert_checks(w, prev, expect_leader=s, since_gen=gen0)


def test_sitter_start_destroys_only_old_copies_a_finished_rebuild_marked(shard: Shard):
    """A sitter that died before a replaced old copy's destroy ended finishes it at its next
    start; an unmarked old copy (an interrupted rebuild's) is kept and reported."""
    sh = shard
    sh.wait_healthy()
    _p, _s, a = names(sh.topology())
    node = sh.node(a)
    marked, unmarked = f"{node.dataset}-restore-1000", f"{node.dataset}-restore-2000"
    sh.sb.stop(a)
    started = False
    try:
        for name in (marked, unmarked):
            zfs("create", "-o", "mountpoint=none", name)
        zfs("snapshot", f"{marked}@1")
        zfs("set", f"{REPLACED_PROP}=2026-12-04T15:00:00Z", marked)
        sh.sb.start(a)
        started = True
        sh.wait(lambda: marked not in _old_copies(node.dataset), 60, f"{a}'s sitter to destroy {marked}")
        assert _old_copies(node.dataset) == [unmarked]
        sh.wait(lambda: "restore_old_copy_kept" in sh.sitter_log(node), 10, f"{a}'s sitter to report {unmarked}")
        sh.wait(lambda: standby_streaming(sh, a, "async"), 120, f"{a} streaming again")
        # /state (and so manatee-adm show) names it until the operator destroys it
        sh.wait(lambda: (sh.state_of(node) or {}).get("oldCopiesKept") == [unmarked], 10, f"/state to name {unmarked}")
        zfs("destroy", "-r", unmarked)
        sh.wait(lambda: (sh.state_of(node) or {}).get("oldCopiesKept") == [], 45, f"/state to forget {unmarked}")
    finally:
        for name in (marked, unmarked):
            with contextlib.suppress(Exception):
                zfs("destroy", "-r", name)
        if not started:
            sh.sb.start(a)
