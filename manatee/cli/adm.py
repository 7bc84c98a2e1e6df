"""manatee-adm: the operator's tool beyond the guide's three (what patronictl gives Patroni users).

    manatee-adm show       [--json]              the shard as a table, its generation and problems
    manatee-adm verify     [--json]              "ok" and exit 0 when healthy; else the problems, exit 1
                                                 when only warnings (a freeze...), exit 2 when critical
    manatee-adm pg-status  [--json] [PERIOD]     each node's WAL and lag (bytes, seconds), every PERIOD s
    manatee-adm history    [--json]              the history as a table
    manatee-adm freeze     -r REASON             no automatic transitions (no failover) until unfreeze
    manatee-adm unfreeze
    manatee-adm switchover [--node NODE] [--wait S] [--cancel]
                                                 planned takeover by the sync (write gap well under 1 s)
    manatee-adm rebuild    --node NODE [--force] [--wait S]
    manatee-adm reload     [--wait S]        every sitter re-reads its config (PostgreSQL parameters)
                                                 restore a node from its upstream, with progress
    manatee-adm set-primary --node NODE [--force]
                                                 safe-mode runbook step 3 (all sitters stopped)

The shard and ZooKeeper, as for every tool: -z/--zk ZK -s/--shard SHARD, -c sitter.json, or
$MANATEE_ZK / $MANATEE_SHARD; the original's positional `COMMAND SHARD ZK` still works. A node
is always `--node` (its ip, id or zoneId; `--to` and set-primary's positional NODE remain as
hidden aliases). Every subcommand also takes -t/--timeout (ZooKeeper and PostgreSQL answers),
-v and --version. Failures
are one line on stderr and a non-zero exit (1: could not do it, 2: usage), never a
traceback; see manatee/cli/common.py. PostgreSQL is asked over each node's pgUrl; a password
comes from the URL, PGPASSWORD or PGPASSFILE (a refused password shows as "auth failed", not
"down").

State changes (freeze, unfreeze, a switchover request) are compare-and-set writes on the
state znode's version, retried when a sitter wrote in between. The switchover itself is
carried out by the sitters (docs/adm.md, manatee/shard/decide.py `_primary_switchover`):
this tool only asks, then watches until the new primary takes writes.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Sequence

from manatee import __version__ as VERSION
from manatee.cli import adm_pgconf, adm_restart
from manatee.cli import adm_view as V
from manatee.cli.common import (
    EXIT_FAIL, EXIT_OK, ArgParser, CliError, UsageError, ZkReader, _quiet_libraries,
    _start_watchdog, add_common_args, add_target_args, check_timeout, decode, dump_json, pg_failure,
    resolve_target, shard_path,
)
from manatee.cli.history import read_history, records
from manatee.core.tls import client_context_from_env
from manatee.cli.stat import _conn_params
from manatee.shard.state import ClusterState, StateError, election_order

TOOL = "manatee-adm"
HTTP_TIMEOUT = 1.5
PG_STATEMENT_MS = 2000

__all__ = ["gather", "set_freeze", "request_switchover", "withdraw_switchover", "find_peer", "main",
           "build_parser"]


# --------------------------------------------------------------------------- small I/O helpers

def http_json(url: str, body: Any = None, timeout: float = HTTP_TIMEOUT,
              headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    """(status, JSON body) of a GET (or a POST when body is given); (0, error text) on no answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={**({"Content-Type": "application/json"} if data else {}),
                                          **(headers or {})})
    try:
        ctx = client_context_from_env() if url.startswith("https:") else None
    except ValueError as e:  # an unusable $MANATEE_TLS_* file: named, not a traceback
        return 0, str(e)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (OSError, ValueError) as e:
        return 0, str(getattr(e, "reason", e))
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


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
             # mode or after a restart) replayed; greatest() skips the NULL one
             " (case when pg_is_in_recovery() then greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())"
             "  else pg_current_wal_lsn() end)::text as wal")
_REPL_SQL = ("select application_name, client_addr::text as client_addr, state, sync_state,"
             " sent_lsn::text as sent_lsn, flush_lsn::text as flush_lsn, replay_lsn::text as replay_lsn,"
             # a cascading standby sends what it has replayed, which can pass what its
             # walreceiver last flushed: take the further of the two, and never a negative lag
             " greatest(0, pg_wal_lsn_diff(case when pg_is_in_recovery() then"
             "  greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())"
             "  else pg_current_wal_lsn() end, replay_lsn))::bigint as lag_bytes,"
             " extract(epoch from replay_lag)::float8 as lag_s"
             " from pg_stat_replication order by pid")


def probe_pg(pg_url: str, timeout: float) -> dict[str, Any]:
    """{up, recovery, readOnly, wal, rows: [pg_stat_replication rows]} or {up: False, error}."""
    import psycopg2

    try:
        params = _conn_params(pg_url)
        params["connect_timeout"] = max(2, int(timeout))
        params["application_name"] = TOOL
        params["options"] = f"-c statement_timeout={PG_STATEMENT_MS}"
        conn = psycopg2.connect(**params)
    except (psycopg2.Error, ValueError) as e:
        return {"up": False, **pg_failure(e)}
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(_NODE_SQL)
            recovery, ro, wal = cur.fetchone()
            cur.execute(_REPL_SQL)
            cols = [c.name for c in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    except psycopg2.Error as e:
        return {"up": False, **pg_failure(e)}
    finally:
        conn.close()
    return {"up": True, "recovery": bool(recovery), "readOnly": bool(ro), "wal": wal, "rows": rows}


def _repl_row(rows: Sequence[Mapping[str, Any]], peer: Mapping[str, Any]) -> dict[str, Any] | None:
    match = [r for r in rows if r.get("application_name") == peer.get("pgUrl")]
    match = match or [r for r in rows if r.get("client_addr") == peer.get("ip")]
    if not match:
        return None
    r = dict(sorted(match, key=lambda r: r.get("state") != "streaming")[0])
    if r.get("lag_s") is None and r.get("lag_bytes") == 0:
        r["lag_s"] = 0.0  # PostgreSQL clears replay_lag once an idle standby has caught up
    return r


# --------------------------------------------------------------------------- gathering

def read_shard(zk: ZkReader, shard: str) -> tuple[dict | None, int, Any, list[dict], str | None]:
    """(state JSON, its version, error node, live election peers, state parse error)."""
    base = shard_path(shard)
    got = zk.get_many([base, f"{base}/state", f"{base}/error"])
    if got[base] is None:
        raise CliError(f"shard {shard!r} not found: no {base} in ZooKeeper at {zk.hosts}")
    st_raw, version, state, err = got[f"{base}/state"], -1, None, None
    if st_raw is not None:
        version = st_raw[1].version
        try:
            state = ClusterState.loads(st_raw[0]).to_json()
        except StateError as e:
            err = str(e)
    error = (decode(got[f"{base}/error"][0]) or {}) if got[f"{base}/error"] else None
    names = zk.children(f"{base}/election") or []
    datas = zk.get_many(f"{base}/election/{n}" for n in names)
    good = {}
    for n in names:
        d = datas.get(f"{base}/election/{n}")
        d = decode(d[0]) if d else None
        if isinstance(d, dict):
            try:
                election_order({n: d})
                good[n] = d
            except (StateError, ValueError):
                continue
    election = [p.to_json() for p in election_order(good)]
    return state, version, error, election, err


def gather(zk: ZkReader, shard: str, timeout: float, *, pg: bool = True, sitters: bool = True) -> V.ShardView:
    state, _version, error, election, state_err = read_shard(zk, shard)
    nodes = V.chain_nodes(state, [p["id"] for p in election], election)
    deadline = time.monotonic() + timeout
    jobs: dict[str, Callable[[], Any]] = {}
    for n in nodes:
        if sitters and n.peer.get("statusUrl"):
            jobs[f"s:{n.id}"] = (lambda u=n.peer["statusUrl"]: http_json(f"{u}/state", timeout=min(timeout, 2)))
        if pg and n.role not in ("deposed", "unknown") and n.peer.get("pgUrl"):
            jobs[f"p:{n.id}"] = (lambda u=n.peer["pgUrl"]: probe_pg(u, timeout))
    res = _parallel(jobs, deadline)
    for n in nodes:
        s = res.get(f"s:{n.id}")
        n.sitter = s[1] if isinstance(s, tuple) and s[0] == 200 and isinstance(s[1], dict) else None
        if pg and n.role not in ("deposed", "unknown"):
            n.pg = res.get(f"p:{n.id}") or {"up": False, "error": "no answer in time"}
            n.pg.setdefault("up", False)
    by_id = {n.id: n for n in nodes}
    for n in nodes:
        up = by_id.get(n.upstream or "")
        if up is not None and up.pg and up.pg.get("up"):
            n.repl = _repl_row(up.pg.get("rows") or [], n.peer)
    return V.ShardView(shard, state, error, nodes, state_err)


# --------------------------------------------------------------------------- state writes

def cas_state(zk: ZkReader, shard: str, change: Callable[[ClusterState], ClusterState | None],
              tries: int = 20) -> tuple[ClusterState, ClusterState | None]:
    """Read the state, apply `change` (None: nothing to write) and write it by compare-and-set
    on the version read; a sitter writing in between makes it read and try again."""
    from kazoo.exceptions import BadVersionError

    path = f"{shard_path(shard)}/state"
    for _ in range(tries):
        got = zk.get(path)
        if got is None:
            if not zk.exists(shard_path(shard)):
                raise CliError(f"shard {shard!r} not found: no {shard_path(shard)} in ZooKeeper at {zk.hosts}")
            raise CliError(f"shard {shard!r} has no state yet ({path}): nothing to change")
        try:
            old = ClusterState.loads(got[0])
        except StateError as e:
            raise CliError(f"{path}: {e}") from None
        new = change(old)
        if new is None:
            return old, None
        try:
            zk._kz.set_async(path, new.dumps(), version=got[1].version).get(timeout=zk.remaining())
            return old, new
        except BadVersionError:
            time.sleep(0.05)
            continue
        except Exception as e:  # noqa: BLE001
            raise CliError(f"ZooKeeper at {zk.hosts}: writing {path}: {e or type(e).__name__}") from None
    raise CliError(f"{path} kept changing under {tries} attempts to write it; try again")


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = "?"
    return f"{user}@{socket.gethostname()}"


def set_freeze(zk: ZkReader, shard: str, reason: str | None) -> tuple[ClusterState, ClusterState | None]:
    """Freeze (reason given) or unfreeze (None). Returns (old, new); new None = nothing to do."""
    from manatee.shard.state import Freeze

    def change(st: ClusterState) -> ClusterState | None:
        if reason is None:
            return st.evolve(freeze=None) if st.frozen else None
        if st.frozen:
            return None
        return st.evolve(freeze=Freeze(reason=reason, by=_who(), time=V.iso_now()))

    return cas_state(zk, shard, change)


def find_peer(state: ClusterState, key: str):
    """A member of the state by id, ip, zoneId or pgUrl."""
    for p in state.members():
        if key in (p.id, p.ip, p.zone_id, p.pg_url):
            return p
    names = ", ".join(f"{p.ip} ({state.place_of(p.id)})" for p in state.members())
    raise CliError(f"no node {key!r} in the shard state (members: {names})")


def set_primary(zk: ZkReader, shard: str, node: str, error: Any, live: list[dict],
                force: bool = False) -> tuple[ClusterState, ClusterState]:
    """The safe-mode runbook's step 3: make `node` the primary of a new generation with no
    sync and nobody else in the chain (they rejoin at the tail and are rebuilt if they
    forked). Only in safe mode, and only while no sitter runs (a running sitter could act
    on the old generation meanwhile); --force skips the safe-mode check, never the other."""
    if live:
        raise CliError("stop every sitter first (runbook step 2); still in the election: "
                       + ", ".join(str(p.get("ip") or p.get("id")) for p in live))
    if error is None and not force:
        raise CliError(f"shard {shard!r} is not in safe mode: the sitters choose the primary themselves "
                       "(use switchover for a planned change; --force only if you know why)")

    def change(st: ClusterState) -> ClusterState:
        p = find_peer(st, node)
        return st.evolve(generation=st.generation + 1, primary=p, sync=None, async_=(), deposed=(),
                         switchover=None)

    old, new = cas_state(zk, shard, change)
    assert new is not None
    return old, new


def request_switchover(zk: ZkReader, shard: str, to: str | None, error: Any,
                       live: set[str]) -> ClusterState:
    from manatee.shard.state import Switchover

    def change(st: ClusterState) -> ClusterState:
        if error is not None:
            raise CliError("the shard is in safe mode: clear it first (see the runbook); no switchover")
        if st.frozen:
            raise CliError(f"the shard is frozen ({st.freeze.reason}): unfreeze it first")
        if st.switchover is not None:
            raise CliError(f"a switchover to {st.switchover.to} is already pending since "
                           f"{st.switchover.requested}; wait for it or run `switchover --cancel`")
        if st.sync is None:
            raise CliError("the shard has no sync: nobody can take over without losing writes")
        if to is not None:
            p = find_peer(st, to)
            if p.id != st.sync.id:
                raise CliError(f"{to} is the {st.place_of(p.id)}, not the sync ({st.sync.ip}): only the sync "
                               f"holds every acknowledged write and may take over")
        for who, p in (("primary", st.primary), ("sync", st.sync)):
            if p.id not in live:
                raise CliError(f"the {who} {p.ip} is not in the election (its sitter is down): no switchover")
        return st.evolve(switchover=Switchover(to=st.sync.id, requested=V.iso_now(), by=_who()))

    _old, new = cas_state(zk, shard, change)
    assert new is not None
    return new


def withdraw_switchover(zk: ZkReader, shard: str, requested: str | None = None) -> ClusterState | None:
    """Remove a pending switchover request (only ours when `requested` is given). Returns the
    written state, or None when there was nothing to withdraw (it completed or went away)."""
    def change(st: ClusterState) -> ClusterState | None:
        if st.switchover is None or (requested is not None and st.switchover.requested != requested):
            return None
        return st.evolve(switchover=None)

    return cas_state(zk, shard, change)[1]


# --------------------------------------------------------------------------- subcommands

def _say(msg: str) -> None:
    print(msg, flush=True)


def cmd_show(args, zk: ZkReader) -> int:
    v = gather(zk, args.shard, args.timeout)
    print(dump_json(V.show_json(v)) if args.json else V.render_show(v))
    return EXIT_OK


#: verify's exit status by verdict (Nagios-style): ok 0, warning 1, critical 2
VERIFY_EXIT = {V.OK: EXIT_OK, V.WARNING: 1, V.CRITICAL: 2}


def cmd_verify(args, zk: ZkReader) -> int:
    v = gather(zk, args.shard, args.timeout)
    found = V.assess(v)
    verdict = V.verdict(found)
    if args.json:
        print(dump_json({"shard": v.shard, "generation": v.generation, "status": verdict,
                         "problems": [{"severity": s, "message": m} for s, m in found]}))
    elif not found:
        print("ok")
    else:
        for sev, msg in found:
            print(f"{sev}: {msg}")
    return VERIFY_EXIT[verdict]


def cmd_history(args, zk: ZkReader) -> int:
    recs, bad = records(read_history(zk, args.shard))
    for b in bad:
        print(f"{TOOL}: skipped: {b}", file=sys.stderr)
    print(dump_json(list(recs)) if args.json else V.render_history(recs))
    return EXIT_OK


def cmd_freeze(args, zk: ZkReader) -> int:
    old, new = set_freeze(zk, args.shard, args.reason)
    if new is None:
        _say(f"shard {args.shard} is already frozen: {old.freeze.reason} (by {old.freeze.by} at {old.freeze.time})")
    else:
        _say(f"shard {args.shard} frozen at generation {new.generation}: {args.reason}")
    return EXIT_OK


def cmd_unfreeze(args, zk: ZkReader) -> int:
    old, new = set_freeze(zk, args.shard, None)
    _say(f"shard {args.shard} was not frozen: nothing to do" if new is None
         else f"shard {args.shard} unfrozen (was: {old.freeze.reason})")
    return EXIT_OK


def cmd_set_primary(args, zk: ZkReader) -> int:
    _state, _v, error, election, _e = read_shard(zk, args.shard)
    old, new = set_primary(zk, args.shard, args.node, error, election, args.force)
    _say(f"generation {new.generation}: primary {new.primary.ip} ({new.primary.id}), no sync; was primary "
         f"{old.primary.ip} in generation {old.generation}. Next: manatee-clear, then start "
         f"{new.primary.ip}'s sitter first (runbook steps 4-5)")
    return EXIT_OK


def _primary_reason(st: ClusterState) -> str:
    code, body = http_json(f"{st.primary.status_url}/state")
    return body.get("reason") or "?" if code == 200 and isinstance(body, dict) else f"no answer ({body})"


def cmd_switchover(args, zk: ZkReader) -> int:
    if args.cancel:
        new = withdraw_switchover(zk, args.shard)
        _say("no switchover pending: nothing to cancel" if new is None else "switchover request withdrawn")
        return EXIT_OK
    _state, _v, error, election, _e = read_shard(zk, args.shard)
    req = request_switchover(zk, args.shard, args.node, error, {p["id"] for p in election})
    old_primary, target, gen0 = req.primary, req.sync, req.generation
    t0 = time.monotonic()
    _say(f"switchover requested: {old_primary.ip} -> {target.ip} (generation {gen0})")
    limit = t0 + args.wait
    seen_release = took = False
    path = f"{shard_path(args.shard)}/state"
    try:
        while time.monotonic() < limit:
            zk.deadline = max(zk.deadline, time.monotonic() + args.timeout)
            got = zk.get(path)
            st = ClusterState.loads(got[0]) if got else None
            if st is not None and not took:
                if st.generation > gen0:
                    if st.primary.id != target.id:
                        raise CliError(f"the shard moved on without the switchover: generation {st.generation} "
                                       f"has primary {st.primary.ip} (a failure in the meantime?)")
                    took = True
                    _say(f"{target.ip} took over in generation {st.generation} after "
                         f"{time.monotonic() - t0:.2f}s; waiting for it to take writes")
                elif st.switchover is None:
                    raise CliError(f"the switchover request was withdrawn (by the primary {old_primary.ip}: "
                                   f"{_primary_reason(st)})")
                elif st.switchover.released and not seen_release:
                    seen_release = True
                    _say(f"{old_primary.ip} stopped at WAL {V_lsn(st.switchover.released_wal)} and released "
                         f"the primary role after {time.monotonic() - t0:.2f}s")
            if took and http_json(f"{target.status_url}/primary", timeout=0.5)[0] == 200:
                _say(f"switchover done: {target.ip} is the writable primary "
                     f"({time.monotonic() - t0:.2f}s after the request); {old_primary.ip} rejoins as a standby")
                return EXIT_OK
            time.sleep(0.05)
    except KeyboardInterrupt:
        if not took:
            withdraw_switchover(zk, args.shard, req.switchover.requested)
            raise CliError("interrupted: switchover request withdrawn") from None
        raise
    if took:
        raise CliError(f"{target.ip} took over but did not take writes within {args.wait:g}s "
                       f"(its sync has not caught up?); see `manatee-adm show`")
    gone = withdraw_switchover(zk, args.shard, req.switchover.requested)
    raise CliError(f"the switchover did not complete within {args.wait:g}s"
                   + ("; request withdrawn" if gone is not None else "")
                   + f"; the primary says: {_primary_reason(req)}")


def V_lsn(v: int) -> str:
    from manatee.core.lsn import format_lsn

    return format_lsn(v)


def cmd_rebuild(args, zk: ZkReader) -> int:
    got = zk.get(f"{shard_path(args.shard)}/state")
    if got is None:
        read_shard(zk, args.shard)  # raises "not found" for an unknown shard
        raise CliError(f"shard {args.shard!r} has no state yet: nothing to rebuild")
    st = ClusterState.loads(got[0])
    p = find_peer(st, args.node)
    if not p.status_url:
        raise CliError(f"{p.ip} has no statusUrl in the state: cannot reach its sitter")
    from manatee.core.auth import SecretError, load_secret_file, sign_request

    secret_file = args.secret_file or os.environ.get("MANATEE_SECRET_FILE")
    try:
        secret = load_secret_file(secret_file) if secret_file else None
    except SecretError as e:
        raise CliError(f"--secret-file: {e}") from None
    req = {"force": args.force}
    signed = sign_request(secret, "POST", "/rebuild", json.dumps(req).encode())
    code, body = http_json(f"{p.status_url}/rebuild", req, timeout=args.timeout, headers=signed)
    if code == 0:
        raise CliError(f"the sitter of {p.ip} does not answer at {p.status_url}: {body}")
    if code >= 400:
        msg = body.get("message") if isinstance(body, dict) else body
        hint = "" if code != 401 or secret else " (pass --secret-file, or set MANATEE_SECRET_FILE, to the shard secret)"
        raise CliError(f"{p.ip} refused the rebuild: {msg}{hint}")
    _say(f"rebuild of {p.ip} ({st.place_of(p.id)}) requested")
    t0 = time.monotonic()
    last = None
    started = False
    while time.monotonic() - t0 < args.wait:
        code, s = http_json(f"{p.status_url}/state", timeout=2)
        if code == 200 and isinstance(s, dict):
            r = s.get("restore") or {}
            phase = r.get("phase")
            line = f"{phase}"
            if r.get("size"):
                pct = 100.0 * (r.get("completed") or 0) / r["size"]
                line += f" {V.fmt_bytes(r.get('completed'))} of {V.fmt_bytes(r['size'])} ({pct:.0f}%)"
            if r.get("source"):
                line += f" from {r['source']}"
            line += f"; sitter: {s.get('localRole')}"
            if line != last:
                _say(f"[{time.monotonic() - t0:6.1f}s] {line}")
                last = line
            started = started or s.get("localRole") == "rebuild" or phase not in (None, "requested")
            if started and phase == "done" and http_json(f"{p.status_url}/replica", timeout=1)[0] == 200:
                _say(f"rebuild of {p.ip} done in {time.monotonic() - t0:.1f}s: it streams from its upstream")
                return EXIT_OK
        time.sleep(0.5)
    raise CliError(f"the rebuild of {p.ip} did not finish within {args.wait:g}s (last: {last}); "
                   f"it may still be running: see {p.status_url}/restore")


def cmd_pg_status(args, zk: ZkReader) -> int:
    def show(v: V.ShardView, stamp: str | None) -> None:
        if args.json:  # one JSON document per line, so that a repeating run is JSON lines
            print(dump_json(V.pg_status_json(v, stamp), compact=True), flush=True)
        else:
            print(V.render_pg_status(v, stamp), flush=True)

    if not args.period:
        zk.deadline = time.monotonic() + args.timeout
        show(gather(zk, args.shard, args.timeout, sitters=False), None)
        return EXIT_OK
    # Repeating: Ctrl-C (or SIGTERM) is how it ends. The signal only sets a flag, so that it
    # never lands inside a ZooKeeper or PostgreSQL call (a KeyboardInterrupt raised there can
    # leave a library thread waiting); the sample in progress finishes within its timeout.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        zk.deadline = time.monotonic() + args.timeout
        v = gather(zk, args.shard, args.timeout, sitters=False)
        show(v, V.iso_now())
        if not args.json:
            print(flush=True)
        stop.wait(args.period)
    return EXIT_OK


# --------------------------------------------------------------------------- CLI

def _positive(name: str) -> Callable[[str], float]:
    def conv(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number of seconds, not {s!r}") from None
        if not 0 < v <= 86400:
            raise argparse.ArgumentTypeError(f"{name} must be between 0 and 86400 seconds, not {s}")
        return v
    return conv


def build_parser() -> ArgParser:
    p = ArgParser(prog=TOOL, description="Operate a manatee shard: show, verify, pg-status, history, "
                                         "freeze/unfreeze, switchover, rebuild.")
    p.add_argument("--version", action="version", version=f"%(prog)s (manatee) {VERSION}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=ArgParser)
    sub.required = True

    def add(name: str, help_: str, extra: str = "", json_: bool = False) -> ArgParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        add_common_args(sp)
        add_target_args(sp, "SHARD ZK", extra)
        if json_:
            sp.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
        return sp

    add("show", "the shard as a table: generation, freeze, each node's role, PostgreSQL, lag and disk; "
                "problems", json_=True)
    add("verify", "print ok and exit 0 when healthy; else each problem with its severity, exit 1 when "
                  "only warnings (e.g. a planned freeze), 2 when any is critical", json_=True)
    add("pg-status", "each node's WAL position and replication lag (bytes, seconds); with PERIOD, "
                     "repeat every PERIOD seconds until Ctrl-C", "[PERIOD]", json_=True)
    add("history", "the shard's history of topology changes as a table", json_=True)
    sp = add("freeze", "stop all automatic transitions (no failover) until unfreeze")
    sp.add_argument("-r", "--reason", required=True, help="why (shown by show and in the state)")
    add("unfreeze", "let the sitters act again")
    sp = add("switchover", "planned takeover by the sync: the primary goes read-only, the sync takes over")
    sp.add_argument("--node", metavar="NODE", help="the sync's ip, id or zoneId (a check: only the sync may "
                                                   "take over)")
    sp.add_argument("--to", dest="node", metavar="NODE", help=argparse.SUPPRESS)  # the old spelling
    sp.add_argument("--wait", type=_positive("--wait"), default=30.0, metavar="SECONDS",
                    help="give up (and withdraw the request) after this long (default 30)")
    sp.add_argument("--cancel", action="store_true", help="withdraw a pending switchover request")
    sp = add("set-primary", "safe-mode runbook step 3: NODE is the primary of a new generation, no sync, "
                            "nobody else in the chain (all sitters must be stopped)")
    sp.add_argument("--node", metavar="NODE", help="the node with the most WAL: its ip, id or zoneId "
                                                   "(also accepted as the last positional word)")
    sp.add_argument("--force", action="store_true", help="also when the shard is not in safe mode")
    sp = add("rebuild", "restore a node's data from its upstream (its sitter does it), showing progress")
    sp.add_argument("--node", required=True, metavar="NODE", help="the node's ip, id or zoneId")
    sp.add_argument("--force", action="store_true", help="also rebuild the sync (the primary blocks writes "
                                                         "until it names another)")
    sp.add_argument("--wait", type=_positive("--wait"), default=600.0, metavar="SECONDS",
                    help="stop watching after this long (default 600)")
    sp.add_argument("--secret-file", metavar="FILE", default=None,
                    help="the shard secret's file, to sign the request (default: $MANATEE_SECRET_FILE)")
    adm_pgconf.add_parsers(add, _positive)
    adm_restart.add_parsers(add, _positive)
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace, ZkReader], int]] = {
    "show": cmd_show, "verify": cmd_verify, "pg-status": cmd_pg_status, "history": cmd_history,
    "freeze": cmd_freeze, "unfreeze": cmd_unfreeze, "switchover": cmd_switchover, "rebuild": cmd_rebuild,
    "set-primary": cmd_set_primary, **adm_pgconf.COMMANDS, **adm_restart.COMMANDS,
}


def _budget(args: argparse.Namespace) -> float | None:
    """How long the whole run may take (the watchdog's limit); None: until Ctrl-C."""
    if args.cmd == "pg-status" and args.period:
        return None
    extra = {"switchover": getattr(args, "wait", 0), "rebuild": getattr(args, "wait", 0),
             "reload": getattr(args, "wait", 0),
             "restart": getattr(args, "wait", 0) * 8}.get(args.cmd, 0)  # --wait bounds each step
    return args.timeout * 2 + extra + 5


#: the positional words each subcommand takes after the legacy SHARD ZK: (min, max)
EXTRAS = {"pg-status": (0, 1), "set-primary": (0, 1)}


def _resolve(args: argparse.Namespace) -> str:
    """Fill args.shard (and the subcommand's own positional words) by the common convention;
    returns the ZooKeeper connect string."""
    t = resolve_target(args, extras=EXTRAS.get(args.cmd, (0, 0)))
    args.shard = t.shard
    if args.cmd == "pg-status":
        try:
            args.period = _positive("PERIOD")(t.extra[0]) if t.extra else None
        except argparse.ArgumentTypeError as e:
            raise UsageError(str(e)) from None
    elif args.cmd == "set-primary":
        if t.extra and args.node is not None and t.extra[0] != args.node:
            raise UsageError(f"set-primary: NODE given twice ({t.extra[0]!r} and --node {args.node!r})")
        args.node = args.node or (t.extra[0] if t.extra else None)
        if not args.node:
            raise UsageError("set-primary: the following arguments are required: --node NODE")
    return t.zk


def main(argv: Sequence[str] | None = None) -> int:
    watchdog = None
    try:
        args = build_parser().parse_args(argv)
        check_timeout(args.timeout)
        if args.cmd == "freeze" and not args.reason.strip():
            raise UsageError("freeze: --reason must say why (it is shown to every operator)")
        _quiet_libraries(args.verbose)
        hosts = _resolve(args)
        budget = _budget(args)
        if budget is not None:
            watchdog = _start_watchdog(TOOL, budget)
        with ZkReader(hosts, time.monotonic() + args.timeout) as zk:
            if args.cmd not in ("switchover", "rebuild", "freeze", "unfreeze", "set-primary"):
                if not zk.exists(shard_path(args.shard)):
                    raise CliError(f"shard {args.shard!r} not found: no {shard_path(args.shard)} in "
                                   f"ZooKeeper at {zk.hosts}")
            zk.deadline = time.monotonic() + args.timeout + (getattr(args, "wait", 0) or 0)
            return COMMANDS[args.cmd](args, zk)
    except CliError as e:
        print(f"{TOOL}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{TOOL}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - the promise is: never a traceback
        print(f"{TOOL}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        if watchdog is not None:
            watchdog.cancel()


if __name__ == "__main__":
    raise SystemExit(main())
