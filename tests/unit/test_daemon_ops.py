"""Day-two behaviour of every daemon (manatee/core/daemon.py): SIGHUP reloads and never kills,
systemd's notify protocol (READY / RELOADING / WATCHDOG / STOPPING over a real unix datagram
socket), one-line fatal errors, and one log format for our events and the libraries'."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import sys
import threading

import pytest
from pydantic import Field

from manatee.core import daemon as D
from manatee.core import log as logmod
from manatee.core import sdnotify
from manatee.core.config import ConfigModel


class Cfg(ConfigModel):
    n: int = Field(ge=1)


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pings every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setattr(D, "READY_AFTER_S", 0.2)
    got: list[str] = []
    done = threading.Event()

    def reader():  # as systemd does: read at once (a unix datagram queue holds only ~10)
        while not done.is_set():
            try:
                got.append(s.recv(4096).decode())
            except (socket.timeout, OSError):
                continue

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    yield got
    done.set()
    t.join(2)
    s.close()


def _received(got: list[str]) -> list[str]:
    import time

    time.sleep(0.2)
    return list(got)


def test_sighup_reloads_the_log_level_and_the_daemon_keeps_running(tmp_path, capfd, notify_socket):
    p = tmp_path / "c.json"
    p.write_text('{"n": 3}')
    seen = {}

    async def run(config, log, stop):
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.4)                      # READY=1 after 0.2 s
        log.debug("before_reload_debug")              # dropped: level info
        p.write_text('{"n": 4, "logLevel": "debug"}')
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.2)
        log.debug("after_reload_debug")               # shown: level debug now
        p.write_text('{"n": 0}')                      # invalid: logged, ignored
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.2)
        seen["alive_after_hup"] = not stop.is_set()
        seen["n"] = config.n
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        return 0

    assert D.daemon_main("manatee-x", Cfg, run, ["-f", str(p), "--log-format", "json"]) == 0
    assert seen == {"alive_after_hup": True, "n": 3}
    events = [json.loads(ln) for ln in capfd.readouterr().err.splitlines() if ln.startswith("{")]
    names = [e["event"] for e in events]
    assert "before_reload_debug" not in names and "after_reload_debug" in names
    reloaded = next(e for e in events if e["event"] == "reloaded")
    assert reloaded["log_level"] == "debug" and reloaded["changed"] == ["n"]
    assert any(e["event"] == "reload_needs_restart" and e["keys"] == ["n"] for e in events)
    failed = next(e for e in events if e["event"] == "reload_failed")
    assert "key 'n'" in failed["error"]
    got = _received(notify_socket)
    kinds = [m.splitlines()[0] for m in got]
    assert kinds[0] == "WATCHDOG=1" and "READY=1" in kinds and "STOPPING=1" == kinds[-1]
    assert kinds.count("RELOADING=1") == 2 and kinds.count("WATCHDOG=1") >= 5
    i = kinds.index("RELOADING=1")
    assert "READY=1" in kinds[i:] and any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in got)


def test_a_start_up_failure_is_one_line_and_never_ready(tmp_path, capfd, notify_socket):
    p = tmp_path / "c.json"
    p.write_text('{"n": 3}')

    async def run(config, log, stop):
        raise OSError(98, "error while attempting to bind on address ('127.0.0.1', 5433): address already in use")

    assert D.daemon_main("manatee-x", Cfg, run, ["-f", str(p), "--log-format", "json"]) == 1
    err = [ln for ln in capfd.readouterr().err.splitlines() if "fatal_error" in ln]
    assert len(err) == 1 and "address already in use" in err[0] and "Traceback" not in err[0]
    assert "READY=1" not in "".join(_received(notify_socket))


def test_log_level_key_is_checked_like_any_other(tmp_path, capsys):
    p = tmp_path / "c.json"
    p.write_text('{"n": 3, "logLevel": "loud"}')
    assert D.daemon_main("manatee-x", Cfg, lambda *a: None, ["-f", str(p)]) == D.EXIT_CONFIG
    assert "key 'logLevel': must be one of debug, info, warning, error" in capsys.readouterr().err


def test_stdlib_loggers_come_out_in_the_same_json_format():
    buf = io.StringIO()
    for name in ("kazoo", "aiohttp"):  # other tests (the CLIs) quieten these
        logging.getLogger(name).setLevel(logging.NOTSET)
    logmod.configure(0, json=True, stream=buf)
    logmod.get_logger("manatee.t").info("ours", k=1)
    logging.getLogger("kazoo.client").warning("Connection dropped: %s", "socket closed")
    logging.getLogger("aiohttp.access").info("dropped: below the libraries' WARNING")
    lines = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    assert [ln["event"] for ln in lines] == ["ours", "Connection dropped: socket closed"]
    assert lines[1]["component"] == "kazoo.client" and lines[1]["level"] == "warning"
    assert "timestamp" in lines[1]
    logmod.set_level(2)
    logging.getLogger("kazoo.client").debug("now shown")
    assert json.loads(buf.getvalue().splitlines()[-1])["event"] == "now shown"
    logmod.configure(0)


def test_sdnotify_is_a_no_op_without_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None


def test_changed_keys_are_dotted():
    assert D.changed_keys({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 5}, "d": 4}) == ["a.c", "d"]


def test_a_config_error_found_while_starting_exits_2(tmp_path, capsys):
    from manatee.core.config import ConfigError

    p = tmp_path / "c.json"
    p.write_text('{"n": 3}')

    async def run(config, log, stop):
        raise ConfigError("", "secretFile", "not readable")

    assert D.daemon_main("manatee-x", Cfg, run, ["-f", str(p)]) == D.EXIT_CONFIG
    assert f"manatee-x: config {p}: key 'secretFile': not readable" in capsys.readouterr().err
def test_a_reload_hook_applies_its_keys_and_only_the_rest_need_a_restart(tmp_path, capfd):
    class Two(ConfigModel):
        n: int = 1
        m: int = 1

    p = tmp_path / "c.json"
    p.write_text('{"n": 1, "m": 1}')
    got, out = [], {}

    async def run(config, log, stop):
        D.register_reload(lambda new: (got.append((new.n, new.m)), ("n",))[1])
        D.register_reload(lambda new: 1 / 0)  # a failing hook is logged; the reload goes on
        p.write_text('{"n": 2, "m": 3}')
        out["reload"] = D.request_reload()
        p.write_text('{"n": "x"}')
        out["bad"] = D.request_reload()
        return 0

    try:
        assert D.daemon_main("manatee-x", Two, run, ["-f", str(p), "--log-format", "json"]) == 0
    finally:
        err = capfd.readouterr().err
        logmod.configure(0, stream=sys.__stderr__)  # not the captured stderr pytest closes
    assert got == [(2, 3)] and D.request_reload() is None  # no daemon any more
    assert out["reload"] == {"ok": True, "changed": ["m", "n"], "applied": ["n"], "needsRestart": ["m"]}
    assert out["bad"]["ok"] is False and "key 'n'" in out["bad"]["error"]
    events = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    reloaded = next(e for e in events if e["event"] == "reloaded")
    assert reloaded["changed"] == ["m", "n"] and reloaded["applied"] == ["n"]
    assert next(e for e in events if e["event"] == "reload_needs_restart")["keys"] == ["m"]
    assert "ZeroDivisionError" in next(e for e in events if e["event"] == "reload_hook_failed")["error"]
