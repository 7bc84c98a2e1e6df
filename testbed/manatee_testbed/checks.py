"""Data checks for the shard invariants (ACCEPTANCE.md S1–S5, S7) after a fault.

Each checker is a pure function over data already fetched from the nodes (or from the
writer / ZooKeeper) and returns a list of human-readable problems: empty means the
invariant holds. ``fetch_rows``/``fetch_ids`` read a node's copy of the writer's table;
``check_data`` runs the data checks over a primary and its standbys in one call.

Rows are compared by content (id and payload), not by counts: a standby may lag, so it
must hold a subset of the primary's rows, but a row the primary lacks or a different
payload for the same id is a fork.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
import time
from typing import Any, NamedTuple

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from manatee_testbed.writer import node_host, table_identifier

#: At most this many lines per kind of problem; the rest are counted.
MAX_LINES = 20


class Row(NamedTuple):
    """A row of the writer's table. Indexes 0 and 1 are (id, payload) like a plain pair."""

    id: int
    payload: str | None
    node: str | None = None
    written_at: datetime | None = None


# ------------------------------------------------------------------ fetching


#: What PostgreSQL says while it restarts (a standby repointed at a new upstream, or
#: rebuilt): worth waiting for, not a verdict.
_STARTING = ("the database system is starting up", "the database system is shutting down",
             "the database system is not yet accepting connections", "Connection refused")


def _connect_waiting(dsn: str, connect_timeout: int, options: str, wait: float):
    deadline = time.monotonic() + wait
    while True:
        try:
            return psycopg2.connect(dsn, connect_timeout=connect_timeout, options=options,
                                    application_name="manatee-checks")
        except psycopg2.OperationalError as e:
            if time.monotonic() > deadline or not any(m in str(e) for m in _STARTING):
                raise
            time.sleep(0.5)


def fetch_rows(dsn: str, table: str = "manatee_writes", *, connect_timeout: int = 2, timeout: float = 30.0,
               wait_start: float = 30.0) -> list[Row]:
    """All rows of `table` on the node at `dsn`, by id. A node without the table has no
    rows (a standby that has not replayed its creation yet). Works on standbys (reads only).
    A PostgreSQL that is (re)starting is waited for up to `wait_start` seconds."""
    conn = _connect_waiting(
        dsn, connect_timeout,
        f"-c statement_timeout={int(timeout * 1000)} -c default_transaction_read_only=on", wait_start)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            try:
                cur.execute(
                    sql.SQL("select id, payload, node, written_at from {} order by id").format(table_identifier(table))
                )
            except psycopg2.errors.UndefinedTable:
                return []
            return [Row(int(r[0]), r[1], r[2], r[3]) for r in cur.fetchall()]
    finally:
        conn.close()


def fetch_ids(dsn: str, table: str = "manatee_writes", **kw: Any) -> list[int]:
    """The ids in `table` on the node at `dsn`, sorted."""
    return [r.id for r in fetch_rows(dsn, table, **kw)]


# ------------------------------------------------------------------ helpers


def _ranges(ids: Iterable[int]) -> list[str]:
    """[1,2,3,7] → ["1-3", "7"]."""
    out: list[str] = []
    s = sorted(set(ids))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return out


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return lines[:MAX_LINES] + [f"... and {len(lines) - MAX_LINES} more like these"]


def _payloads(rows: Iterable[Any] | Mapping[int, Any]) -> dict[int, Any]:
    """id → payload from Rows, (id, payload) pairs, dicts with id/payload, or a mapping."""
    if isinstance(rows, Mapping):
        return {int(k): v for k, v in rows.items()}
    out: dict[int, Any] = {}
    for r in rows:
        if isinstance(r, Mapping):
            out[int(r["id"])] = r.get("payload")
        else:
            out[int(r[0])] = r[1]
    return out


# ------------------------------------------------------------------ S2, S5


def missing_acked(acked: Iterable[int], primary_ids: Iterable[int], primary_name: str = "primary") -> list[str]:
    """S2: every acknowledged id is on the (new) primary.

    Pass the writer's ``acked`` (or ``succeeded`` = acked | warned for the strict reading:
    a warned COMMIT also returned success)."""
    missing = set(acked) - set(primary_ids)
    lines = []
    for r in _ranges(missing):
        word = "ids" if "-" in r else "id"
        lines.append(f"S2: acked {word} {r} missing on the primary {primary_name}")
    if len(missing) > 1:
        lines.insert(0, f"S2: {len(missing)} acknowledged writes missing on the primary {primary_name}")
    return _capped(lines)


def unconfirmed_commits(warned: Iterable[int], where: str = "the primary") -> list[str]:
    """S5: a COMMIT that returned success with a warning (e.g. a cancelled wait for
    synchronous replication) was acknowledged without the sync confirming it."""
    w = sorted(set(warned))
    if not w:
        return []
    return [
        f"S5: {len(w)} commit(s) on {where} returned success with a warning (not confirmed by a sync): "
        f"ids {', '.join(_ranges(w)[:MAX_LINES])}"
    ]


# ------------------------------------------------------------------ S4


def not_a_prefix(
    primary_rows: Iterable[Any] | Mapping[int, Any],
    standby_rows: Iterable[Any] | Mapping[int, Any],
    standby_name: str,
    primary_name: str = "primary",
) -> list[str]:
    """S4 / no fork: a standby's rows are a subset of the primary's, with identical
    payloads. With the writer's sequential ids that is the "prefix" rule: a standby may
    lag (miss the newest ids) but must never hold an id the primary lacks."""
    p = _payloads(primary_rows)
    s = _payloads(standby_rows)
    extra = sorted(set(s) - set(p))
    lines = []
    if extra:
        lines.append(
            f"S4: fork: {standby_name} has {len(extra)} row(s) the primary {primary_name} lacks: "
            f"ids {', '.join(_ranges(extra)[:MAX_LINES])}"
        )
    differ = sorted(i for i in set(s) & set(p) if s[i] != p[i])
    for i in differ:
        lines.append(
            f"S4: fork: id {i} differs: {standby_name} has payload {s[i]!r}, primary {primary_name} has {p[i]!r}"
        )
    return _capped(lines)


# ------------------------------------------------------------------ S1


def _node_rows(rows: Iterable[Any]) -> list[tuple[int, str, datetime | None]]:
    out = []
    for r in rows:
        if isinstance(r, Row) or hasattr(r, "node"):
            out.append((int(r.id), str(r.node), getattr(r, "written_at", None)))
        elif isinstance(r, Mapping):
            out.append((int(r["id"]), str(r["node"]), r.get("written_at")))
        else:  # (id, node[, written_at])
            out.append((int(r[0]), str(r[1]), r[2] if len(r) > 2 else None))
    return out


def _same_node(a: str, b: str) -> bool:
    return a == b or node_host(a) == b or a == node_host(b) or node_host(a) == node_host(b)


class _Run(NamedTuple):
    node: str
    first: int
    last: int
    t0: datetime | None
    t1: datetime | None


def merge_rows(*row_lists: Iterable[Any]) -> list[Any]:
    """One row per id from several nodes' copies (for two_writers: a write that only the
    old primary holds must be seen too). Rows for the same id from different nodes are
    the same row, unless forked, which not_a_prefix reports."""
    by_id: dict[int, Any] = {}
    for rows in row_lists:
        for r in rows:
            i = int(r["id"] if isinstance(r, Mapping) else r[0])
            by_id.setdefault(i, r)
    return [by_id[i] for i in sorted(by_id)]


def two_writers(
    rows_with_node: Iterable[Any],
    *,
    acked: Iterable[int] | None = None,
    primaries: Sequence[str] | None = None,
) -> list[str]:
    """S1: no two nodes acknowledged writes in overlapping periods.

    rows_with_node: Rows (or dicts / (id, node, written_at) tuples) — ideally
    ``merge_rows`` over every node, so writes only an old primary kept are included.
    acked: consider only these ids (the writer's acknowledged ones). Pass it: an
    abandoned commit (unknown outcome) may still be executed by a resumed old primary.
    primaries: the shard's primaries in order of tenure (e.g. the ips of AssumeLeader
    history records); a node may then appear again in a later tenure. Without it, a
    node that wrote again after another node took over is reported (A…A B…B A).

    With one sequential writer, id order is time order: the nodes must form
    non-interleaving runs, and the runs' ``written_at`` periods must not overlap.
    """
    keep = None if acked is None else set(acked)
    data = sorted(r for r in _node_rows(rows_with_node) if keep is None or r[0] in keep)
    runs: list[_Run] = []
    for i, node, t in data:
        if runs and runs[-1].node == node:
            r = runs[-1]
            runs[-1] = r._replace(
                last=i,
                t0=min((x for x in (r.t0, t) if x is not None), default=None),
                t1=max((x for x in (r.t1, t) if x is not None), default=None),
            )
        else:
            runs.append(_Run(node, i, i, t, t))

    def span(r: _Run) -> str:
        return f"{r.node} wrote id{'s' if r.first != r.last else ''} {r.first}{'' if r.first == r.last else f'-{r.last}'}"

    lines: list[str] = []
    if primaries is None:
        seen: dict[str, int] = {}
        for k, r in enumerate(runs):
            if r.node in seen:
                prev = runs[seen[r.node]]
                between = ", then ".join(span(x) for x in runs[seen[r.node] + 1 : k])
                lines.append(f"S1: interleaved writers: {span(prev)}, then {between}, then {span(r)} again")
            seen[r.node] = k
    else:
        pos = 0  # runs must map, in order, onto successive tenures (tenures may be skipped)
        for k, r in enumerate(runs):
            j = pos
            while j < len(primaries) and not _same_node(r.node, primaries[j]):
                j += 1
            if j == len(primaries):
                ctx = ", then ".join(span(x) for x in runs[max(0, k - 2) : k + 1])
                lines.append(
                    f"S1: {r.node} wrote ids {r.first}-{r.last} outside any tenure of its own "
                    f"(primaries in order: {', '.join(primaries)}): {ctx}"
                )
                continue
            pos = j + 1

    for a_i, a in enumerate(runs):
        for b in runs[a_i + 1 :]:
            if a.node == b.node or None in (a.t0, a.t1, b.t0, b.t1):
                continue
            if a.t0 <= b.t1 and b.t0 <= a.t1:  # type: ignore[operator]
                lines.append(
                    f"S1: overlapping writers: {span(a)} during {a.t0}..{a.t1} while {span(b)} during {b.t0}..{b.t1}"
                )
    return _capped(lines)


# ------------------------------------------------------------------ S3


def _identities(peer: Any) -> set[str]:
    if peer is None:
        return set()
    if isinstance(peer, Mapping):
        ids = {str(peer[k]) for k in ("id", "zoneId", "ip", "pgUrl") if peer.get(k)}
        return ids
    return {str(peer)}


def _label(peer: Any) -> str:
    if isinstance(peer, Mapping):
        for k in ("id", "zoneId", "ip", "pgUrl"):
            if peer.get(k):
                return str(peer[k])
    return str(peer)


def promoted_from(prev_topology: Mapping[str, Any], new_primary: Any) -> list[str]:
    """S3: the new primary was the previous primary or the previous sync.

    prev_topology: cluster state as a dict with ``primary``, ``sync``, ``async`` (list),
    ``deposed`` (list); peers are strings or dicts with id/zoneId/ip/pgUrl. new_primary:
    a string or such a dict. Peers match when any identity field matches."""
    new = _identities(new_primary)
    if not new:
        return ["S3: no new primary given"]
    prim, sync = prev_topology.get("primary"), prev_topology.get("sync")
    if not _identities(prim) and not _identities(sync):
        return [f"S3: previous topology names neither a primary nor a sync: {dict(prev_topology)}"]
    if new & (_identities(prim) | _identities(sync)):
        return []
    role = "not a member"
    for a in prev_topology.get("async") or []:
        if new & _identities(a):
            role = "an async"
    for d in prev_topology.get("deposed") or []:
        if new & _identities(d):
            role = "deposed"
    return [
        f"S3: {_label(new_primary)} became primary but was {role} in the previous topology "
        f"(primary {_label(prim)}, sync {_label(sync)})"
    ]


# ------------------------------------------------------------------ S7


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def history_one_primary_per_generation(history_records: Iterable[Mapping[str, Any]]) -> list[str]:
    """S7: AssumeLeader records name at most one ip per generation, and generations
    never go back. Records are dicts with action, ip, generation (and zkSeq, which
    orders them when every record has one; otherwise their given order counts)."""
    recs = list(history_records)
    if recs and all(_int(r.get("zkSeq")) is not None for r in recs):
        recs.sort(key=lambda r: _int(r["zkSeq"]))  # type: ignore[arg-type,return-value]
    lines: list[str] = []
    leader_of: dict[int, tuple[str, Any]] = {}
    last_gen: int | None = None
    last_seq: Any = None
    for r in recs:
        if r.get("action") != "AssumeLeader":
            continue
        seq = r.get("zkSeq", "?")
        gen = _int(r.get("generation"))
        ip = r.get("ip")
        if gen is None:
            lines.append(f"S7: AssumeLeader by {ip} (zkSeq {seq}) has no generation: {dict(r)}")
            continue
        if ip is None:
            lines.append(f"S7: AssumeLeader in generation {gen} (zkSeq {seq}) names no ip")
            continue
        if gen in leader_of and leader_of[gen][0] != ip:
            lines.append(
                f"S7: two primaries in generation {gen}: {leader_of[gen][0]} (zkSeq {leader_of[gen][1]}) "
                f"and {ip} (zkSeq {seq})"
            )
        leader_of.setdefault(gen, (ip, seq))
        if last_gen is not None and gen < last_gen:
            lines.append(
                f"S7: generation went back from {last_gen} (zkSeq {last_seq}) to {gen} (zkSeq {seq}, {ip})"
            )
        if last_gen is None or gen >= last_gen:
            last_gen, last_seq = gen, seq
    return _capped(lines)


# ------------------------------------------------------------------ all data checks


def check_data(
    acked: Iterable[int],
    primary: tuple[str, str],
    standbys: Mapping[str, str] | None = None,
    *,
    table: str = "manatee_writes",
    warned: Iterable[int] = (),
    others: Mapping[str, str] | None = None,
    primaries: Sequence[str] | None = None,
) -> list[str]:
    """Fetch and check in one call: S2 on the primary, S4 on every standby, S1 over all
    nodes' rows, S5 for warned commits.

    primary: (name, dsn); standbys: name → dsn of the nodes that replicate from the
    shard now; others: name → dsn of further nodes whose rows only feed S1 (e.g. a
    deposed old primary before its rebuild)."""
    acked = set(acked)
    p_name, p_dsn = primary
    p_rows = fetch_rows(p_dsn, table)
    problems = missing_acked(acked, [r.id for r in p_rows], p_name)
    all_rows = [p_rows]
    for name, dsn in (standbys or {}).items():
        rows = fetch_rows(dsn, table)
        problems += not_a_prefix(p_rows, rows, name, p_name)
        all_rows.append(rows)
    for dsn in (others or {}).values():
        all_rows.append(fetch_rows(dsn, table))
    problems += two_writers(merge_rows(*all_rows), acked=acked, primaries=primaries)
    problems += unconfirmed_commits(warned, p_name)
    return problems


def summarise(problems: Sequence[str]) -> str:
    """One string for an assertion message."""
    if not problems:
        return "all checks passed"
    return f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)


__all__ = [
    "Row",
    "fetch_rows",
    "fetch_ids",
    "missing_acked",
    "unconfirmed_commits",
    "not_a_prefix",
    "merge_rows",
    "two_writers",
    "promoted_from",
    "history_one_primary_per_generation",
    "check_data",
    "summarise",
]
