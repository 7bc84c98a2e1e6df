"""Role-change hooks with a real executable: called in order with (action, role, shard),
never blocking the caller, killed at the timeout, failures only logged."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from manatee.core.config import ConfigError, validate
from manatee.sitter.config import SitterConfig
from manatee.sitter.hooks import RoleHooks


class Log:
    def __init__(self):
        self.events = []

    def _add(self, level, event, **kw):
        self.events.append((level, event, kw))

    def info(self, event, **kw):
        self._add("info", event, **kw)

    def warning(self, event, **kw):
        self._add("warning", event, **kw)

    def error(self, event, **kw):
        self._add("error", event, **kw)


def script(tmp_path: Path, body: str) -> str:
    p = tmp_path / "hook.sh"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(0o755)
    return str(p)


async def until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


async def test_hook_runs_in_order_with_action_role_shard_and_never_blocks(tmp_path):
    out = tmp_path / "calls"
    path = script(tmp_path, f'sleep 0.2; echo "$1 $2 $3 $MANATEE_ROLE" >> {out}; echo done $2')
    log = Log()
    h = RoleHooks(path, 5, "/manatee/1", log)
    t0 = time.monotonic()
    h.fire("sync")
    h.fire("sync")      # the same role again: no call
    h.fire("primary")
    assert time.monotonic() - t0 < 0.1  # queued, not run, by fire()
    await until(lambda: h.runs == 2)
    assert out.read_text().splitlines() == ["on_role_change sync /manatee/1 sync",
                                            "on_role_change primary /manatee/1 primary"]
    ran = [kw for lvl, ev, kw in log.events if ev == "hook_ran"]
    assert [r["exit"] for r in ran] == [0, 0] and ran[1]["output"] == "done primary"
    await h.close()


async def test_a_hanging_hook_is_killed_at_its_timeout_with_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    path = script(tmp_path, f"sh -c 'echo $$ > {pidfile}; exec sleep 30' & sleep 30")
    log = Log()
    h = RoleHooks(path, 0.3, "1", log)
    t0 = time.monotonic()
    h.fire("primary")
    await until(lambda: h.runs == 1)
    assert time.monotonic() - t0 < 5
    assert any(ev == "hook_timed_out" for _, ev, _ in log.events)
    child = int(pidfile.read_text())
    await until(lambda: _gone(child), 5)  # the hook's process group was killed too
    await h.close()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


async def test_a_failing_hook_is_logged_and_later_calls_still_run(tmp_path):
    path = script(tmp_path, 'echo "no vip for $2" >&2; exit 3')
    log = Log()
    h = RoleHooks(path, 5, "1", log)
    h.fire("async")
    h.fire("primary")
    await until(lambda: h.runs == 2)
    errs = [kw for lvl, ev, kw in log.events if ev == "hook_ran" and lvl == "error"]
    assert [e["exit"] for e in errs] == [3, 3] and errs[1]["output"] == "no vip for primary"
    await h.close()


async def test_no_hook_configured_does_nothing():
    h = RoleHooks(None, 1, "1", Log())
    h.fire("primary")
    assert h.queue is None
    await h.close()


def test_hook_config_must_be_an_absolute_executable(tmp_path):
    base = {"ip": "127.0.0.1", "zoneId": "a", "insecure": True, "zkCfg": {"connStr": "127.0.0.1:2181"},
            "postgresMgrCfg": {"replicationAuth": {"password": "x"}, "zfsClientCfg": {"dataset": "p/a"}}}
    ok = script(tmp_path, "exit 0")
    assert validate({**base, "hooks": {"onRoleChange": ok}}, SitterConfig).hooks.timeout == 30000
    notexe = tmp_path / "plain"
    notexe.write_text("x")
    for bad, words in ((str(notexe), "not an executable file"), ("hook.sh", "must be an absolute path")):
        with pytest.raises(ConfigError, match=words) as e:
            validate(json.loads(json.dumps({**base, "hooks": {"onRoleChange": bad}})), SitterConfig)
        assert "hooks.onRoleChange" in str(e.value)
