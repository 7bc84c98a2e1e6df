"""Files that root writes in directories the PostgreSQL user controls, without following links.

The sitter runs as root; the data directory, the dataset's mountpoint and the socket
directory belong to the PostgreSQL user, and any PostgreSQL superuser can run commands as
that user (``COPY ... TO PROGRAM``). A path-based ``open``/``chmod``/``chown`` by root in
such a directory follows whatever link that user planted there — a way from database
superuser to root. Everything here therefore works on a directory file descriptor:

* the directory itself is opened with ``O_NOFOLLOW | O_DIRECTORY``;
* a new file is created as ``.<name>.tmp`` with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a link
  or anything else already at that name is removed first; ``unlink`` never follows),
  mode and owner are set with ``fchmod``/``fchown`` on the descriptor, and it is renamed
  over ``<name>`` with ``os.replace(..., src_dir_fd=, dst_dir_fd=)`` — a rename replaces
  a link, it does not write through it;
* a file is read or appended to only if it is a regular file with one link
  (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``): a planted FIFO cannot hang the sitter and
  a hard link to a file elsewhere is not written through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path manatee would have to follow a link (or open a non-regular file) to use."""


def tmp_name(name: str) -> str:
    return f".{name}.tmp"


@contextlib.contextmanager
def open_dir(path: str | os.PathLike) -> Iterator[int]:
    """A descriptor of directory `path`; UnsafePath if `path` itself is a symbolic link."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise UnsafePath(e.errno, "is a symbolic link (not followed)", str(path)) from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _owner(user: str | None) -> tuple[int, int] | None:
    if user is None or os.geteuid() != 0:
        return None
    import pwd

    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def create_new(dir_fd: int, name: str, data: bytes, *, mode: int = 0o600, user: str | None = None) -> None:
    """Create `name` in `dir_fd` holding `data`, replacing whatever entry (file, link,
    FIFO) is at that name; owned by `user` (when root), `mode`, fsynced."""
    for _ in range(3):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        try:
            fd = os.open(name, _NEW_FLAGS, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:  # someone re-created it between unlink and open: again
            continue
    else:
        raise UnsafePath(errno.EEXIST, "keeps being re-created (not followed)", name)
    try:
        owner = _owner(user)
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(dir: str | os.PathLike, name: str, data: bytes, *, mode: int = 0o600, user: str | None = None) -> None:
    """Atomically make `dir`/`name` hold `data` (temp file + rename, never following a link)."""
    with open_dir(dir) as dfd:
        tmp = tmp_name(name)
        create_new(dfd, tmp, data, mode=mode, user=user)
        try:
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)


def _open_regular(dir_fd: int, name: str, flags: int) -> int:
    """Open `name` only if it is a regular file with a single link (never a symlink, FIFO,
    device or a hard link to a file elsewhere)."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(e.errno, "is a symbolic link (not followed)", name) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UnsafePath(errno.EPERM, "is not a regular file with one link (not used)", name)
    os.set_blocking(fd, True)
    return fd


def read_file(dir: str | os.PathLike, name: str) -> bytes | None:
    """Contents of `dir`/`name`; None if absent; UnsafePath if it is a link or not a plain file."""
    with open_dir(dir) as dfd:
        try:
            fd = _open_regular(dfd, name, os.O_RDONLY)
        except FileNotFoundError:
            return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def open_read(path: str | os.PathLike) -> int:
    """A read descriptor of `path` (a log) if it is a plain file; UnsafePath otherwise."""
    path = Path(path)
    with open_dir(path.parent) as dfd:
        return _open_regular(dfd, path.name, os.O_RDONLY)


def read_generated(dir: str | os.PathLike, name: str) -> bytes | None:
    """Like read_file, for a file manatee writes whole: a link or non-regular file at that
    name counts as absent (it is then replaced, never followed)."""
    try:
        return read_file(dir, name)
    except UnsafePath:
        return None


def open_append(path: str | os.PathLike, *, mode: int = 0o600, user: str | None = None) -> int:
    """A descriptor appending to `path` (a log). A link, FIFO or hard-linked file at that
    name is replaced by a new empty file rather than written through."""
    path = Path(path)
    with open_dir(path.parent) as dfd:
        try:
            return _open_regular(dfd, path.name, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            pass
        except UnsafePath:
            os.unlink(path.name, dir_fd=dfd)
        create_new(dfd, path.name, b"", mode=mode, user=user)
        return _open_regular(dfd, path.name, os.O_WRONLY | os.O_APPEND)


def ensure_private_dir(path: str | os.PathLike, user: str | None, *, mode: int = 0o700) -> None:
    """`path` exists, is a real directory (not a link), owned by `user` (when root), `mode`.

    Missing parents are created (by root: root-owned). An existing `path` owned by anyone
    but root or `user` is refused: in a shared directory such as /tmp another user could
    have created it first and kept a way in.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    owner = _owner(user)
    with open_dir(path) as fd:
        st = os.fstat(fd)
        if owner is not None and st.st_uid not in (0, owner[0]):
            raise UnsafePath(errno.EPERM, f"is owned by uid {st.st_uid}, not root or {user}", str(path))
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
