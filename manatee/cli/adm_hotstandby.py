"""The settings a standby must hold at least at its primary's values (manatee-adm show/verify).

PostgreSQL records the primary's values of pgparams.HOT_STANDBY_SETTINGS in its WAL (and in
every standby's pg_control). A hot standby whose own value is lower cannot replay that WAL: it
logs "hot standby is not possible because of insufficient parameter settings" and pauses its
replay, cannot be promoted (it shuts down when asked to) and fails every start until it has
enough (PostgreSQL 15, checked by hand 2026-12-07). Its sitter raises them itself when its log
says so (manatee/sitter/primaryfloors.py); this check shows the gap before that. Each node's
postgresMgrCfg.parameters is its own file, so one node edited differently is enough; so is a
rolling restart that lowers one of them (the standbys restart first, below the primary that
still runs with the old value).
"""

from __future__ import annotations

from typing import Any, Mapping

from manatee.core.pgparams import HOT_STANDBY_SETTINGS


HOT_STANDBY_SQL = ("select name, setting::bigint from pg_settings where name in ("
                   + ", ".join(f"'{n}'" for n in HOT_STANDBY_SETTINGS) + ") order by name")


def read_settings(cur) -> dict[str, int]:
    """The node's values of HOT_STANDBY_SETTINGS (a cursor of its PostgreSQL)."""
    cur.execute(HOT_STANDBY_SQL)
    return {str(n): int(v) for n, v in cur.fetchall()}


def below_primary(standby: Mapping[str, Any] | None, primary: Mapping[str, Any] | None,
                  primary_ip: str) -> str | None:
    """A standby's values below the primary's, said with what to do; None if none (or either
    side not known)."""
    if not isinstance(standby, Mapping) or not isinstance(primary, Mapping):
        return None
    low = [f"{n} {standby[n]} (the primary {primary_ip}: {primary[n]})" for n in HOT_STANDBY_SETTINGS
           if isinstance(standby.get(n), int) and isinstance(primary.get(n), int) and standby[n] < primary[n]]
    if not low:
        return None
    return (f"{', '.join(low)}: a standby needs at least the primary's value, else PostgreSQL pauses its "
            f"replay at the primary's next start and cannot promote it ('insufficient parameter settings'; its "
            f"sitter then restarts it with the primary's value); raise it in its postgresMgrCfg.parameters, "
            f"manatee-adm reload, then restart --pending (to lower one of these: docs/operators-guide.md, "
            f"'Settings a standby needs at the primary's value')")
