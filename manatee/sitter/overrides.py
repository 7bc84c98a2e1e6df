"""ALTER SYSTEM overrides of the settings manatee manages.

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

AUTO_CONF = "postgresql.auto.conf"
_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")  # a GUC name, safe to splice into ALTER SYSTEM RESET


def overridden(rows: list[dict], managed: set[str]) -> list[str]:
    """The managed settings that postgresql.auto.conf sets (rows of pg_file_settings: name)."""
    names = {str(r.get("name") or "").lower() for r in rows}
    return sorted(n for n in names & {m.lower() for m in managed} if _NAME.match(n))


class OverrideGuard:
    """Resets the overrides at each check; remembers the last failed check's error, so that
    a failure is logged once per new error, not every cycle."""

    def __init__(self, log):
        self.log = log
        self.last_error: str | None = None

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
            if e.timed_out:  # PostgreSQL stopped answering: the caller's status says so
                raise
            if self.last_error != str(e):
                self.log.warning("pg_override_check_failed", error=str(e)[:300])
            self.last_error = str(e)
            return []
        self.last_error = None
        if found:
            self.log.error("pg_override_removed", settings=found,
                           note=f"ALTER SYSTEM ({AUTO_CONF}) overrode settings manatee manages; they are reset "
                                f"and PostgreSQL reloaded. Set parameters in postgresMgrCfg.parameters instead")
        return found
