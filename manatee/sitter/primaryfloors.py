"""Settings a standby must hold at least at its primary's value, raised by the sitter itself.

A hot standby needs pgparams.HOT_STANDBY_SETTINGS at least as high as its primary had them
when that primary last started. Each node's postgresMgrCfg.parameters is its own file, so
one node edited differently is enough, and so is a rolling restart that lowers one of them
(the standbys restart first). With less, PostgreSQL 15 pauses the standby's replay, refuses to
promote it (and shuts down when asked to, or when its replay is resumed), and then fails every
start until the setting is raised: the shard's sync could not take over. Its log names the
setting and the primary's value (pglog.primary_values_in).

The sitter raises them, as Patroni does from pg_controldata: each value the log names is kept
as a floor for the sitter's life and rendered over the configured value in every role (a
standby promoted later runs with it anyway); a running PostgreSQL is restarted once for a new
floor, and a stopped one reads it at its start. Never lowered: a higher value costs only
memory. The operator is told (log `pg_settings_raised_to_primary`, /state
`pg.raisedToPrimary`, `manatee-adm verify`) to raise the node's own config to match.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from manatee.core.pgparams import HOT_STANDBY_SETTINGS


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


class PrimaryFloors:
    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.unwritten = False  # a floor raised since the config files were last written

    def note(self, found: Iterable[tuple[str, int]], log) -> bool:
        """Keep the log's (name, primary's value) pairs as floors (only HOT_STANDBY_SETTINGS:
        no other name is rendered over the operator's config); True if one was raised."""
        raised = {n: v for n, v in found if n in HOT_STANDBY_SETTINGS and v > self.values.get(n, 0)}
        if not raised:
            return False
        self.values.update(raised)
        self.unwritten = True
        log.warning("pg_settings_raised_to_primary", raised=raised,
                    note="a standby needs at least its primary's value of these; PostgreSQL paused its replay "
                         "and could not be promoted: restarting it with them (raise them in postgresMgrCfg.parameters)")
        return True

    def above(self, parameters: Mapping[str, str]) -> dict[str, int]:
        """The floors higher than the configured value, or where nothing (or no number) is
        configured (the log said the value in use is lower): what the sitter overrides, and
        what the operator is told to set. A config raised to the floor since is not named."""
        out = {}
        for name, value in self.values.items():
            configured = _int(parameters.get(name)) if name in parameters else None
            if configured is None or configured < value:
                out[name] = value
        return out

    def over(self, parameters: Mapping[str, str]) -> dict[str, str]:
        """The operator's parameters with each floor in `above` rendered over them."""
        return {**parameters, **{n: str(v) for n, v in self.above(parameters).items()}}

    def written(self) -> bool:
        """The config files now hold every floor: True if one was new (a running PostgreSQL
        must restart to use it)."""
        new, self.unwritten = self.unwritten, False
        return new
