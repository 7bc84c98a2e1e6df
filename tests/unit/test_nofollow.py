"""Nothing root writes in a postgres-owned directory follows a link (ACCEPTANCE S10).

A scratch data directory owned by the real PostgreSQL user; at every name the sitter
writes there a symbolic link (or FIFO, or hard link) is planted pointing at a file
outside; the sitter's writes must leave that file exactly as it was.
"""

from __future__ import annotations

import os
import pwd
import stat
import threading
from pathlib import Path

import pytest

from manatee.core import nofollow
from manatee.core.pgconfig import RoleConfig, write_role_config

ROOT = os.geteuid() == 0
PG_USER = "postgres"
try:
    PG_UID = pwd.getpwnam(PG_USER).pw_uid
except KeyError:  # pragma: no cover - the project's machines have it
    PG_UID = None

needs_root = pytest.mark.skipif(not ROOT or PG_UID is None, reason="needs root and a postgres user")

#: Every name write_role_config creates or replaces in the data directory.
WRITTEN = ["manatee.conf", "pg_hba.conf", "standby.signal",
           ".manatee.conf.tmp", ".pg_hba.conf.tmp", ".standby.signal.tmp", ".postgresql.conf.tmp"]


def standby() -> RoleConfig:
    return RoleConfig(role="standby", listen_address="10.0.0.2", port=5432, socket_dir="/run/manatee/x",
                      application_name="tcp://postgres@10.0.0.2:5432/postgres", upstream=("10.0.0.1", 5432),
                      members=("10.0.0.1",), replication_user="replicator", replication_password="pw")


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """The file an attacker wants root to write: root-owned, 0644, known contents."""
    t = tmp_path / "outside" / "precious"
    t.parent.mkdir()
    t.write_text("precious\n")
    os.chmod(t, 0o644)
    return t


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    (d / "postgresql.conf").write_text("shared_buffers = 64MB\n")
    if ROOT and PG_UID is not None:
        for p in (d, d / "postgresql.conf"):
            os.chown(p, PG_UID, PG_UID)
    return d


def unchanged(t: Path) -> None:
    st = os.stat(t)
    assert t.read_text() == "precious\n"
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.geteuid(), (oct(st.st_mode), st.st_uid)


@needs_root
@pytest.mark.parametrize("name", WRITTEN)
def test_planted_symlink_is_not_followed(data_dir: Path, target: Path, name: str):
    os.symlink(target, data_dir / name)
    change = write_role_config(data_dir, standby(), user=PG_USER)
    unchanged(target)
    if name.endswith(".tmp"):
        assert not os.path.lexists(data_dir / name)
    else:
        st = os.lstat(data_dir / name)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == PG_UID and stat.S_IMODE(st.st_mode) == 0o600
        assert name in change.changed or name == "manatee.conf"
    for n in ("manatee.conf", "pg_hba.conf", "postgresql.conf"):
        assert os.lstat(data_dir / n).st_uid == PG_UID


@needs_root
def test_symlinked_postgresql_conf_is_refused_not_followed(data_dir: Path, target: Path):
    os.unlink(data_dir / "postgresql.conf")
    os.symlink(target, data_dir / "postgresql.conf")
    with pytest.raises(nofollow.UnsafePath, match="symbolic link"):
        write_role_config(data_dir, standby(), user=PG_USER)
    unchanged(target)


@needs_root
def test_symlinked_data_dir_is_refused(tmp_path: Path, data_dir: Path, target: Path):
    link = tmp_path / "linked"
    os.symlink(target.parent, link)
    with pytest.raises(nofollow.UnsafePath):
        nofollow.replace_file(link, "manatee.conf", b"x")
    assert sorted(os.listdir(target.parent)) == ["precious"]


@needs_root
def test_hard_link_and_fifo_are_replaced_not_written(data_dir: Path, target: Path):
    os.link(target, data_dir / "pg_hba.conf")  # fs.protected_hardlinks allows root
    os.mkfifo(data_dir / "manatee.conf")
    done = threading.Event()

    def run():
        write_role_config(data_dir, standby(), user=PG_USER)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert done.is_set(), "write_role_config hung on a FIFO"
    unchanged(target)
    assert os.stat(target).st_nlink == 1
    for n in ("manatee.conf", "pg_hba.conf"):
        assert stat.S_ISREG(os.lstat(data_dir / n).st_mode)


@needs_root
def test_standby_signal_link_removed_when_primary(data_dir: Path, target: Path):
    os.symlink(target, data_dir / "standby.signal")
    primary = RoleConfig(role="primary", listen_address="10.0.0.1", port=5432, socket_dir="/run/manatee/x",
                         application_name="p", members=("10.0.0.2",))
    write_role_config(data_dir, primary, user=PG_USER)
    assert not os.path.lexists(data_dir / "standby.signal")
    unchanged(target)


@needs_root
def test_log_append_replaces_a_planted_link(tmp_path: Path, target: Path):
    d = tmp_path / "mnt"
    d.mkdir()
    os.chown(d, PG_UID, PG_UID)
    os.symlink(target, d / "postgresql.log")
    fd = nofollow.open_append(d / "postgresql.log", mode=0o640, user=PG_USER)
    os.write(fd, b"LOG: hello\n")
    os.close(fd)
    unchanged(target)
    st = os.lstat(d / "postgresql.log")
    assert stat.S_ISREG(st.st_mode) and st.st_uid == PG_UID
    assert (d / "postgresql.log").read_text() == "LOG: hello\n"
    # an existing plain log is appended to, not replaced
    fd = nofollow.open_append(d / "postgresql.log", user=PG_USER)
    os.write(fd, b"LOG: again\n")
    os.close(fd)
    assert (d / "postgresql.log").read_text() == "LOG: hello\nLOG: again\n"
    # and reading a log that became a link refuses
    os.unlink(d / "postgresql.log")
    os.symlink(target, d / "postgresql.log")
    with pytest.raises(nofollow.UnsafePath):
        nofollow.open_read(d / "postgresql.log")


@needs_root
def test_private_dir_refuses_a_link_and_a_strangers_dir(tmp_path: Path, target: Path):
    os.symlink(target.parent, tmp_path / "sock")
    with pytest.raises(nofollow.UnsafePath, match="symbolic link"):
        nofollow.ensure_private_dir(tmp_path / "sock", PG_USER)
    assert stat.S_IMODE(os.stat(target.parent).st_mode) != 0o700 or os.stat(target.parent).st_uid == 0
    assert os.stat(target.parent).st_uid == 0
    squatted = tmp_path / "squat"
    squatted.mkdir()
    os.chown(squatted, 65534, 65534)  # nobody got there first
    with pytest.raises(nofollow.UnsafePath, match="owned by uid 65534"):
        nofollow.ensure_private_dir(squatted, PG_USER)
    fresh = tmp_path / "run" / "manatee" / "127.0.0.1-5432"
    nofollow.ensure_private_dir(fresh, PG_USER)
    st = os.stat(fresh)
    assert st.st_uid == PG_UID and stat.S_IMODE(st.st_mode) == 0o700
    assert os.stat(fresh.parent).st_uid == 0


def test_temp_name_raced_into_existence_is_an_error_not_a_follow(tmp_path: Path, target: Path, monkeypatch):
    real_open = os.open

    def racing_open(name, flags, *a, **kw):
        if flags & os.O_EXCL and not os.path.lexists(tmp_path / name):
            os.symlink(target, tmp_path / name)  # the attacker wins every race
        return real_open(name, flags, *a, **kw)

    monkeypatch.setattr(os, "open", racing_open)
    with nofollow.open_dir(tmp_path) as dfd, pytest.raises(nofollow.UnsafePath, match="re-created"):
        nofollow.create_new(dfd, "x.tmp", b"data")
    monkeypatch.undo()
    assert target.read_text() == "precious\n"
