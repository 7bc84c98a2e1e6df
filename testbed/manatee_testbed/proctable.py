"""The process table as the sandbox sees it: /proc scanning (children, descendants, a data
directory's PostgreSQL processes, mounts) without touching any mounted filesystem, and the
daemons this process started (reaped here while it lives)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from pathlib import Path

from manatee.core.procs import pid_alive

# Daemons started by this process: reaped here while it lives (PID 1 reaps lazily).
_CHILDREN: list[subprocess.Popen] = []


def reap_children() -> None:
    for p in list(_CHILDREN):
        if p.poll() is not None:
            _CHILDREN.remove(p)


def ppid(pid: int | str) -> int | None:
    """The parent of `pid` from /proc/<pid>/stat (None: gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def process_children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        parent = ppid(entry)
        if parent is not None:
            kids.setdefault(parent, []).append(int(entry))
    return kids


def descendants(pids: list[int]) -> list[int]:
    kids = process_children()
    out: list[int] = []
    todo = list(pids)
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            if c not in out:
                out.append(c)
                todo.append(c)
    return out


def postgres_pids(data_dir: str) -> list[int]:
    """Live PostgreSQL processes (postmaster and backends) of `data_dir`, found by their
    working directory in /proc: nothing is read from the data directory itself, so a
    hung filesystem (a wedged zfs-fuse) cannot hang `status`, `kill` or `down`."""
    want = os.path.abspath(data_dir)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.path.basename(os.readlink(f"/proc/{entry}/exe")) != "postgres":
                continue
            if os.readlink(f"/proc/{entry}/cwd") != want:
                continue
        except OSError:
            continue
        if pid_alive(int(entry)):
            found.append(int(entry))
    return found


def postmaster_pid(data_dir: str) -> int | None:
    """The postmaster of `data_dir`: its postgres process whose parent is not one."""
    pids = postgres_pids(data_dir)
    for pid in pids:
        if ppid(pid) not in pids:
            return pid
    return None


def read_text_timeout(path: Path | str, timeout: float = 2.0) -> str | None:
    """Read a small file, giving up after `timeout` (a hung FUSE mount blocks reads forever)."""
    result: list[str] = []

    def read() -> None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            result.append(Path(path).read_text())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else None


def postmaster_shm(data_dir: str) -> int | None:
    """The SysV shared memory id PostgreSQL recorded (line 7 of postmaster.pid)."""
    text = read_text_timeout(Path(data_dir) / "postmaster.pid")
    try:
        return int(text.splitlines()[6].split()[1]) if text else None
    except (IndexError, ValueError):
        return None


def mounts_under(path: Path | str) -> list[str]:
    """Mount points at or below `path` (from /proc/mounts; touches no mounted filesystem)."""
    base = os.path.abspath(path)
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            cols = line.split()
            if len(cols) > 1:
                mnt = cols[1].replace("\\040", " ")
                if mnt == base or mnt.startswith(base + "/"):
                    out.append(mnt)
    return out


def cmdline(pid: int) -> str | None:
    """The command line of `pid`, arguments joined by spaces (None: gone or unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
