"""Real shard: continuous WAL archiving across a failover (docs/operators-guide.md, "WAL
archiving and point-in-time recovery").

Every node archives with `archive_mode = always` into one archive, through a command that
succeeds for a segment already there only when it is identical (standbys archive the segments
they receive, the primary those it writes). A base backup is taken, the primary's host is
killed, the sync takes over, and after its WAL switch the archive alone recovers a copy of
the database that holds every write acknowledged before that switch — across the timeline
change — and no node's archiver failed. The same holds for a copy recovered from a clone of
a snapshot of the primary's dataset that its snapshotter took with the base backup
(crash-consistent: pg_wal is in the same dataset), the other base the operator's guide names."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest

import structlog

from manatee.snapshotter.config import SnapshotterConfig
from manatee.snapshotter.main import open_snapshotter
from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say, wait_for
from manatee_testbed.sandbox_config import ZFS_BIN
from tests.shard_ops import adm, pg_setting, set_pg_parameters, start_and_rejoin, zfs

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(600)]

SHARD = SharedShard("archive", 4000, retire=True)  # archive_mode stays on


def archive_command(archive: Path, name: str = "") -> str:
    """Copy a segment in under a temporary name and rename it; a segment already archived
    (by another node) is accepted only if it is the same file. (The test's own prefix: the
    node fails to archive while `<archive>/.hold-<name>` exists, as if the archive were
    unreachable from it.)"""
    hold = f"[ ! -e {archive}/.hold-{name} ] && " if name else ""
    return (f"{hold}if [ -f {archive}/%f ]; then cmp -s %p {archive}/%f; "
            f"else cp %p {archive}/.%f.$$ && mv {archive}/.%f.$$ {archive}/%f; fi")


def as_postgres(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True,
                          timeout=timeout)


def query(sh: Shard, node, sql: str):
    with psycopg2.connect(sh.dsn(node), connect_timeout=3) as c, c.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def recover(bindir: Path, copy: Path, archive: Path, sock: Path, port: int, log: Path) -> str:
    """Start a copy of the data directory as the operator's guide says: recovery.signal, and
    appended to postgresql.auto.conf the archive's restore_command, the latest timeline, no
    archiving, no sync, its own socket and port. Returns its DSN once it took writes (the
    end of the archive). A snapshot's copy also drops what the running node left: its
    postmaster.pid and standby.signal."""
    (copy / "postmaster.pid").unlink(missing_ok=True)
    (copy / "standby.signal").unlink(missing_ok=True)
    (copy / "recovery.signal").touch()
    with open(copy / "postgresql.auto.conf", "a") as f:
        f.write(f"\nrestore_command = 'cp {archive}/%f %p'\nrecovery_target_timeline = 'latest'\n"
                f"archive_mode = off\nlisten_addresses = ''\nport = {port}\n"
                f"unix_socket_directories = '{sock}'\nprimary_conninfo = ''\n"
                f"synchronous_standby_names = ''\nhot_standby = on\n")
    r = as_postgres(str(bindir / "pg_ctl"), "-D", str(copy), "-l", str(log), "-w", "-t", "120", "start")
    assert r.returncode == 0, r.stderr + log.read_text()[-3000:]
    dsn = f"host={sock} port={port} user=postgres dbname=postgres"

    def promoted() -> bool:
        with psycopg2.connect(dsn, connect_timeout=3) as c, c.cursor() as cur:
            cur.execute("select not pg_is_in_recovery()")
            return cur.fetchone()[0]
    wait_for(promoted, 120, f"the copy in {copy} to reach the end of the archive")
    return dsn


def snapshotter_poll(sh: Shard, name: str) -> str:
    """One poll of the node's snapshotter, as its daemon makes one every pollInterval: its config
    file, the daemon's Snapshotter, its health check of the sitter included. Returns the
    snapshot it took, DATASET@<epoch-ms>."""
    cfg = SnapshotterConfig.model_validate(json.loads(sh.node(name).config_path("snapshotter").read_text()))
    assert cfg.healthUrl, "the sandbox's snapshotters ask their sitter's /ping"

    async def poll():
        async with open_snapshotter(cfg, structlog.get_logger("test")) as snapshotter:
            return await snapshotter.run_once()
    result = asyncio.run(poll())
    assert result.snapshot is not None and not result.errors and not result.unhealthy, result
    return result.snapshot.full


def rows(dsn: str, table: str) -> set:
    with psycopg2.connect(dsn, connect_timeout=3) as c, c.cursor() as cur:
        cur.execute(f"select id from {table}")
        return {row[0] for row in cur.fetchall()}


def test_the_archive_alone_recovers_every_acknowledged_write_across_a_failover(shard: Shard):
    sh = shard
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    pg = pwd.getpwnam("postgres")
    work = Path(tempfile.mkdtemp(prefix="manatee-archive-"))
    archive, backup, sock = work / "wal", work / "base", work / "sock"
    for d in (archive, sock):
        d.mkdir()
    for d in (work, archive, sock):
        os.chown(d, pg.pw_uid, pg.pw_gid)
    bindir = Path(json.loads(sh.node(p).config_path("sitter").read_text())["postgresMgrCfg"]["pgBinDir"])
    started: list[Path] = []
    snap = None
    try:
        for n in sh.nodes:
            set_pg_parameters(sh, {"archive_mode": "always", "archive_command": archive_command(archive, n.name)},
                              nodes=[n])
        assert adm(sh, "reload", limit=120).returncode == 0
        r = adm(sh, "restart", "--pending", "--wait", "60", limit=300)  # archive_mode needs a restart
        assert r.returncode == 0, r.stderr
        for n in sh.nodes:
            assert pg_setting(sh, n, "archive_mode") == "always", n.name
        p, s, a = names(sh.topology())  # the restart switched over
        prev = sh.zk_state()

        w = sh.writer("archive").start()
        try:
            w.wait_for_acks(50, 60)
            # a base backup of the primary, without WAL: its WAL must come from the archive
            r = as_postgres(str(bindir / "pg_basebackup"), "-h", sh.node(p).socket_dir, "-p",
                            str(sh.node(p).pg_port), "-U", "postgres", "-D", str(backup), "-X", "none", "-c", "fast")
            assert r.returncode == 0, r.stderr
            # and a snapshot of the primary's dataset by its snapshotter, the other base (crash-consistent)
            snap = snapshotter_poll(sh, p)
            # the primary cannot reach the archive: the segments it completes now are archived by
            # the standbys that received them (archive_mode = always), or by nobody
            (archive / f".hold-{p}").touch()
            held = []
            for _ in range(3):
                w.wait_for_acks(30, 60)
                [(seg,)] = query(sh, sh.node(p), "select pg_walfile_name(pg_switch_wal())")
                held.append(seg)
            w.wait_for_acks(20, 60)
            # its sitter says so (pg_stat_archiver), and so do /metrics and verify
            sh.wait(lambda: held[0] in str(sh.state_of(sh.node(p))["pg"].get("archiveFailing")), 30,
                    f"{p}'s sitter to see its archiver fail")
            r = adm(sh, "verify")
            assert r.returncode == 1 and f"{sh.node(p).ip}: archiving WAL fails" in r.stdout, r.stdout
            metrics = subprocess.run(["curl", "-s", f"{sh.node(p).status_url}/metrics"], capture_output=True,
                                     text=True, timeout=10).stdout
            assert re.search(r"^manatee_pg_archive_failing\{[^}]*\} 1\.0$", metrics, re.M), metrics[:3000]
            sh.sb.kill(p)
            sh.wait(lambda: sh.topology()["primary"] == s and sh.writable(sh.node(s)), 60, f"{s} to take over")
            w.wait_for_acks(50, 60)
            acked = w.acked
            [(wal,)] = query(sh, sh.node(s), "select pg_walfile_name(pg_switch_wal())")
            w.wait_for_acks(20, 60)
        finally:
            w.stop()
        sh.wait(lambda: (archive / wal).exists(), 60, f"{wal} (timeline 2, after the switch) in the archive")
        say(f"archive: {len(list(archive.iterdir()))} files; the primary held back {held}; switched at {wal}; "
            f"{len(acked)} writes acknowledged before the switch")
        assert all((archive / x).exists() for x in held), sorted(x.name for x in archive.iterdir())
        assert wal.startswith("00000002") or int(wal[:8], 16) > 1, wal  # the new primary's timeline

        # recover a copy from the base backup and the archive alone, on its own socket
        started.append(backup)
        have = rows(recover(bindir, backup, archive, sock, 5499, work / "restore.log"), w.table)
        missing = sorted(acked - have)
        say(f"archive: the restored copy holds {len(have)} rows; {len(missing)} acknowledged before the switch missing")
        assert not missing, f"{len(missing)} acknowledged writes not recovered from the archive: {missing[:20]}"

        # and one from a clone of the snapshotter's snapshot (the killed primary's dataset is still there)
        clone = f"{sh.node(p).dataset}-pitr"
        zfs("clone", "-o", f"mountpoint={work / 'clone'}", snap, clone)
        started.append(work / "clone" / "data")
        have = rows(recover(bindir, work / "clone" / "data", archive, sock, 5498, work / "clone.log"), w.table)
        missing = sorted(acked - have)
        say(f"archive: the copy from the snapshot's clone holds {len(have)} rows; {len(missing)} acknowledged "
            "before the switch missing")
        assert not missing, f"{len(missing)} acknowledged writes not recovered from the clone: {missing[:20]}"
        for d in started:
            as_postgres(str(bindir / "pg_ctl"), "-D", str(d), "-m", "immediate", "-w", "stop")
        started = []
        for what in (clone, snap):  # before the old primary rejoins: its rebuild sets its dataset aside
            # (zfs-fuse says "dataset is busy" for a moment after the last process left it)
            wait_for(lambda: subprocess.run([ZFS_BIN, "destroy", what], capture_output=True,  # noqa: B023
                                            timeout=60).returncode == 0, 30, f"zfs destroy {what}", interval=0.5)
        snap = None

        start_and_rejoin(sh, p)
        for n in (sh.node(s), sh.node(a)):
            [(failed, last)] = query(sh, n, "select failed_count, last_failed_wal from pg_stat_archiver")
            assert failed == 0, f"{n.name}'s archiver failed {failed} times (last {last})"
            assert sh.state_of(n)["pg"]["archiveFailing"] is None, n.name
    finally:
        for d in started:
            as_postgres(str(bindir / "pg_ctl"), "-D", str(d), "-m", "immediate", "-w", "stop")
        if snap is not None:  # and the clone made of it
            subprocess.run([ZFS_BIN, "destroy", "-R", snap], capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
        set_pg_parameters(sh, {})
        adm(sh, "reload", limit=120)
    sh.assert_checks(w, prev, expect_leader=s, since_gen=prev["generation"])
