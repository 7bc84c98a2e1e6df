"""`manatee-nemesis`: the fault soak — R rounds of random faults against a sandbox shard
under continuous writes, then the data checks; one summary line at the end.

    manatee-nemesis [--rounds 5] [--seed N] [--session-timeout 5000]
                    [--faults kill,stop,hang,partition,zk_restart,double_failover,
                              pg_hang,disk_full,storm,bad_znode,flaky_net,report_sync_loss,
                              switchover,rebuild_kill]
                    [--dir DIR] [--keep] [--json FILE]

Exit status: 0 PASS (lost=0, forks=0, history ok, no operator round, no other check
problem, every round's fault applied), 1 FAIL or INCOMPLETE (no check failed, but some
round's fault could not be applied: not_applied=), 2 bad usage. Needs root (it brings up a real shard, see manatee-sandbox).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from manatee_testbed.nemesis import Nemesis
from manatee_testbed.nemesis_plan import FAULT_KINDS, format_summary, parse_faults

PROG = "manatee-nemesis"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fault soak: brings up a sandbox shard (ZooKeeper, ZFS, 3 nodes), writes to it "
                    "continuously, drives ROUNDS randomly chosen faults (each healed, the shard waited "
                    "for), then checks that no acknowledged write is lost, no node forked and the "
                    "history has one primary per generation.",
        epilog="Example: manatee-nemesis --rounds 30 --seed 123 --json soak.json",
    )
    p.add_argument("--rounds", type=int, default=5, metavar="N", help="number of fault rounds (default 5)")
    p.add_argument("--seed", type=int, default=None, help="RNG seed (default: random; printed either way)")
    p.add_argument("--session-timeout", type=int, default=5000, metavar="MS",
                   help="ZooKeeper session timeout of the sitters in ms (default 5000)")
    p.add_argument("--faults", default=None, metavar="KINDS",
                   help=f"comma-separated fault kinds to draw from (default all: {','.join(FAULT_KINDS)})")
    p.add_argument("--dir", default=None, help="sandbox directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true",
                   help="on failure, leave the sandbox running for inspection (`manatee-sandbox down --dir DIR`)")
    p.add_argument("--heal-timeout", type=float, default=180.0, metavar="S",
                   help="how long a round may take to heal before it counts as an operator round (default 180)")
    p.add_argument("--write-interval", type=float, default=0.02, metavar="S",
                   help="pause between the writer's inserts (default 0.02)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the summary (and every round) as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the sandbox's progress lines and INFO logs")
    return p


def _quiet_logs(verbose: bool) -> None:
    """The soak's own lines are its output; library and writer logs only at WARNING."""
    import structlog

    from manatee.core.log import configure

    configure(1 if verbose else 0, json=False, stream=sys.stderr)
    if not verbose:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # reconnect noise while ZooKeeper is down
    # The writer bound its module logger at import, under the configuration of that moment.
    from manatee.core.log import get_logger
    from manatee_testbed import writer

    writer.log = get_logger("manatee_testbed.writer")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        kinds = parse_faults(args.faults)
    except ValueError as e:
        print(f"{PROG}: --faults: {e}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print(f"{PROG}: --rounds must be at least 1, not {args.rounds}", file=sys.stderr)
        return 2
    if args.session_timeout < 1000:  # the product's lowest recommended T (docs/benchmarks.md)
        print(f"{PROG}: --session-timeout must be at least 1000 ms, not {args.session_timeout}", file=sys.stderr)
        return 2
    _quiet_logs(args.verbose)

    def on_term(signum, frame):  # SIGTERM cleans up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    nem = Nemesis(rounds=args.rounds, seed=args.seed, session_timeout_ms=args.session_timeout, faults=kinds,
                  dir=args.dir, keep=args.keep, heal_timeout=args.heal_timeout,
                  write_interval=args.write_interval, out=lambda line: print(line, flush=True),
                  verbose=args.verbose)
    try:
        summary = nem.run()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; sandbox {'kept' if args.keep else 'removed'}: {nem.dir}", file=sys.stderr)
        return 1
    line = format_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_json(), indent=2, default=str) + "\n")
    print(line, flush=True)
    return 0 if summary.passed else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
