"""manatee-backupserver's config file (etc/backupserver.json).

Keeps the original's keys (`backupSenderCfg.{dataset, zfsPath}`,
`backupServerCfg.port`) and adds the hardening knobs: listen address, shared
secret, concurrency and queue caps, body cap, and ZooKeeper + shardPath so that
only shard members may ask for the database.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator, model_validator

from manatee.backupserver.validation import dataset_problem, hostname_problem
from manatee.core.config import ConfigModel


class BackupSenderCfg(ConfigModel):
    dataset: str = Field(description="the ZFS dataset holding this node's PostgreSQL data")
    zfsPath: str = Field("/usr/sbin/zfs", description="the zfs command")
    connectTimeout: float = Field(10.0, gt=0, description="seconds to connect to the receiver")
    stallTimeout: float = Field(
        300.0, gt=0, description="seconds without progress before a send is abandoned"
    )

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        problem = dataset_problem(v)
        if problem:
            raise ValueError(f"not a valid ZFS dataset name: {problem}")
        return v


class BackupServerCfg(ConfigModel):
    port: int = Field(10002, ge=1, le=65535, description="HTTP port of the REST API")
    host: str = Field("0.0.0.0", description="listen address (use the node's IP); sends also leave from it")
    secret: Optional[str] = Field(
        None, min_length=8, description="if set, requests need 'Authorization: Bearer <secret>' (else 401)"
    )
    maxConcurrentSends: int = Field(2, ge=1, le=64, description="sends running at once; more jobs wait")
    maxQueuedJobs: int = Field(8, ge=0, le=1000, description="jobs allowed to wait; beyond that POST gets 503")
    maxBodyBytes: int = Field(16 * 1024, ge=256, le=1 << 20, description="larger request bodies get 413")
    keepFinishedJobs: int = Field(100, ge=1, le=100000, description="finished jobs kept for GET /backup/<id>")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        problem = hostname_problem(v)
        if problem:
            raise ValueError(f"listen address {problem}")
        return v


class ZkCfg(ConfigModel):
    connStr: str = Field(description="host:port[,host:port...] of the ZooKeeper ensemble")
    sessionTimeout: int = Field(60000, ge=1000, description="ZooKeeper session timeout, ms")
    connectTimeout: int = Field(10000, ge=100, description="ZooKeeper connect timeout, ms")

    @field_validator("connStr")
    @classmethod
    def _conn_str(cls, v: str) -> str:
        hosts = v.split("/", 1)[0]
        if not hosts:
            raise ValueError("must be host:port[,host:port...]")
        for part in hosts.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{part!r} is not host:port")
        return v


class BackupServerConfig(ConfigModel):
    backupSenderCfg: BackupSenderCfg
    backupServerCfg: BackupServerCfg = BackupServerCfg()
    zkCfg: Optional[ZkCfg] = Field(
        None, description="ZooKeeper, to admit only shard members (with shardPath; neither = admit all)"
    )
    shardPath: Optional[str] = Field(
        None, description="the shard's ZooKeeper path, e.g. /manatee/1; members are its election children"
    )

    @field_validator("shardPath")
    @classmethod
    def _shard_path(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (not v.startswith("/") or v.endswith("/") or "//" in v):
            raise ValueError("must be an absolute ZooKeeper path like /manatee/1")
        return v

    @model_validator(mode="after")
    def _zk_and_shard_together(self) -> "BackupServerConfig":
        if (self.zkCfg is None) != (self.shardPath is None):
            missing = "shardPath" if self.shardPath is None else "zkCfg"
            raise ValueError(
                f"zkCfg and shardPath go together (membership checks need both); {missing} is missing"
            )
        return self
