"""The snapshotter's config file (etc/snapshotter.json), validated.

Keys are the original's: `dataset`, `pollInterval` (ms), `snapshotNumber`; plus
`zfsPath` (as in the backupserver's config) and the optional `healthUrl` of the
original's HEAD: when set, a snapshot is taken only while GET healthUrl returns 200;
and `minFreePercent`: below that share of free space (ZFS `available`, which respects
the dataset's quota) no new snapshot is taken and old ones are pruned.
"""

from __future__ import annotations

from urllib.parse import urlparse

from pydantic import Field, field_validator

from manatee.core.config import ConfigModel, seconds
from manatee.core.tls import TlsCfg
from manatee.core.zfsname import check_dataset

class SnapshotterConfig(ConfigModel):
    dataset: str = Field(description="ZFS dataset holding PostgreSQL's data, snapshotted as DATASET@<epoch-ms>")
    pollInterval: int = Field(3_600_000, ge=1000, le=2_592_000_000, description="milliseconds between snapshots (at most 30 days)")
    poll_interval_s = seconds("pollInterval")
    snapshotNumber: int = Field(50, ge=1, description="how many epoch-ms snapshots to keep, besides the base snapshots "
                                "shared with peers (`manatee:bases`, kept unless under disk pressure)")
    zfsPath: str = Field("/usr/sbin/zfs", min_length=1, description="the zfs binary")
    healthUrl: str | None = Field(None, description="if set, snapshot only while GET healthUrl answers 200")
    tls: TlsCfg | None = Field(None, description="for an https:// healthUrl: the CA to verify the sitter with and the client certificate to present (the sitter's tls section)")
    minFreePercent: float = Field(
        10.0, ge=0, le=90,
        description="disk pressure: while the dataset's free space (ZFS `available`, quota included) is below "
                    "this percent of used + available, take no snapshot and prune all but the newest; 0 turns it off")

    _dataset = field_validator("dataset")(classmethod(lambda cls, v: check_dataset(v)))

    @field_validator("healthUrl")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        u = urlparse(v)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError("must be an http:// or https:// URL such as 'http://127.0.0.1:5433/ping'")
        return v
