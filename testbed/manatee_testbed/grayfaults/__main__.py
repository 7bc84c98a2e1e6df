"""The gray faults' helper processes (started detached by `record.spawn_helper`, not by
people): `storm` holds every connection slot, `crashloop` kills or stops PostgreSQL again and
again, `delay` is the flaky network's latency proxy."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from manatee_testbed.grayfaults.flakynet import DelayProxy, heal_flaky, parse_routes
from manatee_testbed.grayfaults.pgfaults import hold_storm, run_crash_loop
from manatee_testbed.grayfaults.record import ready_file, update
from manatee_testbed.sandbox import Sandbox


def main(argv: list[str] | None = None) -> int:
    """The helpers' entry point (run by `record.spawn_helper`, not by people)."""
    ap = argparse.ArgumentParser(prog="python -m manatee_testbed.grayfaults")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("storm")
    s.add_argument("--dir", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--dsn", required=True)
    s.add_argument("--for", dest="for_s", type=float, required=True)
    s.add_argument("--max", type=int, default=1000)
    c = sub.add_parser("crashloop")
    c.add_argument("--data-dir", required=True)
    c.add_argument("--for", dest="for_s", type=float, required=True)
    c.add_argument("--every", type=float, default=1.0)
    c.add_argument("--signal", choices=["KILL", "STOP"], default="KILL")
    d = sub.add_parser("delay")
    d.add_argument("--dir", required=True)
    d.add_argument("--key", required=True)
    d.add_argument("--routes", required=True)
    d.add_argument("--delay-ms", type=int, required=True)
    d.add_argument("--for", dest="for_s", type=float, required=True)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if a.cmd == "storm":
        return hold_storm(a.dir, a.key, a.dsn, a.for_s, a.max)
    if a.cmd == "crashloop":
        return run_crash_loop(a.data_dir, a.for_s, a.every, a.signal)
    proxy = DelayProxy(parse_routes(a.routes), a.delay_ms / 1000)
    sb = Sandbox(a.dir)

    def expire() -> None:  # time is up: the network steady again, not redirected to a closed port
        heal_flaky(sb, a.key.split(":", 1)[1])
        update(sb, a.key, None)
    asyncio.run(proxy.serve(a.for_s, ready_file(a.dir, a.key), expire))
    return 0


if __name__ == "__main__":
    sys.exit(main())
