"""Gray faults of a node's PostgreSQL process: hung (SIGSTOP of PostgreSQL only, the sitter
runs on), every connection slot taken (a helper holds them), and a crash loop (a helper
SIGKILLs the postmaster every second, or SIGSTOPs every new postgres process: a sticky hang)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from manatee_testbed.grayfaults.record import ready_file, spawn_helper, stop_helper, wait_ready
from manatee_testbed.hang import stopped as _stopped
from manatee_testbed.proctable import descendants, postgres_pids, postmaster_pid
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_state import NodeState, SandboxError
from manatee_testbed.shardview import ShardView


# ------------------------------------------------------------------ PostgreSQL hung


def pg_pids(node: NodeState) -> list[int]:
    """The node's postmaster and every process under it."""
    roots = postgres_pids(node.data_dir)
    out: list[int] = []
    for p in roots + descendants(roots):
        if p not in out:
            out.append(p)
    return out


def pg_hang(sb: Sandbox, name: str) -> list[int]:
    """SIGSTOP the node's PostgreSQL (postmaster first, then its children) but not its daemons."""
    pids = pg_pids(sb.st.node(name))
    if not pids:
        raise SandboxError(f"node {name}: PostgreSQL is not running, nothing to hang")
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    # a child forked between the listing and the stop
    for p in pg_pids(sb.st.node(name)):
        if p not in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
            pids.append(p)
    return pids


def pg_resume(sb: Sandbox, name: str) -> list[int]:
    pids = pg_pids(sb.st.node(name))
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGCONT)
    return pids

# ------------------------------------------------------------------ connection storm


def storm(sb: Sandbox, name: str, hold_s: float = 300.0, max_conns: int = 1000) -> int:
    """Fill every connection slot of the node's PostgreSQL (superuser slots too); returns
    the helper's pid. The helper reports how many it holds in its log."""
    node = sb.st.node(name)
    dsn = ShardView(sb).dsn(node)
    key = f"storm:{name}"
    pid = spawn_helper(sb, key, ["storm", "--dir", str(sb.dir), "--key", key, "--dsn", dsn,
                                  "--for", str(hold_s), "--max", str(max_conns)])
    wait_ready(sb, key, pid, 60)
    return pid


def storm_release(sb: Sandbox, name: str) -> bool:
    return stop_helper(sb, f"storm:{name}")


def hold_storm(dir: str, key: str, dsn: str, for_s: float, max_conns: int) -> int:
    import psycopg2

    conns = []
    refused = None
    deadline = time.monotonic() + for_s
    while len(conns) < max_conns:
        try:
            conns.append(psycopg2.connect(dsn, connect_timeout=3))
        except psycopg2.Error as e:
            refused = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            break
    print(f"holding {len(conns)} connection(s); refused: {refused}", flush=True)
    ready_file(dir, key).write_text(str(len(conns)))
    while time.monotonic() < deadline:
        time.sleep(0.5)
        # a slot freed by a dead connection (PostgreSQL restarted) is taken again
        if refused is not None and len(conns) < max_conns:
            with contextlib.suppress(psycopg2.Error):
                conns.append(psycopg2.connect(dsn, connect_timeout=1))
    for c in conns:
        with contextlib.suppress(Exception):
            c.close()
    return 0


# ------------------------------------------------------------------ crash loop


def crash_loop(sb: Sandbox, name: str, for_s: float = 60.0, every_s: float = 1.0, sig: str = "KILL") -> int:
    """SIGKILL the node's postmaster every `every_s` for at most `for_s` (a helper).
    sig="STOP": a sticky hang instead: every process of the node's PostgreSQL, each new one
    too, is SIGSTOPped (a restart does not cure it; `crash_stop` then `pg_resume` end it)."""
    if sig not in ("KILL", "STOP"):
        raise ValueError(f"sig must be KILL or STOP, not {sig!r}")
    node = sb.st.node(name)
    key = f"crashloop:{name}"
    return spawn_helper(sb, key, ["crashloop", "--data-dir", node.data_dir, "--for", str(for_s),
                                   "--every", str(every_s), "--signal", sig])


def crash_stop(sb: Sandbox, name: str) -> bool:
    return stop_helper(sb, f"crashloop:{name}")


def run_crash_loop(data_dir: str, for_s: float, every_s: float, sig: str = "KILL") -> int:
    deadline = time.monotonic() + for_s
    kills = 0
    while time.monotonic() < deadline and sig == "STOP":
        roots = postgres_pids(data_dir)
        for p in roots + descendants(roots):
            if not _stopped(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGSTOP)
                    kills += 1
        time.sleep(every_s)
    while time.monotonic() < deadline:
        pm = postmaster_pid(data_dir)
        if pm is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pm, signal.SIGKILL)
                kills += 1
                print(f"{time.strftime('%T')} killed postmaster {pm}", flush=True)
        time.sleep(every_s)
    print(f"crash loop over: {kills} kill(s)", flush=True)
    return 0

