"""The restore's driver: listen, set the old dataset aside, ask the backupserver, receive the
stream into ``zfs recv`` while polling the job, then mount it, or roll everything back."""

from __future__ import annotations

import asyncio
import contextlib
import pwd
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import aiohttp

from manatee.core import incremental as inc
from manatee.core.aio import finish_even_if_cancelled
from manatee.core.auth import STREAM_HEADER_LEN, ShardSecret, new_stream_token, stream_header_ok
from manatee.core.bases import mark_base
from manatee.core.log import get_logger
from manatee.core.restore import receive, swap
from manatee.core.restore.job import BackupJob, job_session
from manatee.core.restore.outcome import RestoreError, RestoreProgress, RestoreResult
from manatee.core.zfs import Snapshot, Zfs, ZfsError
from manatee.core.zfsstream import accept_stream


@dataclass
class _StreamWatch:
    """What :meth:`_Restore._stream` remembers between polls of the sender's job."""

    last_change: float
    last_count: int = -1
    sender_done_at: Optional[float] = None
    source_snap: Optional[str] = None


async def restore(
    zfs: Zfs,
    *,
    dataset: str,
    mountpoint: Path,
    backup_url: str,
    listen_host: str,
    listen_port: int,
    owner: Optional[str] = "postgres",
    secret: Optional[ShardSecret | str] = None,
    poll_interval: float = 1.0,
    timeout: float = 6 * 3600.0,
    stall_timeout: float = 120.0,
    progress: Optional[Callable[[RestoreProgress], None]] = None,
    logger: Any = None,
    incremental: bool = True,
    ssl_context: Any = None,
    source_reason: Optional[str] = None,
    drop_old: bool = True,
) -> RestoreResult:
    """Replace `dataset` with a fresh copy streamed by the backupserver at `backup_url`.

    With `incremental`, offers the sender our snapshots so that it can send only what
    changed since the newest one we share (manatee.core.incremental). If an increment
    fails in a way a full stream avoids (no usable base here, zfs recv refuses it) and
    the rollback was complete, tries once more with a full stream.

    Raises RestoreError after rolling back; on cancellation rolls back too and lets
    CancelledError propagate. `secret` (the shard secret; None in insecure mode) signs the
    backup request and checks the stream's header before anything reaches zfs recv.
    `ssl_context` verifies an https:// backupserver and presents our client certificate.
    `source_reason` says why `backup_url` was chosen (manatee.core.restore.source); the
    result's reason carries it. With `drop_old` False the old copy set aside is not
    destroyed here: the result's `old_copy` names it, for after_restore once the caller
    has started PostgreSQL on the new copy (the sitter does).
    """
    if isinstance(secret, str):
        secret = ShardSecret.of(secret)
    log = logger if logger is not None else get_logger("manatee.restore")
    kw: dict[str, Any] = dict(
        dataset=dataset, mountpoint=Path(mountpoint), backup_url=backup_url.rstrip("/"),
        listen_host=listen_host, listen_port=listen_port, owner=owner, secret=secret,
        poll_interval=poll_interval, timeout=timeout, stall_timeout=stall_timeout,
        progress=progress, logger=log, ssl_context=ssl_context, source_reason=source_reason,
        drop_old=drop_old,
    )
    try:
        return await _Restore(zfs, incremental=incremental, **kw).run()
    except RestoreError as e:
        if not (incremental and e.full_would_fix and not e.rollback_errors):
            raise
        log.warning("restore_incremental_failed_retrying_full", error=str(e))
        return await _Restore(
            zfs, incremental=False, why_full=f"the incremental restore failed: {e}", **kw
        ).run()


async def after_restore(zfs: Zfs, log: Any, *, snapshot: Optional[str], source: Optional[str],
                        old_copy: Optional[str]) -> None:
    """What follows a completed restore, off its critical path (the sitter runs it while
    PostgreSQL starts; `restore(drop_old=True)` before it returns): mark the received
    `snapshot` as the base this node shares with the `source` backupserver's host
    (manatee.core.bases: the snapshotter keeps it, so the next rebuild can be an increment),
    then destroy the replaced `old_copy`. Both best effort, both bounded."""
    host = urlsplit(source).hostname if source else None
    if snapshot and host:
        await mark_base(zfs, snapshot.partition("@")[0], snapshot, host, log)
    if old_copy:
        await swap.drop_replaced(zfs, old_copy, log)


class _Restore:
    def __init__(self, zfs: Zfs, **kw: Any) -> None:
        self.zfs = zfs
        self.dataset: str = kw["dataset"]
        self.mountpoint: Path = kw["mountpoint"]
        self.backup_url: str = kw["backup_url"]
        self.listen_host: str = kw["listen_host"]
        self.listen_port: int = kw["listen_port"]
        self.owner: Optional[str] = kw["owner"]
        self.secret: Optional[ShardSecret] = kw["secret"]
        self.stream_token = new_stream_token()  # one-time: the sender's header proves it with the secret
        self.poll_interval: float = kw["poll_interval"]
        self.timeout: float = kw["timeout"]
        self.stall_timeout: float = kw["stall_timeout"]
        self.on_progress = kw["progress"]
        self.ssl_context = kw.get("ssl_context")
        self.offer: bool = kw.get("incremental", True)
        self.why_full: Optional[str] = kw.get("why_full") or (None if self.offer else "an incremental was not asked for")
        self.ours: list[tuple[Snapshot, str]] = []  # our snapshots with guids (before set-aside)
        self.incremental_from: Optional[str] = None  # the base we cloned (its name before set-aside)
        self.full_would_fix = False
        self.log = kw["logger"].bind(dataset=self.dataset) if hasattr(kw["logger"], "bind") else kw["logger"]

        self.source_reason: Optional[str] = kw.get("source_reason")
        self.drop_old: bool = kw.get("drop_old", True)
        self.state = RestoreProgress(phase="preparing", source=self.backup_url)
        self.t0 = time.monotonic()
        self.old: Optional[swap.OldDataset] = None
        self.listener: Optional[socket.socket] = None
        self.accept_task: Optional[asyncio.Future[tuple[socket.socket, Any]]] = None
        self.job: Optional[BackupJob] = None
        self.conn: Optional[socket.socket] = None
        self.received = 0
        self.recv_task: Optional[asyncio.Future[int]] = None
        self.received_new = False  # `dataset` now names a (possibly partial) received copy

    # ------------------------------------------------------------------ progress

    def _phase(self, phase: str, **fields: Any) -> None:
        self.state.phase = phase
        for k, v in fields.items():
            setattr(self.state, k, v)
        self.log.info(
            "restore_phase",
            phase=phase,
            completed=self.state.completed,
            size=self.state.size,
            jobid=self.state.jobid,
        )
        self._report()

    def _report(self) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(RestoreProgress(**asdict(self.state)))
        except Exception as e:  # noqa: BLE001 - a broken observer must not break the restore
            self.log.warning("restore_progress_callback_failed", error=str(e))

    # ------------------------------------------------------------------ driver

    async def run(self) -> RestoreResult:
        self.log.info(
            "restore_start",
            backup_url=self.backup_url,
            listen=f"{self.listen_host}:{self.listen_port}",
            mountpoint=str(self.mountpoint),
        )
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    received, source_snap = await self._receive()
                    await self._activate()
            except TimeoutError:
                raise RestoreError(
                    f"restore of {self.dataset} timed out after {self.timeout:g}s "
                    f"in phase {self.state.phase}",
                    phase=self.state.phase,
                ) from None
        except BaseException as e:
            phase = self.state.phase
            if isinstance(e, RestoreError):
                e.full_would_fix = e.full_would_fix or self.full_would_fix
            try:
                rollback_errors = await finish_even_if_cancelled(self._rollback())
            except asyncio.CancelledError:
                raise
            except Exception as rb:  # noqa: BLE001 - report it with the original cause
                rollback_errors = [f"rollback raised {type(rb).__name__}: {rb}"]
            if isinstance(e, asyncio.CancelledError):
                self._phase("failed", error="cancelled")
                raise
            msg = str(e) if isinstance(e, RestoreError) else f"{type(e).__name__}: {e}"
            if rollback_errors:
                msg += "; ROLLBACK INCOMPLETE: " + "; ".join(rollback_errors)
            self._phase("failed", error=msg)
            self.log.error("restore_failed", phase=phase, error=msg)
            if isinstance(e, RestoreError):
                e.args = (msg,)
                e.rollback_errors = rollback_errors
                e.phase = e.phase or phase
                raise
            err = RestoreError(msg, phase=phase, rollback_errors=rollback_errors)
            err.full_would_fix = self.full_would_fix
            raise err from e
        finally:
            await finish_even_if_cancelled(self._close_network())

        old_copy = self.old.aside if self.old is not None and "renamed" in self.old.steps else None
        snap_name = source_snap.partition("@")[2] if source_snap else None
        snapshot = f"{self.dataset}@{snap_name}" if snap_name else None
        if self.drop_old:
            await after_restore(self.zfs, self.log, snapshot=snapshot, source=self.backup_url, old_copy=old_copy)
            old_copy = None
        seconds = time.monotonic() - self.t0
        result = RestoreResult(
            bytes=received,
            seconds=seconds,
            snapshot=snapshot,
            source_snapshot=source_snap,
            jobid=self.state.jobid,
            incremental_from=self.incremental_from,
            reason=self.state.reason,
            source=self.backup_url,
            old_copy=old_copy,
        )
        self.state.completed = self.state.size = received  # the estimate was one (a lower bound for an increment)
        self._phase("done")
        self.log.info(
            "restore_done",
            bytes=received,
            seconds=round(seconds, 3),
            mb_per_s=round(result.mb_per_s, 1),
            snapshot=result.snapshot,
            path=result.path,
            why=result.reason,
            old_copy=old_copy,
        )
        return result

    # ------------------------------------------------------------------ receive

    async def _receive(self) -> tuple[int, Optional[str]]:
        self._phase("listening")
        try:
            self.listener = receive.listen(self.listen_host, self.listen_port)
        except OSError as e:
            raise RestoreError(
                f"cannot listen on {self.listen_host}:{self.listen_port}: {e}", phase="listening"
            ) from e
        self.accept_task = asyncio.ensure_future(accept_stream(
            self.listener, STREAM_HEADER_LEN,
            lambda header: stream_header_ok(self.secret, self.stream_token, header),
            on_reject=lambda peer, why: self.log.warning("restore_stream_rejected", peer=str(peer), reason=why),
        ))

        if await self.zfs.exists(self.dataset):
            await self._list_ours()
            await self._set_aside()

        async with job_session(self.listen_host, self.ssl_context) as http:
            await self._request_backup(http)
            return await self._stream()

    async def _request_backup(self, http: aiohttp.ClientSession) -> str:
        """Ask the backupserver for the stream (offering our snapshots); the job's path."""
        self._phase("requesting")
        self.job = BackupJob(http, self.backup_url, self.secret, self.log, self.poll_interval)
        body: dict[str, Any] = {"host": self.listen_host, "port": self.listen_port, "dataset": self.dataset,
                                "streamToken": self.stream_token}
        if self.ours:
            body["snapshots"] = [r.to_json() for r in inc.offered(self.ours)]
        if await self.job.request(body):
            self.why_full = "the backupserver does not know incremental requests"
        self._phase("queued", jobid=self.job.jobid)
        assert self.job.path is not None
        return self.job.path

    async def _stream(self) -> tuple[int, Optional[str]]:
        """Run zfs recv on the accepted connection while polling the job until both finish."""
        assert self.accept_task is not None and self.job is not None
        watch = _StreamWatch(last_change=time.monotonic())
        while True:
            waiting_on: set[asyncio.Future[Any]] = {self.recv_task or self.accept_task}
            await asyncio.wait(waiting_on, timeout=self.poll_interval)
            self._maybe_start_recv()
            if self.recv_task is not None and self.recv_task.done():
                return await self._received(self.job, watch.source_snap)
            job = await self.job.poll(self.state.phase)
            if job is not None:
                self._follow_job(job, watch)

    async def _received(self, job: BackupJob, source_snap: Optional[str]) -> tuple[int, Optional[str]]:
        """zfs recv has ended: its failure, or the bytes received and the sender's snapshot."""
        assert self.recv_task is not None
        exc = self.recv_task.exception()
        if isinstance(exc, RestoreError):  # preparing for an increment failed
            raise exc
        if exc is not None:
            detail = await job.error_detail(self.state.phase)
            raise RestoreError(
                f"zfs recv into {self.dataset} failed after {self.received} bytes: {exc}{detail}",
                phase="receiving",
            ) from exc
        received = self.recv_task.result()
        self.log.info("restore_received", bytes=received)
        # Closing tells the sender the stream has landed; it then reports done.
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        final = await job.final(self.state.phase)
        if final is not None:
            source_snap = final.get("snapshot") or source_snap
            self._note_sender_reason(final)
        return received, source_snap

    def _follow_job(self, job: dict[str, Any], watch: _StreamWatch) -> None:
        """Progress from one poll of the job; RestoreError if the sender failed or the stream stalled."""
        watch.source_snap = job.get("snapshot") or watch.source_snap
        self.state.snapshot = watch.source_snap
        self._note_sender_reason(job)
        if isinstance(job.get("size"), int):
            self.state.size = job["size"]
        count = self.received
        self.state.completed = count
        done = job.get("done")
        if done == "failed":
            assert self.job is not None
            raise self.job.failed(job, self.state.phase)
        self._maybe_start_recv()
        if done is True and self.recv_task is None:
            raise RestoreError(
                f"backupserver reports job {self.state.jobid} complete but no stream arrived on "
                f"{self.listen_host}:{self.listen_port}",
                phase=self.state.phase,
            )
        self._report()
        if self.recv_task is None:
            return
        if count != watch.last_count:
            watch.last_count, watch.last_change = count, time.monotonic()
        elif time.monotonic() - watch.last_change > self.stall_timeout:
            raise RestoreError(
                f"stream from {self.backup_url} stalled: no data for {self.stall_timeout:g}s "
                f"after {count} bytes",
                phase="receiving",
            )
        if done is True:
            watch.sender_done_at = watch.sender_done_at or time.monotonic()
            if time.monotonic() - watch.sender_done_at > max(60.0, self.stall_timeout):
                raise RestoreError(
                    f"sender finished but zfs recv into {self.dataset} did not complete "
                    f"(received {count} of {job.get('completed')} bytes)",
                    phase="receiving",
                )

    def _maybe_start_recv(self) -> None:
        """Once the sender has connected: stop listening (exactly one stream) and start zfs recv."""
        assert self.accept_task is not None
        if self.recv_task is not None or not self.accept_task.done():
            return
        exc = self.accept_task.exception()
        if exc is not None:
            raise RestoreError(f"accepting the stream on {self.listen_host}:{self.listen_port} failed: {exc}",
                               phase=self.state.phase) from exc
        self.conn, peer = self.accept_task.result()
        if self.listener is not None:
            self.listener.close()
        self.log.info("restore_stream_connected", peer=str(peer))
        self.received_new = True

        def on_bytes(n: int) -> None:
            self.received = n

        self.recv_task = asyncio.ensure_future(self._recv_stream(self.conn, on_bytes))
        self._phase("receiving")

    async def _list_ours(self) -> None:
        """Our snapshots with guids, to offer the sender (a failure only costs a full stream)."""
        if not self.offer:
            return
        try:
            self.ours = await self.zfs.list_snapshot_guids(self.dataset)
        except ZfsError as e:
            self.log.warning("restore_snapshot_listing_failed", error=str(e))
            self.why_full = f"cannot list this node's snapshots: {e}"

    async def _recv_stream(self, conn: socket.socket, on_bytes: Callable[[int], None]) -> int:
        """Read the stream's header; for an increment, clone our copy of its base first; zfs recv.

        The clone (`dataset`, from `<aside>@<base>`) is promoted before the receive, so
        that `zfs recv` accepts the increment (zfs-fuse refuses it into an unpromoted
        clone) and the old dataset can later be destroyed on its own. The old data stays
        whole in the set-aside dataset (now a clone of `dataset@<base>`); rollback
        promotes it back before destroying `dataset`.
        """
        header = await receive.peek_header(conn, self.stall_timeout)
        base = None
        if header.incremental:
            base = inc.find_guid(self.ours, header.fromguid)
            if base is None or self.old is None or "renamed" not in self.old.steps:
                self.full_would_fix = True
                raise RestoreError(
                    f"the sender sent an increment from guid {header.fromguid}, which this node does not have",
                    phase="receiving",
                )
            self.incremental_from = base.full
            origin = f"{self.old.aside}@{base.name}"
            try:
                await self.zfs.clone(origin, self.dataset, props={"mountpoint": "none"})
                await self.zfs.promote(self.dataset)
            except ZfsError as e:
                self.full_would_fix = True
                raise RestoreError(f"cannot prepare {self.dataset} from {origin}: {e}", phase="receiving") from e
            reason = f"newest common snapshot {base.name}"
        else:
            reason = self.why_full or (
                "this node has no snapshots to offer" if not self.ours else "the backupserver sent a full stream"
            )
        self.state.path = inc.describe_path(self.incremental_from)
        self.state.reason = self._with_source(reason)
        self.log.info("restore_path", path=self.state.path, why=reason, stream_to=header.toname)
        try:
            return await self.zfs.recv_from_socket(self.dataset, conn, progress=on_bytes)
        except ZfsError as e:
            if base is not None and any(m in e.stderr for m in receive.INCREMENT_REFUSED):
                self.full_would_fix = True
            raise

    def _note_sender_reason(self, job: dict[str, Any]) -> None:
        """A full stream we offered snapshots for: the sender's job says why (e.g. none in common)."""
        why = job.get("pathReason")
        if self.state.path == "full" and self.ours and not self.why_full and isinstance(why, str):
            self.state.reason = self._with_source(f"the backupserver sent a full stream: {why}")

    def _with_source(self, reason: str) -> str:
        return f"{reason}; {self.source_reason}" if self.source_reason else reason

    # ------------------------------------------------------------------ old dataset

    async def _set_aside(self) -> None:
        self._phase("setting_aside")
        self.old = old = await swap.describe(self.zfs, self.dataset, swap.aside_name(self.dataset, int(time.time() * 1000)))
        self.log.info("restore_old_dataset", **old.fields())
        try:
            await swap.set_aside(self.zfs, old)
        except ZfsError as e:
            hint = " (is PostgreSQL still running on it?)" if e.busy else ""
            raise RestoreError(f"cannot set {self.dataset} aside{hint}: {e}", phase="setting_aside") from e

    # ------------------------------------------------------------------ activate

    async def _activate(self) -> None:
        """Mount the received copy at `mountpoint`, owned by `owner`, without a stale pid file."""
        self._phase("mounting")
        ds = self.dataset
        t0 = time.monotonic()
        try:
            await swap.mount_at(self.zfs, ds, self.mountpoint, self.old.canmount if self.old else "on")
        except ZfsError as e:
            raise RestoreError(f"cannot mount the restored {ds} at {self.mountpoint}: {e}", phase="mounting") from e
        t1 = time.monotonic()
        changed = 0
        if self.owner:
            try:
                pw = pwd.getpwnam(self.owner)
            except KeyError:
                raise RestoreError(f"owner {self.owner!r} is not a user on this host", phase="mounting") from None
            changed = await asyncio.to_thread(swap.chown_tree, self.mountpoint, pw.pw_uid, pw.pw_gid)
        removed = await asyncio.to_thread(swap.remove_pid_files, self.mountpoint)
        self.log.info(
            "restore_mounted",
            mountpoint=str(self.mountpoint),
            mount_seconds=round(t1 - t0, 3),
            chown_seconds=round(time.monotonic() - t1, 3),
            chowned=changed,
            removed_pid_files=removed,
        )

    # ------------------------------------------------------------------ rollback

    async def _close_network(self) -> None:
        if self.accept_task is not None and not self.accept_task.done():
            self.accept_task.cancel()
            with contextlib.suppress(BaseException):
                await self.accept_task
        if self.listener is not None:
            self.listener.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)
            self.conn.close()

    async def _rollback(self) -> list[str]:
        self._phase("rolling_back")
        if self.recv_task is not None and not self.recv_task.done():
            self.recv_task.cancel()  # Zfs.recv_from_socket SIGKILLs and reaps zfs recv
        if self.recv_task is not None:
            with contextlib.suppress(BaseException):
                await self.recv_task
        await self._close_network()
        errors = await swap.undo(self.zfs, self.dataset, self.old, log=self.log,
                                 cloned=self.incremental_from is not None, received=self.received_new)
        if errors:
            self.log.error("restore_rollback_incomplete", errors=errors)
        else:
            self.log.info("restore_rolled_back", old=self.old.name if self.old else None)
        return errors
