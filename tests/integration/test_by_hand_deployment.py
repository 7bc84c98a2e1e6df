"""docs/operators-guide.md, "Deploying a shard by hand", followed verbatim.

The section's ```sh blocks are run as written, in order, by bash; the test changes only the
values of the variables of the section's first block (DIR, PREFIX, the addresses, ports, pool
and shard) so that the lab gets a fresh directory, random 127.x addresses and free ports. The
blocks up to "Stopping" must bring up a shard that `manatee-adm verify` calls healthy (their
own `until ... verify` loop) and take the doc's psql write; the test then checks the chain
(primary + sync + async, each PostgreSQL answering) with `manatee-adm show --json` and makes a
committed write of its own on the primary with the admin password from the doc's pgpass file.
The "Stopping" block must then stop everything and remove the pool and DIR.

Whatever happens, the test's own clean-up kills what the blocks started (the bash's process
group, PostgreSQL by data directory, ZooKeeper by its pid file), destroys the pool and removes
the nodes' PostgreSQL socket dirs (/run/manatee/<ip>-<port>: the sitters keep them, as in
production, and every run uses new addresses and ports).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from manatee.core.procs import pid_alive
from manatee_testbed.proctable import postgres_pids
from manatee_testbed.sockdirs import default_socket_dir, remove_stale
from manatee_testbed.zfspool import ZfsPool, ensure_zfs_fuse, pool_names
from tests.shard_fixture import NEEDS_SHARD, say

pytestmark = [pytest.mark.integration, *NEEDS_SHARD]

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operators-guide.md"
SECTION = "## Deploying a shard by hand"
VARIABLES = ("DIR", "PREFIX", "ZK_IP", "ZK_PORT", "A", "B", "C", "PG_PORT", "STATUS_PORT",
             "BACKUP_PORT", "ZFS_PORT", "POOL", "SHARD", "SESSION_MS")
SETUP_TIMEOUT = 150.0  # the blocks up to "Stopping", verify loop included
STOP_TIMEOUT = 60.0


def section_blocks(text: str) -> list[tuple[str, str]]:
    """The section's ```sh blocks as (the ### heading above it, its text), in order."""
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start + len(SECTION))
    body = text[start:end if end != -1 else len(text)]
    blocks, heading = [], ""
    for m in re.finditer(r"^### ([^\n]*)$|^```sh\n(.*?)^```$", body, re.M | re.S):
        if m.group(1) is not None:
            heading = m.group(1).strip()
        else:
            blocks.append((heading, m.group(2)))
    return blocks


def set_variables(block: str, values: dict[str, str]) -> str:
    """The variables block with each NAME=value line's value replaced (every name must be there)."""
    out = block
    for name, value in values.items():
        out, n = re.subn(rf"^{name}=.*$", f"{name}={value}", out, flags=re.M)
        assert n == 1, f"the guide's variables block has no single line {name}=..."
    return out


def test_section_blocks_parse():
    """Fast guard (no shard): the section exists, starts with the variables, ends with Stopping."""
    blocks = section_blocks(GUIDE.read_text())
    assert len(blocks) >= 6
    set_variables(blocks[0][1], {v: "x" for v in VARIABLES})
    assert blocks[-1][0] == "Stopping"
    assert all(h != "Stopping" for h, _ in blocks[:-1])


def port_free_on(ips: list[str], port: int) -> bool:
    for ip in ips:
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def pick_ports(ips: list[str], n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = random.randint(20000, 60000)
        if p not in ports and port_free_on(ips, p):
            ports.append(p)
    return ports


def run_bash(script: str, log: Path, timeout: float, env: dict[str, str]) -> tuple[int, subprocess.Popen]:
    """bash -eu running `script` in a session of its own (its background daemons stay in its
    process group); returns (exit status, the Popen: its pid is the group's id)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", "-euc", script], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd="/", start_new_session=True)
    try:
        return proc.wait(timeout=timeout), proc
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -1, proc


def group_members(pgid: int) -> dict[int, str]:
    """Live processes of process group `pgid` (pid -> command line)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getpgid(int(entry)) == pgid and pid_alive(int(entry)):
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    return found


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def test_by_hand_deployment_follows_the_guide(tmp_path):
    t0 = time.monotonic()
    blocks = section_blocks(GUIDE.read_text())
    net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    zk_ip, ips = f"{net}.10", [f"{net}.11", f"{net}.12", f"{net}.13"]
    zk_port, pg_port, status_port, backup_port, zfs_port = pick_ports([zk_ip, *ips], 5)
    lab = Path(f"/var/tmp/manatee-byhand-{uuid.uuid4().hex[:8]}")
    pool = f"mbyhand{uuid.uuid4().hex[:8]}"
    values = {"DIR": str(lab), "PREFIX": str(REPO), "ZK_IP": zk_ip, "ZK_PORT": str(zk_port),
              "A": ips[0], "B": ips[1], "C": ips[2], "PG_PORT": str(pg_port),
              "STATUS_PORT": str(status_port), "BACKUP_PORT": str(backup_port),
              "ZFS_PORT": str(zfs_port), "POOL": pool, "SHARD": f"byhand{uuid.uuid4().hex[:4]}",
              # above a stock ZooKeeper's maxSessionTimeout (40 s): the doc's zoo.cfg must grant it
              "SESSION_MS": "45000"}
    variables = set_variables(blocks[0][1], values)
    setup = "\n".join([variables] + [b for h, b in blocks[1:] if h != "Stopping"])
    stop = "\n".join([variables] + [b for h, b in blocks if h == "Stopping"])
    env = dict(os.environ)
    for k in ("ZOO_NOEXEC", "SERVER_JVMFLAGS", "PGPASSWORD", "PGPASSFILE", "MANATEE_ZK",
              "MANATEE_SHARD", "MANATEE_CONFIG"):
        env.pop(k, None)
    log = tmp_path / "bash.log"
    data_dirs = [str(lab / ip / "pg" / "data") for ip in ips]
    socket_dirs = [default_socket_dir(ip, pg_port) for ip in ips]  # the doc's configs set no socketDir
    handle = ensure_zfs_fuse()
    setup_proc = None
    try:
        say(f"lab {lab}: ZooKeeper {zk_ip}:{zk_port}, nodes {ips}, pool {pool}")
        rc, setup_proc = run_bash(setup, log, SETUP_TIMEOUT, env)
        up_s = time.monotonic() - t0
        daemon_logs = "\n".join(f"--- {p}\n{tail(p, 8)}" for p in sorted(lab.glob("*/sitter.log")))
        assert rc == 0, (f"the guide's blocks up to Stopping exited {rc} after {up_s:.0f}s:\n"
                         f"{tail(log)}\n{daemon_logs}\n--- zookeeper\n{tail(lab / 'zk' / 'zookeeper.log', 15)}")
        say(f"healthy (verify ok, doc's psql write done) {up_s:.1f}s after start")

        # The chain, as the operator's tool sees it.
        tool_env = dict(env, MANATEE_ZK=f"{zk_ip}:{zk_port}", MANATEE_SHARD=values["SHARD"],
                        PGPASSFILE=str(lab / "pgpass"))
        show = subprocess.run([str(REPO / "bin" / "manatee-adm"), "show", "--json"], env=tool_env,
                              capture_output=True, text=True, timeout=30)
        assert show.returncode == 0, show.stderr
        view = json.loads(show.stdout)
        roles = {n["role"]: n for n in view["nodes"]}
        assert set(roles) == {"primary", "sync", "async"}, view
        assert {n["ip"] for n in view["nodes"]} == set(ips)
        assert all(n["live"] and n["pgError"] is None and n["wal"] for n in view["nodes"]), view
        assert view["status"] == "ok", view["problems"]
        for ip in ips:  # ZooKeeper granted the configured session timeout (zoo.cfg's bounds)
            with urllib.request.urlopen(f"http://{ip}:{status_port}/state", timeout=5) as r:
                zst = json.load(r)["zkSessionTimeout"]
            assert zst["negotiated"] == zst["configured"] == 45.0, zst

        # A committed write on the primary, with the admin credential of the doc's pgpass file.
        import psycopg2

        password = (lab / "pgpass").read_text().strip().rsplit(":", 1)[1]
        primary = roles["primary"]["ip"]
        conn = psycopg2.connect(host=primary, port=pg_port, user="postgres", dbname="postgres",
                                password=password, connect_timeout=5)
        try:
            with conn, conn.cursor() as cur:  # commits (synchronous_commit on: the sync has it)
                cur.execute("SET statement_timeout = '10s'")
                cur.execute("CREATE TABLE by_hand_test (v text)")
                cur.execute("INSERT INTO by_hand_test VALUES (%s)", ("committed",))
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM hello")  # the doc's own psql write
                assert cur.fetchone()[0] >= 1
                cur.execute("SELECT v FROM by_hand_test")
                assert cur.fetchall() == [("committed",)]
        finally:
            conn.close()
        say(f"committed write on primary {primary}")

        # The guide's Stopping block: everything stopped, the pool and DIR gone.
        t1 = time.monotonic()
        rc, _ = run_bash(stop, log, STOP_TIMEOUT, env)
        assert rc == 0, f"the guide's Stopping block exited {rc}:\n{tail(log)}"
        say(f"stopped and removed in {time.monotonic() - t1:.1f}s; total {time.monotonic() - t0:.1f}s")
        assert pool not in pool_names()
        assert not lab.exists()
        assert not any(postgres_pids(d) for d in data_dirs)
        left = group_members(setup_proc.pid)
        assert not left, f"processes the guide started still run after its Stopping block: {left}"
    finally:
        for f in lab.glob("*/*.log"):  # kept for a failure's post-mortem
            shutil.copy(f, tmp_path / f"{f.parent.name}-{f.name}")
        _clean_up(setup_proc, lab, pool, data_dirs, socket_dirs)
        handle.release()


def _clean_up(setup_proc, lab: Path, pool: str, data_dirs: list[str], socket_dirs: list[str]) -> None:
    """Kill whatever the blocks started (after a failure), remove the pool and the lab (ditto),
    and the nodes' socket dirs (always: the guide's Stopping block leaves them)."""
    if setup_proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(setup_proc.pid, signal.SIGKILL)
    for d in data_dirs:
        for pid in postgres_pids(d):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    zk_pid = lab / "zk" / "zookeeper.pid"
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):
        os.kill(int(zk_pid.read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(postgres_pids(d) for d in data_dirs):
        time.sleep(0.2)
    if pool in pool_names():
        ZfsPool(lab, pool).destroy()
    if lab.exists():
        shutil.rmtree(lab, ignore_errors=True)
    for d in data_dirs:
        for pid in postgres_pids(d):
            assert not pid_alive(pid), f"PostgreSQL {pid} of {d} survived the clean-up"
    kept = {d: why for d in socket_dirs if (why := remove_stale(d)) is not None}
    assert not kept, f"socket dirs kept after the clean-up: {kept}"
