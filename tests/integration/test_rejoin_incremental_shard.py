"""A diverged old primary rejoins by an incremental stream, on a real shard (ZooKeeper,
zfs-fuse, three nodes of sitter + snapshotter + backupserver, PostgreSQL 15).

The story (issue 10): primary P, sync S, async A. S was (re)built from P, so P and S
share a snapshot; A was built from S's earlier copy and shares none with P. P is cut
off (nftables) while a client pinned to it writes on: P's WAL gets commits S never
receives. S takes over, A becomes its sync, P is deposed. Healed, P rejoins at the
tail behind A and must be rebuilt (its WAL forked). A shares no snapshot with P, the
primary S does: P receives an increment from S (manatee.core.restore.source), far
smaller than its dataset, then streams from A and every acknowledged row is there.
(A node with no common snapshot anywhere still rebuilds in full:
test_incremental_rebuild_shard.py's second test.)
"""

from __future__ import annotations

import time

import pytest

from tests.integration.test_hard_faults import (
    COMMIT_TIMEOUT_S,
    PAST_EXPIRY_S,
    _assert_no_rogue_acks,
    _rogue,
    _standby_streaming,
    _undo_faults,
)
from tests.integration.test_incremental_rebuild_shard import _fill, _rebuild, _zfs
from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]

SHARD = SharedShard("rejoin", 5000, undo=_undo_faults)
REJOIN_S = 300


def _guids(dataset: str) -> dict[str, str]:
    """guid -> snapshot of `dataset`'s snapshots."""
    out = _zfs("get", "-H", "-p", "-o", "name,value", "-t", "snapshot", "-r", "guid", dataset)
    return {guid: name for name, guid in (line.split("\t") for line in out.splitlines() if line)}


def _sync_shares_with_primary(sh: Shard) -> tuple[str, str, str]:
    """Rebuild the sync (forced: the primary may name the async its sync meanwhile) until the
    sync holds a snapshot of the primary's taken after the bulk: (primary, sync, async)."""
    for _ in range(3):
        p, s, a = names(sh.topology())
        before = set(_guids(sh.node(p).dataset))
        r = _rebuild(sh, s, force=True)
        say(f"rebuild of the sync {s}: {r['path']} ({r['reason']}), {r['completed']} bytes")
        sh.wait(lambda: sh.topology()["sync"] and sh.streaming(sh.node(sh.topology()["sync"])), 90,
                "a streaming sync")
        p2, s2, a2 = names(sh.topology())
        fresh = set(_guids(sh.node(p2).dataset)) - before
        if p2 == p and fresh & set(_guids(sh.node(s2).dataset)):
            return p2, s2, a2
    raise AssertionError(f"the sync shares no fresh snapshot with the primary: {sh.topology()}")


def test_diverged_old_primary_rejoins_by_an_increment_from_the_primary(shard: Shard):
    sh = shard
    _fill(sh, 60)
    p, s, a = _sync_shares_with_primary(sh)
    np_, ns, na = sh.node(p), sh.node(s), sh.node(a)
    for guid in set(_guids(np_.dataset)) & set(_guids(na.dataset)):
        _zfs("destroy", _guids(na.dataset)[guid])  # A keeps nothing P has

    prev = sh.zk_state()
    gen0 = prev["generation"]
    w = sh.writer("rejoin", commit_timeout=COMMIT_TIMEOUT_S).start()
    rogue = _rogue(sh, p, w)
    healed = False
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        sh.sb.partition(p)
        rogue.start()
        say(f"partitioned the primary {p}; a client pinned to it writes on (its WAL forks)")
        sh.wait(lambda: sh.topology()["primary"] == s, sh.session_s + 30, f"{s} to take over")
        w.wait_for_acks(20, 60)
        time.sleep(max(0.0, t0 + sh.session_s + PAST_EXPIRY_S - time.monotonic()))
        rogue.stop()
        sh.sb.heal(p)
        healed = True
        t_heal = time.monotonic()
        sh.wait(lambda: _standby_streaming(sh, p, "async"), REJOIN_S, f"the old primary {p} to rejoin")
        took = time.monotonic() - t_heal
        restore = (sh.state_of(np_) or {}).get("restore")
        used = int(_zfs("get", "-H", "-p", "-o", "value", "used", np_.dataset).strip())
        say(f"{p} streams as the async {took:.1f}s after the heal; its rebuild: {restore}; dataset used {used}")
        assert restore and restore["phase"] == "done", f"{p} rejoined without a rebuild: {restore}"
        assert restore["source"].endswith(f"{ns.ip}:{ns.backup_port}"), restore
        assert restore["path"].startswith(f"incremental from {np_.dataset}@"), restore
        assert "shares no snapshot" in restore["reason"] and na.ip in restore["reason"], restore
        assert restore["completed"] < used / 5, (restore, used)
        assert sh.topology()["primary"] == s
        w.wait_for_acks(20, 60)
    finally:
        rogue.stop()
        w.stop()
        if not healed:
            sh.sb.heal(p)
    _assert_no_rogue_acks(rogue, p, t0 + 0.5)
    sh.assert_checks(w, prev, expect_leader=s, since_gen=gen0)
