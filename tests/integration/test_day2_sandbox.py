"""Day-two operations on a fresh `scripts/sandbox.sh up` (issue 11):

- the tool commands `up` prints work as printed (through a shell, from another directory):
  `manatee-stat -p` has every node's replication row and no error, `manatee-adm show` has no
  PostgreSQL "down" or "auth failed", `manatee-adm verify` exits 0 on the healthy shard, and
  `--json` output parses; the same tools with the sandbox's manatee.env sourced;
- the health endpoints on real sitters: /liveness, /readiness, /ping, /sync, /async,
  /read-only answer per role, and `/replica?lag=1MB` turns 503 on a standby more than 1 MB
  behind (replay paused on it while the primary writes) and 200 again once it catches up;
- /metrics: shard and node labels on every series, process_* present, and scrapes served
  from the cache (the metrics' own PostgreSQL query count does not grow with the scrapes).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.shard_fixture import NEEDS_SHARD, say

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
parser = pytest.importorskip("prometheus_client.parser")


def sandbox(d: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    r = subprocess.run([str(ROOT / "scripts" / "sandbox.sh"), *args, "--dir", str(d)],
                       capture_output=True, text=True, timeout=timeout)
    say(f"$ sandbox.sh {' '.join(args)} -> {r.returncode}\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
    return r


def http(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def printed_commands(out: str) -> dict[str, str]:
    """The `manatee tools` block of `up`'s output: {what: command}."""
    block = out.split("manatee tools", 1)[1].splitlines()[1:]
    cmds = {}
    for line in block:
        m = re.match(r"^  (.+?):\s+(\S.*)$", line)
        if not m:
            break
        cmds[m.group(1)] = m.group(2)
    return cmds


def shell(cmd: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PGPASSFILE", "PGPASSWORD", "MANATEE_ZK", "MANATEE_SHARD", "MANATEE_SANDBOX_DIR")}
    r = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=120,
                       env={**clean, **(env or {})})
    say(f"$ {cmd} -> {r.returncode}\n{r.stdout[-2500:]}{r.stderr[-1500:]}")
    return r


def psql(d: Path, node: str, sql: str) -> str:
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "manatee_testbed.cli.sandbox", "psql", "--dir", str(d),
                        node, "--", "-XAtc", sql], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def wait(pred, timeout: float, what: str, every: float = 0.3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_fresh_sandbox_tools_health_endpoints_and_metrics(zfs_fuse, tmp_path):
    d = tmp_path / "sb"
    first_ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.11"
    shard = f"d{uuid.uuid4().hex[:6]}"
    try:
        # --zk-auth: verify warns about sitters without it; the printed commands carry the credential
        up = sandbox(d, "up", "--session-timeout", "4000", "--first-ip", first_ip, "--shard", shard,
                     "--timeout", "300", "--zk-auth")
        assert up.returncode == 0, up.stderr
        cmds = printed_commands(up.stdout)
        assert {"shard state + lag", "the shard as a table", "health (exit 0/1/2)", "history"} <= set(cmds), cmds
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        info = json.loads(subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "manatee_testbed.cli.sandbox",
                                          "status", "--json", "--dir", str(d)], capture_output=True, text=True,
                                         timeout=60).stdout)
        roles = {n["name"]: n["role"] for n in info["nodes"]}
        by_role = {r: next(n for n in info["nodes"] if n["role"] == r) for r in ("primary", "sync", "async")}

        # -- the printed commands, as printed -------------------------------------------------
        r = shell(cmds["shard state + lag"], elsewhere)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)[shard]
        for role in ("primary", "sync", "async"):
            assert "error" not in doc[role] and "auth" not in doc[role], doc[role]
        assert doc["primary"]["repl"].get("state") == "streaming" and doc["sync"]["repl"].get("state") == "streaming"

        def verified():
            v = shell(cmds["health (exit 0/1/2)"], elsewhere)
            return v if v.returncode == 0 else None

        v = wait(verified, 60, "manatee-adm verify to exit 0 on the healthy shard", every=2)
        assert v.stdout.strip() == "ok"
        r = shell(cmds["the shard as a table"], elsewhere)
        assert r.returncode == 0 and "auth failed" not in r.stdout and " down " not in r.stdout, r.stdout
        assert "DISK FREE" in r.stdout
        assert shell(cmds["history"], elsewhere).returncode == 0

        # -- the env file; --json parses; without the password: "auth failed", not "down" ------
        env_line = cmds["the tools' settings"].split("(", 1)[0].strip()
        r = shell(f"{env_line} && {ROOT}/.venv/bin/manatee-adm show --json", elsewhere)
        assert r.returncode == 0, r.stderr
        shown = json.loads(r.stdout)
        assert shown["status"] == "ok" and {n["role"] for n in shown["nodes"]} == {"primary", "sync", "async"}
        r = shell(f"{env_line} && {ROOT}/.venv/bin/manatee-adm verify --json", elsewhere)
        assert r.returncode == 0 and json.loads(r.stdout)["status"] == "ok"
        r = shell(f"{env_line} && {ROOT}/.venv/bin/manatee-adm pg-status --json", elsewhere)
        assert r.returncode == 0 and len(json.loads(r.stdout)["nodes"]) == 3
        r = shell(f"{env_line} && {ROOT}/.venv/bin/manatee-adm history --json", elsewhere)
        assert r.returncode == 0 and isinstance(json.loads(r.stdout), list)
        r = shell(f"{ROOT}/.venv/bin/manatee-adm show -z {info['zookeeper']['connect']} -s {shard}", elsewhere,
                  env={"PGPASSFILE": "/dev/null"})
        assert "auth failed" in r.stdout and "PostgreSQL does not answer" not in r.stdout, r.stdout
        r = shell(f"{ROOT}/.venv/bin/manatee-adm verify -z {info['zookeeper']['connect']} -s {shard}", elsewhere,
                  env={"PGPASSFILE": "/dev/null"})
        assert r.returncode == 2 and "critical: " in r.stdout and "auth failed" in r.stdout
        r = shell(f"{ROOT}/.venv/bin/manatee-stat -p", elsewhere, env={"MANATEE_SANDBOX_DIR": str(d)})
        assert r.returncode == 0 and "error" not in json.loads(r.stdout)[shard]["sync"]

        # -- health endpoints per role ---------------------------------------------------------
        st = {r: n["statusUrl"].rsplit("/state", 1)[0] for r, n in by_role.items()}
        expect = {  # path: (primary, sync, async)
            "/liveness": (200, 200, 200), "/readiness": (200, 200, 200), "/ping": (200, 200, 200),
            "/primary": (200, 503, 503), "/replica": (503, 200, 200), "/sync": (503, 200, 503),
            "/async": (503, 503, 200), "/read-only": (200, 200, 200), "/replica?lag=1MB": (503, 200, 200),
        }
        for path, want in expect.items():
            got = tuple(http(st[r] + path)[0] for r in ("primary", "sync", "async"))
            assert got == want, f"{path}: {got} (primary, sync, async), expected {want}"
        assert http(st["async"] + "/replica?lag=fast")[0] == 400

        # -- /metrics: labels, process_*, cached -------------------------------------------------
        code, body = http(st["async"] + "/metrics")
        assert code == 200
        fams = list(parser.text_string_to_metric_families(body.decode()))
        assert any(f.name == "process_resident_memory_bytes" for f in fams)
        async_node = next(n for n in info["nodes"] if n["role"] == "async")
        for f in fams:
            for s in f.samples:
                assert s.labels.get("shard") == shard and s.labels.get("node"), s
        ages = []
        for _ in range(10):  # ten scrapes inside a second share one observation
            fam = {f.name: f for f in parser.text_string_to_metric_families(http(st["async"] + "/metrics")[1].decode())}
            ages.append(fam["manatee_pg_observation_age_seconds"].samples[0].value)
        assert min(ages) >= 0 and max(ages) < 3, ages

        # -- scrapes open no PostgreSQL sessions of their own: sessions on the async over 3 s
        # idle vs 3 s of 150 scrapes (each psql here is a session too: counted in both)
        a = async_node["name"]

        def sessions() -> int:
            return int(psql(d, a, "select sum(sessions) from pg_stat_database"))

        s0 = sessions()
        time.sleep(3)
        s1 = sessions()
        t_end = time.monotonic() + 3
        scrapes = 0
        while time.monotonic() < t_end:
            assert http(st["async"] + "/metrics")[0] == 200
            scrapes += 1
        s2 = sessions()
        idle, busy = s1 - s0, s2 - s1
        say(f"PostgreSQL sessions on the async: {idle} in 3 s idle, {busy} in 3 s with {scrapes} scrapes")
        assert scrapes >= 50 and busy <= idle + 6, (idle, busy, scrapes)

        # -- /replica?lag=1MB: 503 on a standby more than 1 MB behind, 200 once caught up ------
        psql(d, a, "select pg_wal_replay_pause()")
        try:
            primary = next(n for n, r in roles.items() if r == "primary")
            psql(d, primary, "create table day2_lag as select repeat('x', 1000) as v from generate_series(1, 6000)")
            t0 = time.monotonic()
            wait(lambda: http(st["async"] + "/replica?lag=1MB")[0] == 503, 30, "/replica?lag=1MB to turn 503")
            say(f"/replica?lag=1MB turned 503 {time.monotonic() - t0:.1f}s after the writes")
            assert http(st["async"] + "/replica")[0] == 200  # still streaming: only the lag is too big
            assert http(st["async"] + "/replica?lag=1GB")[0] == 200
            assert http(st["async"] + "/read-only?lag=1MB")[0] == 503
        finally:
            psql(d, a, "select pg_wal_replay_resume()")
        wait(lambda: http(st["async"] + "/replica?lag=1MB")[0] == 200, 60, "/replica?lag=1MB back to 200")

        # -- SIGHUP to every daemon of every node: all keep running, the shard stays healthy -----
        pids = {f"{n['name']}/{dmn}": pr["pid"] for n in info["nodes"] for dmn, pr in n["processes"].items()
                if dmn in ("sitter", "snapshotter", "backupserver")}
        assert len(pids) == 9, pids
        for pid in pids.values():
            os.kill(pid, signal.SIGHUP)
        time.sleep(3)
        for who, pid in pids.items():
            assert Path(f"/proc/{pid}").exists(), f"{who} (pid {pid}) died of SIGHUP"
        for n in info["nodes"]:
            log = Path(n["logDir"]) / "sitter.log"
            assert "reloaded" in log.read_text(), f"no 'reloaded' line in {log}"
        v = wait(verified, 30, "verify to exit 0 after the SIGHUPs", every=2)
        assert v.stdout.strip() == "ok"
        info2 = json.loads(subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "manatee_testbed.cli.sandbox",
                                           "status", "--json", "--dir", str(d)], capture_output=True, text=True,
                                          timeout=60).stdout)
        assert roles == {n["name"]: n["role"] for n in info2["nodes"]}, "a SIGHUP moved a role"
    finally:
        down = sandbox(d, "down", timeout=300)
        assert down.returncode == 0, down.stderr
