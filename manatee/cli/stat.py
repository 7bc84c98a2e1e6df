"""manatee-stat: the topology of every shard (or one) as the guide's JSON.

    manatee-stat [-p] [-z ZK] [-s SHARD] [-c sitter.json] [-t SECONDS] [ZK]

ZooKeeper and the shard as every tool takes them (manatee/cli/common.py add_target_args):
-z/-s, the guide's positional ZK, -c sitter.json, $MANATEE_ZK / $MANATEE_SHARD.

Roles come from each shard's persisted `state` (the authoritative topology of this port),
not from the election order as in the original; the election order is used only for a
shard that has no state yet. Per shard: `primary`, `sync`, `async`, `async1`, ... each
`{ip, pgUrl, zoneId}`; `deposed` (this port's addition: former primaries waiting to
rejoin); `registrar` (the record applications resolve); `error` (safe mode).

With -p every node in the chain is asked, over its pgUrl, for `repl`: the row of its own
pg_stat_replication (the standby streaming from it, PostgreSQL's column names; `{}` when
none), and each async also for `lag.time_lag` (now() - pg_last_xact_replay_timestamp()).
A node that cannot be asked within the short connect timeout gets `repl: {}` and an
`error` saying why, and `auth: "failed"` when PostgreSQL refused the credentials (not the
same as down). The password comes from the pgUrl, PGPASSWORD or a pgpass file (PGPASSFILE;
`manatee-sandbox up` writes one).
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Mapping, Sequence

from manatee.cli.common import (
    ArgParser, CliError, ZkReader, add_common_args, add_target_args, decode,
    dump_json, pg_conn_params, pg_failure, resolve_target, run_cli,
)
from manatee.shard.layout import ROOT, ShardLayout
from manatee.shard.pgurl import PgUrl
from manatee.shard.state import ClusterState, Peer, StateError, parse_election, parse_error_node, parse_state
from manatee.shard.syncstore import SyncShardStore

TOOL = "manatee-stat"
PG_CONNECT_TIMEOUT = 2  # seconds; libpq's minimum
PG_STATEMENT_TIMEOUT_MS = 2000

__all__ = ["ShardData", "collect", "shard_status", "status_document", "probe_node", "probe_nodes",
           "chain_roles", "pg_value", "interval_json", "main"]


# --------------------------------------------------------------------------- pure part

@dataclass
class ShardData:
    """What ZooKeeper holds for one shard (raw, as read)."""

    name: str
    state_raw: bytes | None = None
    election: dict[str, Any] = field(default_factory=dict)  # election znode name → data
    registrar: Any = None
    error: Any = None


def _state(data: ShardData) -> tuple[ClusterState | None, str | None]:
    if not data.state_raw:
        return None, None
    try:
        return parse_state(data.state_raw), None
    except StateError as e:
        return None, str(e)


def _election_peers(data: ShardData) -> tuple[Peer, ...]:
    return parse_election(data.election)[0]  # malformed nodes left out, as the sitters do


def chain_roles(state: ClusterState | None, election: Sequence[Peer]) -> tuple[list[tuple[str, Peer]], list[Peer]]:
    """[(role key, peer)] in chain order — primary, sync, async, async1, ... — and the deposed.
    From the state when there is one, else the election order (the original's rule)."""
    if state is not None:
        chain: list[Peer] = list(state.chain())
        keys = ["primary"] + (["sync"] if state.sync is not None else [])
        deposed = list(state.deposed)
    else:
        chain = list(election)
        keys = ["primary", "sync"][: len(chain)]
        deposed = []
    for i in range(len(chain) - len(keys)):
        keys.append("async" if i == 0 else f"async{i}")
    return list(zip(keys, chain)), deposed


def _node(peer: Peer) -> dict[str, Any]:
    return {"ip": peer.ip, "pgUrl": peer.pg_url, "zoneId": peer.zone_id}


def shard_status(data: ShardData, pg: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """One shard's entry of manatee-stat's output. `pg` (with -p): pgUrl → probe result
    ({repl[, lag][, error]}) for the nodes of the chain."""
    state, state_error = _state(data)
    roles, deposed = chain_roles(state, _election_peers(data) if state is None else ())
    out: dict[str, Any] = {}
    for key, peer in roles:
        node = _node(peer)
        if pg is not None:
            probe = pg.get(peer.pg_url) or {"repl": {}, "error": "not asked"}
            node["repl"] = probe.get("repl", {})
            if key.startswith("async"):
                node["lag"] = probe.get("lag", {"time_lag": None})
            if probe.get("error"):
                node["error"] = probe["error"]
            if probe.get("auth"):
                node["auth"] = probe["auth"]
        out[key] = node
    if deposed:
        out["deposed"] = [_node(p) for p in deposed]
    if state_error:
        out["stateError"] = state_error
    if data.registrar is not None:
        out["registrar"] = data.registrar
    if data.error is not None:
        out["error"] = data.error
    return out


def status_document(shards: Mapping[str, ShardData],
                    pg: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    return {name: shard_status(shards[name], pg) for name in sorted(shards)}


def probe_targets(shards: Mapping[str, ShardData]) -> list[tuple[str, str | None, bool]]:
    """(pgUrl, its downstream's pgUrl, is an async) for every chain node of every shard."""
    out = []
    for data in shards.values():
        state, _ = _state(data)
        roles, _ = chain_roles(state, _election_peers(data) if state is None else ())
        for i, (key, peer) in enumerate(roles):
            down = roles[i + 1][1].pg_url if i + 1 < len(roles) else None
            out.append((peer.pg_url, down, key.startswith("async")))
    return out


def interval_json(td: timedelta | None) -> dict[str, int] | None:
    """A PostgreSQL interval as node-postgres printed it (the guide's `time_lag`): only the
    non-zero parts of {days, hours, minutes, seconds, milliseconds}; `{}` for zero."""
    if td is None:
        return None
    sign = -1 if td < timedelta(0) else 1
    ms = abs(td) // timedelta(milliseconds=1)
    parts = {"days": ms // 86_400_000, "hours": ms // 3_600_000 % 24, "minutes": ms // 60_000 % 60,
             "seconds": ms // 1000 % 60, "milliseconds": ms % 1000}
    return {k: sign * v for k, v in parts.items() if v}


def pg_value(v: Any) -> Any:
    """A value of a pg_stat_replication row → JSON (timestamps as the guide's ISO UTC)."""
    if isinstance(v, datetime):
        if v.tzinfo is not None:
            v = v.astimezone(timezone.utc)
        return v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z"
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, timedelta):
        return interval_json(v)
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (memoryview, bytes)):
        return bytes(v).decode("utf-8", "replace")
    return v


# --------------------------------------------------------------------------- I/O: ZooKeeper

def collect(zk: ZkReader, shard: str | None = None) -> dict[str, ShardData]:
    """Read every shard (or one) in a few pipelined rounds."""
    if shard is not None:
        SyncShardStore(zk, shard).require()
        names = [shard]
    else:
        names = zk.children(ROOT)
        if names is None:
            raise CliError(f"no shards: {ROOT} does not exist in ZooKeeper at {zk.hosts}")
    lays = {n: ShardLayout.of(n) for n in names}
    got = zk.get_many(p for lay in lays.values() for p in (lay.state, lay.error, lay.registrar))
    shards: dict[str, ShardData] = {}
    for n, lay in lays.items():
        st, err, reg = got[lay.state], got[lay.error], got[lay.registrar]
        shards[n] = ShardData(
            name=n,
            state_raw=st[0] if st else None,
            registrar=decode(reg[0]) if reg else None,
            error=parse_error_node(err[0])[0] if err else None,
        )
    # A shard without a state yet: fall back to its election order.
    need = [n for n, d in shards.items() if not d.state_raw]
    if need:
        kids = zk.children_many(lays[n].election for n in need)
        datas = zk.get_many(lays[n].election_node(c) for n in need for c in (kids[lays[n].election] or []))
        for n in need:
            shards[n].election = {c: decode(v[0]) for c in (kids[lays[n].election] or [])
                                  if (v := datas.get(lays[n].election_node(c))) is not None}
    return shards


# --------------------------------------------------------------------------- I/O: PostgreSQL

def probe_node(pg_url: str, downstream: str | None = None, want_lag: bool = False) -> dict[str, Any]:
    """Ask one node for its pg_stat_replication row (and its replay lag). Never raises."""
    import psycopg2

    try:
        conn = psycopg2.connect(**pg_conn_params(PgUrl.parse(pg_url), TOOL, PG_CONNECT_TIMEOUT,
                                                 PG_STATEMENT_TIMEOUT_MS))
    except (psycopg2.Error, ValueError) as e:
        f = pg_failure(e)
        what = "auth failed on" if f.get("auth") else "cannot connect to"
        return {"repl": {}, "error": f"{what} {pg_url}: {f['error']}", **({"auth": "failed"} if f.get("auth") else {})}
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("select * from pg_stat_replication order by pid")
            cols = [c.name for c in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
            lag = None
            if want_lag:
                cur.execute("select now() - pg_last_xact_replay_timestamp() as time_lag")
                lag = cur.fetchone()[0]
    except psycopg2.Error as e:
        return {"repl": {}, "error": f"query on {pg_url} failed: {pg_failure(e)['error']}"}
    finally:
        conn.close()
    row = next((r for r in rows if downstream and r.get("application_name") == downstream), None)
    row = row or next((r for r in rows if r.get("state") == "streaming"), None) or (rows[0] if rows else {})
    out = {"repl": {k: pg_value(v) for k, v in row.items()}}
    if want_lag:
        out["lag"] = {"time_lag": interval_json(lag)}
    return out


def probe_nodes(targets: Sequence[tuple[str, str | None, bool]], deadline: float) -> dict[str, dict[str, Any]]:
    """probe_node for all targets at once, each in a daemon thread; none outlives `deadline`."""
    results: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def work(url: str, down: str | None, lag: bool) -> None:
        try:
            r = probe_node(url, down, lag)
        except Exception as e:  # noqa: BLE001 - reported in the output, not raised
            r = {"repl": {}, "error": f"{url}: {type(e).__name__}: {e}"}
        with lock:
            results[url] = r

    threads = []
    for url, down, lag in {t[0]: t for t in targets}.values():
        t = threading.Thread(target=work, args=(url, down, lag), daemon=True, name=f"probe {url}")
        t.start()
        threads.append((url, t))
    for url, t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        out = dict(results)
    for url, _ in threads:
        out.setdefault(url, {"repl": {}, "error": f"{url}: no answer in time"})
    return out


# --------------------------------------------------------------------------- CLI

def build_parser() -> ArgParser:
    p = ArgParser(prog=TOOL, description="Show the topology of manatee shards as JSON.")
    p.add_argument("-p", "--postgres", action="store_true",
                   help="also ask each node's PostgreSQL for its replication row (repl) and lag")
    add_common_args(p)
    add_target_args(p, "ZK")
    p.add_argument("--json", action="store_true", help="JSON output (always: accepted for symmetry)")
    return p


def _run(args: argparse.Namespace, deadline: float) -> int:
    t = resolve_target(args, order=("zk",), need_shard=False)
    hosts, shard = t.zk, t.shard
    with ZkReader(hosts, deadline) as zk:
        shards = collect(zk, shard)
    pg = None
    if args.postgres:
        pg_deadline = min(deadline, time.monotonic() + PG_CONNECT_TIMEOUT + PG_STATEMENT_TIMEOUT_MS / 1000 * 2 + 1)
        pg = probe_nodes(probe_targets(shards), pg_deadline)
    print(dump_json(status_document(shards, pg)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(TOOL, build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
