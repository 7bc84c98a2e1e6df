"""manatee-backupserver's config file (etc/backupserver.json).

Keeps the original's keys (`backupSenderCfg.{dataset, zfsPath}`,
`backupServerCfg.port`) and adds the hardening knobs: listen address, shared
secret, concurrency and queue caps, body cap, and ZooKeeper + shardPath so that
only shard members may ask for the database.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator, model_validator

from manatee.backupserver.validation import hostname_problem
from manatee.core.config import ConfigModel, HttpServerCfg, check_secret_file, check_secret_mode, replaced_key, seconds
from manatee.core.tls import TlsCfg
from manatee.core.zfsname import check_dataset
from manatee.core.zkconfig import ZkCfg


class BackupSenderCfg(ConfigModel):
    dataset: str = Field(description="the ZFS dataset holding this node's PostgreSQL data")
    zfsPath: str = Field("/usr/sbin/zfs", description="the zfs command")
    connectTimeout: float = Field(10.0, gt=0, le=600, description="seconds to connect to the receiver")
    stallTimeout: float = Field(
        300.0, gt=0, le=86400, description="seconds without progress before a send is abandoned"
    )
    baseCheckInterval: int = Field(
        600_000, ge=1000, le=86_400_000,
        description="how often the base marks (`manatee:bases`) are checked with the peers they name; a mark is "
                    "released when its peer says at two checks in a row that it no longer holds the snapshot (ms)")
    base_check_interval_s = seconds("baseCheckInterval")

    _dataset = field_validator("dataset")(classmethod(lambda cls, v: check_dataset(v)))


class BackupServerCfg(ConfigModel):
    port: int = Field(10002, ge=1, le=65535, description="HTTP port of the REST API")
    host: str = Field("0.0.0.0", description="listen address (use the node's IP); sends also leave from it")
    maxConcurrentSends: int = Field(2, ge=1, le=64, description="sends running at once; more jobs wait")
    maxQueuedJobs: int = Field(8, ge=0, le=1000, description="jobs allowed to wait; beyond that POST gets 503")
    maxBodyBytes: int = Field(16 * 1024, ge=256, le=1 << 20, description="larger request bodies get 413")
    keepFinishedJobs: int = Field(100, ge=1, le=100000, description="finished jobs kept for GET /backup/<id>")
    maxConnections: int = HttpServerCfg.model_fields["maxConnections"]
    idleTimeout: int = HttpServerCfg.model_fields["idleTimeout"]
    idle_timeout_s = seconds("idleTimeout")

    _old_secret = replaced_key("secret", "'secret' was replaced by the top-level secretFile, a root-only file "
                                         "holding the shard secret (docs/security.md)")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        problem = hostname_problem(v)
        if problem:
            raise ValueError(f"listen address {problem}")
        return v


class BackupServerConfig(ConfigModel):
    backupSenderCfg: BackupSenderCfg
    backupServerCfg: BackupServerCfg = BackupServerCfg()
    secretFile: Optional[str] = Field(
        None, description="root-only file holding the shard secret (required unless insecure); see docs/security.md"
    )
    insecure: bool = Field(
        False, description="run without the shard secret and membership checks (a warning at start; not for production)"
    )
    zkCfg: Optional[ZkCfg] = Field(
        None, description="ZooKeeper, to admit only shard members (with shardPath; required unless insecure)"
    )
    shardPath: Optional[str] = Field(
        None, description="the shard's ZooKeeper path, e.g. /manatee/1; members are its election children"
    )
    tls: Optional[TlsCfg] = Field(
        None, description="serve HTTPS (the sitter of this node then needs its tls section too: it advertises https://)"
    )

    @field_validator("shardPath")
    @classmethod
    def _shard_path(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (not v.startswith("/") or v.endswith("/") or "//" in v):
            raise ValueError("must be an absolute ZooKeeper path like /manatee/1")
        return v

    _secret_file = field_validator("secretFile")(classmethod(lambda cls, v: check_secret_file(v)))

    @model_validator(mode="after")
    def _zk_and_shard_together(self) -> "BackupServerConfig":
        if (self.zkCfg is None) != (self.shardPath is None):
            missing = "shardPath" if self.shardPath is None else "zkCfg"
            raise ValueError(
                f"zkCfg and shardPath go together (membership checks need both); {missing} is missing"
            )
        check_secret_mode(self.secretFile, self.insecure)
        if self.zkCfg is None and self.shardPath is None and not self.insecure:
            raise ValueError("zkCfg and shardPath are required: only the shard's members may ask for its data "
                             "(or insecure: true)")
        return self
