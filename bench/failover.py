#!/usr/bin/env python3
"""P1/P2/P4 benchmark: failover time, planned-failover write gap and idle footprint of a real
local shard (ACCEPTANCE.md, Performance). A script, not a test: it prints figures.

For each session timeout T it brings up its own `manatee-sandbox` shard (ZooKeeper, a
file-backed ZFS pool, three nodes with sitter + snapshotter + backupserver; unique
directory and 127.0.x.* addresses), then:

  P4     idle footprint: CPU (utime+stime from /proc/PID/stat over --idle-seconds) and
         VmRSS of every daemon of every node, nothing writing.       target < 1 % of a core, < 60 MB
  quiet  no spurious failover under sustained write load: a RecordingWriter at full speed
         (plus pgbench unless --no-pgbench) on the primary for 3×T; the generation in each
         sitter's /state and in ZooKeeper must not change.
  P1     --runs times: kill -9 of the primary's host (sitter, snapshotter, backupserver
         and PostgreSQL: `manatee-sandbox kill`) → first committed write on the new
         primary, seen by a RecordingWriter that follows GET /primary. target median ≤ T + 2 s
  P2     --runs times: graceful stop (SIGTERM: `manatee-sandbox stop`) of the primary →
         the client-visible write gap (last commit before → first commit on the new
         primary).                                                    target median ≤ 1 s
  SW     --runs times: `manatee-adm switchover` (the operator's planned takeover by the
         sync; the old primary rejoins by itself) → the same write gap. target median ≤ 0.3 s

After each fault the node is started again and the shard must be healthy (primary + sync +
async, a write commits) before the next run; the time that takes is reported as "rejoin".
Each run also checks that every acknowledged id is on the new primary (S2), and reads the
promoted node's sitter log to print when it decided, wrote the state, promoted and went
read-write (what the failover time is made of).

Everything is removed at the end, also on failure and Ctrl-C (--keep-logs DIR copies the
daemons' logs out first).

    sudo .venv/bin/python bench/failover.py [--session-timeout-ms 4000 6000] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from manatee_testbed.checks import fetch_ids, missing_acked
from manatee.core.httpjson import http_json
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_nodes import DAEMONS
from manatee_testbed.sandbox_state import NodeState, SandboxError
from manatee_testbed.writer import RecordingWriter, WriterError

from common import require_root, sigterm_interrupts

CLK_TCK = os.sysconf("SC_CLK_TCK")
P2_TARGET_S = 1.0
SW_TARGET_S = 0.3  # issue 10: the planned switchover's write gap, median
P4_CPU_TARGET_PCT = 1.0
P4_RSS_TARGET_MB = 60.0
PEERS = {"patroni_default_s": 30.6, "patroni_ttl20_s": 20.8, "patroni_switchover_s": 1.10}

#: sitter log events worth showing in a failover timeline
TIMELINE_EVENTS = {
    "zk_session", "decision", "state_written", "state_write_lost_race", "transition", "sync_caught_up",
    "pg_configured", "pg_started", "pg_stopped", "pg_killed", "heartbeat_new_standby", "cycle_failed",
    "waiting_for_upstream", "election_joined", "election_left", "zk_read_failed", "safe_mode_entered",
}
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+Z?) \[(\w+)\s*\] (\S+)\s*(.*)$")
FIELD = re.compile(r"(\w+)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\[[^\]]*\]|\S+)")


class BenchError(Exception):
    """The benchmark could not measure (not a missed target)."""


def say(*a: Any) -> None:
    print(*a, flush=True)


# ------------------------------------------------------------------------------ helpers


def dsn_of(node: NodeState) -> str:
    """Over the node's unix socket (the generated pg_hba trusts local connections)."""
    return f"host={node.socket_dir} port={node.pg_port} user=postgres dbname=postgres"


def _ip(peer_id: Any) -> Any:
    return peer_id.split(":", 1)[0] if isinstance(peer_id, str) else peer_id


def stats_of(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(xs), "median": round(statistics.median(xs), 3), "min": round(min(xs), 3),
            "max": round(max(xs), 3)}


def fmt(x: float | None, unit: str = "s") -> str:
    return "-" if x is None else f"{x:.2f}{unit}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def proc_cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def parse_log_time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).replace(tzinfo=timezone.utc).timestamp()


def read_timeline(log: Path, t0_wall: float, t1_wall: float) -> list[dict[str, Any]]:
    """Selected sitter log events between two wall-clock times, with their key fields."""
    out = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        try:
            t = parse_log_time(m.group(1))
        except ValueError:
            continue
        if t < t0_wall or t > t1_wall or m.group(3) not in TIMELINE_EVENTS:
            continue
        fields = {k: v.strip("'\"") for k, v in FIELD.findall(m.group(4))}
        fields.pop("component", None)
        fields.pop("node", None)
        out.append({"t": round(t - t0_wall, 3), "event": m.group(3), **fields})
    return out


def describe_event(e: dict[str, Any]) -> str:
    ev = e["event"]
    if ev == "decision":
        return f"decision {e.get('rule')} -> {e.get('target')}"
    if ev == "state_written":
        return f"state_written gen={e.get('generation')} primary={e.get('primary')} sync={e.get('sync')}"
    if ev == "transition":
        return f"transition {e.get('frm')}->{e.get('to')} steps={e.get('steps')}"
    if ev == "pg_configured":
        return f"pg_configured role={e.get('role')} read_only={e.get('read_only')} changed={e.get('changed')}"
    if ev == "zk_session":
        return f"zk_session {e.get('state')}"
    rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "event", "reason", "why"))
    return f"{ev} {rest}".strip()


def milestones(tl: list[dict[str, Any]]) -> dict[str, float | None]:
    """First occurrence of the steps a takeover is made of (seconds after the fault)."""
    def first(pred) -> float | None:
        return next((e["t"] for e in tl if pred(e)), None)

    return {
        "first_decision": first(lambda e: e["event"] == "decision"),
        "state_written": first(lambda e: e["event"] == "state_written"),
        "promote_transition": first(lambda e: e["event"] == "transition" and "promote" in str(e.get("steps", ""))
                                    or (e["event"] == "transition" and e.get("to") == "primary")),
        "sync_caught_up": first(lambda e: e["event"] == "sync_caught_up"),
        "read_write": first(lambda e: (e["event"] == "pg_configured" and e.get("role") == "primary"
                                       and e.get("read_only") == "False")
                            or (e["event"] == "transition" and "set_read_write" in str(e.get("steps", "")))),
    }


# ------------------------------------------------------------------------------ the shard


class Shard:
    """One sandbox shard at session timeout T, and the measurements on it."""

    def __init__(self, args: argparse.Namespace, session_timeout_ms: int):
        self.args = args
        self.T = session_timeout_ms
        uid = uuid.uuid4().hex[:8]
        self.dir = Path(args.base_dir) / f"manatee-bench-{uid}-T{self.T}"
        octet = args.octet if args.octet is not None else random.randint(150, 249)
        self.first_ip = f"127.0.{octet}.11"
        self.sb = Sandbox(self.dir, out=self._out)
        self._pgbench: subprocess.Popen | None = None
        self._zk: Any = None
        self._watcher: Any = None
        self._election_log: list[tuple[float, frozenset[str]]] = []  # (monotonic, children)
        self._elog_lock = threading.Lock()

    def _out(self, line: str) -> None:
        if self.args.verbose:
            say(f"    [sandbox] {line}")

    # -- lifecycle ------------------------------------------------------------------
    def up(self) -> float:
        t0 = time.monotonic()
        say(f"== T={self.T} ms: sandbox in {self.dir} (nodes on {self.first_ip}..)")
        self.sb.up(nodes=3, session_timeout_ms=self.T, first_ip=self.first_ip, timeout=self.args.healthy_timeout,
                   health_timeout_ms=getattr(self.args, "health_timeout_ms", None),
                   expiration_ms=getattr(self.args, "expiration_ms", None))
        return time.monotonic() - t0

    def watch_election(self) -> None:
        """Our own ZooKeeper client watching the election: when did the old primary's
        ephemeral node go (session expiry or leave), independent of any sitter."""
        from kazoo.client import KazooClient

        if self._zk is not None:
            return
        self._zk = KazooClient(hosts=self.sb.st.zk_connect, timeout=10)
        self._zk.start(timeout=15)
        path = f"{self.sb.st.shard_path}/election"

        def changed(children: list[str]) -> None:
            with self._elog_lock:
                self._election_log.append((time.monotonic(), frozenset(children)))

        self._zk.ChildrenWatch(path, changed)

    def election_node_gone(self, peer_prefix: str, since: float) -> float | None:
        """First time at or after `since` the election had no node of `peer_prefix`."""
        with self._elog_lock:
            log = list(self._election_log)
        for t, children in log:
            if t >= since and not any(c.startswith(peer_prefix + "-") or c == peer_prefix for c in children):
                return t
        return None

    def down(self) -> None:
        if self._zk is not None:
            with contextlib.suppress(Exception):
                self._zk.stop()
                self._zk.close()
            self._zk = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                self._watcher.close()
            self._watcher = None
        if self._pgbench is not None and self._pgbench.poll() is None:
            self._pgbench.kill()
            self._pgbench.wait()
        if not self.sb.exists():
            return
        if self.args.keep_logs:
            self.copy_logs(Path(self.args.keep_logs) / f"T{self.T}")
        problems = self.sb.down()
        for p in problems:
            say(f"  cleanup problem: {p}")

    def copy_logs(self, dest: Path) -> None:
        with contextlib.suppress(Exception):
            for n in self.sb.st.nodes:
                d = dest / n.name
                d.mkdir(parents=True, exist_ok=True)
                for daemon in DAEMONS:
                    if n.log_path(daemon).exists():
                        shutil.copy(n.log_path(daemon), d / f"{daemon}.log")
                pglog = Path(n.mountpoint) / "postgresql.log"
                with contextlib.suppress(OSError):
                    shutil.copy(pglog, d / "postgresql.log")
            say(f"  logs copied to {dest}")

    # -- observing -----------------------------------------------------------------
    def primary_node(self) -> NodeState | None:
        """The node whose sitter answers 200 on GET /primary (writable primary)."""
        for n in self.sb.st.nodes:
            code, _ = http_json(f"{n.status_url}/primary", timeout=0.5)
            if code == 200:
                return n
        return None

    def find_primary_dsn(self) -> str | None:
        n = self.primary_node()
        return dsn_of(n) if n else None

    def node_by_dsn(self, dsn: str) -> NodeState | None:
        return next((n for n in self.sb.st.nodes if dsn_of(n) == dsn), None)

    def generations(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n in self.sb.st.nodes:
            _code, body = http_json(f"{n.status_url}/state", timeout=1.0)
            if isinstance(body, dict):
                st = body.get("state") or {}
                p = st.get("primary")
                out[n.name] = (body.get("generation"), _ip(p.get("id") if isinstance(p, dict) else p))
            else:
                out[n.name] = None
        zs = self.sb.zk_state()
        if isinstance(zs, dict):
            p = zs.get("primary")
            out["zk"] = (zs.get("generation"), _ip(p.get("id") if isinstance(p, dict) else p))
        else:
            out["zk"] = None
        return out

    def wait_healthy(self) -> float:
        t0 = time.monotonic()
        self.sb.wait_healthy(self.args.healthy_timeout)
        return time.monotonic() - t0

    def watched_primary_dsn(self) -> str | None:
        """--client watch: the primary as manatee.client.ShardWatcher knows it (a ZooKeeper
        watch on the state node, as an application would use it), mapped to its node's DSN."""
        if self._watcher is None:
            from manatee.client import ShardWatcher
            self._watcher = ShardWatcher(self.sb.st.zk_connect, self.sb.st.shard, session_timeout=10.0)
        url = self._watcher.primary_url
        if url is None:
            return None
        hostport = url.split("@", 1)[-1].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        n = next((n for n in self.sb.st.nodes if n.ip == host and str(n.pg_port) == port), None)
        return dsn_of(n) if n else None

    def writer(self, interval: float) -> RecordingWriter:
        find = self.watched_primary_dsn if self.args.client == "watch" else self.find_primary_dsn
        return RecordingWriter(find, table="bench_writes", interval=interval,
                               connect_timeout=1.0, commit_timeout=5.0, retry_interval=0.02,
                               follow_primary=0.5, name=f"bench-T{self.T}")

    # -- P4 ------------------------------------------------------------------------
    def footprint(self) -> list[dict[str, Any]]:
        secs = self.args.idle_seconds
        say(f"  P4: idle footprint, sampling every daemon for {secs:.0f}s (settled {self.args.settle:.0f}s first)")
        time.sleep(self.args.settle)
        procs = [(n.name, d, n.pids.get(d)) for n in self.sb.st.nodes for d in DAEMONS]
        start = {(n, d): proc_cpu_ticks(p) for n, d, p in procs if p}
        t0 = time.monotonic()
        rss_peak: dict[tuple[str, str], float] = {}
        while time.monotonic() - t0 < secs:
            for n, d, p in procs:
                r = proc_rss_mb(p) if p else None
                if r is not None:
                    rss_peak[(n, d)] = max(r, rss_peak.get((n, d), 0.0))
            time.sleep(1.0)
        elapsed = time.monotonic() - t0
        rows = []
        for n, d, p in procs:
            a, b = start.get((n, d)), proc_cpu_ticks(p) if p else None
            cpu = None if a is None or b is None else (b - a) / CLK_TCK / elapsed * 100
            rss = rss_peak.get((n, d))
            rows.append({"node": n, "daemon": d, "pid": p, "cpu_pct": None if cpu is None else round(cpu, 3),
                         "rss_mb": None if rss is None else round(rss, 1),
                         "pass": cpu is not None and rss is not None and cpu < P4_CPU_TARGET_PCT
                         and rss < P4_RSS_TARGET_MB})
        return rows

    # -- quiet period --------------------------------------------------------------
    def quiet(self) -> dict[str, Any]:
        dur = 3 * self.T / 1000
        say(f"  quiet: full-speed writer{'' if self.args.no_pgbench else ' + pgbench'} for {dur:.0f}s (3×T); "
            "generation must not change")
        before = self.generations()
        prim = self.primary_node()
        if prim is None:
            raise BenchError("no writable primary before the quiet period")
        tps = None
        if not self.args.no_pgbench:
            self._pgbench_init(prim)
        w = self.writer(interval=0.0).start()
        try:
            w.wait_for_acks(5, timeout=20)
            if not self.args.no_pgbench:
                self._pgbench = subprocess.Popen(
                    ["pgbench", "-h", prim.socket_dir, "-p", str(prim.pg_port), "-U", "postgres", "-c", "2",
                     "-j", "1", "-T", str(int(dur)), "-n", "postgres"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            t0 = time.monotonic()
            acks0 = len(w.succeeded)
            seen: list[dict[str, Any]] = []
            while time.monotonic() - t0 < dur:
                seen.append(self.generations())
                time.sleep(0.5)
            acks = len(w.succeeded) - acks0
            elapsed = time.monotonic() - t0
            if self._pgbench is not None:
                out, _ = self._pgbench.communicate(timeout=60)
                m = re.search(r"tps = ([\d.]+)", out or "")
                tps = float(m.group(1)) if m else None
                self._pgbench = None
        finally:
            w.stop()
        after = self.generations()
        gens = {tuple(v) for g in [before, *seen, after] for v in g.values() if v is not None and v[0] is not None}
        changed = len(gens) > 1
        return {"seconds": round(elapsed, 1), "generation_before": before.get("zk"),
                "generation_after": after.get("zk"), "distinct_generation_primary": sorted(map(list, gens)),
                "spurious_failover": changed, "writer_tps": round(acks / elapsed, 1), "pgbench_tps": tps,
                "writer_outages": len([o for o in w.outages()]), "writer_longest_ack_gap_s": round(w.longest_ack_gap(), 3),
                "pass": not changed}

    def _pgbench_init(self, prim: NodeState) -> None:
        r = subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", prim.socket_dir, "-p", str(prim.pg_port),
                            "-U", "postgres", "postgres"], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise BenchError(f"pgbench -i on {prim.name} exited {r.returncode}: {r.stderr.strip()[-300:]}")

    # -- P1 / P2 -------------------------------------------------------------------
    def fault_run(self, kind: str, i: int) -> dict[str, Any]:
        """kind 'kill' (P1) or 'stop' (P2); one run, shard healthy again at the end."""
        w = self.writer(interval=self.args.write_interval).start()
        res: dict[str, Any] = {"run": i, "kind": kind}
        try:
            w.wait_for_acks(20, timeout=30)
            prim = self.primary_node()
            if prim is None:
                raise BenchError("no writable primary before the fault")
            old_dsn = dsn_of(prim)
            self.watch_election()
            prefix = f"{prim.ip}:{prim.pg_port}:{prim.backup_port}:{prim.status_port}"
            gen0 = self.generations().get("zk")
            t_wall, t0 = time.time(), time.monotonic()
            if kind == "kill":
                self.sb.kill(prim.name)
            elif kind == "switchover":  # the operator's planned takeover, by the real CLI
                st = self.sb.st
                cp = subprocess.run([sys.executable, "-m", "manatee.cli.adm", "switchover", st.shard,
                                     st.zk_connect, "--wait", "30"], capture_output=True, text=True, timeout=90)
                if cp.returncode != 0:
                    raise BenchError(f"manatee-adm switchover failed: {cp.stderr.strip() or cp.stdout.strip()}")
            else:
                self.sb.stop(prim.name)
            t_done = time.monotonic()
            deadline = t0 + self.args.failover_timeout
            first_new = None
            while time.monotonic() < deadline:
                first_new = next((a for a in w.attempts() if a.outcome != "failed" and a.finished >= t0
                                  and a.dsn != old_dsn), None)
                if first_new is not None:
                    break
                time.sleep(0.05)
            if first_new is None:
                raise BenchError(f"{kind} of {prim.name}: no commit on another node within "
                                 f"{self.args.failover_timeout:.0f}s: {w.stats()}")
            w.wait_for_acks(20, timeout=15)
            new = self.node_by_dsn(first_new.dsn)
            succ = sorted(a.finished for a in w.attempts() if a.outcome != "failed")
            before = [s for s in succ if s < first_new.finished]
            last_before = before[-1] if before else None
            res.update({
                "old_primary": prim.name, "new_primary": new.name if new else first_new.dsn,
                "fault_call_s": round(t_done - t0, 3),
                "to_first_write_s": round(first_new.finished - t0, 3),
                "write_gap_s": None if last_before is None else round(first_new.finished - last_before, 3),
                "first_write_warned": first_new.outcome == "warned",
                "generation_before": gen0,
            })
        finally:
            w.stop()
        # S2: every acknowledged id is on the new primary
        try:
            ids = fetch_ids(first_new.dsn, table="bench_writes")
            lost = missing_acked(w.acked, ids, res["new_primary"])
            res["lost_acked"] = len(lost) and lost
        except Exception as e:  # noqa: BLE001 - report, do not abort the benchmark
            res["lost_acked"] = f"check failed: {e}"
        res["warned_commits"] = len(w.warned)
        res["generation_after"] = self.generations().get("zk")
        t_end_wall = t_wall + (first_new.finished - t0) + 0.5
        gone = self.election_node_gone(prefix, t0)
        res["zk_election_node_gone_s"] = None if gone is None else round(gone - t0, 3)
        if new is not None:
            tl = read_timeline(new.log_path("sitter"), t_wall, t_end_wall)
            res["timeline"] = tl
            res["milestones"] = {"zk_node_gone": res["zk_election_node_gone_s"], **milestones(tl)}
        if kind in ("stop", "switchover"):
            res["old_timeline"] = read_timeline(prim.log_path("sitter"), t_wall, t_end_wall)
        # bring the node back and wait for primary + sync + async, writable
        t1 = time.monotonic()
        if kind != "switchover":  # after a switchover the old primary rejoins by itself
            self.sb.start(prim.name)
        self.wait_healthy()
        res["rejoin_healthy_s"] = round(time.monotonic() - t1, 1)
        return res


# ------------------------------------------------------------------------------ report


def print_run(r: dict[str, Any], target: float, verbose: bool) -> None:
    key = "to_first_write_s" if r["kind"] == "kill" else "write_gap_s"
    ok = r[key] is not None and r[key] <= target
    ms = r.get("milestones") or {}
    mtxt = ", ".join(f"{k} +{v:.2f}" for k, v in ms.items() if v is not None)
    say(f"    run {r['run']}: {r['kind']} {r['old_primary']} → {r['new_primary']}: first write after "
        f"{fmt(r['to_first_write_s'])}, write gap {fmt(r['write_gap_s'])} [{'ok' if ok else 'MISS'} ≤ {target:.1f}s]; "
        f"gen {r['generation_before']} → {r['generation_after']}; lost acked: {r['lost_acked'] or 0}; "
        f"rejoin+healthy {r['rejoin_healthy_s']}s")
    if mtxt:
        say(f"      on {r['new_primary']}: {mtxt}")
    if verbose:
        for e in r.get("timeline", []):
            say(f"        +{e['t']:6.3f}  {describe_event(e)}")
        if r.get("old_timeline"):
            say(f"      on {r['old_primary']} (stopping):")
            for e in r["old_timeline"]:
                say(f"        +{e['t']:6.3f}  {describe_event(e)}")


def summarize(results: list[dict[str, Any]]) -> None:
    say("\n" + "=" * 100)
    say(f"SUMMARY  ({platform.node()}, {os.cpu_count()} cores, load {loadavg()}, "
        f"{datetime.now().strftime('%Y-%m-%d %H:%M')})")
    say(f"{'item':<44} {'T':>7} {'n':>3} {'median':>8} {'min':>8} {'max':>8} {'target':>10} result")
    for res in results:
        T = res["session_timeout_ms"]
        for key, label in (("p1", "P1 kill -9 primary → first write"), ("p2", "P2 graceful stop: write gap"),
                           ("p2_first", "P2 graceful stop → first write"),
                           ("sw", "P2 switchover (manatee-adm): write gap"),
                           ("sw_first", "P2 switchover: request → first write")):
            s = res.get(key)
            if not s or not s.get("n"):
                continue
            tgt = s.get("target")
            verdict = "" if tgt is None else ("PASS" if s["median"] <= tgt else "FAIL")
            say(f"{label:<44} {T:>7} {s['n']:>3} {fmt(s['median']):>8} {fmt(s['min']):>8} {fmt(s['max']):>8} "
                f"{('≤ ' + fmt(tgt)) if tgt else '':>10} {verdict}")
        for tag in ("p1", "p2", "sw"):
            m = res.get(f"{tag}_milestones_median")
            if m and any(v is not None for v in m.values()):
                first = res.get({"p1": "p1", "p2": "p2_first", "sw": "sw_first"}[tag], {}).get("median")
                say(f"  {tag.upper()} where the time goes (median s after the fault, on the new primary): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in m.items() if v is not None)
                    + f", first write {fmt(first)}")
        q = res.get("quiet")
        if q:
            say(f"{'no spurious failover (3×T under load)':<44} {T:>7} {'':>3} "
                f"{'generation ' + str(q['generation_before']) + ' → ' + str(q['generation_after']):>37} "
                f"{'PASS' if q['pass'] else 'FAIL'} (writer {q['writer_tps']}/s, pgbench {q['pgbench_tps']} tps)")
        lost = [r for r in res.get("runs", []) if r.get("lost_acked")]
        if res.get("runs"):
            say(f"{'S2 acked writes lost (all runs)':<44} {T:>7} {len(res['runs']):>3} "
                f"{'none' if not lost else str(len(lost)) + ' run(s)':>8}")
    for res in results:
        if not res.get("p4"):
            continue
        say(f"\nP4 idle footprint at T={res['session_timeout_ms']} ms (target < {P4_CPU_TARGET_PCT:.0f}% of a core, "
            f"< {P4_RSS_TARGET_MB:.0f} MB RSS)")
        say(f"  {'node':<5} {'daemon':<13} {'pid':>7} {'cpu %':>7} {'rss MB':>7} result")
        for row in res["p4"]:
            cpu = "-" if row["cpu_pct"] is None else f"{row['cpu_pct']:.3f}"
            rss = "-" if row["rss_mb"] is None else f"{row['rss_mb']:.1f}"
            say(f"  {row['node']:<5} {row['daemon']:<13} {row['pid'] or '-':>7} {cpu:>7} {rss:>7} "
                f"{'PASS' if row['pass'] else 'FAIL'}")
    say(f"\nFor scale (ACCEPTANCE.md): Patroni 4.1.5 on ZooKeeper, synchronous mode, same hardware: "
        f"unplanned {PEERS['patroni_default_s']} s (defaults), {PEERS['patroni_ttl20_s']} s (ttl 20); "
        f"switchover write gap {PEERS['patroni_switchover_s']} s.")


# ------------------------------------------------------------------------------ main


def bench_one(args: argparse.Namespace, T: int, shard: Shard) -> dict[str, Any]:
    res: dict[str, Any] = {"session_timeout_ms": T, "dir": str(shard.dir)}
    res["up_s"] = round(shard.up(), 1)
    say(f"  shard healthy in {res['up_s']}s; load {loadavg()}")
    if "p4" in args.only:
        res["p4"] = shard.footprint()
        for row in res["p4"]:
            say(f"    {row['node']} {row['daemon']:<13} cpu {row['cpu_pct']}%  rss {row['rss_mb']} MB")
    if "quiet" in args.only:
        res["quiet"] = shard.quiet()
        q = res["quiet"]
        say(f"    generation {q['generation_before']} → {q['generation_after']} over {q['seconds']}s; "
            f"spurious failover: {'YES' if q['spurious_failover'] else 'no'}; writer {q['writer_tps']} commits/s, "
            f"pgbench {q['pgbench_tps']} tps, writer outages {q['writer_outages']}")
    runs: list[dict[str, Any]] = []
    target1 = T / 1000 + 2
    for kind, tag, target in (("kill", "p1", target1), ("stop", "p2", P2_TARGET_S),
                              ("switchover", "sw", SW_TARGET_S)):
        if tag not in args.only:
            continue
        say(f"  {tag.upper()}: {args.runs} run(s) of {({'kill': 'kill -9', 'stop': 'graceful stop'}).get(kind, kind)} "
            f"of the primary (target {'median ≤ T+2 = ' + fmt(target1) if kind == 'kill' else f'gap ≤ {target:g} s median'})")
        for i in range(1, args.runs + 1):
            r = shard.fault_run(kind, i)
            runs.append(r)
            print_run(r, target, args.verbose)
        mine = [r for r in runs if r["kind"] == kind]
        if kind == "kill":
            res["p1"] = {**stats_of([r["to_first_write_s"] for r in mine]), "target": target1}
            res["p1"]["pass"] = res["p1"]["median"] <= target1
            res["p1_write_gap"] = stats_of([r["write_gap_s"] for r in mine if r["write_gap_s"] is not None])
        else:
            res[tag] = {**stats_of([r["write_gap_s"] for r in mine if r["write_gap_s"] is not None]),
                        "target": target}
            res[tag]["pass"] = res[tag]["median"] is not None and res[tag]["median"] <= target
            res[f"{tag}_first"] = stats_of([r["to_first_write_s"] for r in mine])
        # where the time goes, by milestone (median over runs)
        ms_keys = ["zk_node_gone", "first_decision", "state_written", "promote_transition", "sync_caught_up", "read_write"]
        res[f"{tag}_milestones_median"] = {
            k: (round(statistics.median(v), 3) if (v := [r["milestones"][k] for r in mine
                                                          if r.get("milestones") and r["milestones"].get(k) is not None])
                else None) for k in ms_keys}
        res[f"{tag}_rejoin"] = stats_of([r["rejoin_healthy_s"] for r in mine])
    res["runs"] = runs
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--session-timeout-ms", type=int, nargs="+", default=[4000], metavar="MS",
                   help="ZooKeeper session timeout(s) T; one fresh shard per value (default 4000)")
    p.add_argument("--runs", type=int, default=5, help="runs of each fault per T (default 5)")
    p.add_argument("--only", default="p4,quiet,p1,p2,sw",
                   help="comma list of p4, quiet, p1, p2, sw (switchover) (default all)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="also write the results as JSON (to FILE, or to stdout after the summary)")
    p.add_argument("--client", choices=("status", "watch"), default="status",
                   help="how the writer finds the primary: poll each sitter's GET /primary (default), "
                        "or manatee.client.ShardWatcher's ZooKeeper watch")
    p.add_argument("--keep-logs", metavar="DIR", help="copy the daemons' logs here before removing the shard")
    p.add_argument("--base-dir", default="/tmp", help="where the sandbox directory is made (default /tmp)")
    p.add_argument("--octet", type=int, help="third address octet for the nodes (default random 150-249)")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="P4 sampling time (default 30)")
    p.add_argument("--settle", type=float, default=10.0, help="idle wait before P4 sampling (default 10)")
    p.add_argument("--write-interval", type=float, default=0.005,
                   help="writer pause after each commit during P1/P2 (default 0.005 s)")
    p.add_argument("--no-pgbench", action="store_true", help="quiet period with the writer only")
    p.add_argument("--failover-timeout", type=float, default=120.0, help="give up on a run after this (s)")
    p.add_argument("--healthy-timeout", type=float, default=240.0, help="wait for a healthy shard up to (s)")
    p.add_argument("-v", "--verbose", action="store_true", help="sandbox progress and full per-run timelines")
    a = p.parse_args(argv)
    a.only = {x.strip().lower() for x in a.only.split(",") if x.strip()}
    bad = a.only - {"p1", "p2", "p4", "quiet", "sw"}
    if bad:
        p.error(f"--only: unknown item(s) {', '.join(sorted(bad))}")
    if a.runs < 1:
        p.error("--runs must be at least 1")
    return a


def quiet_logs(verbose: bool) -> None:
    """The writer logs every outage; on the console only warnings, unless -v."""
    import logging

    import structlog

    from manatee.core.log import configure

    configure(0, json=False, stream=sys.stderr)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(
        logging.INFO if verbose else logging.WARNING))
    # the writer bound its module logger at import, under the default (unfiltered) config
    from manatee.core.log import get_logger
    from manatee_testbed import writer as writer_mod

    writer_mod.log = get_logger("manatee_testbed.writer")


def run_on_shard(work: Callable[[], Any], cleanup: Callable[[], Any], what: str) -> tuple[Any, int]:
    """work() → (its result, 0); Ctrl-C/SIGTERM → (None, 130), a benchmark, sandbox or writer
    error → (None, 1), each said. cleanup() (the shard's removal) runs after it in any case,
    with SIGINT and SIGTERM ignored so that no signal cuts it short; both are restored after."""
    res, status = None, 0
    try:
        res = work()
    except KeyboardInterrupt:
        say("\ninterrupted: removing the shard")
        status = 130
    except (BenchError, SandboxError, WriterError) as e:
        say(f"\n{what} failed: {e}")
        status = 1
    finally:
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    return res, status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs(args.verbose)
    if not require_root("bench/failover.py needs root (the sandbox uses ZFS, nftables, PostgreSQL as user postgres)",
                        out=say):
        return 2
    sigterm_interrupts()
    started = datetime.now(timezone.utc)
    results: list[dict[str, Any]] = []
    status = 0
    for T in args.session_timeout_ms:
        shard = Shard(args, T)
        res, st = run_on_shard(lambda: bench_one(args, T, shard), shard.down, f"benchmark at T={T} ms")
        if res is not None:
            results.append(res)
        status = status or st
        if st == 130:
            break
    if results:
        summarize(results)
    doc = {"started": started.isoformat(timespec="seconds"), "host": platform.node(), "cpus": os.cpu_count(),
           "loadavg_end": loadavg(), "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
           "peers": PEERS, "results": results, "status": status}
    if args.json == "-":
        print(json.dumps(doc, indent=2, default=str))
    elif args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        say(f"JSON written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
