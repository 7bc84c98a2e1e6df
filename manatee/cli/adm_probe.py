"""manatee-adm's probes: what the shard's znodes, each sitter's /state and each PostgreSQL
say, asked in parallel under one deadline and gathered into an adm_view.ShardView.
Nothing here writes; a node that does not answer in time is shown as such, never waited for.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping, Sequence

from manatee.cli import adm_view as V
from manatee.cli.adm_acl import acl_problems
from manatee.cli.adm_gray import pg_via_sitter, repl_via_sitter
from manatee.cli.adm_hotstandby import read_settings
from manatee.cli.adm_xid import XID_AGE_SQL, parse_row
from manatee.cli.common import ZkReader, pg_conn_params, pg_failure
from manatee.core.httpjson import http_json
from manatee.core.pg.walpos import NODE_WAL_SQL
from manatee.shard.pgurl import PgUrl
from manatee.shard.syncstore import SyncShardStore

TOOL = "manatee-adm"
PG_STATEMENT_MS = 2000

__all__ = ["gather", "probe_pg"]


def _parallel(jobs: Mapping[str, Callable[[], Any]], deadline: float) -> dict[str, Any]:
    """Run each job in a daemon thread; a job that does not finish by `deadline` gives None."""
    out: dict[str, Any] = {}
    lock = threading.Lock()

    def run(key: str, fn: Callable[[], Any]) -> None:
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 - shown as data, never raised
            r = {"error": f"{type(e).__name__}: {e}"}
        with lock:
            out[key] = r

    threads = [threading.Thread(target=run, args=(k, f), daemon=True) for k, f in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return dict(out)


_NODE_SQL = ("select pg_is_in_recovery() as recovery,"
             " current_setting('default_transaction_read_only') = 'on' as ro,"
             # a standby: how far its WAL goes, received or (not streaming, e.g. in safe
             # mode or after a restart) replayed (manatee.core.pg.walpos)
             f" ({NODE_WAL_SQL})::text as wal,"
             # fsync off (an operator's parameters): its flushes, which the sync acknowledges
             # commits with, are not durable
             " current_setting('fsync') = 'off' as no_fsync")
_REPL_SQL = ("select application_name, client_addr::text as client_addr, state, sync_state,"
             " sent_lsn::text as sent_lsn, flush_lsn::text as flush_lsn, replay_lsn::text as replay_lsn,"
             # a cascading standby sends what it has replayed, which can pass what its
             # walreceiver last flushed: take the further of the two, and never a negative lag
             f" greatest(0, pg_wal_lsn_diff({NODE_WAL_SQL}, replay_lsn))::bigint as lag_bytes,"
             " extract(epoch from replay_lag)::float8 as lag_s"
             " from pg_stat_replication order by pid")

# ALTER ROLE / ALTER DATABASE settings that make commits return before the sync has them
# (S2 holds only for commits that waited): each row one scope and its setting
_WEAK_COMMIT_SQL = ("select coalesce((select rolname from pg_roles where oid = s.setrole), '') as role,"
                    " coalesce((select datname from pg_database where oid = s.setdatabase), '') as db, c as setting"
                    " from pg_db_role_setting s, unnest(s.setconfig) c"
                    " where c ~* '^synchronous_commit=(off|local|false|no|0)$' order by 1, 2")


# data checksum failures PostgreSQL counted (pg_stat_database, since its statistics were last
# reset): pages read back from this node's storage that are not what it wrote. Nothing else
# shows them: the query that read the page failed with "invalid page in block", and the
# status checks read no table.
_CHECKSUM_SQL = ("select coalesce(sum(checksum_failures), 0)::bigint as n, max(checksum_last_failure)::text as last,"
                 " string_agg(datname, ', ' order by datname) filter (where checksum_failures > 0) as dbs"
                 " from pg_stat_database")


def _checksum_failures(cur) -> dict[str, Any] | None:
    """{failures, last, databases}; None when the query fails (unknown: no line)."""
    import psycopg2

    try:
        cur.execute(_CHECKSUM_SQL)
        n, last, dbs = cur.fetchone()
    except psycopg2.Error:
        return None
    return {"failures": int(n or 0), "last": last, "databases": dbs}


def probe_pg(pg_url: str, timeout: float) -> dict[str, Any]:
    """{up, recovery, readOnly, wal, rows: [pg_stat_replication rows], weakCommit: [{role, db,
    setting}] and xidAge (adm_xid.parse_row; None: not known) (a primary's), checksums: {failures,
    last, databases} (None: not known), hotStandby: {setting: value} (adm_hotstandby)} or {up:
    False, error}."""
    import psycopg2

    try:
        conn = psycopg2.connect(**pg_conn_params(PgUrl.parse(pg_url), TOOL, max(2, int(timeout)),
                                                 PG_STATEMENT_MS))
    except (psycopg2.Error, ValueError) as e:
        return {"up": False, **pg_failure(e)}
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(_NODE_SQL)
            recovery, ro, wal, no_fsync = cur.fetchone()
            cur.execute(_REPL_SQL)
            cols = [c.name for c in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
            weak, xid = [], None
            checksums = _checksum_failures(cur)
            hot = read_settings(cur)
            if not recovery:
                cur.execute(_WEAK_COMMIT_SQL)
                weak = [{"role": r, "db": d, "setting": c} for r, d, c in cur.fetchall()]
                xid = _xid_age(cur)
    except psycopg2.Error as e:
        return {"up": False, **pg_failure(e)}
    finally:
        conn.close()
    return {"up": True, "recovery": bool(recovery), "readOnly": bool(ro), "wal": wal, "rows": rows,
            "weakCommit": weak, "xidAge": xid, "checksums": checksums, "noFsync": bool(no_fsync),
            "hotStandby": hot}


def _xid_age(cur) -> dict[str, Any] | None:
    """The primary's wraparound risk (adm_xid); None when the query fails (unknown: show omits
    the line, the rest of the probe stands)."""
    import psycopg2

    try:
        cur.execute(XID_AGE_SQL)
        cols = [c.name for c in cur.description]
        row = cur.fetchone()
    except psycopg2.Error:
        return None
    return parse_row(dict(zip(cols, row)) if row else None)


def _repl_row(rows: Sequence[Mapping[str, Any]], peer: Mapping[str, Any]) -> dict[str, Any] | None:
    match = [r for r in rows if r.get("application_name") == peer.get("pgUrl")]
    match = match or [r for r in rows if r.get("client_addr") == peer.get("ip")]
    if not match:
        return None
    r = dict(sorted(match, key=lambda r: r.get("state") != "streaming")[0])
    if r.get("lag_s") is None and r.get("lag_bytes") == 0:
        r["lag_s"] = 0.0  # PostgreSQL clears replay_lag once an idle standby has caught up
    return r


def gather(zk: ZkReader, shard: str, timeout: float, *, pg: bool = True, sitters: bool = True) -> V.ShardView:
    rec = SyncShardStore(zk, shard).read()
    state = rec.state.to_json() if rec.state is not None else None
    election = [p.to_json() for p in rec.election]
    ids = [p["id"] for p in election]
    nodes = _probe(V.chain_nodes(state, ids, election), timeout, pg=pg, sitters=sitters)
    remembered = remembered_state(nodes) if state is None and not rec.state_error else None
    if remembered is not None:  # the znode is lost: the places the sitters hold, probed again
        said = {n.id: n.sitter for n in nodes}
        nodes = _probe(V.chain_nodes(remembered, ids, election), timeout, pg=pg, sitters=False)
        for n in nodes:
            n.sitter = said.get(n.id)
        _link_replication(nodes)
    return V.ShardView(shard, state, rec.error, nodes, rec.state_error, remembered=remembered,
                       acl_problems=acl_problems(zk, shard))


def remembered_state(nodes: list[V.NodeView]) -> dict | None:
    """While the state znode is missing: the highest-generation state the sitters' /state
    show (what they hold), if those that show that generation agree; else None."""
    shown = [n.sitter["state"] for n in nodes if isinstance(n.sitter, dict) and isinstance(n.sitter.get("state"), dict)]
    gens = [s.get("generation") for s in shown if isinstance(s.get("generation"), int)]
    if not gens:
        return None
    top = [s for s in shown if s.get("generation") == max(gens)]
    return top[0] if all(s == top[0] for s in top) else None


def _probe(nodes: list[V.NodeView], timeout: float, *, pg: bool, sitters: bool) -> list[V.NodeView]:
    """Each node's sitter /state and PostgreSQL, in parallel within `timeout`."""
    deadline = time.monotonic() + timeout
    jobs: dict[str, Callable[[], Any]] = {}
    for n in nodes:
        if sitters and n.peer.get("statusUrl"):
            jobs[f"s:{n.id}"] = (lambda u=n.peer["statusUrl"]: http_json(f"{u}/state", timeout=min(timeout, 2)))
        if pg and n.role != "unknown" and n.peer.get("pgUrl"):  # a deposed one too: it may run on
            jobs[f"p:{n.id}"] = (lambda u=n.peer["pgUrl"]: probe_pg(u, timeout))
    res = _parallel(jobs, deadline)
    for n in nodes:
        s = res.get(f"s:{n.id}")
        n.sitter = s[1] if isinstance(s, tuple) and s[0] == 200 and isinstance(s[1], dict) else None
        if pg and n.role != "unknown":
            n.pg = res.get(f"p:{n.id}") or {"up": False, "error": "no answer in time"}
            n.pg.setdefault("up", False)
    _link_replication(nodes)
    return nodes


def _link_replication(nodes: list[V.NodeView]) -> None:
    """What each node's sitter sees of its PostgreSQL where the CLI could not connect, and
    each standby's row in its upstream's pg_stat_replication."""
    for n in nodes:
        if n.pg is not None:
            n.pg = pg_via_sitter(n.pg, n.sitter)
    by_id = {n.id: n for n in nodes}
    for n in nodes:
        up = by_id.get(n.upstream or "")
        if up is not None and up.pg and up.pg.get("up"):
            n.repl = (repl_via_sitter(n.sitter) if up.pg.get("via") == "sitter"
                      else _repl_row(up.pg.get("rows") or [], n.peer))
