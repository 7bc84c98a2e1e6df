#!/usr/bin/env python3
"""Rejoin of a diverged old primary behind the former async: an increment from the primary
(the member that shares a snapshot with it) vs the full stream from its upstream.

Three datasets of a fresh file-backed zfs-fuse pool, each served by the real
`manatee-backupserver` console script where it sends:
  A — the (new) primary: PostgreSQL with a `pgbench -i -s SCALE` database;
  P — the old primary: built from A once (they share that snapshot, as an old primary
      shares its own snapshot with the sync that was built from it);
  U — its upstream, the former async: built from A separately (a full stream of a later
      snapshot: P and U share nothing).
Then, REPEAT times: pgbench on A for --work seconds (the writes since the failover), P
writes a file and takes a snapshot of its own (its forked WAL), and
  (i)  P is rebuilt as the sitter does it: manatee.core.restore.source asks U (no common
       snapshot) and then A (`POST /snapshots/common`), and restore() takes
       `zfs send -i <common> <fresh>` from A — the time includes the questions;
  (ii) for comparison, the rebuild before this change: a full stream from U into a new
       dataset.
Prints the bytes and seconds of each (medians) and the ratio. Everything it starts is
removed at exit.

    sudo .venv/bin/python bench/rebuild_rejoin.py [--scale 150] [--repeat 3] [--work 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from manatee.core.restore.source import Candidate, choose

from rebuild_incremental import IP_B, cli
from rebuild_incremental import Bench as IncrementalBench
from rebuild_incremental import report as incremental_report

IP_U = "127.0.0.73"


class Bench(IncrementalBench):
    async def setup(self) -> None:
        await super().setup()
        self.ds_u = self.pool.create_dataset("u", self.base / "u")
        self.u_server = None

    async def first_build(self) -> None:
        print("build of the old primary P from A, then of its upstream U from A (both full) ...", flush=True)
        await self._restore(self.ds_b, self.base / "b")
        await asyncio.sleep(1.1)  # U's fresh snapshot is a later one than P's
        await self._restore(self.ds_u, self.base / "u")
        # the rebuild before: a full stream from the upstream
        self.u_server, self.u_log, self.full_url = await self.serve(self.ds_u, IP_U, "backupserver-u",
                                                                   {"insecure": True})

    async def rebuild_b(self):
        """P's rejoin as the sitter runs it: ask U, then A, which snapshot they share; restore."""
        t = time.monotonic()
        chosen = await choose(self.zfs, self.ds_b, Candidate("U", self.full_url), [Candidate("A", self.url)],
                              secret=None, listen_host=IP_B)
        asked = time.monotonic() - t
        secs, res = await self._restore(self.ds_b, self.base / "b", url=chosen.source.backup_url,
                                        source_reason=chosen.reason)
        assert res.incremental_from and res.source == self.url, (res.path, res.source, res.reason)
        return asked + secs, res  # the questions and the restore (the old copy's destroy follows it)

    async def cleanup(self) -> None:
        if getattr(self, "u_server", None) is not None:
            self.u_server.terminate()
            self.u_server.wait(10)
            self.u_log.close()
        await super().cleanup()


def report(m: dict, bench: Bench, args: argparse.Namespace) -> str:
    return incremental_report(m, bench, args).replace(
        "incremental (`zfs send -i` from the newest common snapshot)",
        "diverged rejoin: increment from the primary (upstream shares nothing)").replace(
        "| full |", "| full from the upstream |")


def main(argv: list[str] | None = None) -> int:
    return cli(argv, __doc__, Bench, report, work=10)


if __name__ == "__main__":
    raise SystemExit(main())
