"""manatee-sitter's config file (etc/sitter.json). Key names follow the original where it had them."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from manatee.core.config import ConfigModel
from manatee.core.layout import registrar_path

_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
_SHARD_PATH = re.compile(r"^(/[A-Za-z0-9_.:-]+)+$")


def _check_dataset(v: str) -> str:
    if not _DATASET.match(v) or "//" in v or v.endswith("/") or "@" in v:
        raise ValueError("must be a ZFS dataset name like 'zones/manatee/pg'")
    return v


class ZkCfg(ConfigModel):
    connStr: str = Field(description="ZooKeeper servers, 'host:port[,host:port...]'")
    sessionTimeout: int = Field(60000, ge=2000, le=600000, description="ZooKeeper session timeout (ms): how long a dead node keeps its place")
    connectTimeout: int = Field(10000, ge=500, le=600000, description="how long to wait for ZooKeeper at start-up (ms)")

    @field_validator("connStr")
    @classmethod
    def _conn(cls, v: str) -> str:
        hosts = v.split("/", 1)[0]
        for part in hosts.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("must be 'host:port[,host:port...]'")
        return v


class HeartbeatCfg(ConfigModel):
    heartbeatInterval: int = Field(1000, ge=100, le=60000, description="a standby heartbeats its upstream this often (ms)")
    expirationTime: int = Field(10000, ge=500, le=600000, description="an upstream drops a standby not heard from for this long (ms)")
    requestTimeout: int = Field(2000, ge=100, le=60000, description="timeout of one heartbeat request (ms)")


class ZfsClientCfg(ConfigModel):
    dataset: str = Field(description="this node's ZFS dataset holding the PostgreSQL data directory")
    mountpoint: str = Field("/var/manatee", description="where the dataset is mounted")
    zfsHost: str | None = Field(None, description="address to receive restores on (default: ip)")
    zfsPort: int = Field(10001, ge=1, le=65535, description="TCP port to receive restores on")
    zfsPath: str = "/usr/sbin/zfs"
    pollInterval: int = Field(1000, ge=100, le=60000, description="restore job poll interval (ms)")

    _ds = field_validator("dataset")(classmethod(lambda cls, v: _check_dataset(v)))


class ReplicationAuth(ConfigModel):
    method: Literal["trust", "md5", "scram-sha-256", "cert"] = Field(
        "scram-sha-256", description="pg_hba method for replication and client connections from the network")
    user: str = "postgres"
    password: str | None = Field(None, description="replication password (needed unless method is trust or cert)")
    clientCidrs: list[str] = Field(default_factory=list, description="extra networks allowed to connect as clients (CIDR)")
    replicationCidrs: list[str] = Field(default_factory=list, description="extra networks allowed to replicate besides the shard's members (CIDR; a shard on one host's loopback needs 127.0.0.1/32)")

    @field_validator("clientCidrs", "replicationCidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for c in v:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise ValueError(f"{c!r} is not a CIDR network like '10.0.0.0/8'") from None
        return v


class PostgresMgrCfg(ConfigModel):
    """PostgreSQL as the sitter runs it."""

    dataDir: str = Field("/var/manatee/data", description="PostgreSQL data directory (inside the dataset's mountpoint)")
    dbUser: str = Field("postgres", description="OS user PostgreSQL runs as")
    pgBinDir: str = Field("/usr/lib/postgresql/15/bin", description="directory with postgres, initdb, pg_controldata")
    postgresConf: str | None = Field(None, description="template postgresql.conf copied in at initdb (operator tuning)")
    socketDir: str | None = Field(None, description="unix socket directory (default: /tmp/manatee-<port>)")
    healthChkInterval: int = Field(1000, ge=100, le=60000, description="PG health check period (ms)")
    healthChkTimeout: int = Field(5000, ge=500, le=600000, description="PG unhealthy after this long without a good check (ms)")
    opsTimeout: int = Field(60000, ge=1000, le=3600000, description="timeout of PG start/stop/promote (ms)")
    replicationTimeout: int = Field(60000, ge=1000, le=3600000, description="how long a new sync may take to catch up before it is reported stuck (ms)")
    oneNodeWriteMode: bool = Field(False, description="let a primary without a sync take writes (no durability guarantee)")
    synchronousCommit: Literal["on", "remote_write", "remote_apply"] = Field(
        "on", description="synchronous_commit on the primary: 'on' waits for the sync's flush")
    replicationAuth: ReplicationAuth = ReplicationAuth()
    zfsClientCfg: ZfsClientCfg

    @model_validator(mode="after")
    def _auth(self):
        a = self.replicationAuth
        if a.user != self.dbUser:
            raise ValueError(f"replicationAuth.user must be the database superuser '{self.dbUser}' for now")
        if a.method in ("md5", "scram-sha-256") and not a.password:
            raise ValueError(f"replicationAuth.password is required with method '{a.method}'")
        return self


class SitterConfig(ConfigModel):
    ip: str = Field(description="this node's address: PostgreSQL, backupserver and status server listen here")
    zoneId: str = Field(description="this node's unique name (zone UUID or host name)")
    shardPath: str = Field("/manatee/1", description="ZooKeeper path of the shard")
    postgresPort: int = Field(5432, ge=1, le=65535)
    backupPort: int = Field(10002, ge=1, le=65535, description="port of this node's backupserver")
    statusPort: int | None = Field(None, ge=1, le=65535, description="status/heartbeat HTTP port (default postgresPort+1)")
    ttl: int = Field(60, ge=1, le=86400, description="registrar record TTL (s)")
    registrarPath: str | None = Field(None, description="ZooKeeper path of the registrar record (default: derived from shardPath as the original)")
    backupSecret: str | None = Field(None, description="shared secret sent to peers' backupservers")
    primaryStartTimeout: int | None = Field(
        None, ge=1000, le=3600000,
        description="a primary whose PostgreSQL is not healthy for this long (hung, crash-looping, cannot start, "
                    "cannot write its config) steps down to a healthy sync (ms; default 2 x zkCfg.sessionTimeout)")
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
        """primaryStartTimeout in seconds; its default is twice the session timeout."""
        return (self.primaryStartTimeout or 2 * self.zkCfg.sessionTimeout) / 1000

    @property
    def status_port(self) -> int:
        return self.statusPort or self.postgresPort + 1

    @property
    def peer_id(self) -> str:
        """Election node name prefix, as the original: ip:pgPort:backupPort:statusPort."""
        return f"{self.ip}:{self.postgresPort}:{self.backupPort}:{self.status_port}"

    @property
    def pg_url(self) -> str:
        return f"tcp://{self.postgresMgrCfg.dbUser}@{self.ip}:{self.postgresPort}/postgres"

    @property
    def backup_url(self) -> str:
        return f"http://{self.ip}:{self.backupPort}"

    @property
    def status_url(self) -> str:
        return f"http://{self.ip}:{self.status_port}"

    @property
    def registrar_path(self) -> str:
        """The original's binder path: '/manatee/1.moray.us-sw-1.joyent.com' → '/com/joyent/us-sw-1/moray/1/pg'."""
        if self.registrarPath:
            return self.registrarPath
        return registrar_path(self.shardPath.strip("/").split("/", 1)[-1])
