"""The real daemons as processes (no shard needed):

- SIGHUP never kills: the sitter (waiting for an unreachable ZooKeeper), the backupserver and
  the snapshotter each get two SIGHUPs — one with a new logLevel, one with a broken file — and
  keep running, logging `reloaded` (debug lines appear after it) and `reload_failed`;
- the sitter's /liveness answers 200 with neither ZooKeeper nor PostgreSQL, while /ping and
  /readiness answer 503;
- a second sitter on a taken status port fails with one line (no traceback), exit 1;
- a missing postgresConf file is an exit-2 config error naming the key.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from manatee import __version__

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sitter runs as root (it starts PostgreSQL as postgres)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def sitter_cfg(tmp_path: Path, status_port: int) -> dict:
    cfg = json.loads((ROOT / "etc" / "sitter.json").read_text())
    cfg.update(ip="127.0.0.1", zoneId="t-signals", statusPort=status_port, postgresPort=free_port(),
               backupPort=free_port())
    cfg["zkCfg"] = {"connStr": f"127.0.0.1:{free_port()}", "sessionTimeout": 4000, "connectTimeout": 1000}
    cfg["postgresMgrCfg"]["dataDir"] = str(tmp_path / "data")
    cfg["postgresMgrCfg"]["postgresConf"] = str(ROOT / "etc" / "postgresql.conf")
    cfg["secretFile"] = _secret_file(tmp_path)
    return cfg


def _secret_file(tmp_path: Path) -> str:
    """The shard secret the sample configs name lives in /etc; these daemons get their own."""
    from manatee.core.auth import new_secret, write_secret_file

    path = tmp_path / "shard.secret"
    if not path.exists():
        write_secret_file(str(path), new_secret())
    return str(path)


def http(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def events(err: str) -> list[dict]:
    return [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]


def _daemon_configs(tmp_path: Path) -> dict[str, tuple[dict, dict]]:
    """name → (config, the same with logLevel debug)."""
    status = free_port()
    s = sitter_cfg(tmp_path, status)
    b = json.loads((ROOT / "etc" / "backupserver.json").read_text())
    b["backupServerCfg"].update(host="127.0.0.1", port=free_port())
    b["zkCfg"] = {"connStr": f"127.0.0.1:{free_port()}", "sessionTimeout": 4000}
    b["secretFile"] = _secret_file(tmp_path)
    sn = json.loads((ROOT / "etc" / "snapshotter.json").read_text())
    return {name: (c, {**c, "logLevel": "debug"}) for name, c in
            (("sitter", s), ("backupserver", b), ("snapshotter", sn))}


@pytest.mark.parametrize("daemon", ["sitter", "backupserver", "snapshotter"])
def test_sighup_reloads_and_never_kills(tmp_path, daemon):
    cfg, debug_cfg = _daemon_configs(tmp_path)[daemon]
    p = tmp_path / f"{daemon}.json"
    p.write_text(json.dumps(cfg))
    proc = subprocess.Popen([str(BIN / f"manatee-{daemon}"), "-f", str(p), "--log-format", "json"],
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert proc.poll() is None, f"{daemon} exited before the test: {proc.stderr.read()}"
        if daemon == "sitter":  # no ZooKeeper, no PostgreSQL: alive, but not serving
            url = f"http://127.0.0.1:{cfg['statusPort']}"
            assert (http(url + "/liveness"), http(url + "/ping"), http(url + "/readiness")) == (200, 503, 503)
        p.write_text(json.dumps(debug_cfg))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert proc.poll() is None, f"{daemon} died of SIGHUP"
        if daemon == "sitter":  # a scrape logs metrics_snapshot_list_failed at debug (no dataset here)
            assert http(f"http://127.0.0.1:{cfg['statusPort']}/metrics") == 200
        p.write_text("{not json")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None, f"{daemon} died of SIGHUP with a broken config"
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    ev = events(err)
    names = [e["event"] for e in ev]
    assert "reloaded" in names and "reload_failed" in names, names
    i = names.index("reloaded")
    assert ev[i]["log_level"] == "debug"
    if daemon == "sitter":
        assert not any(e["level"] == "debug" for e in ev[:i]), "a debug line before the reload"
        assert any(e["level"] == "debug" for e in ev[i + 1:]), "no debug line after the reload"
    assert all(ln.startswith("{") for ln in err.splitlines() if ln.strip()), "a non-JSON line in the stream"


def test_second_sitter_on_a_taken_port_is_one_line(tmp_path):
    port = free_port()
    cfg = sitter_cfg(tmp_path, port)
    p = tmp_path / "sitter.json"
    p.write_text(json.dumps(cfg))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        r = subprocess.run([str(BIN / "manatee-sitter"), "-f", str(p), "--log-format", "json"],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    fatal = [e for e in events(r.stderr) if e["event"] == "fatal_error"]
    assert len(fatal) == 1 and str(port) in fatal[0]["error"], r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr


def test_missing_postgres_conf_is_an_exit_2_config_error(tmp_path):
    cfg = sitter_cfg(tmp_path, free_port())
    cfg["postgresMgrCfg"]["postgresConf"] = "./no/such/postgresql.conf"
    p = tmp_path / "sitter.json"
    p.write_text(json.dumps(cfg))
    r = subprocess.run([str(BIN / "manatee-sitter"), "-f", str(p)], capture_output=True, text=True, timeout=30,
                       cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "key 'postgresMgrCfg.postgresConf': file not found: ./no/such/postgresql.conf" in lines[0]
    assert str(tmp_path) in lines[0]  # says where a relative path was looked for


@pytest.mark.parametrize("daemon", ["sitter", "backupserver", "snapshotter"])
def test_daemons_print_the_package_version(daemon):
    r = subprocess.run([str(BIN / f"manatee-{daemon}"), "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == f"manatee-{daemon} (manatee) {__version__}"
