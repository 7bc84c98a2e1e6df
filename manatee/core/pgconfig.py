"""The PostgreSQL configuration for a node's role (primary or standby).

Everything role-dependent lives in two generated files inside the data directory:

* ``manatee.conf`` — settings; ``postgresql.conf`` includes it at its end with
  ``include_if_exists = 'manatee.conf'`` so an operator's own tuning in
  ``postgresql.conf`` stays theirs while the role settings always win;
* ``pg_hba.conf`` — who may connect (generated whole: no template).

plus ``standby.signal`` (present on a standby; PG >= 12 has no recovery.conf).

Rendering is pure (:func:`render_manatee_conf`, :func:`render_pg_hba`);
:func:`write_role_config` writes the files and says whether PostgreSQL must be
restarted or only reloaded for them to take effect. The operator's parameters and the
restart/reload classes of settings are :mod:`manatee.core.pgparams`; quoting and the
CREATE ROLE statement :mod:`manatee.core.pgquote`.

Choices that differ from the original Manatee (§1.6), and why:

* ``synchronous_commit`` defaults to ``on`` (the sync has *flushed* the WAL to
  disk before COMMIT returns) rather than the original's ``remote_write`` (the
  sync has only *written* it to its OS cache). With ``remote_write`` an
  acknowledged commit is lost if the primary dies and the sync's host crashes
  (power, kernel) before its page cache reaches disk: S2 would then depend on
  two hosts never failing together. ``on`` costs one fsync on the sync per
  commit group. It stays configurable (``remote_write`` for the original's
  latency, ``remote_apply`` for read-your-writes on the sync).
* ``full_page_writes = on``. The original ran with ``off``, which is defensible
  only on ZFS (copy-on-write: a torn 8 kB page cannot happen with recordsize
  >= 8k). Data directories here may be on other file systems (tests use plain
  directories), and ``pg_basebackup``/``pg_rewind`` also rely on full-page images,
  so it stays on; an operator on ZFS may turn it off in ``extra_settings``.
* ``wal_log_hints = on`` keeps ``pg_rewind`` possible for a diverged node.
* ``wal_compression = lz4`` (full-page images compressed: with full_page_writes on,
  they are most of the WAL after a checkpoint), ``wal_init_zero = off`` and
  ``wal_recycle = off`` (PostgreSQL's settings for copy-on-write file systems: ZFS
  gains nothing from pre-zeroed or recycled segments). All three are defaults an
  operator may change in ``parameters`` (e.g. ``pglz`` for a PostgreSQL built
  without lz4).
* ``wal_keep_size`` (PG >= 13) replaces ``wal_keep_segments`` (1000 × 16 MB).
* ``default_transaction_read_only`` is a *default*: a client can still
  ``SET default_transaction_read_only = off``. It keeps well-behaved clients off a
  primary without a caught-up sync (S5) but is not the fence for S1 — that is
  synchronous replication (a commit cannot complete without the sync) plus the
  sitter stopping PostgreSQL when it loses its place.
* pg_hba allows replication only to the replication role and only from shard
  members, TCP sessions of the superuser and of the replication role are rejected
  (unless the superuser is the configured admin role), and client access only from
  configured networks; the unix socket is ``trust`` because its directory is
  private (mode 0700, owned by the PostgreSQL user).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from manatee.core import nofollow
from manatee.core.pgparams import (
    PARAMETERS_MARKER,
    RELOADABLE_SETTINGS,
    WAL_SIZE,
    parameter_names,
    parameter_problem,
    parse_settings,
)
from manatee.core.pgquote import check_role, conf_quote, ident_quote, render_conninfo
from manatee.core.slotname import slot_name

MANATEE_CONF = "manatee.conf"
INCLUDE_LINE = f"include_if_exists = '{MANATEE_CONF}'"
STANDBY_SIGNAL = "standby.signal"

#: PostgreSQL truncates application_name to NAMEDATALEN-1 bytes and replaces
#: non-printable-ASCII characters with '?': a longer or non-ASCII name would
#: silently stop matching synchronous_standby_names.
MAX_APPLICATION_NAME = 63
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]+$")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

AuthMethod = Literal["trust", "md5", "scram-sha-256", "cert"]
SyncCommit = Literal["on", "remote_write", "remote_apply", "local", "off"]


#: Default tcp_user_timeout (ms) of a standby's walreceiver (postgresMgrCfg.replicationTcpUserTimeout).
#: The walreceiver connects asynchronously and ignores connect_timeout, so a lost SYN waits on
#: the kernel's back-off (1 s four times, then 2, 4, 8, 16 s): after 20 s of lost SYNs it
#: streamed again 15.7 s after the link was fine (sandbox, 2026-12-06). With the bound a connect
#: fails after 5 s and is retried wal_retrieve_retry_interval later with a fresh SYN. It also
#: ends a stream whose own sends (its feedback) go unacknowledged that long. 0: not set.
WALRECEIVER_TCP_USER_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class RoleConfig:
    """Everything that decides the role-dependent PostgreSQL configuration of one node."""

    role: Literal["primary", "standby"]
    listen_address: str
    port: int
    socket_dir: str | Path
    #: This node's identity in replication (the original uses its pgUrl): the primary
    #: names its sync in synchronous_standby_names by it.
    application_name: str
    #: application_name of the sync standby (None: no sync). A primary's, or that of a
    #: detached standby that is about to be promoted (PostgreSQL ignores it until then).
    sync_standby: str | None = None
    #: default_transaction_read_only. The sitter keeps a primary read-only until its
    #: sync has caught up (and while it has none, unless one-node-write mode).
    #: A standby is rendered read-only regardless, so a promoted standby stays
    #: read-only until the sitter writes its primary configuration — except a detached
    #: standby about to be promoted (sync_standby set): it renders this as the primary will.
    read_only: bool = True
    #: Standby only: (host, port) of the upstream it streams from; None = detached (an empty
    #: primary_conninfo: nothing more arrives — a sync does this before it takes over, so
    #: that a cut-off old primary cannot stream commits into it beyond what it recorded).
    upstream: tuple[str, int] | None = None
    #: The role standbys stream as (REPLICATION, not a superuser; see docs/security.md).
    replication_user: str = "postgres"
    replication_password: str | None = None
    #: Further roles accepted for replication from members (while a shard migrates from
    #: one replication role to another).
    extra_replication_users: tuple[str, ...] = ()
    #: sslmode/sslrootcert/sslcert/sslkey of the standby's replication connection (None: libpq default).
    replication_ssl: tuple[tuple[str, str], ...] = ()
    #: tcp_user_timeout (ms) of the standby's replication connection; 0: the kernel's own.
    replication_tcp_user_timeout_ms: int = WALRECEIVER_TCP_USER_TIMEOUT_MS
    #: Addresses (IPs or CIDRs) of shard members allowed to replicate from this node.
    members: tuple[str, ...] = ()
    #: Networks allowed ordinary client connections; None = 127.0.0.1/32 and the members.
    client_cidrs: tuple[str, ...] | None = None
    #: pg_hba method for TCP connections (the unix socket is always trust). ``trust`` is
    #: accepted only when every network it would open is loopback.
    auth_method: AuthMethod = "scram-sha-256"
    #: The database superuser: over TCP only as admin_user from admin_cidrs (else socket only).
    superuser: str = "postgres"
    #: A role allowed ordinary sessions over TCP from admin_cidrs with admin_method (the
    #: superuser's TCP access, when an operator asks for it); None: nobody.
    admin_user: str | None = None
    admin_cidrs: tuple[str, ...] = ()
    admin_method: AuthMethod = "scram-sha-256"
    #: The role a rebuilding member's pg_rewind reads this node's files as (no superuser,
    #: no replication: execute on four file functions); None: no such access. Only from
    #: members, only to the ``postgres`` database, always with a password (scram-sha-256).
    rewind_user: str | None = None
    synchronous_commit: SyncCommit = "on"
    max_wal_senders: int = 15
    wal_keep_size: str = "1GB"
    #: The most WAL a replication slot may hold back (-1: no cap); a slot past it is lost.
    max_slot_wal_keep_size: str = "4GB"
    hot_standby_feedback: bool = False
    #: Shown in process titles ("postgres: NAME: checkpointer"); None = not set.
    cluster_name: str | None = None
    #: Extra settings rendered last (e.g. fsync=off for throwaway test instances).
    extra_settings: Mapping[str, str] | tuple[tuple[str, str], ...] = field(default=())
    #: The operator's PostgreSQL parameters (postgresMgrCfg.parameters), rendered after
    #: everything else under PARAMETERS_MARKER. A change to them is only ever *reloaded*:
    #: one that needs a restart shows as pending_restart, never restarts PostgreSQL.
    parameters: Mapping[str, str] | tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        # Normalise containers so the frozen config stays hashable and comparable.
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "extra_replication_users", tuple(self.extra_replication_users))
        object.__setattr__(self, "admin_cidrs", tuple(self.admin_cidrs))
        object.__setattr__(self, "replication_ssl", tuple(_items(self.replication_ssl)))
        if self.client_cidrs is not None:
            object.__setattr__(self, "client_cidrs", tuple(self.client_cidrs))
        object.__setattr__(self, "extra_settings", tuple(_items(self.extra_settings)))
        object.__setattr__(self, "parameters", tuple(_items(self.parameters)))
        if self.upstream is not None:
            object.__setattr__(self, "upstream", (str(self.upstream[0]), int(self.upstream[1])))
        if self.role not in ("primary", "standby"):
            raise ValueError(f"RoleConfig.role: expected 'primary' or 'standby', got {self.role!r}")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"RoleConfig.port: out of range: {self.port}")
        if not 0 <= int(self.replication_tcp_user_timeout_ms) <= 2**31 - 1:
            raise ValueError("RoleConfig.replication_tcp_user_timeout_ms: out of range: "
                             f"{self.replication_tcp_user_timeout_ms}")
        if not os.path.isabs(str(self.socket_dir)):
            raise ValueError(f"RoleConfig.socket_dir: must be absolute: {self.socket_dir}")
        _check_app_name("application_name", self.application_name)
        if self.sync_standby is not None:
            if self.role != "primary" and self.upstream is not None:
                raise ValueError("RoleConfig.sync_standby: only a primary (or a detached standby "
                                 "about to be promoted) has a sync standby")
            _check_app_name("sync_standby", self.sync_standby)
        if self.role == "primary" and self.upstream is not None:
            raise ValueError("RoleConfig.upstream: a primary has no upstream")
        for cidr in (*self.members, *(self.client_cidrs or ()), *self.admin_cidrs):
            _cidr(cidr)
        for name, method, nets in (("auth_method", self.auth_method, (*self.members, *self.effective_client_cidrs)),
                                   ("admin_method", self.admin_method, self.admin_cidrs)):
            if method not in ("trust", "md5", "scram-sha-256", "cert"):
                raise ValueError(f"RoleConfig.{name}: unsupported: {method!r}")
            wide = [c for c in nets if not ipaddress.ip_network(_cidr(c)).is_loopback]
            if method == "trust" and wide:
                raise ValueError(f"RoleConfig.{name}: 'trust' would let anyone on {wide[0]} in "
                                 "without a password; use scram-sha-256 or cert")
        for role in (self.replication_user, *self.extra_replication_users, self.superuser,
                     *([self.admin_user] if self.admin_user is not None else []),
                     *([self.rewind_user] if self.rewind_user is not None else [])):
            check_role("role name", role)
        if self.admin_user is not None and not self.admin_cidrs:
            raise ValueError("RoleConfig.admin_cidrs: admin_user needs the networks it may connect from")
        for k, _ in self.replication_ssl:
            if k not in ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl"):
                raise ValueError(f"RoleConfig.replication_ssl: not an SSL connection parameter: {k!r}")
        for k, _ in _items(self.extra_settings):
            if not _SETTING_NAME.match(k):
                raise ValueError(f"RoleConfig.extra_settings: bad setting name {k!r}")
        if not WAL_SIZE.match(str(self.max_slot_wal_keep_size)):
            raise ValueError("RoleConfig.max_slot_wal_keep_size: expected -1 or a size such as '4GB', "
                             f"got {self.max_slot_wal_keep_size!r}")
        for k, v in self.parameters:
            problem = parameter_problem(k, v)
            if problem:
                raise ValueError(f"RoleConfig.parameters: {problem}")

    @property
    def effective_client_cidrs(self) -> tuple[str, ...]:
        if self.client_cidrs is not None:
            return tuple(_dedup(_cidr(c) for c in self.client_cidrs))
        return tuple(_dedup(["127.0.0.1/32", *(_cidr(m) for m in self.members)]))


@dataclass(frozen=True)
class ConfigChange:
    """What it takes for a newly written configuration to take effect."""

    restart_needed: bool = False
    reload_needed: bool = False
    #: Names of what changed: setting names, "pg_hba.conf", "standby.signal", "include".
    changed: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return self.restart_needed or self.reload_needed


# --------------------------------------------------------------------------- rendering


def role_settings(rc: RoleConfig) -> dict[str, str]:
    """The settings of manatee.conf as name → already-quoted value, in file order."""
    s: dict[str, str] = {
        "listen_addresses": conf_quote(rc.listen_address),
        "port": str(int(rc.port)),
        "unix_socket_directories": conf_quote(str(rc.socket_dir)),
    }
    if rc.cluster_name:
        s["cluster_name"] = conf_quote(rc.cluster_name)
    s.update(
        {
            "wal_level": "replica",
            "max_wal_senders": str(rc.max_wal_senders),
            "wal_keep_size": conf_quote(rc.wal_keep_size),
            "max_slot_wal_keep_size": conf_quote(rc.max_slot_wal_keep_size),
            "wal_log_hints": "on",
            "full_page_writes": "on",
            # full-page images compressed: less WAL to replicate, to keep and to resend in
            # an incremental rebuild (pg_wal is part of the dataset's increment)
            "wal_compression": "lz4",
            # PostgreSQL's own settings for copy-on-write file systems (added for ZFS by
            # Joyent): zero-filling or recycling a segment buys nothing there, only writes
            "wal_init_zero": "off",
            "wal_recycle": "off",
            "hot_standby": "on",
            "hot_standby_feedback": _onoff(rc.hot_standby_feedback),
            # a standby whose upstream's PostgreSQL restarted (crashed, killed as hung, a
            # rolling restart) connects again within a second, not after PostgreSQL's 5 s:
            # the primary's commits wait for its sync meanwhile (F5: 5.1 s -> ~1 s)
            "wal_retrieve_retry_interval": "1s",
            "synchronous_commit": rc.synchronous_commit,
            "synchronous_standby_names": conf_quote(
                # a detached standby about to be promoted names its sync already (ignored
                # until it is promoted): its first commit as primary needs no reload
                ident_quote(rc.sync_standby) if rc.sync_standby else ""
            ),
            # a standby is read-only anyway; a detached one about to be promoted (it names its
            # sync) renders what it will be as primary, so no reload follows the promotion
            "default_transaction_read_only": _onoff(rc.read_only or (rc.role == "standby" and not rc.sync_standby)),
            "primary_conninfo": conf_quote(primary_conninfo(rc) if rc.role == "standby" and rc.upstream else ""),
            # the slot its upstream keeps for it (named from its application_name: see slot_name)
            "primary_slot_name": conf_quote(slot_name(rc.application_name)
                                            if rc.role == "standby" and rc.upstream else ""),
            # Constant in both roles (it is restart-only): follow the newest timeline.
            "recovery_target_timeline": conf_quote("latest"),
        }
    )
    for k, v in _items(rc.extra_settings):
        s[k] = v if _is_bare(v) else conf_quote(v)
    for k, _ in rc.parameters:  # the operator's value replaces manatee's default (rendered below)
        s.pop(k, None)
    return s


def parameter_settings(rc: RoleConfig) -> dict[str, str]:
    """The operator's parameters as name → quoted value, rendered after PARAMETERS_MARKER."""
    return {k: v if _is_bare(v) else conf_quote(v) for k, v in rc.parameters}


def primary_conninfo(rc: RoleConfig) -> str:
    """libpq connection string a standby streams with; application_name names it upstream."""
    assert rc.upstream is not None
    host, port = rc.upstream
    return render_conninfo(
        [
            ("host", host),
            ("port", int(port)),
            ("user", rc.replication_user),
            ("password", rc.replication_password),
            ("application_name", rc.application_name),
            ("connect_timeout", 5),
            ("tcp_user_timeout", rc.replication_tcp_user_timeout_ms or None),  # 0: left out (the kernel's)
            *rc.replication_ssl,
        ]
    )


def render_manatee_conf(rc: RoleConfig) -> str:
    lines = [
        f"# Written by manatee for role {rc.role}. Do not edit: it is rewritten on every",
        "# role change. Put your own tuning in postgresql.conf (included before this file).",
    ]
    lines += [f"{k} = {v}" for k, v in role_settings(rc).items()]
    params = parameter_settings(rc)
    if params:
        lines.append(PARAMETERS_MARKER)
        lines += [f"{k} = {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def render_pg_hba(rc: RoleConfig) -> str:
    """pg_hba.conf: first matching line wins.

    * the unix socket: trust (its directory is private to the database user);
    * replication: only the replication role(s), only from members;
    * the admin role (if any) from its own networks;
    * the superuser and the replication role(s) are rejected for every other TCP session
      (so the replication password opens no database, and the superuser is socket-only);
    * everyone else: ordinary sessions from the client networks.

    ``cert`` needs TLS, so its lines are ``hostssl`` (PostgreSQL refuses ``host ... cert``).
    """
    rows: list[tuple[str, str, str, str, str]] = [
        ("local", "all", "all", "", "trust"),
        ("local", "replication", "all", "", "trust"),
    ]
    repl_users = ",".join(_dedup([rc.replication_user, *rc.extra_replication_users]))
    for m in _dedup(_cidr(m) for m in rc.members):
        rows.append((_host(rc.auth_method), "replication", repl_users, m, rc.auth_method))
    if rc.rewind_user is not None:  # before the rejects below: first match wins
        for m in _dedup(_cidr(m) for m in rc.members):
            rows.append((_host(rc.auth_method), "postgres", rc.rewind_user, m, "scram-sha-256"))
    if rc.admin_user is not None:
        for c in _dedup(_cidr(c) for c in rc.admin_cidrs):
            rows.append((_host(rc.admin_method), "all", rc.admin_user, c, rc.admin_method))
    for user in _dedup([rc.superuser, rc.replication_user, *rc.extra_replication_users,
                        *([rc.rewind_user] if rc.rewind_user else [])]):
        if user != rc.admin_user:
            rows.append(("host", "all", user, "all", "reject"))
    rows.append(("host", "replication", "all", "all", "reject"))
    for c in rc.effective_client_cidrs:
        rows.append((_host(rc.auth_method), "all", "all", c, rc.auth_method))
    out = [
        "# Written by manatee. Do not edit: it is rewritten on every role change.",
        "# unix socket: trust (its directory is private); replication: its role, shard members only;",
        "# superuser and replication role: no other TCP session (see docs/security.md).",
        "# TYPE  DATABASE     USER         ADDRESS              METHOD",
    ]
    out += [f"{t:<7} {db:<12} {user:<12} {addr:<20} {meth}" for t, db, user, addr, meth in rows]
    return "\n".join(out) + "\n"


def _host(method: str) -> str:
    return "hostssl" if method == "cert" else "host"


# --------------------------------------------------------------------------- files


def ensure_include(data_dir: Path, *, user: str | None = "postgres") -> bool:
    """Make postgresql.conf include manatee.conf (once, at the end). True if it was added.

    A postgresql.conf that is a symbolic link (or not a plain file) is an error: manatee
    neither follows it nor silently replaces the operator's settings."""
    raw = nofollow.read_file(data_dir, "postgresql.conf")
    text = raw.decode() if raw is not None else ""
    if any(line.strip() == INCLUDE_LINE for line in text.splitlines()):
        return False
    if text and not text.endswith("\n"):
        text += "\n"
    text += "\n# Role settings written by manatee (must stay last).\n" + INCLUDE_LINE + "\n"
    _write(Path(data_dir) / "postgresql.conf", text, user)
    return True


def install_base_config(data_dir: Path, template: Path, *, user: str | None = "postgres") -> None:
    """Replace initdb's postgresql.conf with the operator's template (plus the include)."""
    _write(Path(data_dir) / "postgresql.conf", Path(template).read_text(), user)
    ensure_include(data_dir, user=user)


def write_role_config(data_dir: Path, rc: RoleConfig, *, user: str | None = "postgres") -> ConfigChange:
    """Write manatee.conf, pg_hba.conf and standby.signal for `rc`; say what applying needs.

    Files are written atomically (temp + rename) and owned by `user` (None: leave owner),
    through a descriptor of the data directory: no link planted there is followed
    (see :mod:`manatee.core.nofollow`).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"write_role_config: data directory {data_dir} does not exist")
    changed: list[str] = []
    restart = reload = False

    if ensure_include(data_dir, user=user):
        changed.append("include")
        restart = True

    conf = data_dir / MANATEE_CONF
    old_raw = nofollow.read_generated(data_dir, MANATEE_CONF)
    old = parse_settings(old_raw.decode()) if old_raw is not None else {}
    new_text = render_manatee_conf(rc)
    new = parse_settings(new_text)
    # The operator's parameters (now or before) are reloaded only: PostgreSQL itself marks
    # what needs a restart as pending_restart, and a restart is the operator's to ask for.
    operators = set(parameter_names(old_raw.decode() if old_raw is not None else "")) | {k for k, _ in rc.parameters}
    for k in _dedup([*new, *old]):
        if old.get(k) != new.get(k):
            changed.append(k)
            if k in RELOADABLE_SETTINGS or k in operators:
                reload = True
            else:
                restart = True
    if old_raw != new_text.encode():
        _write(conf, new_text, user)

    hba = data_dir / "pg_hba.conf"
    hba_text = render_pg_hba(rc)
    if nofollow.read_generated(data_dir, hba.name) != hba_text.encode():
        _write(hba, hba_text, user)
        changed.append("pg_hba.conf")
        reload = True

    signal = data_dir / STANDBY_SIGNAL
    want_signal = rc.role == "standby"
    if os.path.lexists(signal) != want_signal or (want_signal and not _is_plain_file(signal)):
        if want_signal:
            _write(signal, "", user)
        else:
            signal.unlink()  # unlink removes a link itself, never its target
        changed.append(STANDBY_SIGNAL)
        restart = True

    return ConfigChange(restart_needed=restart, reload_needed=reload and not restart, changed=tuple(changed))


# --------------------------------------------------------------------------- helpers


def _write(path: Path, text: str, user: str | None) -> None:
    nofollow.replace_file(path.parent, path.name, text.encode(), mode=0o600, user=user)


def _is_plain_file(path: Path) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _check_app_name(field_name: str, value: str) -> None:
    if not value or not _PRINTABLE_ASCII.match(value):
        raise ValueError(f"RoleConfig.{field_name}: must be non-empty printable ASCII: {value!r}")
    if len(value) > MAX_APPLICATION_NAME:
        raise ValueError(
            f"RoleConfig.{field_name}: {len(value)} characters; PostgreSQL truncates "
            f"application_name to {MAX_APPLICATION_NAME}: {value!r}"
        )


def _cidr(addr: str) -> str:
    """'10.0.0.2' → '10.0.0.2/32'; a CIDR stays (normalised). ValueError names the input."""
    try:
        return str(ipaddress.ip_network(addr.strip(), strict=False))
    except ValueError as e:
        raise ValueError(f"RoleConfig: not an IP address or network: {addr!r} ({e})") from None


def _dedup(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        seen.setdefault(i, None)
    return list(seen)


def _items(m: Mapping[str, str] | tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return list(m.items()) if isinstance(m, Mapping) else [tuple(x) for x in m]


def _onoff(b: bool) -> str:
    return "on" if b else "off"


def _is_bare(v: str) -> bool:
    """Numbers, booleans and simple words need no quotes in postgresql.conf."""
    return bool(re.match(r"^-?[0-9]+(\.[0-9]+)?$|^[A-Za-z_][A-Za-z0-9_]*$", v))
