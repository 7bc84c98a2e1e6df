#!/usr/bin/env python3
"""A psycopg2 application that keeps writing across a manatee failover.

It finds the primary with manatee.client.ShardWatcher and writes one row at a time. When
the watcher reports a new primary, or a write fails (the old primary died, or the new one is
still read-only while its sync catches up), it drops its connection, waits a little, and
connects to whatever primary the shard names now. A row counts as written only once its
COMMIT returned: those ids go to --acked-file ("<id> <host:port>" per line), so that
anyone can check afterwards that every acknowledged row is on the primary.

    python examples/psycopg2_failover.py ZK_HOSTS SHARD [--table T] [--duration S]

The password comes the libpq way (PGPASSWORD, PGPASSFILE or ~/.pgpass). Stop with
SIGTERM/SIGINT or --duration; it prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from urllib.parse import urlsplit

import psycopg2

from manatee.client import ShardWatcher, libpq_url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("zk", help="ZooKeeper hosts, host:port[,host:port...]")
    ap.add_argument("shard", help="shard name under /manatee (or its full path)")
    ap.add_argument("--table", default="failover_demo")
    ap.add_argument("--duration", type=float, default=0, help="seconds to run (0: until SIGTERM/SIGINT)")
    ap.add_argument("--interval", type=float, default=0.02, help="pause between writes")
    ap.add_argument("--acked-file", help="append '<id> <host:port>' for every committed row")
    args = ap.parse_args(argv)

    stop = threading.Event()
    switched = threading.Event()  # the watcher saw a new primary: reconnect before the next write
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def on_change(url: str | None) -> None:
        print(f"primary is now {url}", file=sys.stderr, flush=True)
        switched.set()

    acked_out = open(args.acked_file, "a", buffering=1) if args.acked_file else None
    stats = {"acked": 0, "failed": 0, "reconnects": 0, "primaries": []}
    conn = None
    where = None
    next_id = 1
    deadline = time.monotonic() + args.duration if args.duration else None
    with ShardWatcher(args.zk, args.shard, on_change=on_change) as watcher:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if switched.is_set() and conn is not None:
                conn.close()
                conn = None
            try:
                if conn is None:
                    switched.clear()
                    url = watcher.wait_for_primary(timeout=30)
                    conn = psycopg2.connect(libpq_url(url), connect_timeout=3, application_name="failover-demo")
                    where = urlsplit(libpq_url(url)).netloc.rpartition("@")[2]
                    stats["reconnects"] += 1
                    if where not in stats["primaries"]:
                        stats["primaries"].append(where)
                    with conn, conn.cursor() as cur:
                        cur.execute(f"create table if not exists {args.table}"
                                    " (id bigint primary key, at timestamptz default now())")
                row = next_id
                next_id += 1  # an id whose COMMIT failed is never reused: its fate is unknown
                with conn, conn.cursor() as cur:  # `with conn` commits, or rolls back on error
                    cur.execute(f"insert into {args.table} (id) values (%s)", (row,))
                stats["acked"] += 1
                if acked_out:
                    acked_out.write(f"{row} {where}\n")
            except (psycopg2.Error, TimeoutError) as e:
                stats["failed"] += 1
                print(f"write failed on {where}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}",
                      file=sys.stderr, flush=True)
                if conn is not None:
                    conn.close()
                    conn = None
                stop.wait(0.5)  # the shard is failing over or the new primary is still read-only
                continue
            stop.wait(args.interval)
    if conn is not None:
        conn.close()
    if acked_out:
        acked_out.close()
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
