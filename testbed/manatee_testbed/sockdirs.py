"""PostgreSQL unix socket directories of the test bed's nodes: /run/manatee/<ip>-<port>, the
sitter's default place (postgresMgrCfg.socketDir). The sitter makes the directory and keeps
it (a production node's stays); a PostgreSQL that stops removes its socket and lock but not
the directory, and one that is killed leaves both. So a shard torn down by the test bed
would leave one directory per node behind, each test run on new random addresses and ports:
teardown removes its nodes' directories once no live PostgreSQL holds them.

A directory is stale (no live postmaster holds it) when it holds only PostgreSQL's files —
`.s.PGSQL.<port>` sockets, each with its `.s.PGSQL.<port>.lock` — and every lock names, on
its first line, a pid that is gone, a zombie or another program than PostgreSQL (a reused
pid); an empty directory is stale too. Anything else keeps it: a lock of a live PostgreSQL,
a lock with no pid yet (being written), a socket without its lock, a file of someone else's.
scripts/check-leftovers.sh reports what that rule finds (`python3 -m manatee_testbed.sockdirs
[ROOT]`: one stale directory a line, nothing removed).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from pathlib import Path
from typing import Callable, Mapping

from manatee.core.procs import pid_alive

SOCKET_ROOT = "/run/manatee"
_SOCKET = re.compile(r"\.s\.PGSQL\.[0-9]+")
PID_LIMIT = 4194304  # the kernel's largest pid_max: a larger "pid" is not one
_LOCK = re.compile(r"\.s\.PGSQL\.[0-9]+\.lock")
_NODE_DIR = re.compile(r"[0-9A-Fa-f.:]+-[0-9]+")  # <ip>-<port>: the sitter's default name


def default_socket_dir(ip: str, port: int) -> str:
    """Where a sitter without postgresMgrCfg.socketDir puts its PostgreSQL's socket."""
    return f"{SOCKET_ROOT}/{ip}-{port}"


def lock_pid(text: str | None) -> int | None:
    """The pid on a lock file's first line (None: unreadable, empty or not a pid)."""
    first = (text or "").split("\n", 1)[0].strip()
    m = re.fullmatch(r"0*([1-9][0-9]{0,6})", first)
    return int(m[1]) if m and int(m[1]) <= PID_LIMIT else None


def why_kept(files: Mapping[str, str | None], holds: Callable[[int], bool]) -> str | None:
    """Why a socket directory with these entries (name -> a lock file's text, None for any
    other entry or an unreadable lock) may still be in use or is not PostgreSQL's alone;
    None: it is stale. `holds(pid)`: that pid is a live PostgreSQL (or cannot be told)."""
    for name, text in sorted(files.items()):
        if _SOCKET.fullmatch(name):
            if f"{name}.lock" not in files:
                return f"{name} has no lock file"
        elif _LOCK.fullmatch(name):
            pid = lock_pid(text)
            if pid is None:
                return f"{name} names no pid (being written?)"
            if holds(pid):
                return f"{name}: PostgreSQL pid {pid} is alive"
        else:
            return f"{name} is not PostgreSQL's"
    return None


def live_postgres(pid: int) -> bool:
    """`pid` is a live (not zombie) PostgreSQL process, or is alive and cannot be looked at."""
    if not pid_alive(pid):
        return False
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except PermissionError:
        return True
    except OSError:  # gone since, or a kernel thread
        return False
    return exe.startswith(("postgres", "postmaster"))


def read_entries(path: str | Path) -> dict[str, str | None]:
    """The directory's entries: name -> the text of a lock file (None for the others, or
    an unreadable lock). OSError if the directory cannot be listed."""
    out: dict[str, str | None] = {}
    for name in os.listdir(path):
        text = None
        if _LOCK.fullmatch(name):
            try:
                with open(os.path.join(path, name), errors="replace") as f:
                    text = f.read(4096)
            except OSError:
                pass
        out[name] = text
    return out


def remove_stale(path: str | Path, holds: Callable[[int], bool] = live_postgres) -> str | None:
    """Remove the socket directory `path` (its sockets and locks, then itself) if it is stale.
    Returns why it was kept; None when it was removed or was not there."""
    path = str(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot look at it: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    try:
        entries = read_entries(path)
    except OSError as e:
        return f"cannot list it: {e.strerror}"
    why = why_kept(entries, holds)
    if why is not None:
        return why
    try:
        for name in entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, name))
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        return f"cannot remove it: {e.strerror}"
    return None


def stale_dirs(root: str | Path = SOCKET_ROOT, holds: Callable[[int], bool] = live_postgres) -> list[str]:
    """The node socket directories under `root` (named <ip>-<port>; symlinks not followed)
    that are stale by why_kept's rule, sorted; nothing is removed. [] if `root` is not there."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    out = []
    for name in names:
        path = os.path.join(root, name)
        if not _NODE_DIR.fullmatch(name) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            if why_kept(read_entries(path), holds) is None:
                out.append(path)
        except OSError:  # cannot be listed: not known to be stale
            continue
    return out


def main(argv: list[str]) -> int:
    """`python3 -m manatee_testbed.sockdirs [ROOT]`: print the stale node socket dirs."""
    for path in stale_dirs(argv[0] if argv else SOCKET_ROOT):
        print(path)
    return 0


__all__ = ["SOCKET_ROOT", "default_socket_dir", "lock_pid", "live_postgres", "read_entries", "remove_stale",
           "stale_dirs", "why_kept"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
