"""Incremental rebuild on a real shard (ZooKeeper, zfs-fuse, three nodes of sitter +
snapshotter + backupserver, PostgreSQL 15), with a RecordingWriter running throughout.

- `manatee-adm rebuild` of the async (the sitter marks it diverged and restores it from
  its upstream): it shares the snapshot its first build received from the sync, so only
  what changed since travels — the bytes received are far below its dataset's size — and
  afterwards it streams again and holds every acknowledged row (S1–S4, S7 checks).
- With no snapshot in common (the async's snapshots destroyed first), the same rebuild
  is a full stream, and /state says why.
"""

from __future__ import annotations

import re

import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say
from tests.shard_ops import drop_tables, fill, rebuild, zfs

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]


SHARD = SharedShard("incr", 5000, before_down=lambda sh: drop_tables(sh, "incr_bulk"))


def test_rebuild_of_a_standby_is_incremental_and_keeps_every_row(shard: Shard):
    sh = shard
    fill(sh, 40)
    w = sh.writer("incr").start()
    try:
        # A first rebuild makes sure the async's base came from its current upstream. If the
        # chain changed meanwhile (a zfs-fuse stall can make the primary replace a sync that
        # stopped flushing, and the async becomes the sync), that base is not its upstream's:
        # rebuild the async of the chain as it is now.
        for _ in range(3):
            sh.wait_healthy()
            p, s, a = names(sh.topology())
            first = rebuild(sh, a)
            say(f"first rebuild of {a}: {first['path']} ({first['reason']}), {first['completed']} bytes")
            sh.wait(lambda: len(w.acked) > 20, 30, "the writer to commit")
            sh.wait_healthy()
            if names(sh.topology()) == (p, s, a):
                break
            say(f"the chain changed during the first rebuild: {names(sh.topology())}, was {(p, s, a)}")
        else:
            raise AssertionError(f"the chain kept changing: {sh.topology()}")
        node = sh.node(a)
        size = int(zfs("get", "-H", "-p", "-o", "value", "referenced", node.dataset).strip())
        second = rebuild(sh, a)
        say(f"second rebuild of {a}: {second['path']} ({second['reason']}), {second['completed']} bytes "
            f"of a {size}-byte dataset")
        assert second["path"].startswith(f"incremental from {node.dataset}@"), second
        assert second["reason"].startswith("newest common snapshot"), second
        assert second["completed"] < size / 5, (second, size)
        assert "restore_path" in sh.sitter_log(node)
        sh.wait(lambda: len(w.acked) > 60, 30, "the writer to commit after the rebuild")
    finally:
        w.stop()
    sh.assert_checks(w)


def test_rebuild_without_a_common_snapshot_is_full(shard: Shard):
    sh = shard
    p, s, a = names(sh.topology())
    node = sh.node(a)
    w = sh.writer("incrfull").start()
    try:
        # until none is left: the snapshotter (every 60 s) may take one while they are destroyed
        while snaps := zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", node.dataset).split():
            for snap in snaps:
                zfs("destroy", snap)
        restore = rebuild(sh, a)
        size = int(zfs("get", "-H", "-p", "-o", "value", "referenced", node.dataset).strip())
        say(f"rebuild of {a} with no snapshot: {restore['path']} ({restore['reason']}), "
            f"{restore['completed']} bytes of a {size}-byte dataset")
        assert restore["path"] == "full", restore
        # the snapshotter may take a snapshot of its own between the last destroy and the offer
        # (CI, 2026-12-07): offered, it exists nowhere else, and the stream is as full
        # (the sitter adds why pg_rewind did not run: "... (no pg_rewind: an operator asked ...)")
        assert (restore["reason"].startswith("this node has no snapshots to offer")
                or re.match(r"the backupserver sent a full stream: none of the \d+ offered snapshots exists here; "
                            r"no member shares a snapshot", restore["reason"])), restore
        assert restore["completed"] > size / 2, (restore, size)
        sh.wait(lambda: len(w.acked) > 40, 30, "the writer to commit after the rebuild")
    finally:
        w.stop()
    sh.assert_checks(w)


def test_rebuild_with_a_hung_upstream_backupserver_streams_from_the_primary(shard: Shard):
    """The async's upstream (the sync) keeps streaming WAL but its backupserver hangs
    (SIGSTOP). Before, the rebuild asked the sync for the stream again every ~20 s, for as
    long as it hung (sandbox trial 2026-12-05: 2 minutes, unfinished); the primary, which
    answers, now sends it (the sitter's question to the sync times out after 5 s), also to
    a node with no snapshot to offer."""
    import os
    import signal

    sh = shard
    p, s, a = names(sh.topology())
    bs = sh.node(s).pids["backupserver"]
    w = sh.writer("incrhung").start()
    os.kill(bs, signal.SIGSTOP)
    try:
        restore = rebuild(sh, a)
        say(f"rebuild of {a} with {s}'s backupserver hung: from {restore['source']}, {restore['path']} "
            f"({restore['reason']})")
        assert f"//{sh.node(p).ip}:" in (restore["source"] or ""), restore
        assert f"the upstream {sh.node(s).ip} does not answer" in restore["reason"], restore
        # with no snapshot of its own to offer (a new node), the same
        node = sh.node(a)
        while snaps := zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", node.dataset).split():
            for snap in snaps:
                zfs("destroy", snap)
        restore = rebuild(sh, a)
        say(f"again with no snapshot to offer: from {restore['source']}, {restore['path']}")
        assert f"//{sh.node(p).ip}:" in (restore["source"] or "") and restore["path"] == "full", restore
        sh.wait(lambda: len(w.acked) > 40, 30, "the writer to commit after the rebuild")
    finally:
        os.kill(bs, signal.SIGCONT)
        w.stop()
    sh.assert_checks(w)
