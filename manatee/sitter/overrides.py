"""ALTER SYSTEM overrides of the settings manatee manages, and the sitter's own way in.

`ALTER SYSTEM` writes postgresql.auto.conf, which PostgreSQL reads after every other config
file: its values win over manatee's. One such line undoes a safety property at once — on a
primary, `ALTER SYSTEM SET synchronous_standby_names = ''` and a reload make it acknowledge
commits its sync never received, which a failover then loses (S1/S2; sandbox trial
2026-12-06: the setting stayed empty, unnoticed). So the sitter resets every override of a
setting it renders (manatee.conf's and postgresMgrCfg.parameters) and reloads, at each
status check, and says so loudly; settings manatee does not manage are the operator's. It
never fails a cycle: a query that fails is logged and tried again at the next check; one
that times out is raised, and the status check it belongs to reads as unknown (hung).
"""

from __future__ import annotations

import re

from manatee.core import pg as pgmod
from manatee.core.pgquote import ident_quote

AUTO_CONF = "postgresql.auto.conf"
_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")  # a GUC name, safe to splice into ALTER SYSTEM RESET


def overridden(rows: list[dict], managed: set[str]) -> list[str]:
    """The managed settings that postgresql.auto.conf sets (rows of pg_file_settings: name)."""
    names = {str(r.get("name") or "").lower() for r in rows}
    return sorted(n for n in names & {m.lower() for m in managed} if _NAME.match(n))


# The sitter's own way into PostgreSQL, as the catalog says (columns of the status query). An
# operator's `ALTER ROLE postgres NOLOGIN` (a hardening guide's advice) or `ALTER DATABASE
# postgres ALLOW_CONNECTIONS false` replicates to every node and locks out each sitter at its
# next new connection: sandbox trial 2026-12-06, the primary's PostgreSQL killed once, its
# sitter could not log in to the restarted server and stepped down (13.3 s without writes),
# and a shard whose sitters all restart would be blind, with no other superuser to undo it.
ACCESS_SQL = (" (select rolcanlogin from pg_roles where rolname = current_user) as can_login,"
              " (select rolsuper from pg_roles where rolname = current_user) as is_super,"
              " (select datallowconn from pg_database where datname = current_database()) as allow_conn,"
              " current_database() as dbname")


def access_fixes(row: dict) -> list[tuple[str, str]]:
    """(what was wrong, the SQL that restores it) for the sitter's own role and database, from
    the status query's row; unknown (NULL) is left alone."""
    out = []
    if row.get("can_login") is False:
        out.append(("its role may not log in (NOLOGIN)", "ALTER ROLE CURRENT_USER LOGIN"))
    if row.get("allow_conn") is False and row.get("dbname"):
        out.append((f"database {row['dbname']} takes no connections (ALLOW_CONNECTIONS false)",
                    f"ALTER DATABASE {ident_quote(str(row['dbname']))} ALLOW_CONNECTIONS true"))
    return out


class OverrideGuard:
    """Resets the overrides at each check; remembers the last failed check's error, so that
    a failure is logged once per new error, not every cycle."""

    def __init__(self, log):
        self.log = log
        self.last_error: str | None = None
        self.access_error: str | None = None  # the same for keep_access

    async def drop(self, client, managed: set[str], timeout: float) -> list[str]:
        """Reset the overrides of `managed` settings and reload; the names reset ([] if none)."""
        try:
            rows = await client.query("select distinct name from pg_file_settings where sourcefile like %s",
                                      (f"%/{AUTO_CONF}",), timeout=timeout)
            found = overridden(rows, managed)
            for name in found:
                await client.execute(f"ALTER SYSTEM RESET {name}", timeout=timeout)
            if found:
                await client.query("select pg_reload_conf()", timeout=timeout)
        except pgmod.PgError as e:
            self._failed("last_error", "pg_override_check_failed", e)
            return []
        self.last_error = None
        if found:
            self.log.error("pg_override_removed", settings=found,
                           note=f"ALTER SYSTEM ({AUTO_CONF}) overrode settings manatee manages; they are reset "
                                f"and PostgreSQL reloaded. Set parameters in postgresMgrCfg.parameters instead")
        return found

    async def keep_access(self, client, row: dict, timeout: float) -> list[str]:
        """On a read-write primary: undo what locks the sitters out of PostgreSQL (access_fixes),
        committed locally (a missing sync must not hold the fix, and a timeout raises as above:
        the check reads as unknown); what was undone ([] if nothing)."""
        fixes = access_fixes(row)
        if not fixes:
            return []
        sql = "BEGIN; SET LOCAL synchronous_commit = local; " + "; ".join(f for _, f in fixes) + "; COMMIT"
        try:
            await client.execute(sql, timeout=timeout)
        except pgmod.PgError as e:
            self._failed("access_error", "pg_access_fix_failed", e)
            return []
        self.access_error = None
        found = [w for w, _ in fixes]
        self.log.error("pg_access_restored", undone=found,
                       note="every sitter connects as this role to this database, and one that cannot log in "
                            "after a restart of its PostgreSQL gives way or goes blind; restrict where it "
                            "logs in from in pg_hba.conf instead")
        return found

    def _failed(self, key: str, event: str, e: pgmod.PgError) -> None:
        """A check or fix that failed: a timeout is raised (PostgreSQL stopped answering: the
        caller's status reads as unknown); any other error is logged under `event` once per new
        error (`key`: the attribute that remembers it)."""
        if e.timed_out:
            raise e
        if getattr(self, key) != str(e):
            self.log.warning(event, error=str(e)[:300])
        setattr(self, key, str(e))
