"""Hung "hosts": SIGSTOP stops a process group dead (sockets stay open, nothing answers,
timers do not fire) and SIGCONT lets it go on where it was, as after a long GC pause,
a frozen VM or a stuck disk.

Each pid is taken as a process group leader when it leads one, otherwise the single
process is signalled. Vanished processes are skipped.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterable


def _signal(pids: Iterable[int], sig: int) -> list[int]:
    done: list[int] = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            try:
                group = os.getpgid(pid) == pid
            except ProcessLookupError:
                continue
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
            done.append(pid)
    return done


def hang(pids: Iterable[int]) -> list[int]:
    """SIGSTOP each pid's process group (or the pid). Returns the pids signalled."""
    return _signal(pids, signal.SIGSTOP)


def resume(pids: Iterable[int]) -> list[int]:
    """SIGCONT each pid's process group (or the pid). Returns the pids signalled."""
    return _signal(pids, signal.SIGCONT)


def _state(stat_path: str) -> bytes | None:
    """The state letter of a /proc stat file; None if it is gone or unreadable."""
    try:
        with open(stat_path, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def stopped(pid: int) -> bool:
    """True if the process is in the stopped state (T)."""
    return _state(f"/proc/{pid}/stat") in (b"T", b"t")


def all_stopped(pid: int) -> bool:
    """True if every thread of the process is stopped: SIGSTOP reaches a running thread of a
    multi-threaded process (a JVM) a moment after kill() returns, and it may answer meanwhile."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    states = (_state(f"/proc/{pid}/task/{tid}/stat") for tid in tids)
    return bool(tids) and all(s in (b"T", b"t", None) for s in states)  # None: the thread ended

