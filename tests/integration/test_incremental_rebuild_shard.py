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

import subprocess

import pytest

from manatee_testbed.sandbox_config import ZFS_BIN
from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say
from tests.shard_ops import adm

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]


def _drop_tables(sh: Shard, *tables: str) -> None:
    """At the module's end: its bulk out of the shard that the next module may take over (a full
    rebuild there would send it all again)."""
    import psycopg2

    dsn = sh.find_primary()
    if dsn:
        conn = psycopg2.connect(dsn, connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for t in tables:
                    cur.execute(f"DROP TABLE IF EXISTS {t}")
        finally:
            conn.close()


SHARD = SharedShard("incr", 5000, before_down=lambda sh: _drop_tables(sh, "incr_bulk"))


def _zfs(*args: str) -> str:
    return subprocess.run([ZFS_BIN, *args], capture_output=True, text=True, check=True, timeout=60).stdout


def _rebuild(sh: Shard, name: str, force: bool = False) -> dict:
    node = sh.node(name)
    r = adm(sh, "rebuild", "--node", node.ip, "--wait", "300", *(("--force",) if force else ()), limit=330)
    assert r.returncode == 0, r.stderr
    sh.wait(lambda: sh.streaming(node), 90, f"{name} to stream after its rebuild")
    restore = (sh.state_of(node) or {}).get("restore")
    assert restore and restore["phase"] == "done", restore
    return restore


def _fill(sh: Shard, mb: int) -> None:
    """Some bulk on the primary, so that the dataset is clearly bigger than an increment."""
    import psycopg2

    dsn = sh.find_primary()
    assert dsn, "no writable primary"
    conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS incr_bulk (id serial PRIMARY KEY, pad text)")
            # random text, roughly incompressible like real data
            cur.execute("INSERT INTO incr_bulk (pad) SELECT string_agg(md5(random()::text), '') "
                        "FROM generate_series(1, 32) g, generate_series(1, %s) i GROUP BY i", (mb * 1024,))
            # Now, not between two rebuilds: autovacuum's first pass over the new rows (hint
            # bits and the visibility map: with data checksums every page is rewritten and
            # WAL-logged whole) would otherwise land in an increment at a random time.
            cur.execute("VACUUM incr_bulk")
    finally:
        conn.close()


def test_rebuild_of_a_standby_is_incremental_and_keeps_every_row(shard: Shard):
    sh = shard
    _fill(sh, 40)
    p, s, a = names(sh.topology())
    w = sh.writer("incr").start()
    try:
        node = sh.node(a)
        # A first rebuild makes sure the async's base came from its current upstream.
        first = _rebuild(sh, a)
        say(f"first rebuild of {a}: {first['path']} ({first['reason']}), {first['completed']} bytes")
        sh.wait(lambda: len(w.acked) > 20, 30, "the writer to commit")
        size = int(_zfs("get", "-H", "-p", "-o", "value", "referenced", node.dataset).strip())
        second = _rebuild(sh, a)
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
        while snaps := _zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", node.dataset).split():
            for snap in snaps:
                _zfs("destroy", snap)
        restore = _rebuild(sh, a)
        size = int(_zfs("get", "-H", "-p", "-o", "value", "referenced", node.dataset).strip())
        say(f"rebuild of {a} with no snapshot: {restore['path']} ({restore['reason']}), "
            f"{restore['completed']} bytes of a {size}-byte dataset")
        assert restore["path"] == "full", restore
        assert restore["reason"] == "this node has no snapshots to offer", restore
        assert restore["completed"] > size / 2, (restore, size)
        sh.wait(lambda: len(w.acked) > 40, 30, "the writer to commit after the rebuild")
    finally:
        w.stop()
    sh.assert_checks(w)
