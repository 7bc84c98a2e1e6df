"""ACCEPTANCE S10 (PostgreSQL part) on a real shard: standbys stream as the dedicated
replication role, whose password opens no database session (nor does it open the
superuser's); the superuser over TCP needs the admin password; the socket directory is
private under /run/manatee; and links planted (as the postgres user could) at every
name a node's sitter writes in its data directory, and at its PostgreSQL log, are not
followed when the node restarts on that data.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psycopg2
import pytest

from manatee_testbed.sandbox_config import REPLICATION_USER
from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(600)]

#: Names the sitter writes in a data directory (and their temporary files).
WRITTEN = ["manatee.conf", "pg_hba.conf", ".manatee.conf.tmp", ".pg_hba.conf.tmp",
           ".standby.signal.tmp", ".postgresql.conf.tmp"]


SHARD = SharedShard("pgcreds", 5000)


def _connect(node, user: str, password: str) -> str:
    conn = psycopg2.connect(host=node.ip, port=node.pg_port, user=user, password=password,
                            dbname="postgres", connect_timeout=3)
    try:
        cur = conn.cursor()
        cur.execute("select current_user")
        return cur.fetchone()[0]
    finally:
        conn.close()


def test_replication_role_streams_and_its_password_opens_no_session(shard: Shard):
    st = shard.sb.st
    p, s, a = names(shard.topology())
    rows, role = [], None
    for up in (p, s):  # a daisy chain: the sync streams from the primary, the async from the sync
        conn = psycopg2.connect(shard.dsn(shard.node(up)))
        try:
            cur = conn.cursor()
            cur.execute("select usename, application_name, state from pg_stat_replication")
            rows += cur.fetchall()
            cur.execute("select rolsuper, rolreplication from pg_roles where rolname = %s", (REPLICATION_USER,))
            role = role or cur.fetchone()
        finally:
            conn.close()
    say(f"pg_stat_replication on {p} and {s}: {rows}")
    assert len(rows) == 2 and {r[0] for r in rows} == {REPLICATION_USER}, rows
    assert role == (False, True)

    for node in shard.nodes:
        with pytest.raises(psycopg2.OperationalError, match="rejects connection"):
            _connect(node, REPLICATION_USER, st.repl_password)
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            _connect(node, "postgres", st.repl_password)
        assert _connect(node, "postgres", st.admin_password) == "postgres"
        sd = os.stat(node.socket_dir)
        assert node.socket_dir.startswith("/run/manatee/") and stat.S_IMODE(sd.st_mode) == 0o700
        assert os.stat(Path(node.socket_dir).parent).st_uid == 0


def test_links_planted_in_a_data_directory_are_not_followed(shard: Shard, tmp_path: Path):
    p, s, a = names(shard.topology())
    node = shard.node(a)
    target = tmp_path / "precious"
    target.write_text("precious\n")
    os.chmod(target, 0o644)
    before = os.stat(target)

    shard.sb.stop(a)
    data = Path(node.data_dir)
    marker = data / "manatee-test-marker"  # shows the node was not rebuilt (which would hide the links)
    marker.write_text("x")
    planted = [data / n for n in WRITTEN] + [Path(node.mountpoint) / "postgresql.log"]
    for path in planted:
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(target, path)
    say(f"planted {len(planted)} links to {target} in {data} (node {a} stopped)")

    shard.sb.start(a)
    shard.wait_healthy(180)
    shard.wait(lambda: shard.streaming(node), 60, f"{a} streaming again")

    after = os.stat(target)
    assert target.read_text() == "precious\n"
    assert (after.st_mode, after.st_uid, after.st_size) == (before.st_mode, before.st_uid, before.st_size)
    assert marker.exists(), f"{a} was rebuilt: the test did not exercise the planted links"
    # what the sitter wrote replaced the links; the temporary names it used are gone
    # (names it had no reason to write this time are still the untouched links)
    for path in (data / "manatee.conf", data / "pg_hba.conf", Path(node.mountpoint) / "postgresql.log"):
        assert stat.S_ISREG(os.lstat(path).st_mode), f"{path} is not a regular file"
    for name in (".manatee.conf.tmp", ".pg_hba.conf.tmp"):
        assert not os.path.lexists(data / name)
