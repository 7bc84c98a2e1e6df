"""manatee-clear: take a shard out of safe mode by removing its `error` znode.

    manatee-clear [-t SECONDS] [-z ZK] [-s SHARD] [-c sitter.json] | SHARD ZK

Prints what it removed as JSON: {"shard", "removed": path, "error": the node's data}.
Refuses (exit 1, one line) when the shard does not exist or is not in safe mode. The
delete is conditional on the version that was read, so an error node rewritten in the
meantime is not removed unseen. Follow the safe-mode runbook first: clearing only lets
the sitters act again, it does not decide which node's data is right.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from manatee.cli.common import (
    ArgParser, ZkReader, decode, dump_json, read_shard_target, run_cli, shard_zk_parser,
)
from manatee.shard.syncstore import SyncShardStore

TOOL = "manatee-clear"

__all__ = ["clear_error", "main"]


def clear_error(zk: ZkReader, shard: str) -> dict[str, Any]:
    path, raw = SyncShardStore(zk, shard).clear_error()
    return {"shard": shard, "removed": path, "error": decode(raw)}


def build_parser() -> ArgParser:
    return shard_zk_parser(TOOL, "Clear a shard's safe mode (remove its error node).")


def _run(args: argparse.Namespace, deadline: float) -> int:
    print(dump_json(read_shard_target(args, deadline, clear_error)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(TOOL, build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
