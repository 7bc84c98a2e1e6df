"""The operator's PostgreSQL parameters (``postgresMgrCfg.parameters``) and what a changed
setting takes: which settings manatee owns, which need a restart, which a reload.

Pure: validation for the config loader, and the parser of manatee.conf that
:func:`manatee.core.pgconfig.write_role_config` compares old and new settings with.
"""

from __future__ import annotations

import re

#: Settings whose change needs a postmaster restart in PostgreSQL 15
#: (pg_settings.context = 'postmaster'). Anything not known to be reloadable
#: (:data:`RELOADABLE_SETTINGS`) is treated as restart-only, to be safe.
RESTART_SETTINGS = frozenset(
    {
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "cluster_name",
        "wal_level",
        "max_wal_senders",
        "max_replication_slots",
        "wal_log_hints",
        "hot_standby",
        "recovery_target_timeline",
        "max_connections",
        "shared_buffers",
    }
)
#: The settings a hot standby must hold at least at its primary's values (PostgreSQL 15 docs,
#: "Hot Standby", administrator's overview): the primary records them in its WAL, and a standby
#: with less pauses its replay and cannot be promoted. Read by manatee-adm show/verify
#: (adm_hotstandby) and raised by the sitter (sitter/primaryfloors.py).
HOT_STANDBY_SETTINGS = ("max_connections", "max_prepared_transactions", "max_locks_per_transaction",
                        "max_wal_senders", "max_worker_processes")
#: Settings that take effect on SIGHUP (context sighup/user/superuser).
#: primary_conninfo is reloadable since PostgreSQL 13.
RELOADABLE_SETTINGS = frozenset(
    {
        "synchronous_commit",
        "synchronous_standby_names",
        "default_transaction_read_only",
        "primary_conninfo",
        "primary_slot_name",
        "wal_keep_size",
        "max_slot_wal_keep_size",
        "full_page_writes",
        "wal_compression",
        "wal_init_zero",
        "wal_recycle",
        "hot_standby_feedback",
        "wal_receiver_status_interval",
        "wal_receiver_timeout",
        "wal_retrieve_retry_interval",
        "wal_sender_timeout",
        "fsync",
        "log_min_messages",
        "statement_timeout",
    }
)
#: A WAL size PostgreSQL takes: -1 (no limit), or a whole number with an optional unit (MB if none).
WAL_SIZE = re.compile(r"^(-1|\d+\s*(kB|MB|GB|TB)?)$")

#: Settings manatee decides (per role, or because failover depends on them): refused in
#: postgresMgrCfg.parameters, each with why (or which config key sets it instead).
OWNED_SETTINGS: dict[str, str] = {
    "listen_addresses": "manatee listens on the sitter's ip",
    "port": "set postgresPort",
    "unix_socket_directories": "set postgresMgrCfg.socketDir",
    "cluster_name": "manatee names the cluster after zoneId",
    "wal_level": "replication needs 'replica'",
    "hot_standby": "standbys must answer queries (the sitter watches them)",
    "wal_log_hints": "pg_rewind needs it",
    "synchronous_standby_names": "the sitter names the sync",
    "synchronous_commit": "set postgresMgrCfg.synchronousCommit",
    "default_transaction_read_only": "the sitter decides when the primary takes writes",
    "primary_conninfo": "the sitter points each standby at its upstream",
    "primary_slot_name": "the sitter names each standby's replication slot",
    "max_slot_wal_keep_size": "set postgresMgrCfg.maxSlotWalKeepSize",
    "recovery_target_timeline": "standbys must follow the newest timeline",
    "recovery_target": "a standby must not stop replaying",
    "recovery_target_lsn": "a standby must not stop replaying",
    "recovery_target_name": "a standby must not stop replaying",
    "recovery_target_time": "a standby must not stop replaying",
    "recovery_target_xid": "a standby must not stop replaying",
    "recovery_target_action": "a standby must not stop replaying",
    "promote_trigger_file": "only the sitter promotes",
    "data_directory": "set postgresMgrCfg.dataDir",
    "config_file": "manatee writes the configuration",
    "hba_file": "manatee writes pg_hba.conf",
    "ident_file": "manatee writes the configuration",
    "include": "not a parameter",
    "include_if_exists": "not a parameter",
    "include_dir": "not a parameter",
}
#: A PostgreSQL parameter name: an identifier, or class.name for an extension's.
_PARAMETER_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")
PARAMETERS_MARKER = "# postgresMgrCfg.parameters (the operator's; reloaded, never restarted for):"


def parameter_problem(name: str, value: object) -> str | None:
    """Why `name` = `value` cannot be an operator parameter, or None. Pure."""
    if not isinstance(name, str) or not _PARAMETER_NAME.match(name) or len(name) > 63:
        return (f"{name!r} is not a PostgreSQL parameter name (lower-case letters, digits and '_', "
                "or class.name for an extension's)")
    if name in OWNED_SETTINGS:
        return f"{name} is set by manatee and cannot be overridden ({OWNED_SETTINGS[name]})"
    if not isinstance(value, (str, int, float)):  # bool is an int
        return f"{name}: the value must be a string, a number or a boolean (got {type(value).__name__})"
    if isinstance(value, str) and not _PRINTABLE_VALUE.match(value):
        return f"{name}: the value must be printable text on one line"
    return None


_PRINTABLE_VALUE = re.compile(r"^[^\x00-\x1f\x7f]*$")


def parameter_value(value: str | int | float) -> str:
    """A config value as PostgreSQL's text: booleans on/off, numbers as written."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def parse_settings(text: str) -> dict[str, str]:
    """Our own manatee.conf back into name → raw value (for comparing old vs new)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def parameter_names(text: str) -> list[str]:
    """The names set under PARAMETERS_MARKER in a manatee.conf (the operator's parameters)."""
    lines = text.splitlines()
    if PARAMETERS_MARKER not in lines:
        return []
    return list(parse_settings("\n".join(lines[lines.index(PARAMETERS_MARKER) + 1:])))
