"""CI's short fault soak: `manatee-nemesis` for 3 rounds with a fixed seed, one round each
of kill, partition and ZooKeeper restart, against a real sandbox shard (ZooKeeper,
zfs-fuse, three nodes of sitter + snapshotter + backupserver, PostgreSQL 15) under
continuous writes. The console script runs as a user would run it; the test asserts its
exit status, the summary line and the JSON summary (every acknowledged write on the final
primary, no fork, one primary per generation, no operator round), and that the sandbox
is gone afterwards.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shard_fixture import NEEDS_SHARD

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(1200)]

SEED = 4242
FAULTS = "kill,partition,zk_restart"


def _script() -> list[str]:
    exe = Path(sys.executable).parent / "manatee-nemesis"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "manatee_testbed.cli.nemesis"]


def test_short_soak_kill_partition_zk_restart_passes(zfs_fuse, tmp_path):
    sandbox_dir = tmp_path / "sb"
    out_json = tmp_path / "summary.json"
    cmd = _script() + ["--rounds", "3", "--seed", str(SEED), "--faults", FAULTS, "--session-timeout", "5000",
                       "--dir", str(sandbox_dir), "--json", str(out_json), "--heal-timeout", "150"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1100)
    print(proc.stdout[-20000:])
    print(proc.stderr[-5000:], file=sys.stderr)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr[-3000:]}"
    summary_line = lines[-1]
    assert proc.returncode == 0, f"nemesis failed (exit {proc.returncode}): {summary_line}"

    # the one summary line
    assert summary_line.startswith("nemesis: rounds=3 "), summary_line
    fields = dict(re.findall(r"(\w+)=(\{[^}]*\}|\S+)", summary_line))
    assert fields["seed"] == str(SEED)
    assert fields["session_timeout_ms"] == "5000"
    assert fields["faults"] == "{kill:1,partition:1,zk_restart:1}"
    assert int(fields["acked"]) > 100
    assert fields["lost"] == "0" and fields["forks"] == "0" and fields["history"] == "ok"
    assert fields["problems"] == "0" and fields["operator_rounds"] == "0"
    assert float(fields["longest_outage_s"]) > 0
    assert fields["result"] == "PASS"

    # a per-round line for each round, in order, naming its fault
    rounds = [ln for ln in lines if re.search(r"\] round \d+/3 ", ln)]
    assert [re.search(r"round (\d+)/3", ln).group(1) for ln in rounds] == ["1", "2", "3"]
    assert sorted(re.search(r"fault=(\w+)", ln).group(1) for ln in rounds) == sorted(FAULTS.split(","))

    # the JSON summary says the same, round by round
    data = json.loads(out_json.read_text())
    assert data["result"] == "PASS" and data["seed"] == SEED and data["rounds_run"] == 3
    assert data["lost"] == 0 and data["forks"] == 0 and data["history_ok"] and data["problems"] == []
    assert data["faults"] == {"kill": 1, "partition": 1, "zk_restart": 1}
    assert [r["operator"] for r in data["round_results"]] == [None, None, None]
    assert all(r["heal_s"] > 0 and r["after"] for r in data["round_results"])
    # the same seed plans the same faults (the plan line is reproducible)
    plan = next(ln for ln in lines if "] plan: " in ln).split("] plan: ")[1]
    assert plan == " ".join(f"{r['index']}:{r['kind']}" + (f"/{r['target'].split('(')[1].rstrip(')')}"
                                                           if r["kind"] in ("kill", "partition") else "")
                            for r in data["round_results"])

    # nothing left behind: the sandbox was taken down
    assert not (sandbox_dir / "sandbox.json").exists()
