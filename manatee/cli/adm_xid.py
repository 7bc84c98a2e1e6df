"""Transaction-ID (and MultiXact) wraparound risk on the primary, for manatee-adm show/verify.

PostgreSQL refuses every new transaction ID once the age of some database's datfrozenxid
is within 3 million of 2^31 (ERROR 54000 "database is not accepting commands to avoid
wraparound data loss"), and the same for MultiXact IDs; it only logs warnings from 40 million
before that, where nobody looks. Autovacuum normally keeps the age near
autovacuum_freeze_max_age (200 million); it climbs when something holds the oldest xmin back
so that VACUUM cannot freeze: a long-open transaction, a forgotten prepared transaction, a
replication slot's xmin (a standby with hot_standby_feedback, a stalled logical consumer).

XID_AGE_SQL asks for the largest ages and the oldest xmin holder in one short query;
`xid_problems` is the pure part: thresholds and the operator's line, tested by a table.
"""

from __future__ import annotations

from typing import Any, Mapping

#: the age at which PostgreSQL stops assigning IDs: 3 million short of 2^31 - 1
STOP_AGE = 2**31 - 1 - 3_000_000
WARN_AGE = 1_000_000_000      # about half-way to the stop; autovacuum keeps it near 200 million
CRIT_AGE = 2_000_000_000
HOLDER_AGE = 100_000_000      # a holder this old is named as the cause

__all__ = ["XID_AGE_SQL", "STOP_AGE", "WARN_AGE", "CRIT_AGE", "HOLDER_AGE", "fmt_count", "parse_row",
           "xid_problems"]

# one row: the database with the oldest datfrozenxid, the one with the oldest datminmxid, and
# the oldest xmin holder (a backend other than this one, a prepared transaction, a slot), if any
XID_AGE_SQL = (
    "select x.datname as db, age(x.datfrozenxid)::bigint as age,"
    " m.datname as mxid_db, mxid_age(m.datminmxid)::bigint as mxid_age,"
    " h.kind, h.name, h.pid, h.usename, h.state, h.since, h.age::bigint as holder_age"
    " from (select datname, datfrozenxid from pg_database order by age(datfrozenxid) desc limit 1) x"
    " cross join (select datname, datminmxid from pg_database order by mxid_age(datminmxid) desc limit 1) m"
    " left join lateral ("
    "  select 'backend' as kind, null::text as name, pid, usename::text as usename, state,"
    "   to_char(xact_start at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') as since,"
    "   greatest(age(backend_xmin), age(backend_xid)) as age"
    "  from pg_stat_activity where (backend_xmin is not null or backend_xid is not null)"
    "   and pid <> pg_backend_pid()"
    "  union all select 'prepared', gid, null, owner::text, null,"
    "   to_char(prepared at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), age(transaction)"
    "  from pg_prepared_xacts"
    "  union all select 'slot', slot_name::text, active_pid, null, case when active then 'active' else"
    "   'inactive' end, null, greatest(age(xmin), age(catalog_xmin))"
    "  from pg_replication_slots where xmin is not null or catalog_xmin is not null"
    "  order by 7 desc limit 1) h on true")


def parse_row(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """XID_AGE_SQL's row as the probe's `xidAge`: {db, age, mxidDb, mxidAge, holder: {kind,
    name, pid, user, state, since, age} | None}; None without a row."""
    if not row:
        return None
    holder = None
    if row.get("kind") and row.get("holder_age") is not None:
        holder = {"kind": row["kind"], "name": row.get("name"), "pid": row.get("pid"),
                  "user": row.get("usename"), "state": row.get("state"), "since": row.get("since"),
                  "age": int(row["holder_age"])}
    return {"db": row.get("db"), "age": _int(row.get("age")), "mxidDb": row.get("mxid_db"),
            "mxidAge": _int(row.get("mxid_age")), "holder": holder}


def _int(x: Any) -> int | None:
    return None if x is None else int(x)


def fmt_count(n: int) -> str:
    """A count of transactions as the operator reads it: '1.20 billion', '0.14 billion', '2.5 million'."""
    if n >= 100_000_000:
        return f"{n / 1e9:.2f} billion"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} million"
    return f"{n:,}"


def _holder_text(h: Mapping[str, Any]) -> tuple[str, str]:
    """(who holds the oldest xmin, what to do about it)."""
    kind, name, age = h.get("kind"), h.get("name"), fmt_count(int(h.get("age") or 0))
    if kind == "prepared":
        return (f"prepared transaction '{name}' (age {age})",
                "commit or roll it back (COMMIT PREPARED / ROLLBACK PREPARED)")
    if kind == "slot":
        return (f"replication slot '{name}' (age {age}, {h.get('state') or '?'})",
                "fix or drop its consumer (a standby with hot_standby_feedback, a logical decoder)")
    bits = [f"user {h.get('user')}" if h.get("user") else "", h.get("state") or "",
            f"transaction open since {h['since']}" if h.get("since") else ""]
    return (f"backend pid {h.get('pid')} ({', '.join(b for b in bits if b)}; age {age})",
            f"end that transaction (pg_terminate_backend({h.get('pid')}))")


def _line(kind: str, db: Any, age: int, holder: Mapping[str, Any] | None) -> str:
    left = max(0, STOP_AGE - age)
    when = (f"refuses writes in {fmt_count(left)} more transactions" if left else
            f"refuses writes now (it stops {fmt_count(2**31 - 1 - STOP_AGE)} short of wraparound)")
    out = f"{kind} age {fmt_count(age)} in database {db}: PostgreSQL {when}; "
    if holder is not None and int(holder.get("age") or 0) >= HOLDER_AGE:
        who, fix = _holder_text(holder)
        return out + f"the oldest xmin is held by {who}: {fix}, then VACUUM (FREEZE)"
    return out + "nothing holds the oldest xmin back: run VACUUM (FREEZE) there (vacuumdb --freeze; is autovacuum on?)"


def xid_problems(what: str, xid: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(severity, line) for the primary's wraparound risk from its probe's `xidAge`: a warning
    from WARN_AGE, critical from CRIT_AGE, for the XID and the MultiXact age alike. Nothing
    when not known (the query failed, or was not asked): unknown, not ok, and no line."""
    if not isinstance(xid, Mapping):
        return []
    holder = xid.get("holder") if isinstance(xid.get("holder"), Mapping) else None
    out = []
    for kind, db, age in (("XID", xid.get("db"), xid.get("age")), ("MultiXact", xid.get("mxidDb"), xid.get("mxidAge"))):
        if isinstance(age, int) and age >= WARN_AGE:
            out.append(("critical" if age >= CRIT_AGE else "warning", f"{what}: {_line(kind, db, age, holder)}"))
    return out
