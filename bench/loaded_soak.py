#!/usr/bin/env python3
"""Loaded soak: does a shard at session timeout T stay put on a saturated machine?
(issue 10, "T = 1 s as the aim"). A script, not a test: it prints figures.

It brings up its own `manatee-sandbox` shard at T (as bench/failover.py does), loads it
and injects no fault at all, for --minutes:

  - pgbench (TPC-B-like, --clients ≥ 16) against the primary, as fast as it goes;
  - pgbench -S (select only, --read-clients) against the async;
  - a RecordingWriter committing one row per transaction (synchronous_commit=on),
    following whichever node answers 200 on GET /primary.

It counts what must not happen with no fault injected: every change of the shard state's
generation or primary (seen by its own ZooKeeper watch on the state node), every new
history record, and every acknowledged write missing on the primary at the end (S2).
Alongside, the near misses that explain one: election nodes gone (a session expired),
the sitters' ZooKeeper session changes (suspended/lost), kazoo's dropped connections,
hung-PostgreSQL kills, heartbeat losses, and ZooKeeper's own "Expiring session" lines;
the load average is sampled throughout.

    sudo scripts/with-shard-slot.sh .venv/bin/python bench/loaded_soak.py \\
        --session-timeout-ms 1000 --minutes 10 [--clients 16] [--read-clients 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from failover import LOG_LINE, BenchError, Shard, dsn_of, loadavg, quiet_logs, run_on_shard, say
from manatee_testbed.checks import fetch_ids, missing_acked
from manatee_testbed.sandbox_config import timing
from manatee_testbed.sandbox_state import NodeState
from manatee_testbed.shardview import read_history
from manatee_testbed.zfspool import ZPOOL

#: sitter log events that show how close the shard came to a failover
NEAR_MISS_EVENTS = ("zk_session", "state_written", "pg_hung", "pg_unhealthy", "heartbeats_withheld",
                    "cycle_failed", "zk_read_failed", "safe_mode_entered", "transition")
#: kazoo's own warnings (stdlib logging, in the same log): a ping not answered in time
KAZOO_DROP = re.compile(r"Connection dropped|Connection time-out|outstanding heartbeat")
ZK_EXPIRING = re.compile(r"Expiring session (0x[0-9a-f]+), timeout of (\d+)ms exceeded")


def _peer_ip(p: Any) -> str | None:
    pid = p.get("id") if isinstance(p, dict) else p
    return pid.split(":", 1)[0] if isinstance(pid, str) else None


class StateWatch:
    """Our own ZooKeeper client: every version of the state node and every election change,
    with the monotonic time it was seen (independent of the sitters and their sessions)."""

    def __init__(self, connect: str, shard_path: str, session_timeout_s: float = 30.0):
        from kazoo.client import KazooClient

        self.states: list[tuple[float, int | None, str | None]] = []  # (t, generation, primary ip)
        self.election: list[tuple[float, frozenset[str]]] = []
        self._lock = threading.Lock()
        self.zk = KazooClient(hosts=connect, timeout=session_timeout_s)
        self.zk.start(timeout=15)
        self.zk.DataWatch(f"{shard_path}/state", self._on_state)
        self.zk.ChildrenWatch(f"{shard_path}/election", self._on_election)

    def _on_state(self, data: bytes | None, _stat: Any) -> None:
        try:
            st = json.loads(data) if data else {}
        except ValueError:
            st = {}
        with self._lock:
            self.states.append((time.monotonic(), st.get("generation"), _peer_ip(st.get("primary"))))

    def _on_election(self, children: list[str]) -> None:
        with self._lock:
            self.election.append((time.monotonic(), frozenset(children)))

    def changes_since(self, t0: float) -> tuple[list[tuple[float, int | None, str | None]], list[str]]:
        """State versions whose generation or primary differ from the one current at t0, and
        the election nodes that left after t0 (each a session that ended)."""
        with self._lock:
            states, elections = list(self.states), list(self.election)
        base = next((s for s in reversed(states) if s[0] <= t0), states[0] if states else None)
        changed, last = [], base
        for s in states:
            if s[0] > t0 and last is not None and (s[1], s[2]) != (last[1], last[2]):
                changed.append(s)
                last = s
        before = next((c for t, c in reversed(elections) if t <= t0), frozenset())
        left: list[str] = []
        for t, kids in elections:
            if t > t0:
                left += sorted(before - kids)
                before = kids
        return changed, left

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.zk.stop()
            self.zk.close()


def log_offsets(paths: list[Path]) -> dict[Path, int]:
    return {p: (p.stat().st_size if p.exists() else 0) for p in paths}


def new_lines(path: Path, offset: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def sitter_events(lines: list[str]) -> dict[str, Any]:
    """What a sitter logged during the soak: counts of the near-miss events, its ZooKeeper
    session states, kazoo's dropped connections, and the rules of its state writes."""
    counts: collections.Counter[str] = collections.Counter()
    sessions: collections.Counter[str] = collections.Counter()
    writes: list[str] = []
    for line in lines:
        if KAZOO_DROP.search(line):
            counts["kazoo_connection_dropped"] += 1
        m = LOG_LINE.match(line)
        if not m or m.group(3) not in NEAR_MISS_EVENTS:
            continue
        ev, rest = m.group(3), m.group(4)
        counts[ev] += 1
        if ev == "zk_session":
            sm = re.search(r"state=(\w+)", rest)
            sessions[sm.group(1) if sm else "?"] += 1
        elif ev == "state_written":
            writes.append(f"{m.group(1)} {rest[:300]}")
    return {"events": dict(counts), "zk_session": dict(sessions), "state_writes": writes}


def pgbench(node: NodeState, args: list[str], seconds: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["pgbench", "-h", node.socket_dir, "-p", str(node.pg_port), "-U", "postgres", "-n",
         "-T", str(seconds), "-P", "60", *args, "postgres"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def pgbench_result(p: subprocess.Popen | None, timeout: float) -> dict[str, Any]:
    if p is None:
        return {}
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    tps = re.search(r"tps = ([\d.]+)", out or "")
    xacts = re.search(r"number of transactions actually processed: (\d+)", out or "")
    failed = re.search(r"number of failed transactions: (\d+)", out or "")
    return {"exit": p.returncode, "tps": float(tps.group(1)) if tps else None,
            "transactions": int(xacts.group(1)) if xacts else None,
            "failed": int(failed.group(1)) if failed else None,
            "tail": "" if p.returncode == 0 else (out or "")[-400:]}


def grow_pool(shard: Shard, gb: int) -> None:
    """Add a sparse file of `gb` GB to the sandbox's pool. Its 4 GB hold three copies of the
    database plus the snapshotter's snapshots (each pins the blocks pgbench rewrites since):
    a 5-minute run at ~300 tps filled it (ENOSPC after ~4 min) and the full disk, not T,
    made the shard change generations. The file goes with the sandbox's directory."""
    if gb <= 0:
        return
    f = shard.sb.dir / "zpool" / "extra.img"
    subprocess.run(["truncate", "-s", f"{gb}G", str(f)], check=True, timeout=30)
    r = subprocess.run([ZPOOL, "add", "-f", shard.sb.st.pool, str(f)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise BenchError(f"zpool add {shard.sb.st.pool} {f}: {r.stderr.strip()[-300:]}")


def role_nodes(shard: Shard) -> tuple[NodeState, NodeState | None]:
    """(primary, first async) by the state in ZooKeeper."""
    st = shard.sb.zk_state()
    if not isinstance(st, dict):
        raise BenchError("no shard state in ZooKeeper")
    by_ip = {n.ip: n for n in shard.sb.st.nodes}
    prim = by_ip.get(_peer_ip(st.get("primary")))
    asyncs = [by_ip.get(_peer_ip(a)) for a in st.get("async") or []]
    if prim is None:
        raise BenchError(f"the state names no node of this sandbox as primary: {st.get('primary')}")
    return prim, next((a for a in asyncs if a is not None), None)


def monitor(w: Any, watch: StateWatch, t0: float, secs: int, every: float) -> list[tuple[float, float]]:
    """Until t0 + secs: the 1-minute load average every 5 s, (elapsed s, load); a progress
    line every `every` s."""
    loads: list[tuple[float, float]] = []
    next_report = t0
    while time.monotonic() - t0 < secs:
        now = time.monotonic()
        loads.append((round(now - t0, 1), os.getloadavg()[0]))
        if now >= next_report:
            changed, left = watch.changes_since(t0)
            say(f"    +{now - t0:5.0f}s load {loadavg()}; writer acks {len(w.acked)}, outages "
                f"{len(w.outages())}; state changes {len(changed)}, election nodes gone {len(left)}")
            next_report += every
        time.sleep(min(5.0, max(0.1, secs - (now - t0))))
    return loads


def soak(shard: Shard, args: argparse.Namespace) -> dict[str, Any]:
    T = shard.T
    res: dict[str, Any] = {"session_timeout_ms": T, "minutes": args.minutes, "clients": args.clients,
                           "read_clients": args.read_clients, "scale": args.scale}
    res["up_s"] = round(shard.up(), 1)
    timers = timing(T, shard.sb.st.health_timeout_ms, shard.sb.st.expiration_ms)  # as the sandbox wrote them
    res["health_timeout_ms"], res["expiration_ms"] = timers["healthChkTimeout"], timers["expirationTime"]
    grow_pool(shard, args.pool_extra_gb)
    prim, asyn = role_nodes(shard)
    say(f"  shard healthy in {res['up_s']}s; primary {prim.name}, async {asyn.name if asyn else '-'}; "
        f"load {loadavg()}")
    r = subprocess.run(["pgbench", "-i", "-q", "-s", str(args.scale), "-h", prim.socket_dir, "-p",
                        str(prim.pg_port), "-U", "postgres", "postgres"], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise BenchError(f"pgbench -i on {prim.name} exited {r.returncode}: {r.stderr.strip()[-300:]}")
    shard.wait_healthy()  # the initial load replicated; the async serves the tables
    secs = int(args.minutes * 60)
    sb = shard.sb
    watch = StateWatch(sb.st.zk_connect, sb.st.shard_path)
    zk_log = sb.dir / "zookeeper" / "zookeeper.log"
    sitter_logs = {n.name: n.log_path("sitter") for n in sb.st.nodes}
    offsets = log_offsets([zk_log, *sitter_logs.values()])
    hist0 = read_history(sb.st.zk_connect, sb.st.shard_path)
    w = shard.writer(interval=args.write_interval).start()
    writes = reads = None
    loads: list[tuple[float, float]] = []
    try:
        w.wait_for_acks(5, timeout=30)
        t0 = time.monotonic()
        say(f"  soak: {secs}s of pgbench -c {args.clients} on {prim.name}"
            + (f", pgbench -S -c {args.read_clients} on {asyn.name}" if asyn and args.read_clients else "")
            + f", committing writer; load {loadavg()}")
        writes = pgbench(prim, ["-c", str(args.clients), "-j", "2"], secs)
        if asyn is not None and args.read_clients:
            reads = pgbench(asyn, ["-S", "-c", str(args.read_clients), "-j", "1"], secs)
        loads = monitor(w, watch, t0, secs, args.report_every)
        res["pgbench_rw"] = pgbench_result(writes, timeout=120)
        res["pgbench_ro"] = pgbench_result(reads, timeout=120)
        writes = reads = None
        elapsed = time.monotonic() - t0
        w.wait_for_acks(5, timeout=30)
    finally:
        w.stop()
        for p in (writes, reads):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    changed, left = watch.changes_since(t0)
    watch.close()
    # S2: every acknowledged write is on the primary at the end
    prim_now = shard.primary_node()
    try:
        if prim_now is None:
            raise BenchError("no writable primary at the end")
        lost = missing_acked(w.acked, fetch_ids(dsn_of(prim_now), table="bench_writes"), prim_now.name)
        res["lost_acked"] = len(lost) and lost
    except Exception as e:  # noqa: BLE001 - report it, the shard is removed next
        res["lost_acked"] = f"check failed: {e}"
    hist = read_history(sb.st.zk_connect, sb.st.shard_path)
    seen = {h["zkSeq"] for h in hist0}
    res["history_new"] = [h for h in hist if h["zkSeq"] not in seen]
    res["state_changes"] = [{"t": round(t - t0, 2), "generation": g, "primary": p} for t, g, p in changed]
    res["election_nodes_gone"] = left
    res["spurious_failovers"] = len(res["state_changes"])
    res["sitters"] = {name: sitter_events(new_lines(p, offsets[p])) for name, p in sitter_logs.items()}
    res["zk_expired_sessions"] = [m.group(0) for line in new_lines(zk_log, offsets[zk_log])
                                  if (m := ZK_EXPIRING.search(line))]
    ack_gap = w.longest_ack_gap()
    res["writer"] = {"acked": len(w.acked), "commits_per_s": round(len(w.acked) / elapsed, 1),
                     "outages": len(w.outages()), "longest_outage_s": round(w.longest_outage(), 3),
                     "longest_ack_gap_s": round(ack_gap, 3),
                     # when each outage began (s after the start; monotonic as the sitter logs are not)
                     "outages_at": [{"t": round(o.start - t0, 2), "s": round(o.duration(), 2),
                                     "failures": o.failures} for o in w.outages()]}
    lv = [x for _, x in loads] or [0.0]
    res["load"] = {"min": round(min(lv), 2), "median": round(sorted(lv)[len(lv) // 2], 2),
                   "max": round(max(lv), 2), "end": loadavg()}
    res["seconds"] = round(elapsed, 1)
    return res


def report(res: dict[str, Any]) -> None:
    say("\n" + "=" * 100)
    say(f"LOADED SOAK  T={res['session_timeout_ms']} ms, healthChkTimeout {res['health_timeout_ms']} ms, "
        f"expirationTime {res['expiration_ms']} ms, "
        f"{res['seconds']}s, {platform.node()}, "
        f"{os.cpu_count()} cores, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    ld = res["load"]
    say(f"  load average (1 min) during the soak: min {ld['min']}, median {ld['median']}, max {ld['max']}")
    rw, ro = res.get("pgbench_rw") or {}, res.get("pgbench_ro") or {}
    say(f"  pgbench -c {res['clients']} on the primary: {rw.get('tps')} tps ({rw.get('transactions')} xacts, "
        f"exit {rw.get('exit')}); pgbench -S -c {res['read_clients']} on the async: {ro.get('tps')} tps")
    if rw.get("tail"):
        say(f"    pgbench: {rw['tail']}")
    wr = res["writer"]
    say(f"  writer: {wr['acked']} acked ({wr['commits_per_s']}/s), {wr['outages']} outage(s), longest "
        f"{wr['longest_outage_s']}s; longest gap between acks {wr['longest_ack_gap_s']}s")
    for o in wr["outages_at"]:
        say(f"    outage at +{o['t']}s for {o['s']}s ({o['failures']} failed attempt(s))")
    say(f"  SPURIOUS FAILOVERS (state generation/primary changes, no fault injected): {res['spurious_failovers']}")
    for c in res["state_changes"]:
        say(f"    +{c['t']}s generation {c['generation']} primary {c['primary']}")
    say(f"  new history records: {len(res['history_new'])}")
    for h in res["history_new"]:
        say(f"    {h.get('date')} {h.get('action')} {h.get('role')} {h.get('ip')} master={h.get('master')} "
            f"slave={h.get('slave')}")
    say(f"  election nodes gone (sessions ended): {len(res['election_nodes_gone'])} {res['election_nodes_gone']}")
    say(f"  ZooKeeper 'Expiring session' lines: {len(res['zk_expired_sessions'])}")
    for name, s in res["sitters"].items():
        say(f"  sitter {name}: zk sessions {s['zk_session'] or '{}'}; kazoo dropped "
            f"{s['events'].get('kazoo_connection_dropped', 0)}; pg_hung {s['events'].get('pg_hung', 0)}, "
            f"pg_unhealthy {s['events'].get('pg_unhealthy', 0)}, heartbeats_withheld "
            f"{s['events'].get('heartbeats_withheld', 0)}, cycle_failed {s['events'].get('cycle_failed', 0)}, "
            f"state_written {s['events'].get('state_written', 0)}")
        for wline in s["state_writes"]:
            say(f"      {wline}")
    say(f"  S2 acknowledged writes lost: {res['lost_acked'] or 0}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--session-timeout-ms", type=int, default=1000, metavar="MS",
                   help="ZooKeeper session timeout T (default 1000)")
    p.add_argument("--health-timeout-ms", type=int, metavar="MS",
                   help="healthChkTimeout (default: the sandbox's, from T: 2000 at T = 1 s)")
    p.add_argument("--expiration-ms", type=int, metavar="MS",
                   help="heartbeat expirationTime (default: the sandbox's, from T: 2000 at T = 1 s)")
    p.add_argument("--minutes", type=float, default=10.0, help="how long to load the shard (default 10)")
    p.add_argument("--clients", type=int, default=16, help="pgbench clients on the primary (default 16)")
    p.add_argument("--read-clients", type=int, default=4, help="pgbench -S clients on the async (default 4)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    p.add_argument("--pool-extra-gb", type=int, default=24,
                   help="grow the sandbox's 4 GB pool by a sparse file of this many GB (default 24; 0: no)")
    p.add_argument("--write-interval", type=float, default=0.005,
                   help="the committing writer's pause after each commit (default 0.005 s)")
    p.add_argument("--report-every", type=float, default=60.0, help="progress line every (s, default 60)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--keep-logs", metavar="DIR", help="copy the daemons' logs here before removing the shard")
    p.add_argument("--base-dir", default="/tmp", help="where the sandbox directory is made (default /tmp)")
    p.add_argument("--octet", type=int, help="third address octet for the nodes (default random 150-249)")
    p.add_argument("--healthy-timeout", type=float, default=240.0, help="wait for a healthy shard up to (s)")
    p.add_argument("-v", "--verbose", action="store_true", help="sandbox progress")
    a = p.parse_args(argv)
    if a.clients < 1 or a.read_clients < 0 or a.minutes <= 0:
        p.error("--clients must be ≥ 1, --read-clients ≥ 0 and --minutes > 0")
    a.client = "status"  # failover.Shard's writer finds the primary by GET /primary
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        say("bench/loaded_soak.py needs root (it brings up a manatee-sandbox shard)")
        return 2
    quiet_logs(args.verbose)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    shard = Shard(args, args.session_timeout_ms)

    def remove() -> None:
        shard.down()
        for _ in range(6):  # zfs-fuse may still be writing out the run's data: "pool is busy"
            if not shard.sb.exists():
                break
            time.sleep(10)
            shard.down()

    res, status = run_on_shard(lambda: soak(shard, args), remove, f"loaded soak at T={args.session_timeout_ms} ms")
    if res is not None:
        report(res)
        if res["spurious_failovers"] or res["history_new"] or res["lost_acked"]:
            status = status or 1
        if args.json:
            Path(args.json).write_text(json.dumps({"host": platform.node(), "cpus": os.cpu_count(),
                                                   "args": vars(args), **res}, indent=2, default=str) + "\n")
            say(f"JSON written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
