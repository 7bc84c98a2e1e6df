#!/usr/bin/env python3
"""How long a stall a ZooKeeper session of timeout T survives (issue 10, "T = 1 s as the aim").
A script, not a test: it prints figures.

A sitter's session lives in kazoo's connection thread (manatee.core.zk.ZKClient), which pings
every T/3 or so; ZooKeeper expires the session T after the last packet it got (checked every
tickTime). So a node loses its place, and the shard fails over, when no packet of its session
reaches the server for T. This script measures, against a real ZooKeeper with the test bed's
tick (200 ms), which stalls a session of T survives:

  client pause   the process holding the session is stopped (SIGSTOP: a GC pause, the host
                 descheduled, swapped) for d seconds, at a random moment between pings
  server pause   the ZooKeeper server is stopped for d seconds (its own GC, an fsync stall)
  server restart ZooKeeper stopped and started again (F10); it restores the sessions from
                 its data dir, each with a fresh timeout from its start
  loop blocked   the client's asyncio event loop runs pure-Python work for --block seconds of
                 every --block + 0.5 s for --load-seconds (the daemon busy with other work):
                 kazoo's thread must keep pinging

Each trial runs a fresh client process (manatee.core.zk.ZKClient) holding an ephemeral node;
an observer client with a long session says whether the node survived (the ground truth: a
node gone is a session that expired, i.e. a failover). The client also reports what its
session went through (SUSPENDED, LOST).

    .venv/bin/python bench/zk_pause.py --session-timeout-ms 1000 2000 [--pauses 0.3 0.5 0.7 0.9 1.2] [--repeat 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def say(*a: Any) -> None:
    print(*a, flush=True)


# ------------------------------------------------------------------ the client process


async def client_main(connect: str, timeout_s: float, path: str, block: float) -> None:
    from manatee.core.zk import ZKClient

    zk = ZKClient(connect, timeout_s, connect_timeout=10)
    zk.add_state_listener(lambda s: print(json.dumps({"state": str(s)}), flush=True))
    await zk.start()
    await zk.create(path, b"", ephemeral=True, makepath=True)
    print(json.dumps({"ready": True, "negotiated": zk.negotiated_session_timeout}), flush=True)
    while True:
        if block:  # the event loop busy: pure Python, the GIL released only at the switch interval
            end, x = time.monotonic() + block, 0
            while time.monotonic() < end:
                x += 1
        await asyncio.sleep(0.5)


class Client:
    """A client process holding one session and one ephemeral node."""

    def __init__(self, connect: str, timeout_s: float, path: str, block: float = 0.0):
        self.states: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--client", connect, str(timeout_s), path, str(block)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(20):
            self.close()
            raise RuntimeError("the client process did not connect within 20 s")

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("ready"):
                self.ready.set()
            elif "state" in msg:
                self.states.append(msg["state"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# ------------------------------------------------------------------ trials


def node_alive(observer: Any, path: str) -> bool:
    return observer.retry(observer.exists, path) is not None


def pause_trial(kind: str, zk: Any, observer: Any, T: float, d: float, n: int) -> dict[str, Any]:
    path = f"/pause/{kind}-{n}-{os.getpid()}"
    c = Client(zk.connect_string, T, path)
    try:
        time.sleep(T + random.uniform(0, T / 2))  # a random moment between two pings
        if kind == "client":
            os.kill(c.proc.pid, signal.SIGSTOP)
            time.sleep(d)
            os.kill(c.proc.pid, signal.SIGCONT)
        elif kind == "server":
            zk.pause()
            time.sleep(d)
            zk.resume()
        else:  # restart: sessions come back from the data dir, each with a fresh timeout
            t = time.monotonic()
            zk.restart()
            d = round(time.monotonic() - t, 2)
        time.sleep(max(2 * T, 1.5))  # an expiry shows by then; a reconnect is done
        return {"kind": kind, "T": T, "pause_s": d, "survived": node_alive(observer, path),
                "states": list(c.states)}
    finally:
        c.close()


def loop_trial(zk: Any, observer: Any, T: float, block: float, seconds: float) -> dict[str, Any]:
    path = f"/pause/loop-{os.getpid()}"
    c = Client(zk.connect_string, T, path, block=block)
    try:
        time.sleep(seconds)
        return {"kind": "loop", "T": T, "block_s": block, "seconds": seconds,
                "survived": node_alive(observer, path), "states": list(c.states)}
    finally:
        c.close()


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from kazoo.client import KazooClient

    from manatee_testbed.zookeeper import ZooKeeperServer

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="manatee-zkpause-") as d:
        zk = ZooKeeperServer(Path(d), host=HOST, tick_ms=args.tick_ms).start()
        observer = KazooClient(hosts=zk.connect_string, timeout=30)
        observer.start(timeout=15)
        try:
            for T_ms in args.session_timeout_ms:
                T = T_ms / 1000
                say(f"== T = {T:g} s (tickTime {args.tick_ms} ms), load {loadavg()}")
                for kind in ("client", "server"):
                    for d_s in args.pauses:
                        rs = [pause_trial(kind, zk, observer, T, d_s, i) for i in range(args.repeat)]
                        results += rs
                        ok = sum(r["survived"] for r in rs)
                        susp = sum("SUSPENDED" in r["states"] for r in rs)
                        say(f"  {kind} pause {d_s:4.2f} s: survived {ok}/{len(rs)}, suspended {susp}/{len(rs)}; "
                            f"load {loadavg()}")
                rs = [pause_trial("restart", zk, observer, T, 0.0, i) for i in range(args.restarts)]
                results += rs
                if rs:
                    say(f"  server restart (stop + start, {min(r['pause_s'] for r in rs):.1f}–"
                        f"{max(r['pause_s'] for r in rs):.1f} s): survived {sum(r['survived'] for r in rs)}/{len(rs)}; "
                        f"load {loadavg()}")
                if args.load_seconds:
                    r = loop_trial(zk, observer, T, args.block, args.load_seconds)
                    results.append(r)
                    say(f"  event loop blocked {args.block:g} s of every {args.block + 0.5:g} s for "
                        f"{args.load_seconds:g} s: survived {r['survived']}, session states {r['states'] or 'none'}; "
                        f"load {loadavg()}")
        finally:
            observer.stop()
            observer.close()
            zk.close(remove=True)
    return results


def summarize(results: list[dict[str, Any]]) -> None:
    say("\n" + "=" * 90)
    say(f"SUMMARY ({platform.node()}, {os.cpu_count()} cores, load {loadavg()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    say(f"{'T':>5} {'stall':<14} {'d (s)':>6} {'survived':>9} {'suspended':>10}")
    rows: dict[tuple, list[dict]] = {}
    for r in results:
        if r["kind"] != "loop":
            d = r["pause_s"] if r["kind"] != "restart" else 0.0  # a restart takes what it takes
            rows.setdefault((r["T"], r["kind"], d), []).append(r)
    for (T, kind, d), rs in rows.items():
        label = "server restart" if kind == "restart" else kind + " pause"
        say(f"{T:>5g} {label:<14} {d:>6.2f} {sum(x['survived'] for x in rs):>5}/{len(rs):<3} "
            f"{sum('SUSPENDED' in x['states'] for x in rs):>6}/{len(rs)}")
    for r in results:
        if r["kind"] == "loop":
            say(f"{r['T']:>5g} {'loop blocked':<14} {r['block_s']:>6.2f} {'yes' if r['survived'] else 'NO':>9} "
                f"{r['states'].count('SUSPENDED'):>10}  (for {r['seconds']:g} s)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--session-timeout-ms", type=int, nargs="+", default=[1000, 2000], metavar="MS")
    p.add_argument("--pauses", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9, 1.2], metavar="S",
                   help="stall lengths to try (s)")
    p.add_argument("--repeat", type=int, default=4, help="trials per stall length (default 4)")
    p.add_argument("--restarts", type=int, default=3, help="ZooKeeper restart trials per T (default 3)")
    p.add_argument("--block", type=float, default=1.5, help="event-loop block per period (s, default 1.5)")
    p.add_argument("--load-seconds", type=float, default=20.0, help="loop-blocked trial length (s; 0: skip)")
    p.add_argument("--tick-ms", type=int, default=200, help="ZooKeeper tickTime (default 200, the test bed's)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        connect, timeout_s, path, block = argv[1], float(argv[2]), argv[3], float(argv[4])
        asyncio.run(client_main(connect, timeout_s, path, block))
        return 0
    args = parse_args(argv)
    results = run(args)
    summarize(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"host": platform.node(), "cpus": os.cpu_count(),
                                               "args": vars(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
