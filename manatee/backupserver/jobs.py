"""Backup jobs and the queue that runs them with a concurrency cap.

A job is one request to stream this node's dataset to a peer. The queue runs at
most `max_concurrent` sends at once (each one is a full copy of the database, so
unbounded parallel sends would starve the disk and the network), lets at most
`max_queued` wait, and keeps the last `keep_finished` finished jobs so that a
restoring peer can still read the final state after the send completed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Optional

from manatee.core.incremental import SnapshotRef


class JobState(str, enum.Enum):
    QUEUED = "queued"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


def _iso(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


@dataclass
class BackupJob:
    """One send of this node's dataset to `host:port`.

    `dataset` is the receiver's dataset name as given in the request (the original
    kept it on the job too); what is sent is always the server's configured dataset.
    `address` is the IP the sender connects to (the resolved `host`).
    """

    host: str
    port: int
    dataset: str
    address: str
    requester: Optional[str] = None
    stream_token: str = field(default="", repr=False)  # never shown: it is what the stream header proves
    jobid: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: JobState = JobState.QUEUED
    snapshot: Optional[str] = None
    size: Optional[int] = None
    completed: int = 0
    error: Optional[str] = None
    queued_at: float = field(default_factory=time.time)
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    offered: tuple[SnapshotRef, ...] = ()  # the requester's snapshots (it asks for an increment)
    incremental: Optional[dict[str, str]] = None  # {"from": snapshot, "guid": ...}; None: a full stream
    path_reason: Optional[str] = None  # why this kind of stream

    @property
    def done(self) -> bool | str:
        """The original's tri-state: false while queued/sending, true, or "failed"."""
        if self.state is JobState.DONE:
            return True
        if self.state is JobState.FAILED:
            return "failed"
        return False

    @property
    def finished(self) -> bool:
        return self.state in (JobState.DONE, JobState.FAILED)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "jobid": self.jobid,
            "host": self.host,
            "port": self.port,
            "dataset": self.dataset,
            "snapshot": self.snapshot,
            "done": self.done,
            "state": self.state.value,
            "size": self.size,
            "completed": self.completed,
            "queued": _iso(self.queued_at),
            "started": _iso(self.started_at),
            "finished": _iso(self.finished_at),
            "incremental": self.incremental,
            "pathReason": self.path_reason,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


class QueueFull(Exception):
    """More jobs are waiting than the queue accepts."""


Sender = Callable[[BackupJob], Awaitable[None]]


class JobQueue:
    """Runs jobs through `sender` with at most `max_concurrent` at a time.

    The sender streams the data and updates `job.snapshot`, `job.size` and
    `job.completed` as it goes; it raises on failure. The queue owns the state
    transitions: queued → sending → done | failed.
    """

    def __init__(
        self,
        sender: Sender,
        *,
        max_concurrent: int = 2,
        max_queued: int = 8,
        keep_finished: int = 100,
        logger: Any = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if max_queued < 0:
            raise ValueError("max_queued must be >= 0")
        self._sender = sender
        self._max_concurrent = max_concurrent
        self._max_queued = max_queued
        self._keep_finished = keep_finished
        self._log = logger
        self._sem = asyncio.Semaphore(max_concurrent)
        self._jobs: dict[str, BackupJob] = {}
        self._finished_order: collections.deque[str] = collections.deque()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    @property
    def queued(self) -> int:
        return sum(1 for j in self._jobs.values() if j.state is JobState.QUEUED)

    @property
    def running(self) -> int:
        return sum(1 for j in self._jobs.values() if j.state is JobState.SENDING)

    def get(self, jobid: str) -> Optional[BackupJob]:
        return self._jobs.get(jobid)

    def jobs(self) -> list[BackupJob]:
        return list(self._jobs.values())

    def submit(self, job: BackupJob) -> BackupJob:
        """Queue `job`; raises QueueFull when `max_queued` jobs already wait for a slot."""
        if self._closed:
            raise QueueFull("backupserver is shutting down")
        # Jobs not yet running (even those about to take a free slot) count as queued;
        # only those beyond the free send slots actually wait.
        if self.running + self.queued >= self._max_concurrent + self._max_queued:
            raise QueueFull(
                f"{self.running} sends running and {self.queued} jobs queued "
                f"(maxConcurrentSends={self._max_concurrent}, maxQueuedJobs={self._max_queued})"
            )
        self._jobs[job.jobid] = job
        self._tasks[job.jobid] = asyncio.get_running_loop().create_task(
            self._run(job), name=f"backup-{job.jobid}"
        )
        return job

    async def _run(self, job: BackupJob) -> None:
        try:
            async with self._sem:
                job.state = JobState.SENDING
                job.started_at = time.time()
                self._emit("backup_job_started", job)
                try:
                    await self._sender(job)
                except asyncio.CancelledError:
                    job.error = "cancelled: backupserver shutting down"
                    job.state = JobState.FAILED
                    raise
                except Exception as e:  # noqa: BLE001 - any failure fails the job, with its text
                    job.error = str(e) or type(e).__name__
                    job.state = JobState.FAILED
                else:
                    job.state = JobState.DONE
        except asyncio.CancelledError:
            if not job.finished:
                job.error = job.error or "cancelled: backupserver shutting down"
                job.state = JobState.FAILED
            raise
        finally:
            job.finished_at = time.time()
            self._tasks.pop(job.jobid, None)
            self._emit("backup_job_finished", job)
            self._retire(job)

    def _retire(self, job: BackupJob) -> None:
        self._finished_order.append(job.jobid)
        while len(self._finished_order) > self._keep_finished:
            old = self._finished_order.popleft()
            self._jobs.pop(old, None)

    def _emit(self, event: str, job: BackupJob) -> None:
        if self._log is None:
            return
        fields = dict(
            jobid=job.jobid,
            host=job.host,
            port=job.port,
            state=job.state.value,
            snapshot=job.snapshot,
            size=job.size,
            completed=job.completed,
        )
        if job.error:
            self._log.warning(event, error=job.error, **fields)
        else:
            self._log.info(event, **fields)

    async def close(self) -> None:
        """Cancel queued and running jobs and wait for them (senders clean up on cancel)."""
        self._closed = True
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
