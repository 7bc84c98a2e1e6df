"""cgroup v2 groups that mark every process of one sandbox node ("host").

Why: on loopback a socket that is not bound to the node's address sends from 127.0.0.1
(libpq's walreceiver cannot bind a source address at all), so address rules alone
cannot tell which "host" a packet comes from. Every process started in a node's group
(the sitter, PostgreSQL as its child, the snapshotter, the backupserver, their zfs
children) stays in it, so nftables can match `socket cgroupv2` and the sandbox can
find and kill every process of a node, whatever its parentage.

Works on a pure cgroup2 host (/sys/fs/cgroup) and on hybrid layouts
(/sys/fs/cgroup/unified). `available()` is False where neither exists or it is
read-only; callers then go on without groups.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from typing import Callable
from pathlib import Path

from manatee.core.procs import pid_alive


def cgroup2_root() -> Path | None:
    """Mount point of the cgroup2 hierarchy, or None."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    roots = [Path(m[1]) for m in mounts if len(m) >= 3 and m[2] == "cgroup2"]
    if not roots:
        return None
    roots.sort(key=lambda p: (p != Path("/sys/fs/cgroup"), len(str(p))))
    return roots[0]


def available() -> bool:
    root = cgroup2_root()
    return root is not None and os.access(root, os.W_OK)


def path_of(rel: str) -> Path:
    root = cgroup2_root()
    if root is None:
        raise RuntimeError("no cgroup2 hierarchy is mounted (see /proc/self/mounts)")
    return root / rel.strip("/")


def level_of(rel: str) -> int:
    """nftables' `socket cgroupv2 level N`: the number of path components."""
    return len([p for p in rel.strip("/").split("/") if p])


def create(rel: str) -> Path:
    p = path_of(rel)
    p.mkdir(parents=True, exist_ok=True)
    return p


def exists(rel: str) -> bool:
    root = cgroup2_root()
    return root is not None and (root / rel.strip("/")).is_dir()


def join_self(rel: str) -> None:
    """Move the calling process into group `rel` (used in a child before exec)."""
    with open(path_of(rel) / "cgroup.procs", "w") as f:
        f.write("0")


def pids(rel: str) -> list[int]:
    """Live (non-zombie) processes in `rel` and its sub-groups."""
    root = cgroup2_root()
    if root is None:
        return []
    base = root / rel.strip("/")
    found: list[int] = []
    if not base.is_dir():
        return found
    for dirpath, _dirs, _files in os.walk(base):
        with contextlib.suppress(OSError):
            for line in (Path(dirpath) / "cgroup.procs").read_text().split():
                if line.isdigit() and pid_alive(int(line)):
                    found.append(int(line))
    return found


def power_cut(list_pids: Callable[[], list[int]], what: str, timeout: float = 10.0) -> list[int]:
    """SIGSTOP then SIGKILL every process `list_pids()` names (no one gets to react, like a
    power cut), again until it names none alive. Returns the pids killed; TimeoutError
    naming `what` if some survive."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        live = list_pids()
        if not live:
            return killed
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if pid not in killed:
                killed.append(pid)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: processes {list_pids()} survive SIGKILL")
        time.sleep(0.05)


def kill_all(rel: str, timeout: float = 10.0) -> list[int]:
    """Power-cut every process in the group; wait until none is alive. Returns the pids killed."""
    return power_cut(lambda: pids(rel), f"cgroup {rel}", timeout)


def remove(rel: str, timeout: float = 10.0) -> bool:
    """rmdir the group and its sub-groups (after kill_all). False if it stays busy
    (a zombie not yet reaped by its parent keeps a group populated)."""
    root = cgroup2_root()
    if root is None:
        return True
    base = root / rel.strip("/")
    deadline = time.monotonic() + timeout
    while base.exists():
        busy = False
        for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                busy = True
        if not busy:
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
