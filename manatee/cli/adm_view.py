"""The pure half of manatee-adm: what the operator sees, from data already gathered.

Why separate: the problem list is what `verify` exits on and what `show` prints, so it is
a function of plain dicts (the shard state, the error node, the election, each sitter's
/state and each PostgreSQL's answers) that unit tests can feed any situation, and the
tables are rendered the same way whatever gathered the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from manatee.cli.adm_gray import gray_json, gray_notes, gray_problems, heartbeat_problems
from manatee.cli.adm_hotstandby import below_primary
from manatee.cli.adm_lost import lost_notes, lost_state_problem
from manatee.cli.adm_xid import xid_problems
from manatee.shard.decide import TAKEOVER_HELD
from manatee.shard.latches import DISK_FULL_BELOW

OK, WARNING, CRITICAL = "ok", "warning", "critical"
#: a dataset with less than this share of its space free (available of available + used) is low
LOW_DISK_FRACTION = 0.1

__all__ = ["NodeView", "ShardView", "chain_nodes", "problems", "assess", "verdict", "OK", "WARNING", "CRITICAL", "render_table", "render_show",
           "render_pg_status", "render_history", "fmt_bytes", "fmt_seconds", "iso_now"]


@dataclass
class NodeView:
    """One node of the shard as manatee-adm sees it.

    role: primary | sync | async | deposed | unknown (live, not in the state).
    peer: the state's peer record {id, zoneId, ip, pgUrl, backupUrl, statusUrl}.
    live: registered in the election. upstream: the peer id it should stream from.
    sitter: the body of its sitter's GET /state (None: no answer).
    pg: {"up", "recovery", "readOnly", "wal", "error"} from its PostgreSQL (None: not asked).
    repl: its upstream's pg_stat_replication row for it, with `lag_bytes` and `lag_s`
      (None: the upstream has no row for it, or was not asked).
    """

    role: str
    peer: Mapping[str, Any]
    live: bool = True
    upstream: str | None = None
    sitter: Mapping[str, Any] | None = None
    pg: Mapping[str, Any] | None = None
    repl: Mapping[str, Any] | None = None

    @property
    def ip(self) -> str:
        return str(self.peer.get("ip", "?"))

    @property
    def id(self) -> str:
        return str(self.peer.get("id", self.ip))


@dataclass
class ShardView:
    shard: str
    state: Mapping[str, Any] | None
    error: Mapping[str, Any] | None = None
    nodes: list[NodeView] = field(default_factory=list)
    state_error: str | None = None
    remembered: Mapping[str, Any] | None = None  # the znode is missing: the state the sitters hold
    acl_problems: list[str] = field(default_factory=list)  # znodes the sitters may no longer write (adm_acl)

    @property
    def generation(self) -> Any:
        return (self.state or {}).get("generation")


def chain_nodes(state: Mapping[str, Any] | None, live_ids: Sequence[str],
                election: Sequence[Mapping[str, Any]] = ()) -> list[NodeView]:
    """The state's primary, sync, asyncs and deposed (in that order) as NodeViews, each with
    the upstream it should stream from, plus live peers the state does not list yet."""
    out: list[NodeView] = []
    live = set(live_ids)
    if state:
        chain = [("primary", state.get("primary")), ("sync", state.get("sync"))]
        chain += [("async", p) for p in state.get("async") or []]
        prev = None
        for role, p in chain:
            if not p:
                continue
            out.append(NodeView(role, p, p.get("id") in live, prev))
            prev = p.get("id")
        for p in state.get("deposed") or []:
            out.append(NodeView("deposed", p, p.get("id") in live, None))
    known = {n.id for n in out}
    for p in election:
        if p.get("id") not in known:
            out.append(NodeView("unknown", p, True, None))
    return out


def assess(v: ShardView) -> list[tuple[str, str]]:
    """Everything an operator should look at, one (severity, line) each; empty when healthy.

    critical: the shard cannot take writes, or a node that should replicate does not (or its
    state cannot be known: unknown is not healthy). warning: planned or transient conditions
    (a freeze, a pending switchover, a deposed primary, a joining node, a sitter that does
    not answer its status port while it holds its place in the election) and any trouble of
    an async (the shard still takes writes without it)."""
    out: list[tuple[str, str]] = []
    C, W = CRITICAL, WARNING
    if v.state_error:
        out.append((C, f"the shard state cannot be read: {v.state_error}; nobody can fail over until it is "
                       f"replaced: 'manatee-adm state-restore' writes back the state the sitters remember"))
    out += [(C, line) for line in v.acl_problems]
    out += [(C, f"{n.ip}: {n.sitter['stateOlder']}; it holds the state it remembers and nobody can fail over "
                f"(docs/operators-guide.md)")
            for n in v.nodes if isinstance(n.sitter, Mapping) and n.sitter.get("stateOlder")]
    bad = {q for n in v.nodes if isinstance(n.sitter, Mapping) for q in n.sitter.get("quarantined") or ()}
    out += [(W, f"malformed znode ignored by the sitters (quarantined): {q}") for q in sorted(bad)]
    if v.error is not None:
        why = v.error.get("reason") if isinstance(v.error, Mapping) else v.error
        out.append((C, f"safe mode: {why or 'no reason recorded'} (follow the runbook, then manatee-clear)"))
    st = v.state
    if not st:
        if not v.state_error:  # gone while sitters remember it, or not declared yet
            out.append(lost_state_problem(v.shard, v.nodes)
                       or (C, "no shard state in ZooKeeper yet: the shard has not been set up"))
        return out
    fr = st.get("freeze")
    if fr:
        out.append((W, f"frozen: {fr.get('reason') or 'no reason'} (by {fr.get('by') or '?'} at "
                   f"{fr.get('time') or '?'}): no automatic failover until unfreeze"))
    sw = st.get("switchover")
    if sw:
        out.append((W, f"switchover to {sw.get('to')} pending since {sw.get('requested') or '?'}"
                   + (" (primary released)" if sw.get("released") else "")))
    if not st.get("sync") and not st.get("oneNodeWriteMode"):
        out.append((C, "no sync: the primary takes no writes until a standby becomes its sync"))
    by_id = {n.id: n for n in v.nodes}
    primary_live = any(n.live for n in v.nodes if n.role == "primary")
    primary = next((m for m in v.nodes if m.role == "primary" and m.pg), None)
    for n in v.nodes:
        what = f"{n.role} {n.ip}"
        crit = C if n.role in ("primary", "sync") else W  # an async's trouble is no outage
        if n.role == "unknown":
            out.append((W, f"{n.ip} is live but not in the shard state yet (joining?)"))
            continue
        if n.role == "deposed":
            out.append(_deposed_problem(n))
            continue
        if not n.live:
            out.append((crit, f"{what} is not in the election (its sitter is down or cut off)"))
        if n.sitter is None and n.live:
            out.append((W, f"{what}: its sitter's status server does not answer"))
        out += [(W, f"{what}: {why}") for why in insecurities(n.sitter)]
        out += [(W, f"{what}: {why}") for why in leftovers(n.sitter)]
        out += gray_problems(what, n.role, n.sitter, C, W)
        if n.role == "sync" and not primary_live and (held := _takeover_held(n.sitter)):
            out.append((C, f"{what} does not take over from the primary that is down: {held}"))
        out += disk_problems(what, n.sitter, crit, W)
        if n.pg is not None and n.pg.get("via") == "sitter":
            out.append((W, f"{what}: manatee-adm could not connect to its PostgreSQL ({n.pg.get('cliError')}); "
                           f"its sitter observes it running and answering (all connection slots taken?)"))
        if n.pg is not None and not n.pg.get("up"):
            out.append((crit, f"{what}: {_pg_down(n.pg)}"))
            continue
        out += [(crit, f"{what}: {line}") for line in _storage_lines(n.pg or {})]
        if n.role == "primary":
            out += [(W, f"{what}: {weak_commit_line(w)}") for w in (n.pg or {}).get("weakCommit") or ()]
            out += xid_problems(what, (n.pg or {}).get("xidAge"))  # transaction-ID wraparound ahead
            if n.pg and n.pg.get("recovery"):
                out.append((crit, f"{what}: PostgreSQL is still in recovery (not promoted)"))
            elif n.pg and n.pg.get("readOnly") and st.get("sync") and not sw:
                out.append((crit, f"{what} is read-only (waiting for its sync to catch up?)"))
            continue
        low = below_primary((n.pg or {}).get("hotStandby"), primary.pg.get("hotStandby"), primary.ip) if primary else None
        out += [(crit, f"{what}: {low}")] if low else []
        out += _standby_problems(n, by_id.get(n.upstream or ""), what, crit)
    return out


def _takeover_held(sitter: Any) -> str | None:
    """Why the sync's sitter does not take over (its last decision), or None."""
    if not isinstance(sitter, Mapping) or sitter.get("rule") not in TAKEOVER_HELD:
        return None
    why = str(sitter.get("reason") or sitter["rule"])
    if sitter["rule"] == "sync.no_wal":
        rem = sitter.get("remembers")
        unused = rem.get("streamedNotUsed") if isinstance(rem, Mapping) else None
        why += ((f" ({unused})" if unused else "")
                + "; bring the primary back, or see 'After a site-wide outage' in docs/operators-guide.md")
    return why


def _standby_problems(n: NodeView, up: NodeView | None, what: str, crit: str) -> list[tuple[str, str]]:
    """A chain standby's replication from its upstream `up`: heard, streaming, synchronous."""
    out: list[tuple[str, str]] = []
    up_ip = up.ip if up else n.upstream
    if n.live and up is not None:
        out += heartbeat_problems(what, n.id, n.sitter, up.ip, up.sitter, crit)
    if n.pg is not None and n.pg.get("up") and not n.pg.get("recovery"):
        out.append((crit, f"{what}: PostgreSQL runs as a primary, not as a standby of {up_ip}"))
    elif n.repl is None or n.repl.get("state") != "streaming":
        if up is not None and up.pg is not None:  # only when the upstream was asked
            state = (n.repl or {}).get("state") or "not connected"
            out.append((crit, f"{what} is not streaming from {up_ip} ({state})"))
    elif n.role == "sync" and n.repl.get("sync_state") not in (None, "sync"):
        out.append((crit, f"{what} streams but is not the synchronous standby (sync_state "
                   f"{n.repl.get('sync_state')})"))
    return out


def leftovers(sitter: Any) -> list[str]:
    """The old copies an interrupted rebuild left beside the node's dataset, from its sitter's
    /state (kept: only an operator may destroy them); [] when none or not known."""
    kept = sitter.get("oldCopiesKept") if isinstance(sitter, Mapping) else None
    if not isinstance(kept, list) or not kept:
        return []
    return [f"an interrupted rebuild left its old copy {', '.join(map(str, kept))} aside (kept: it may hold the "
            "only copy of that data; docs/operators-guide.md, 'Rebuilding a node')"]


def disk_problems(what: str, sitter: Any, sev_crit: str, sev_warn: str) -> list[tuple[str, str]]:
    """(severity, line) for a node's dataset from its sitter's /state `dataset` ({available,
    used, quota} bytes): full (less than a WAL segment free: PostgreSQL cannot write WAL;
    sev_crit), or low (less than LOW_DISK_FRACTION of its space free; a warning). Unknown
    space says nothing."""
    space = sitter.get("dataset") if isinstance(sitter, Mapping) else None
    if not isinstance(space, Mapping):
        return []
    avail, used, quota = space.get("available"), space.get("used"), space.get("quota")
    if not isinstance(avail, int):
        return []
    used = used if isinstance(used, int) else 0
    total = avail + used
    of = f" of a {fmt_bytes(quota)} quota" if isinstance(quota, int) and quota else ""
    if avail < DISK_FULL_BELOW:
        return [(sev_crit, f"{what}: its dataset is full ({fmt_bytes(avail)} free{of}): PostgreSQL cannot write "
                           f"WAL there (free space or raise the quota; docs/operators-guide.md, 'A sick node')")]
    if total and avail < LOW_DISK_FRACTION * total:
        return [(sev_warn, f"{what}: its dataset is nearly full ({fmt_bytes(avail)} free{of}, "
                           f"{100 * avail / total:.0f} % of its space)")]
    return []


def insecurities(sitter: Any) -> list[str]:
    """What a sitter's /state says it runs without (insecure mode, ZooKeeper auth); [] when
    it is secure or did not answer (a sitter from before these keys says nothing)."""
    if not isinstance(sitter, Mapping):
        return []
    out = []
    if sitter.get("insecure") is True:
        out.append("its sitter runs insecure (no shard secret: POST /heartbeat and /rebuild are unauthenticated)")
    if sitter.get("zkAuth") is False:
        out.append("its sitter runs without ZooKeeper auth (no zkCfg.auth: anyone who reaches ZooKeeper can "
                   "change the shard)")
    return out


def _deposed_problem(n: NodeView) -> tuple[str, str]:
    """A former primary: waiting to rejoin, down, or — critical — its PostgreSQL still runs as
    a primary (its sitter could not start, say): stale reads, commits that never return."""
    if n.pg and n.pg.get("up") and n.pg.get("recovery") is False and not n.pg.get("via"):
        return (CRITICAL, f"deposed {n.ip}: its PostgreSQL still runs as a primary"
                + ("" if n.live else " without its sitter")
                + ": clients that still use it read stale data and their commits never return (another node "
                  "is the primary now); start its sitter (it rejoins as a standby) or stop that PostgreSQL")
    return (WARNING, f"deposed {n.ip}: a former primary "
            + ("waiting to rejoin the chain (rebuild it if it does not)" if n.live
               else f"that is down (if it is gone for good: manatee-adm reap --node {n.ip})"))


def weak_commit_line(w: Mapping[str, Any]) -> str:
    """An ALTER ROLE / ALTER DATABASE setting of synchronous_commit that does not wait for the sync."""
    role, db = w.get("role") or "", w.get("db") or ""
    scope = (f"role {role} in database {db}" if role and db else f"role {role}" if role
             else f"database {db}" if db else "every role in every database")
    return (f"{w.get('setting')} is set for {scope} (ALTER ROLE/DATABASE): its commits return before the "
            f"sync has them, and a failover loses those; reset it unless that is meant")


def _pg_down(pg: Mapping[str, Any]) -> str:
    """Why the CLI got no answer from a node's PostgreSQL, and what to do when it is known."""
    locked = locked_out(pg.get("error"))
    if locked:
        return f"PostgreSQL refuses the login, its state is unknown ({pg.get('error')}): {locked}"
    if pg.get("auth") == "failed":
        return (f"auth failed: PostgreSQL refused the credentials, its state is unknown ({pg.get('error')}; "
                f"set PGPASSFILE or PGPASSWORD)")
    return f"PostgreSQL does not answer ({pg.get('error') or 'down'})"


def _storage_lines(pg: Mapping[str, Any]) -> list[str]:
    """What a node's PostgreSQL says of its storage: checksum failures, fsync off."""
    out = [line for line in [checksum_line(pg.get("checksums"))] if line]
    if pg.get("noFsync"):
        out.append("fsync is off: PostgreSQL does not make its WAL durable, so a crash of its host can lose "
                   "commits it wrote or, as the sync, acknowledged; remove fsync from postgresMgrCfg.parameters")
    return out


def checksum_line(cs: Any) -> str | None:
    """The data checksum failures PostgreSQL counted on a node, or None (none, or not known)."""
    if not isinstance(cs, Mapping) or not isinstance(cs.get("failures"), int) or cs["failures"] <= 0:
        return None
    return (f"{cs['failures']} data checksum failure(s) (database {cs.get('databases') or '?'}, the last at "
            f"{cs.get('last') or '?'}): its storage returned pages that are not what PostgreSQL wrote. Find them "
            f"in its log ('invalid page in block'); rebuild this node from a healthy one (the primary: switch "
            f"over first), then `select pg_stat_reset()` in that database")


def locked_out(error: str | None) -> str | None:
    """What to do when PostgreSQL refuses a login for what its catalog says, not for the
    credentials: the same refusal meets the sitters (they connect as the same superuser to
    the same database) whenever they open a new connection (sandbox trial 2026-12-06)."""
    e = error or ""
    if "is not permitted to log in" in e:
        what = "the role may not log in (ALTER ROLE ... NOLOGIN)"
    elif "is not currently accepting connections" in e:
        what = "the database takes no connections (ALTER DATABASE ... ALLOW_CONNECTIONS false)"
    else:
        return None
    return (f"{what}. The sitters connect the same way: the primary's sitter undoes it while its own session "
            f"lasts (log pg_access_restored); if not, undo it as another superuser, and restrict logins in "
            f"pg_hba.conf instead")


def problems(v: ShardView) -> list[str]:
    """assess() without the severities: one line per problem; empty when healthy."""
    return [msg for _sev, msg in assess(v)]


def verdict(found: Sequence[tuple[str, str]]) -> str:
    """ok | warning | critical: the worst severity found."""
    sevs = {s for s, _ in found}
    return CRITICAL if CRITICAL in sevs else WARNING if sevs else OK


# --------------------------------------------------------------------------- formatting

def iso_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def fmt_bytes(n: Any) -> str:
    if n is None:
        return "-"
    n = int(n)
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fmt_disk(space: Any) -> str:
    """The dataset's free space (and quota) from its sitter's /state: '12.0 GB', '1.0 GB of 5.0 GB quota'."""
    if not isinstance(space, Mapping) or space.get("available") is None:
        return "-"
    quota = space.get("quota")
    return fmt_bytes(space["available"]) + (f" (quota {fmt_bytes(quota)})" if quota else "")


def fmt_seconds(s: Any) -> str:
    return "-" if s is None else f"{float(s):.3f}"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; None shows as '-'."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _pg_col(n: NodeView) -> tuple[str, str]:
    if n.pg is None:
        return "?", "-"
    if not n.pg.get("up"):
        return ("auth failed" if n.pg.get("auth") == "failed" else "down"), "-"
    up = "up*" if n.pg.get("via") == "sitter" else "up"  # as its sitter sees it (adm_gray.pg_via_sitter)
    if n.pg.get("recovery"):
        return up, "standby"
    return up, "read-only" if n.pg.get("readOnly") else "read-write"


def _lag(n: NodeView) -> tuple[str, str]:
    if n.role in ("primary", "deposed", "unknown") or n.repl is None:
        return "-", "-"
    return fmt_bytes(n.repl.get("lag_bytes")), fmt_seconds(n.repl.get("lag_s"))


def render_show(v: ShardView, probs: Sequence[str] | None = None) -> str:
    st = v.state or v.remembered or {}
    fr = st.get("freeze")
    gen = st.get("generation")
    head = [f"shard:       {v.shard}",
            f"generation:  {gen if gen is not None else '-'}"
            + (" (as the sitters remember it: the state znode is missing)" if v.state is None and v.remembered else ""),
            "freeze:      " + (f"frozen: {fr.get('reason')} (by {fr.get('by') or '?'} at {fr.get('time') or '?'})"
                                if fr else "not frozen"),
            f"initWal:     {st.get('initWal', '-')}"]
    if st.get("oneNodeWriteMode"):
        head.append("mode:        one-node-write mode")
    if st.get("switchover"):
        sw = st["switchover"]
        head.append(f"switchover:  to {sw.get('to')} requested {sw.get('requested')}"
                    + (" (released)" if sw.get("released") else ""))
    rows = []
    for n in v.nodes:
        pg, mode = _pg_col(n)
        lag_b, lag_s = _lag(n)
        sitter = "-" if n.sitter is None else str(n.sitter.get("localRole") or n.sitter.get("role") or "?")
        if n.sitter is not None and insecurities(n.sitter):
            sitter += " (insecure)"
        rows.append([n.role, n.ip, n.peer.get("pgUrl", "-"), "yes" if n.live else "no", sitter, pg, mode,
                     lag_b, lag_s, fmt_disk((n.sitter or {}).get("dataset"))])
    table = render_table(["ROLE", "ADDRESS", "PGURL", "LIVE", "SITTER", "PG", "MODE", "LAG", "LAG(S)", "DISK FREE"],
                         rows)
    # tags and pending restarts: a line per node that has any (below the table, whose columns scripts read)
    notes = [f"  {n.ip}: tags {fmt_tags(n.peer.get('tags'))}" for n in v.nodes if fmt_tags(n.peer.get("tags")) != "-"]
    notes += [f"  {n.ip}: pending restart: {', '.join(pending_restart(n))} (applies at its next PostgreSQL restart)"
              for n in v.nodes if pending_restart(n)]
    notes += [line for n in v.nodes for line in gray_notes(n.ip, n.pg, n.sitter)]
    notes += lost_notes(v.nodes) if v.state is None and not v.state_error else []
    if notes:
        table += "\n\nnodes:\n" + "\n".join(notes)
    probs = problems(v) if probs is None else probs
    tail = ["problems:"] + ([f"  - {p}" for p in probs] if probs else ["  none"])
    return "\n".join(head) + "\n\n" + table + "\n\n" + "\n".join(tail)


def fmt_tags(tags: Any) -> str:
    """A peer's tags ({nofailover, nosync, priority}) as 'nofailover,priority=2'; '-' for none."""
    if not isinstance(tags, Mapping) or not tags:
        return "-"
    out = [k for k in ("nofailover", "nosync") if tags.get(k) is True]
    if tags.get("priority"):
        out.append(f"priority={tags['priority']}")
    return ",".join(out) or "-"


def pending_restart(n: NodeView) -> list[str]:
    """PostgreSQL settings of the node that only a restart applies (its sitter's /state)."""
    names = ((n.sitter or {}).get("pg") or {}).get("pendingRestart") or []
    return [str(x) for x in names] if isinstance(names, list) else []


def render_pg_status(v: ShardView, stamp: str | None = None) -> str:
    rows = []
    for n in v.nodes:
        if n.role in ("deposed", "unknown"):
            continue
        pg, mode = _pg_col(n)
        r = n.repl or {}
        lag_b, lag_s = _lag(n)
        wal = (n.pg or {}).get("wal") or "-"
        rows.append([n.role, n.ip, pg, mode, wal,
                     "-" if n.role == "primary" else (r.get("state") or "none"),
                     r.get("replay_lsn") or "-", lag_b, lag_s])
    out = render_table(["ROLE", "ADDRESS", "PG", "MODE", "WAL", "REPL", "REPLAY", "LAG", "LAG(S)"], rows)
    return (f"{stamp}  shard {v.shard} generation {v.generation}\n" if stamp else "") + out


def render_history(records: Sequence[Mapping[str, Any]]) -> str:
    rows = [[r.get("date") or r.get("time"), r.get("action"), r.get("ip"), r.get("role"),
             r.get("master") or "-", r.get("slave") or "-", r.get("generation", "-")] for r in records]
    return render_table(["TIME", "ACTION", "IP", "ROLE", "MASTER", "SLAVE", "GEN"], rows)


# --------------------------------------------------------------------------- JSON (for scripts)

def node_json(n: NodeView) -> dict[str, Any]:
    pg, mode = _pg_col(n)
    r = n.repl or {}
    return {"role": n.role, "id": n.id, "ip": n.ip, "zoneId": n.peer.get("zoneId"),
            "pgUrl": n.peer.get("pgUrl"), "live": n.live, "upstream": n.upstream,
            "sitter": None if n.sitter is None else (n.sitter.get("localRole") or n.sitter.get("role")),
            "pg": pg, "mode": None if mode == "-" else mode, "wal": (n.pg or {}).get("wal"),
            "pgError": (n.pg or {}).get("error"),
            "xidAge": (n.pg or {}).get("xidAge"),  # the primary's {db, age, mxidDb, mxidAge, holder} (adm_xid)
            "repl": None if n.repl is None else r.get("state"), "replayLsn": r.get("replay_lsn"),
            "lagBytes": None if n.repl is None or n.role == "primary" else r.get("lag_bytes"),
            "lagSeconds": None if n.repl is None or n.role == "primary" else r.get("lag_s"),
            "dataset": (n.sitter or {}).get("dataset"),  # {available, used, quota} bytes
            "oldCopiesKept": (n.sitter or {}).get("oldCopiesKept"),  # an interrupted rebuild's, by name
            "bases": (n.sitter or {}).get("bases"),  # peer address -> the snapshot kept as shared with it
            "tags": dict(n.peer.get("tags") or {}), "pendingRestart": pending_restart(n),
            # the newest generation its data belongs to; a lost state znode as it sees it
            "remembers": (n.sitter or {}).get("remembers"), "stateLost": (n.sitter or {}).get("stateLost"),
            "pgVia": None if n.pg is None else n.pg.get("via", "cli"), **gray_json(n.sitter)}


def show_json(v: ShardView) -> dict[str, Any]:
    """`manatee-adm show --json`: what the table shows, as data, with each problem's severity."""
    st = v.state or {}
    found = assess(v)
    return {"shard": v.shard, "generation": v.generation, "freeze": st.get("freeze"),
            "switchover": st.get("switchover"), "initWal": st.get("initWal"),
            "oneNodeWriteMode": bool(st.get("oneNodeWriteMode")), "safeMode": v.error,
            "nodes": [node_json(n) for n in v.nodes],
            "status": verdict(found), "problems": [{"severity": s, "message": m} for s, m in found]}


def pg_status_json(v: ShardView, stamp: str | None = None) -> dict[str, Any]:
    keys = ("role", "ip", "pg", "mode", "wal", "repl", "replayLsn", "lagBytes", "lagSeconds")
    return {"time": stamp or iso_now(), "shard": v.shard, "generation": v.generation,
            "nodes": [{k: node_json(n)[k] for k in keys} for n in v.nodes
                      if n.role not in ("deposed", "unknown")]}
