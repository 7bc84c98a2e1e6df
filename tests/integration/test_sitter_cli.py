"""F17 for the sitter: a bad config or an unreachable ZooKeeper never leaves PG in an unknown role."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "manatee-sitter"
ROOT = Path(__file__).resolve().parents[2]


def sample():
    return json.loads((ROOT / "etc" / "sitter.json").read_text())


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c.pop("zoneId"), "zoneId"),
    (lambda c: c.__setitem__("postgresPort", "five"), "postgresPort"),
    (lambda c: c["zkCfg"].__setitem__("connStr", "nohostport"), "zkCfg.connStr"),
    (lambda c: c["postgresMgrCfg"]["zfsClientCfg"].__setitem__("dataset", "bad@name"), "postgresMgrCfg.zfsClientCfg.dataset"),
    (lambda c: c.__setitem__("heartbeatCfgg", {}), "heartbeatCfgg"),
    (lambda c: c["postgresMgrCfg"]["replicationAuth"].pop("password"), "postgresMgrCfg"),
    (lambda c: c.__setitem__("backupPort", 5432), None),
])
def test_invalid_config_exits_2_naming_the_key(tmp_path, mutate, key):
    cfg = sample()
    mutate(cfg)
    p = tmp_path / "sitter.json"
    p.write_text(json.dumps(cfg))
    r = subprocess.run([str(BIN), "-f", str(p)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(p) in lines[0]
    if key:
        assert f"key '{key}" in lines[0]


def _secret(tmp_path, mode=0o600) -> str:
    p = tmp_path / f"shard-{mode:o}.secret"
    p.write_text("a-long-enough-shard-secret-123\n")
    os.chmod(p, mode)
    return str(p)


@pytest.mark.parametrize("secret_file, insecure, words", [
    (None, False, "secretFile is required"),
    ("world-readable", False, "chmod 600"),
    ("missing", False, "does not exist"),
    ("good", True, "contradict"),
])
def test_refuses_to_start_without_a_usable_shard_secret(tmp_path, secret_file, insecure, words):
    cfg = sample()
    cfg["insecure"] = insecure
    cfg["secretFile"] = {None: None, "world-readable": _secret(tmp_path, 0o644), "good": _secret(tmp_path),
                         "missing": str(tmp_path / "missing")}[secret_file]
    p = tmp_path / "sitter.json"
    p.write_text(json.dumps(cfg))
    r = subprocess.run([str(BIN), "-f", str(p)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "a-long-enough" not in r.stderr, r.stderr


def test_unreachable_zookeeper_waits_without_starting_postgres(tmp_path):
    """No ZooKeeper: the sitter keeps retrying, says so, starts no PostgreSQL, and stops on SIGTERM."""
    cfg = sample()
    cfg["secretFile"] = _secret(tmp_path)
    cfg.update(ip="127.0.0.77", zoneId="t-unreachable", statusPort=18533)
    cfg["zkCfg"] = {"connStr": "127.0.0.1:1", "sessionTimeout": 4000, "connectTimeout": 1000}
    cfg["postgresMgrCfg"]["dataDir"] = str(tmp_path / "data")
    p = tmp_path / "sitter.json"
    p.write_text(json.dumps(cfg))
    proc = subprocess.Popen([str(BIN), "-f", str(p), "--log-format", "json"], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        assert proc.poll() is None, "the sitter must keep waiting for ZooKeeper, not exit"
        assert not (tmp_path / "data").exists(), "no PostgreSQL may be created without ZooKeeper"
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "zk_unreachable" in events
    assert "pg_started" not in events
