"""manatee-sitter's config file (etc/sitter.json). Key names follow the original where it had them."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from manatee.core.config import ConfigModel, HttpServerCfg, check_secret_file, check_secret_mode, replaced_key, seconds
from manatee.core.pgconfig import WALRECEIVER_TCP_USER_TIMEOUT_MS
from manatee.core.zkconfig import ZkCfg
from manatee.shard.latches import primary_start_timeout
from manatee.shard.layout import registrar_path, shard_path
from manatee.shard.pgurl import PgUrl
from manatee.core.tls import TlsCfg, scheme
from manatee.core.zfsname import check_dataset

_SHARD_PATH = re.compile(r"^(/[A-Za-z0-9_.:-]+)+$")


class HeartbeatCfg(ConfigModel):
    heartbeatInterval: int = Field(1000, ge=100, le=60000, description="a standby heartbeats its upstream this often (ms)")
    expirationTime: int = Field(10000, ge=500, le=600000, description="an upstream drops a standby not heard from for this long (ms)")
    requestTimeout: int = Field(2000, ge=100, le=60000, description="timeout of one heartbeat request (ms)")
    interval_s = seconds("heartbeatInterval")
    expiration_s = seconds("expirationTime")
    request_timeout_s = seconds("requestTimeout")


class ZfsClientCfg(ConfigModel):
    dataset: str = Field(description="this node's ZFS dataset holding the PostgreSQL data directory")
    mountpoint: str = Field("/var/manatee", description="where the dataset is mounted")
    zfsHost: str | None = Field(None, description="address to receive restores on (default: ip)")
    zfsPort: int = Field(10001, ge=1, le=65535, description="TCP port to receive restores on")
    zfsPath: str = "/usr/sbin/zfs"
    pollInterval: int = Field(1000, ge=100, le=60000, description="restore job poll interval (ms)")
    poll_interval_s = seconds("pollInterval")

    _ds = field_validator("dataset")(classmethod(lambda cls, v: check_dataset(v)))


_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_HBA_KEYWORDS = ("all", "public", "replication", "samerole", "samegroup", "sameuser")
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
NetworkAuthMethod = Literal["trust", "md5", "scram-sha-256", "cert"]


def _check_role(v: str) -> str:
    if not _ROLE.match(v) or v.lower() in _HBA_KEYWORDS:
        raise ValueError("must be a PostgreSQL role name: letters, digits and '_', at most 63 characters")
    return v


def _check_cidrs(v: list[str]) -> list[str]:
    for c in v:
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise ValueError(f"{c!r} is not a CIDR network like '10.0.0.0/8'") from None
    return v


def _no_trust(v: str) -> str:
    if v == "trust":
        raise ValueError("'trust' lets anyone on those networks in without a password; "
                         "use 'scram-sha-256' (or 'cert')")
    return v


class ReplicationAuth(ConfigModel):
    method: NetworkAuthMethod = Field(
        "scram-sha-256", description="pg_hba method for replication and client connections from the network ('cert' renders hostssl; 'trust' is refused)")
    user: str = Field("replicator", description="role the standbys replicate as: REPLICATION, not a superuser; the primary creates it if missing. The database superuser (the old default) still works, but its password then opens every database: see docs/security.md")
    password: str | None = Field(None, description="the replication role's password (needed unless method is cert)")
    migrationUsers: list[str] = Field(default_factory=list, description="further roles still accepted for replication while a shard moves from one replication role to another (remove when done)")
    sslmode: SslMode | None = Field(None, description="sslmode of the standbys' replication connections (default: libpq's 'prefer')")
    sslrootcert: str | None = Field(None, description="CA certificate a standby verifies its upstream with (sslmode verify-ca/verify-full)")
    sslcert: str | None = Field(None, description="client certificate of the replication connection (method cert)")
    sslkey: str | None = Field(None, description="its private key (method cert)")
    clientCidrs: list[str] = Field(default_factory=list, description="extra networks allowed to connect as clients (CIDR); never as the superuser or the replication role")
    replicationCidrs: list[str] = Field(default_factory=list, description="extra networks allowed to replicate besides the shard's members (CIDR; a shard on one host's loopback needs 127.0.0.1/32)")

    _cidrs = field_validator("clientCidrs", "replicationCidrs")(classmethod(lambda cls, v: _check_cidrs(v)))
    _method = field_validator("method")(classmethod(lambda cls, v: _no_trust(v)))
    _user = field_validator("user")(classmethod(lambda cls, v: _check_role(v)))
    _users = field_validator("migrationUsers")(classmethod(lambda cls, v: [_check_role(u) for u in v]))

    @model_validator(mode="after")
    def _creds(self):
        if self.method in ("md5", "scram-sha-256") and not self.password:
            raise ValueError(f"replicationAuth.password is required with method '{self.method}'")
        if self.method == "cert" and not (self.sslcert and self.sslkey):
            raise ValueError("replicationAuth.sslcert and sslkey are required with method 'cert'")
        if self.password is not None and not self.password.isascii():
            raise ValueError("replicationAuth.password: use ASCII characters only")
        return self


class AdminAuth(ConfigModel):
    """TCP sessions of an administrative role (the superuser by default). Without this
    section the superuser is reachable by the local socket only."""

    user: str | None = Field(None, description="role allowed ordinary sessions over TCP (default: dbUser, the superuser); another name is created by the primary as a superuser if missing")
    password: str | None = Field(None, description="its password (needed unless method is cert); for dbUser it is set at initdb")
    method: NetworkAuthMethod = Field("scram-sha-256", description="pg_hba method ('cert' renders hostssl; 'trust' is refused)")
    cidrs: list[str] = Field(min_length=1, description="networks it may connect from (CIDR), e.g. the operators' hosts")

    _cidrs = field_validator("cidrs")(classmethod(lambda cls, v: _check_cidrs(v)))
    _method = field_validator("method")(classmethod(lambda cls, v: _no_trust(v)))
    _user = field_validator("user")(classmethod(lambda cls, v: v if v is None else _check_role(v)))

    @model_validator(mode="after")
    def _creds(self):
        if self.method in ("md5", "scram-sha-256") and not self.password:
            raise ValueError(f"adminAuth.password is required with method '{self.method}'")
        if self.password is not None and not self.password.isascii():
            raise ValueError("adminAuth.password: use ASCII characters only")
        return self


class PostgresMgrCfg(ConfigModel):
    """PostgreSQL as the sitter runs it."""

    dataDir: str = Field("/var/manatee/data", description="PostgreSQL data directory (inside the dataset's mountpoint)")
    dbUser: str = Field("postgres", description="OS user PostgreSQL runs as")
    pgBinDir: str = Field("/usr/lib/postgresql/15/bin", description="directory with postgres, initdb, pg_controldata")
    postgresConf: str | None = Field(None, description="template postgresql.conf copied in at initdb (operator tuning)")
    socketDir: str | None = Field(None, description="unix socket directory (default: /run/manatee/<ip>-<postgresPort>, made 0700 for dbUser)")
    healthChkInterval: int = Field(1000, ge=100, le=60000, description="PG health check period (ms)")
    healthChkTimeout: int = Field(5000, ge=500, le=600000, description="PG unhealthy after this long without a good check (ms)")
    opsTimeout: int = Field(60000, ge=1000, le=3600000, description="timeout of PG start/stop/promote and of writing its config files (ms)")
    replicationTimeout: int = Field(60000, ge=1000, le=3600000, description="how long a new sync may take to catch up before it is reported stuck (ms)")
    replicationTcpUserTimeout: int = Field(
        WALRECEIVER_TCP_USER_TIMEOUT_MS, ge=0, le=600000,
        description="tcp_user_timeout of a standby's replication connection (ms): a connect whose SYNs are lost, or a "
                    "stream whose feedback goes unacknowledged, fails after this long and is retried a second later "
                    "(PostgreSQL's walreceiver ignores connect_timeout, so without it a connect waits on the kernel's "
                    "SYN back-off, 15 s and more); raise it for a long lossy link; 0 leaves the kernel's own; else ≥ 1000")
    health_interval_s = seconds("healthChkInterval")
    health_timeout_s = seconds("healthChkTimeout")
    ops_timeout_s = seconds("opsTimeout")
    replication_timeout_s = seconds("replicationTimeout")
    replication_tcp_user_timeout_s = seconds("replicationTcpUserTimeout")
    oneNodeWriteMode: bool = Field(False, description="let a primary without a sync take writes (no durability guarantee)")
    synchronousCommit: Literal["on", "remote_write", "remote_apply"] = Field(
        "on", description="synchronous_commit on the primary: 'on' waits for the sync's flush")
    maxSlotWalKeepSize: str = Field(
        "4GB", description="max_slot_wal_keep_size: the most WAL the replication slot an upstream keeps for each "
                           "downstream may hold back ('-1': no cap; units kB/MB/GB/TB). A standby that falls further "
                           "behind loses its slot and its sitter rebuilds it from its upstream; one within it "
                           "streams again without one")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="PostgreSQL parameters (name: value) written into manatee.conf, after manatee's own; "
                    "re-read on SIGHUP / manatee-adm reload and applied with pg_reload_conf(). One that only "
                    "a restart applies shows as pending restart until PostgreSQL next restarts. Also overrides "
                    "manatee's defaults (wal_keep_size, max_wal_senders, full_page_writes, wal_compression (lz4; pglz "
                    "for a PostgreSQL built without lz4), wal_init_zero, wal_recycle, hot_standby_feedback, wal_retrieve_retry_interval); the "
                    "settings manatee decides (port, listen_addresses, primary_conninfo, "
                    "synchronous_standby_names, default_transaction_read_only, hot_standby, ...) are refused")
    rebuildRewind: bool = Field(
        True, description="rebuild a node whose WAL diverged by pg_rewind when its dry run copies at most "
                          "rewindMaxPercent of a full stream (else, or if it fails, a ZFS stream as before); needs "
                          "the shard secret "
                          "(the rewind role's password derives from it)")
    rewindTimeout: int = Field(600000, ge=1000, le=86400000,
                               description="the most one pg_rewind (its dry run, or the real run) may take (ms); "
                                           "then it is killed and the rebuild streams instead")
    rewind_timeout_s = seconds("rewindTimeout")
    rewindMaxPercent: int = Field(10, ge=0, le=100,
                                  description="pg_rewind runs only if its dry run copies at most this percent of a "
                                              "full stream (it copies about ten times slower per byte than a ZFS "
                                              "stream measured on one host: docs/benchmarks.md P6c)")
    replicationAuth: ReplicationAuth
    adminAuth: AdminAuth | None = Field(None, description="TCP access for an administrative role (absent: the superuser only by the local socket)")
    zfsClientCfg: ZfsClientCfg

    @field_validator("replicationTcpUserTimeout")
    @classmethod
    def _tcp_user_timeout(cls, v):
        if 0 < v < 1000:
            raise ValueError("must be 0 (the kernel's own) or at least 1000 ms: a shorter one cuts healthy streams "
                             "whose feedback waits on a retransmission")
        return v

    @field_validator("postgresConf")
    @classmethod
    def _conf_exists(cls, v):
        # checked at start, not at initdb: a typo must not silently become PostgreSQL's defaults
        if v is not None and not os.path.isfile(v):
            raise ValueError(f"file not found: {v}" + ("" if os.path.isabs(v) else
                             f" (a relative path is taken from the working directory, {os.getcwd()})"))
        return v

    @field_validator("maxSlotWalKeepSize")
    @classmethod
    def _max_slot_wal_keep_size(cls, v: str) -> str:
        from manatee.core.pgparams import WAL_SIZE

        if not WAL_SIZE.match(v.strip()):
            raise ValueError(f"expected -1 or a size with a unit such as '4GB' (kB, MB, GB, TB), got {v!r}")
        return v.strip()

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, v: dict) -> dict:
        from manatee.core.pgparams import parameter_problem, parameter_value

        for name, value in v.items():
            problem = parameter_problem(name, value)
            if problem:
                raise ValueError(problem)
        return {name: parameter_value(value) for name, value in v.items()}

    @model_validator(mode="after")
    def _auth(self):
        a, adm = self.replicationAuth, self.adminAuth
        if adm is None:
            return self
        admin = adm.user or self.dbUser
        if admin == a.user == self.dbUser:  # an old config: the superuser still replicates
            if adm.password != a.password:
                raise ValueError("while the superuser replicates (replicationAuth.user = dbUser) it has one "
                                 "password: adminAuth.password must equal replicationAuth.password")
        elif admin == a.user:
            raise ValueError("adminAuth.user and replicationAuth.user must be different roles")
        return self

    @property
    def admin_user(self) -> str | None:
        return None if self.adminAuth is None else (self.adminAuth.user or self.dbUser)


class TagsCfg(ConfigModel):
    """This node's tags, published in its election node and honoured by every sitter's choice
    of the next sync (and so of the next primary)."""

    nofailover: bool = Field(False, description="never sync, never primary (a DR or backup host): it stays an async")
    nosync: bool = Field(False, description="never the sync (so it becomes primary only when it declares a new shard)")
    priority: int = Field(0, ge=-1000, le=1000, description="among the nodes eligible as the next sync, a higher priority is chosen first (ties: election order)")


class HooksCfg(ConfigModel):
    """An executable run on every change of this node's role: HOOK on_role_change ROLE SHARD."""

    onRoleChange: str = Field(description="absolute path of an executable run as `HOOK on_role_change ROLE SHARD` "
                                          "(ROLE: primary, sync, async, deposed or the local role) in the background")
    timeout: int = Field(30000, ge=100, le=3600000, description="a hook still running after this long is killed (ms)")
    timeout_s = seconds("timeout")

    @field_validator("onRoleChange")
    @classmethod
    def _exe(cls, v: str) -> str:
        if not os.path.isabs(v):
            raise ValueError(f"must be an absolute path: {v}")
        if not os.path.isfile(v) or not os.access(v, os.X_OK):
            raise ValueError(f"not an executable file: {v}")
        return v


class SitterConfig(ConfigModel):
    ip: str = Field(description="this node's address: PostgreSQL, backupserver and status server listen here")
    zoneId: str = Field(description="this node's unique name (zone UUID or host name)")
    shardPath: str = Field(shard_path("1"), description="ZooKeeper path of the shard")
    postgresPort: int = Field(5432, ge=1, le=65535)
    backupPort: int = Field(10002, ge=1, le=65535, description="port of this node's backupserver")
    statusPort: int | None = Field(None, ge=1, le=65535, description="status/heartbeat HTTP port (default postgresPort+1)")
    ttl: int = Field(60, ge=1, le=86400, description="registrar record TTL (s)")
    registrarPath: str | None = Field(None, description="ZooKeeper path of the registrar record (default: derived from shardPath as the original)")
    secretFile: str | None = Field(None, description="root-only file holding the shard secret, shared by every member's sitter and backupserver (required unless insecure; docs/security.md)")
    insecure: bool = Field(False, description="run without the shard secret: POST /heartbeat and /rebuild unauthenticated (a warning at start, shown in /state; not for production)")
    statusServerCfg: HttpServerCfg = HttpServerCfg()
    hooks: HooksCfg | None = Field(None, description="role-change hook (VIP, pgbouncer, DNS); never blocks failover")
    tags: TagsCfg = Field(default_factory=TagsCfg, description="node tags: nofailover, nosync, priority (a sitter restart applies a change)")
    tls: TlsCfg | None = Field(None, description="HTTPS for the status server and the sitter's HTTP clients (heartbeat, restore, upstream /state); this node's backupserver must have TLS too (its backupUrl becomes https://)")
    primaryStartTimeout: int | None = Field(
        None, ge=1000, le=3600000,
        description="a primary whose PostgreSQL is not healthy for this long (hung, crash-looping, cannot start, "
                    "cannot write its config) steps down to a healthy sync (ms; default 2 x zkCfg.sessionTimeout, at least "
                    "postgresMgrCfg.healthChkTimeout)")
    zkCfg: ZkCfg
    heartbeatCfg: HeartbeatCfg = HeartbeatCfg()
    postgresMgrCfg: PostgresMgrCfg

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError("must be an IP address") from None
        return v

    @field_validator("shardPath")
    @classmethod
    def _shard(cls, v: str) -> str:
        if not _SHARD_PATH.match(v):
            raise ValueError("must be a ZooKeeper path like '/manatee/1'")
        return v

    _secret_file = field_validator("secretFile")(classmethod(lambda cls, v: check_secret_file(v)))

    _old_secret = replaced_key("backupSecret", "backupSecret was replaced by secretFile, a root-only file holding "
                                               "the shard secret (docs/security.md)")

    @model_validator(mode="after")
    def _secret(self):
        check_secret_mode(self.secretFile, self.insecure)
        return self

    @model_validator(mode="after")
    def _ports(self):
        ports = {"postgresPort": self.postgresPort, "backupPort": self.backupPort,
                 "statusPort": self.status_port, "zfsPort": self.postgresMgrCfg.zfsClientCfg.zfsPort}
        seen: dict[int, str] = {}
        for k, p in ports.items():
            if p in seen:
                raise ValueError(f"{k} and {seen[p]} are both {p}: each needs its own port")
            seen[p] = k
        return self

    @model_validator(mode="after")
    def _primary_start_timeout(self):
        pst, hct = self.primaryStartTimeout, self.postgresMgrCfg.healthChkTimeout
        if pst is not None and pst < hct:
            raise ValueError(f"primaryStartTimeout ({pst} ms) must be at least postgresMgrCfg.healthChkTimeout "
                             f"({hct} ms): a primary cannot be judged unable to serve before it is judged hung")
        return self

    @property
    def primary_start_timeout_s(self) -> float:
        """primaryStartTimeout in seconds (latches.primary_start_timeout)."""
        pst = self.primaryStartTimeout
        return primary_start_timeout(pst / 1000 if pst else None, self.zkCfg.sessionTimeout / 1000,
                                     self.postgresMgrCfg.healthChkTimeout / 1000)

    @property
    def status_port(self) -> int:
        return self.statusPort or self.postgresPort + 1

    @property
    def peer_id(self) -> str:
        """Election node name prefix, as the original: ip:pgPort:backupPort:statusPort."""
        return f"{self.ip}:{self.postgresPort}:{self.backupPort}:{self.status_port}"

    @property
    def pg_url(self) -> str:
        return str(PgUrl.for_node(self.ip, self.postgresPort, self.postgresMgrCfg.dbUser))

    @property
    def backup_url(self) -> str:
        return f"{scheme(self.tls)}://{self.ip}:{self.backupPort}"

    @property
    def status_url(self) -> str:
        return f"{scheme(self.tls)}://{self.ip}:{self.status_port}"

    @property
    def registrar_path(self) -> str:
        """The original's binder path: '/manatee/1.moray.us-sw-1.joyent.com' → '/com/joyent/us-sw-1/moray/1/pg'."""
        if self.registrarPath:
            return self.registrarPath
        return registrar_path(self.shardPath.strip("/").split("/", 1)[-1])
