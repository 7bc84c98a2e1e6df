"""What a restore reports: its progress while it runs, its result, its error."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from manatee.core import incremental as inc


@dataclass
class RestoreProgress:
    """What a restore is doing now; `size` is the sender's estimate (may be None)."""

    phase: str
    completed: int = 0
    size: Optional[int] = None
    started_at: float = field(default_factory=time.time)
    jobid: Optional[str] = None
    snapshot: Optional[str] = None
    error: Optional[str] = None
    path: Optional[str] = None  # "full" or "incremental from <snapshot>", once the stream says
    reason: Optional[str] = None  # why that path
    source: Optional[str] = None  # the backupserver streaming to us (the upstream or a member ahead of it)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RestoreResult:
    bytes: int
    seconds: float
    snapshot: Optional[str]  # the received snapshot, `<dataset>@<name>`
    source_snapshot: Optional[str] = None  # the sender's snapshot
    jobid: Optional[str] = None
    incremental_from: Optional[str] = None  # our base snapshot; None: a full stream
    reason: Optional[str] = None  # why this path ran (and why this source, if not the upstream)
    source: Optional[str] = None  # the backupserver that sent it
    old_copy: Optional[str] = None  # restore(drop_old=False): the replaced copy, for swap.drop_replaced

    @property
    def path(self) -> str:
        return inc.describe_path(self.incremental_from)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


class RestoreError(Exception):
    """The restore failed (and was rolled back); the message says where and why."""

    def __init__(self, message: str, *, phase: str = "", rollback_errors: list[str] | None = None):
        self.phase = phase
        self.rollback_errors = list(rollback_errors or [])
        self.full_would_fix = False  # an incremental failed in a way a full stream avoids
        super().__init__(message)
