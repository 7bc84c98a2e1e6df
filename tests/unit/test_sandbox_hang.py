"""hang/resume stop and continue whole process groups (a hung host), and skip what is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from manatee_testbed.hang import hang, resume, stopped


def _wait(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_hang_and_resume_a_process_group():
    # a group leader with a child in its group: both must stop
    leader = subprocess.Popen([sys.executable, "-c",
                               "import subprocess,sys,time; c=subprocess.Popen(['sleep','30']); "
                               "print(c.pid, flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(leader.stdout.readline())
        assert hang([leader.pid]) == [leader.pid]
        assert _wait(lambda: stopped(leader.pid) and stopped(child))
        assert resume([leader.pid]) == [leader.pid]
        assert _wait(lambda: not stopped(leader.pid) and not stopped(child))
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait(5)


def test_a_pid_that_is_not_a_group_leader_is_signalled_alone():
    p = subprocess.Popen(["sleep", "30"])  # in our process group: must not stop us
    try:
        assert hang([p.pid]) == [p.pid]
        assert _wait(lambda: stopped(p.pid))
        resume([p.pid])
        assert _wait(lambda: not stopped(p.pid))
    finally:
        p.kill()
        p.wait(5)


def test_vanished_pids_are_skipped():
    p = subprocess.Popen(["true"])
    p.wait()
    assert hang([p.pid]) == []
    assert resume([p.pid]) == []
    assert not stopped(p.pid)
