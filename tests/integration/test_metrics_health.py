"""The sitters' health endpoints, /metrics and manatee.client on a real shard, across a failover.

One sandbox shard (ZooKeeper, zfs-fuse, three nodes of sitter + snapshotter + backupserver,
PostgreSQL 15). Before the failover: on every node /metrics parses with Prometheus' own
parser and shows the role the sitter reports in /state, /primary answers 200 only on the
primary and /replica only on the streaming standbys. Then examples/psycopg2_failover.py
writes (it finds the primary with manatee.client.ShardWatcher) while the primary's host is
killed; it must go on writing on the new primary, and every row it was acknowledged must be
there. After the failover (and after the old primary rejoined) the endpoints must again
answer correctly on every node.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, say

parser = pytest.importorskip("prometheus_client.parser")

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "psycopg2_failover.py"


def http(url: str, timeout: float = 2.0) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def metrics(node) -> dict[str, list]:
    """/metrics of a node, parsed: {family: [(sample, labels, value)]}."""
    code, body, ctype = http(f"{node.status_url}/metrics")
    assert code == 200, f"{node.name}: /metrics answered {code}: {body[:300]!r}"
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, ctype
    return {f.name: [(s.name, dict(s.labels), s.value) for s in f.samples]
            for f in parser.text_string_to_metric_families(body.decode())}


def one(fams: dict, name: str, **labels) -> float:
    hits = [v for (_n, lab, v) in fams.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, f"{name}{labels}: {fams.get(name)}"
    return hits[0]


def metric_role(fams: dict) -> str:
    on = [lab["role"] for (_n, lab, v) in fams["manatee_role"] if v == 1]
    assert len(on) == 1, f"manatee_role has {len(on)} roles set: {fams['manatee_role']}"
    return on[0]


def check_endpoints(sh: Shard, live: list[str]) -> dict[str, str]:
    """On every live node: /metrics agrees with /state and with the ZK state; /primary is 200
    exactly on the writable primary, /replica exactly on the streaming standbys. Returns roles."""
    top = sh.topology()
    roles = {}
    for name in live:
        n = sh.node(name)
        if top["primary"] != name:
            # a standby's lag is unknown (absent) until its walreceiver has heard its upstream's
            # WAL end (the first WAL or keepalive after it connected): wait for that, bounded
            sh.wait(lambda: "manatee_standby_lag_bytes" in metrics(n), 30, f"{name}'s lag to be known")
        st = sh.state_of(n)
        fams = metrics(n)
        role = metric_role(fams)
        roles[name] = role
        assert role == st["role"], f"{name}: /metrics role {role}, /state role {st['role']}"
        expected = ("primary" if top["primary"] == name else "sync" if top["sync"] == name
                    else "async" if name in top["async"] else None)
        assert role == expected, f"{name}: /metrics role {role}, ZK state says {expected} ({top})"
        assert one(fams, "manatee_generation") == top["generation"]
        assert one(fams, "manatee_pg_up") == 1 and one(fams, "manatee_zk_connected") == 1
        primary_code = http(f"{n.status_url}/primary")[0]
        replica_code = http(f"{n.status_url}/replica")[0]
        if role == "primary":
            assert (primary_code, replica_code) == (200, 503), f"{name} (primary): /primary {primary_code}, /replica {replica_code}"
            assert one(fams, "manatee_writable") == 1
            sync = sh.node(top["sync"])
            assert one(fams, "manatee_replication_lag_bytes", application_name=sync.pg_url, sync_state="sync") >= 0
        else:
            assert (primary_code, replica_code) == (503, 200), f"{name} ({role}): /primary {primary_code}, /replica {replica_code}"
            assert one(fams, "manatee_writable") == 0 and one(fams, "manatee_replica_streaming") == 1
            assert one(fams, "manatee_standby_lag_bytes") >= 0
            assert one(fams, "manatee_standby_lag_seconds") >= 0
        if "manatee_last_snapshot_age_seconds" in fams:
            assert 0 <= one(fams, "manatee_last_snapshot_age_seconds") < 3600
        assert one(fams, "manatee_restore_in_progress") == 0
        # wraparound far off on a young shard (a standby reads the primary's replicated catalog)
        assert 0 < one(fams, "manatee_pg_xid_age") < 200_000_000
        assert 0 <= one(fams, "manatee_pg_multixact_age") < 200_000_000
    return roles


SHARD = SharedShard("metrics", heal_each_test=False)


def test_metrics_and_health_endpoints_on_a_healthy_shard(shard: Shard):
    sh = shard
    roles = check_endpoints(sh, [n.name for n in sh.nodes])
    assert sorted(roles.values()) == ["async", "primary", "sync"], roles
    # the gray-failure latches (issue 8) are there on every node, all at rest on a healthy shard
    gray = ("manatee_write_probe_failures", "manatee_sync_flush_stalled_seconds", "manatee_pg_start_failures",
            "manatee_pg_start_held_seconds", "manatee_pg_wraparound_refusal_seconds", "manatee_cycle_failures")
    for n in sh.nodes:
        fams = metrics(n)
        assert {g: one(fams, g) for g in gray} == dict.fromkeys(gray, 0), n.name
    top = sh.topology()
    say("primary's /metrics:\n" + http(f"{sh.node(top['primary']).status_url}/metrics")[1].decode())
    # the daisy chain: the sync's pg_stat_replication shows the async streaming from it
    fams = metrics(sh.node(top["sync"]))
    assert one(fams, "manatee_replication_lag_bytes", application_name=sh.node(top["async"][0]).pg_url) >= 0
    # the primary recorded its AssumeLeader; counters are per sitter
    tr = {lab["action"]: v for (_n, lab, v) in metrics(sh.node(top["primary"]))["manatee_transitions"]}
    assert tr["AssumeLeader"] >= 1 and tr["NewStandby"] >= 1, tr


def _acked(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((int(parts[0]), parts[1]))
    return out


def test_client_example_keeps_writing_across_failover_and_endpoints_follow(shard: Shard, tmp_path):
    sh = shard
    top = sh.topology()
    p, s, a = top["primary"], top["sync"], top["async"][0]
    gen0 = top["generation"]
    P, S = sh.node(p), sh.node(s)
    sh.dsn(S)  # writes the passfile the example's libpq reads (PGPASSFILE)
    acked_file = tmp_path / "acked.txt"
    env = {**os.environ, "PGPASSFILE": str(sh.dir / "test.pgpass")}
    table = f"failover_{int(time.time())}"
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), sh.sb.st.zk_connect, sh.shard, "--table", table,
         "--acked-file", str(acked_file)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=open(tmp_path / "example.err", "w"), text=True)
    try:
        sh.wait(lambda: len(_acked(acked_file)) >= 30 or proc.poll() is not None, 60,
                "the example to commit 30 rows on the first primary")
        assert proc.poll() is None, f"example exited: {(tmp_path / 'example.err').read_text()[-2000:]}"
        on_old = {h for _i, h in _acked(acked_file)}
        assert on_old == {f"{P.ip}:{P.pg_port}"}, on_old

        say(f"killing the primary {p}; sync {s}")
        t0 = time.monotonic()
        sh.sb.kill(p)
        sh.wait(lambda: sh.topology()["primary"] == s and sh.writable(S), 60,
                f"the sync {s} to become the writable primary")
        new_host = f"{S.ip}:{S.pg_port}"
        sh.wait(lambda: sum(1 for _i, h in _acked(acked_file) if h == new_host) >= 30, 60,
                f"the example to commit 30 rows on the new primary {s}")
        say(f"example writing on {s} {time.monotonic() - t0:.1f}s after the kill")

        # while the old primary is down: the two live nodes answer for their new roles
        sh.wait(lambda: sh.topology()["sync"] == a and sh.streaming(sh.node(a)), 60,
                f"{a} to become the sync and stream")
        roles = check_endpoints(sh, [s, a])
        assert roles == {s: "primary", a: "sync"}, roles
        fams = metrics(S)
        assert one(fams, "manatee_generation") > gen0
        tr = {lab["action"]: v for (_n, lab, v) in fams["manatee_transitions"]}
        assert tr["AssumeLeader"] >= 1, tr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, f"example exit {proc.returncode}: {(tmp_path / 'example.err').read_text()[-2000:]}"
    say(f"example summary: {out.strip()}")
    acked = [i for i, _h in _acked(acked_file)]
    with psycopg2.connect(sh.dsn(S)) as conn, conn.cursor() as cur:
        cur.execute(f"select id from {table}")
        have = {r[0] for r in cur.fetchall()}
    conn.close()
    missing = sorted(set(acked) - have)
    assert not missing, f"{len(missing)} acknowledged rows missing on the new primary {s}: {missing[:20]}"
    say(f"all {len(acked)} acknowledged rows on {s}")

    # the old primary comes back, rejoins at the tail; every node answers for its role
    sh.sb.start(p)
    sh.wait(lambda: sh.topology()["async"][-1:] == [p] and sh.streaming(P), 180,
            f"the old primary {p} to rejoin as async and stream")
    roles = check_endpoints(sh, [p, s, a])
    assert roles == {p: "async", s: "primary", a: "sync"}, roles



# ------------------------------------------------------------------------------ HAProxy
HAPROXY_CFG = ROOT / "docs" / "haproxy.cfg"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_config_for(sh: Shard, ports: dict[str, int]) -> str:
    """docs/haproxy.cfg with the sandbox's nodes and free local ports in place of the examples."""
    import re

    text = HAPROXY_CFG.read_text()
    for bind, port in ports.items():
        text = text.replace(f"bind :{bind}", f"bind 127.0.0.1:{port}")
    nodes = sh.nodes

    def server(m: "re.Match") -> str:
        n = nodes[int(m.group(2)) - 1]
        return f"server {n.name} {n.ip}:{n.pg_port} check port {n.status_port}"

    text, count = re.subn(r"server (\w+) 10\.0\.0\.(\d):5432 check port 5433", server, text)
    assert count == 6, f"docs/haproxy.cfg: expected 6 server lines to rewrite, found {count}"
    return text


def _server_addr(sh: Shard, port: int) -> tuple[str, bool] | None:
    """(inet_server_addr, in recovery) of a connection through HAProxy's port, None if refused."""
    dsn = sh.dsn(sh.nodes[0]).split(" ")
    dsn = " ".join(x for x in dsn if not x.startswith(("host=", "port="))) + f" host=127.0.0.1 port={port}"
    try:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("select host(inet_server_addr()), pg_is_in_recovery()")
            row = cur.fetchone()
        conn.close()
        return row[0], bool(row[1])
    except psycopg2.Error:
        return None


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_sample_config_routes_writes_to_the_primary_across_failover(shard: Shard, tmp_path):
    sh = shard
    sh.ensure_healthy()
    top = sh.topology()
    p, s = top["primary"], top["sync"]
    P, S = sh.node(p), sh.node(s)
    ports = {"5000": _free_port(), "5001": _free_port(), "7000": _free_port()}
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config_for(sh, ports))
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=open(tmp_path / "haproxy.log", "w"),
                             stderr=subprocess.STDOUT)
    try:
        wport, rport = ports["5000"], ports["5001"]
        sh.wait(lambda: _server_addr(sh, wport) == (P.ip, False), 30, f"writes through HAProxy to reach {p}")
        read = sh.wait(lambda: _server_addr(sh, rport), 30, "a read connection through HAProxy")
        assert read[1] is True and read[0] != P.ip, f"reads went to {read}, not a standby"

        say(f"HAProxy: killing the primary {p}")
        t0 = time.monotonic()
        sh.sb.kill(p)
        sh.wait(lambda: _server_addr(sh, wport) == (S.ip, False), 60,
                f"writes through HAProxy to reach the new primary {s}")
        say(f"HAProxy sends writes to {s} {time.monotonic() - t0:.1f}s after the kill")
        # reads: the remaining standby once it streams from the new primary
        sh.wait(lambda: (r := _server_addr(sh, rport)) is not None and r[1] and r[0] not in (P.ip, S.ip), 60,
                "reads through HAProxy to reach the remaining standby")
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
    sh.sb.start(p)
    sh.wait(lambda: sh.topology()["async"][-1:] == [p] and sh.streaming(P), 180,
            f"the old primary {p} to rejoin as async and stream")
