"""manatee-history: every recorded flip of a shard, one JSON object per line.

    manatee-history [-t SECONDS] [-z ZK] [-s SHARD] [-c sitter.json] | SHARD ZK

Lines are the guide's records — {time, date, ip, action, role, master, slave, zkSeq} —
plus `generation` (the state generation of the flip, this port's addition), in the order
ZooKeeper created them (zkSeq), which is the order the sitters recorded them.
A history znode that cannot be parsed is skipped with a note on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping, Sequence

from manatee.cli.common import ArgParser, ZkReader, dump_json, read_shard_target, run_cli, shard_zk_parser
from manatee.shard.history import parse_record, sort_records
from manatee.shard.syncstore import SyncShardStore

TOOL = "manatee-history"

__all__ = ["records", "read_history", "main"]


def records(nodes: Mapping[str, bytes | None]) -> tuple[list[Mapping[str, Any]], list[str]]:
    """History znodes {name: data} → (records sorted by zkSeq, problems with the rest)."""
    good, bad = [], []
    for name, data in nodes.items():
        try:
            good.append(parse_record(name, data))
        except ValueError as e:
            bad.append(str(e))
    return sort_records(good), bad


def read_history(zk: ZkReader, shard: str) -> dict[str, bytes | None]:
    return SyncShardStore(zk, shard).history()


def build_parser() -> ArgParser:
    return shard_zk_parser(TOOL, "Print a shard's history of topology changes, one JSON object per line.")


def _run(args: argparse.Namespace, deadline: float) -> int:
    recs, bad = records(read_shard_target(args, deadline, read_history))
    for problem in bad:
        print(f"{TOOL}: skipped: {problem}", file=sys.stderr)
    for r in recs:
        print(dump_json(r, compact=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(TOOL, build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
