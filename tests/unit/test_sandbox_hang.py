"""hang/resume stop and continue whole process groups (a hung host), and skip what is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from manatee_testbed.hang import all_stopped, hang, resume, stopped


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


def test_all_stopped_waits_for_every_thread_of_a_busy_process():
    # a process whose second thread spins: stopped only when both threads are
    busy = subprocess.Popen([sys.executable, "-c",
                             "import threading\n"
                             "def spin():\n    while True: pass\n"
                             "threading.Thread(target=spin, daemon=True).start()\n"
                             "import time; time.sleep(30)"])
    try:
        assert _wait(lambda: len(os.listdir(f"/proc/{busy.pid}/task")) == 2)
        assert not all_stopped(busy.pid)
        os.kill(busy.pid, signal.SIGSTOP)
        assert _wait(lambda: all_stopped(busy.pid))
        os.kill(busy.pid, signal.SIGCONT)
        assert _wait(lambda: not all_stopped(busy.pid))
    finally:
        busy.kill()
        busy.wait(5)
    assert not all_stopped(busy.pid)  # gone: not "stopped"
