"""Rebuild this node's dataset from a peer's backupserver (zfs send → TCP → zfs recv).

The restore is all-or-nothing. The existing dataset is not destroyed up front (the
original did, and a failed rebuild left the node with nothing): it is unmounted and
renamed aside to `<dataset>-restore-<epoch ms>` with mountpoint=none, and only
destroyed once the new copy is received, mounted and owned by the database user.
On any failure or cancellation the half-received dataset is destroyed, `zfs recv`
is killed, the listener is closed, and the old dataset is renamed back with its
mountpoint/canmount restored and mounted again, so afterwards exactly the old
dataset is in place. The sitter calls this; its status server shows the progress.

Incremental: the request offers our snapshots (name + guid); if the sender shares
one it sends only the blocks written since (`zfs send -i`). The stream's own header
says which kind arrived. For an increment, `dataset` is a clone of the set-aside
copy's base snapshot, promoted, into which the increment is received; the old data
stays whole in the aside copy until the end, as for a full stream
(manatee.core.incremental; docs/design.md "Incremental rebuilds").

    result = await restore(zfs, dataset="zones/pg", mountpoint=Path("/var/manatee"),
                           backup_url="http://10.0.0.1:10002", listen_host="10.0.0.2",
                           listen_port=10001, logger=log)
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import ipaddress
import json
import os
import pwd
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

import aiohttp
from yarl import URL

from manatee.core.aio import finish_even_if_cancelled
from manatee.core.auth import STREAM_HEADER_LEN, ShardSecret, new_stream_token, sign_request, stream_header_ok
from manatee.core.zfsstream import accept_stream
from manatee.core import incremental as inc
from manatee.core.zfs import Snapshot, Zfs, ZfsError

try:
    from manatee.core.log import get_logger
except ImportError:  # pragma: no cover
    import structlog

    def get_logger(name: str):  # type: ignore[no-redef]
        return structlog.get_logger(name)


POLL_FAILURES_ALLOWED = 3  # consecutive failed GETs of the job before giving up
HTTP_TIMEOUT = 10.0


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
    reason: Optional[str] = None  # why this path ran

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


@dataclass
class _OldDataset:
    name: str
    aside: str
    mountpoint: str
    mountpoint_source: str
    canmount: str
    mounted: bool
    steps: list[str] = field(default_factory=list)  # what was done to it, in order


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
    """
    if isinstance(secret, str):
        secret = ShardSecret.of(secret)
    log = logger if logger is not None else get_logger("manatee.restore")
    kw: dict[str, Any] = dict(
        dataset=dataset, mountpoint=Path(mountpoint), backup_url=backup_url.rstrip("/"),
        listen_host=listen_host, listen_port=listen_port, owner=owner, secret=secret,
        poll_interval=poll_interval, timeout=timeout, stall_timeout=stall_timeout,
        progress=progress, logger=log, ssl_context=ssl_context,
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

        self.state = RestoreProgress(phase="preparing")
        self.t0 = time.monotonic()
        self.old: Optional[_OldDataset] = None
        self.listener: Optional[socket.socket] = None
        self.accept_task: Optional[asyncio.Future[tuple[socket.socket, Any]]] = None
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

        await self._drop_old()
        seconds = time.monotonic() - self.t0
        snap_name = source_snap.partition("@")[2] if source_snap else None
        result = RestoreResult(
            bytes=received,
            seconds=seconds,
            snapshot=f"{self.dataset}@{snap_name}" if snap_name else None,
            source_snapshot=source_snap,
            jobid=self.state.jobid,
            incremental_from=self.incremental_from,
            reason=self.state.reason,
        )
        self.state.completed = received
        self._phase("done")
        self.log.info(
            "restore_done",
            bytes=received,
            seconds=round(seconds, 3),
            mb_per_s=round(result.mb_per_s, 1),
            snapshot=result.snapshot,
            path=result.path,
            why=result.reason,
        )
        return result

    # ------------------------------------------------------------------ receive

    async def _receive(self) -> tuple[int, Optional[str]]:
        self._phase("listening")
        try:
            self.listener = _listen(self.listen_host, self.listen_port)
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

        headers = {"Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        # Ask from our own address: the backupserver admits only shard members.
        local = (self.listen_host, 0) if _is_ip(self.listen_host) else None
        connector = aiohttp.TCPConnector(local_addr=local, force_close=True, ssl=self.ssl_context or True)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers, connector=connector) as http:
            jobpath = await self._request_backup(http)
            return await self._stream(http, jobpath)

    async def _request_backup(self, http: aiohttp.ClientSession) -> str:
        self._phase("requesting")
        url = f"{self.backup_url}/backup"
        body: dict[str, Any] = {"host": self.listen_host, "port": self.listen_port, "dataset": self.dataset,
                                "streamToken": self.stream_token}
        if self.ours:
            body["snapshots"] = [r.to_json() for r in inc.offered(self.ours)]
        data = json.dumps(body).encode()
        try:
            async with http.post(url, data=data, headers=sign_request(self.secret, "POST", URL(url).path, data)) as resp:
                text = await resp.text()
            if resp.status == 400 and "snapshots" in body and "UnknownParameter" in text:
                # A backupserver from before incremental rebuilds: ask it the old way.
                self.log.info("restore_server_without_incremental", answer=_brief(text))
                self.why_full = "the backupserver does not know incremental requests"
                del body["snapshots"]
                data = json.dumps(body).encode()
                async with http.post(url, data=data,
                                     headers=sign_request(self.secret, "POST", URL(url).path, data)) as resp:
                    text = await resp.text()
            if resp.status != 200:
                raise RestoreError(
                    f"backupserver {url} refused the backup request: HTTP {resp.status}: {_brief(text)}",
                    phase="requesting",
                )
            doc = _json(text)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise RestoreError(f"POST {url} failed: {type(e).__name__}: {e}", phase="requesting") from e
        jobid, jobpath = doc.get("jobid"), doc.get("jobPath")
        if not isinstance(jobid, str) or not isinstance(jobpath, str) or not jobpath.startswith("/"):
            raise RestoreError(f"backupserver {url} answered without a job: {_brief(text)}", phase="requesting")
        self._phase("queued", jobid=jobid)
        return jobpath

    async def _poll(self, http: aiohttp.ClientSession, jobpath: str) -> dict[str, Any]:
        url = self.backup_url + jobpath
        async with http.get(url) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RestoreError(f"GET {url}: HTTP {resp.status}: {_brief(text)}", phase=self.state.phase)
            return _json(text)

    async def _stream(self, http: aiohttp.ClientSession, jobpath: str) -> tuple[int, Optional[str]]:
        """Run zfs recv on the accepted connection while polling the job until both finish."""
        assert self.accept_task is not None
        poll_failures = 0
        last_count, last_change = -1, time.monotonic()
        sender_done_at: Optional[float] = None
        source_snap: Optional[str] = None
        while True:
            waiting_on: set[asyncio.Future[Any]] = {self.recv_task or self.accept_task}
            await asyncio.wait(waiting_on, timeout=self.poll_interval)
            self._maybe_start_recv()

            if self.recv_task is not None and self.recv_task.done():
                exc = self.recv_task.exception()
                if isinstance(exc, RestoreError):  # preparing for an increment failed
                    raise exc
                if exc is not None:
                    detail = await self._job_error(http, jobpath)
                    raise RestoreError(
                        f"zfs recv into {self.dataset} failed after {self.received} bytes: {exc}{detail}",
                        phase="receiving",
                    ) from exc
                received = self.recv_task.result()
                # Closing tells the sender the stream has landed; it then reports done.
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                job = await self._final_job(http, jobpath)
                if job is not None:
                    source_snap = job.get("snapshot") or source_snap
                    self._note_sender_reason(job)
                return received, source_snap

            try:
                job = await self._poll(http, jobpath)
                poll_failures = 0
            except RestoreError:
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
                poll_failures += 1
                self.log.warning("restore_poll_failed", failures=poll_failures, error=f"{type(e).__name__}: {e}")
                if poll_failures >= POLL_FAILURES_ALLOWED:
                    raise RestoreError(
                        f"backupserver {self.backup_url} stopped answering ({poll_failures} failed polls of "
                        f"{jobpath}: {type(e).__name__}: {e})",
                        phase=self.state.phase,
                    ) from e
                continue

            source_snap = job.get("snapshot") or source_snap
            self.state.snapshot = source_snap
            self._note_sender_reason(job)
            if isinstance(job.get("size"), int):
                self.state.size = job["size"]
            count = self.received
            self.state.completed = count
            done = job.get("done")
            if done == "failed":
                raise RestoreError(
                    f"backupserver job {self.state.jobid} failed: {job.get('error', 'no error given')}",
                    phase=self.state.phase,
                )
            self._maybe_start_recv()
            if done is True and self.recv_task is None:
                raise RestoreError(
                    f"backupserver reports job {self.state.jobid} complete but no stream arrived on "
                    f"{self.listen_host}:{self.listen_port}",
                    phase=self.state.phase,
                )
            if self.recv_task is not None:
                self._report()
                if count != last_count:
                    last_count, last_change = count, time.monotonic()
                elif time.monotonic() - last_change > self.stall_timeout:
                    raise RestoreError(
                        f"stream from {self.backup_url} stalled: no data for {self.stall_timeout:g}s "
                        f"after {count} bytes",
                        phase="receiving",
                    )
                if done is True:
                    sender_done_at = sender_done_at or time.monotonic()
                    if time.monotonic() - sender_done_at > max(60.0, self.stall_timeout):
                        raise RestoreError(
                            f"sender finished but zfs recv into {self.dataset} did not complete "
                            f"(received {count} of {job.get('completed')} bytes)",
                            phase="receiving",
                        )
            else:
                self._report()

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
        header = await self._peek_header(conn)
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
        self.state.reason = reason
        self.log.info("restore_path", path=self.state.path, why=reason, stream_to=header.toname)
        try:
            return await self.zfs.recv_from_socket(self.dataset, conn, progress=on_bytes)
        except ZfsError as e:
            if base is not None and any(m in e.stderr for m in _INCREMENT_REFUSED):
                self.full_would_fix = True
            raise

    def _note_sender_reason(self, job: dict[str, Any]) -> None:
        """A full stream we offered snapshots for: the sender's job says why (e.g. none in common)."""
        why = job.get("pathReason")
        if self.state.path == "full" and self.ours and not self.why_full and isinstance(why, str):
            self.state.reason = f"the backupserver sent a full stream: {why}"

    async def _peek_header(self, conn: socket.socket) -> inc.StreamHeader:
        """The stream's BEGIN record, read without consuming it (zfs recv reads it again)."""
        deadline = time.monotonic() + self.stall_timeout
        while True:
            try:
                data = conn.recv(inc.STREAM_HEADER_LEN + inc.TONAME_LEN, socket.MSG_PEEK)
                if len(data) >= inc.STREAM_HEADER_LEN:
                    try:
                        return inc.parse_stream_header(data)
                    except inc.NotAStream as e:
                        raise RestoreError(f"the sender's stream is not a zfs stream: {e}", phase="receiving")
                if not data:
                    raise RestoreError("the sender closed the stream before its header", phase="receiving")
            except (BlockingIOError, InterruptedError):
                pass
            if time.monotonic() > deadline:
                raise RestoreError(
                    f"no stream header within {self.stall_timeout:g}s of the sender connecting", phase="receiving"
                )
            await asyncio.sleep(0.02)

    async def _job_error(self, http: aiohttp.ClientSession, jobpath: str) -> str:
        """The sender's view of a failed stream, if it can still be asked (best effort)."""
        try:
            job = await asyncio.wait_for(self._poll(http, jobpath), 3.0)
        except Exception as e:  # noqa: BLE001
            return f"; backupserver unreachable: {type(e).__name__}: {e}"
        if job.get("error"):
            return f"; sender says: {job['error']}"
        return ""

    async def _final_job(self, http: aiohttp.ClientSession, jobpath: str) -> Optional[dict[str, Any]]:
        """After zfs recv accepted a complete stream, confirm with the sender (bounded wait).

        zfs recv only succeeds on a complete, checksummed stream, so an unreachable
        sender at this point is logged, not fatal; a sender that says "failed" is.
        """
        deadline = time.monotonic() + 15.0
        while True:
            try:
                job = await self._poll(http, jobpath)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, RestoreError) as e:
                self.log.warning("restore_final_poll_failed", error=f"{type(e).__name__}: {e}")
                return None
            if job.get("done") == "failed":
                raise RestoreError(
                    f"backupserver job {self.state.jobid} failed: {job.get('error', 'no error given')}",
                    phase="receiving",
                )
            if job.get("done") is True or time.monotonic() > deadline:
                return job
            await asyncio.sleep(min(self.poll_interval, 0.05))

    # ------------------------------------------------------------------ old dataset

    async def _props(self, name: str) -> dict[str, tuple[str, str]]:
        out = await self.zfs.run(
            "get", "-H", "-p", "-o", "property,value,source", "mountpoint,canmount,mounted", name
        )
        props = {}
        for line in out.splitlines():
            cols = line.split("\t")
            if len(cols) >= 3:
                props[cols[0]] = (cols[1], cols[2])
        return props

    async def _set_aside(self) -> None:
        self._phase("setting_aside")
        props = await self._props(self.dataset)
        aside = f"{self.dataset}-restore-{int(time.time() * 1000)}"
        self.old = old = _OldDataset(
            name=self.dataset,
            aside=aside,
            mountpoint=props.get("mountpoint", ("none", "default"))[0],
            mountpoint_source=props.get("mountpoint", ("none", "default"))[1],
            canmount=props.get("canmount", ("on", "default"))[0],
            mounted=props.get("mounted", ("no", "-"))[0] == "yes",
        )
        self.log.info(
            "restore_old_dataset",
            aside=aside,
            mountpoint=old.mountpoint,
            mountpoint_source=old.mountpoint_source,
            canmount=old.canmount,
            mounted=old.mounted,
        )
        try:
            if old.mounted:
                await self.zfs.unmount(self.dataset)
                old.steps.append("unmounted")
            await self.zfs.set(self.dataset, "canmount", "noauto")
            old.steps.append("canmount")
            await self.zfs.set(self.dataset, "mountpoint", "none")
            old.steps.append("mountpoint")
            await self.zfs.rename(self.dataset, aside)
            old.steps.append("renamed")
        except ZfsError as e:
            hint = " (is PostgreSQL still running on it?)" if e.busy else ""
            raise RestoreError(f"cannot set {self.dataset} aside{hint}: {e}", phase="setting_aside") from e

    async def _put_back(self, old: _OldDataset) -> list[str]:
        errors: list[str] = []
        if "renamed" in old.steps:
            try:
                await _retry(lambda: self.zfs.rename(old.aside, old.name))
            except ZfsError as e:
                return [f"old dataset is still at {old.aside}: rename back failed: {e}"]
        try:
            if "mountpoint" in old.steps:
                if old.mountpoint_source in ("local", "received"):
                    await self.zfs.set(old.name, "mountpoint", old.mountpoint)
                else:
                    await self.zfs.run("inherit", "mountpoint", old.name)
            if "canmount" in old.steps:
                await self.zfs.set(old.name, "canmount", old.canmount)
        except ZfsError as e:
            errors.append(f"restoring mountpoint/canmount of {old.name} failed: {e}")
        if old.mounted:
            try:
                if (await self.zfs.get(old.name, "mounted")) != "yes":
                    await _retry(lambda: self.zfs.mount(old.name))
            except ZfsError as e:
                errors.append(f"mounting {old.name} at {old.mountpoint} failed: {e}")
        return errors

    async def _drop_old(self) -> None:
        """Destroy the set-aside old copy now that the new one is in place (best effort)."""
        if self.old is None or "renamed" not in self.old.steps:
            return
        try:
            await _destroy(self.zfs, self.old.aside)
            self.log.info("restore_old_dataset_destroyed", aside=self.old.aside)
        except ZfsError as e:
            self.log.error("restore_old_dataset_left", aside=self.old.aside, error=str(e))

    # ------------------------------------------------------------------ activate

    async def _activate(self) -> None:
        """Mount the received copy at `mountpoint`, owned by `owner`, without a stale pid file."""
        self._phase("mounting")
        ds = self.dataset
        t0 = time.monotonic()
        try:
            await self.zfs.set(ds, "mountpoint", str(self.mountpoint))
            canmount = self.old.canmount if self.old else "on"
            if canmount != "on":  # a received filesystem starts with canmount=on
                await self.zfs.set(ds, "canmount", canmount)
            try:
                await self.zfs.mount(ds)
            except ZfsError as e:
                if "already mounted" not in e.stderr:
                    raise
        except ZfsError as e:
            raise RestoreError(f"cannot mount the restored {ds} at {self.mountpoint}: {e}", phase="mounting") from e
        t1 = time.monotonic()
        changed = 0
        if self.owner:
            try:
                pw = pwd.getpwnam(self.owner)
            except KeyError:
                raise RestoreError(f"owner {self.owner!r} is not a user on this host", phase="mounting") from None
            changed = await asyncio.to_thread(_chown_tree, self.mountpoint, pw.pw_uid, pw.pw_gid)
        removed = await asyncio.to_thread(_remove_pid_files, self.mountpoint)
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
        errors: list[str] = []
        if self.recv_task is not None and not self.recv_task.done():
            self.recv_task.cancel()  # Zfs.recv_from_socket SIGKILLs and reaps zfs recv
        if self.recv_task is not None:
            with contextlib.suppress(BaseException):
                await self.recv_task
        await self._close_network()
        name_is_ours = self.old is None or "renamed" in self.old.steps
        if self.old is not None and self.incremental_from is not None:
            # Give the old data its snapshots back, so that `dataset` can be destroyed. Asked
            # of zfs, not of our steps: a cancelled `zfs promote` may still have happened.
            try:
                origin = await self.zfs.get(self.old.aside, "origin")
                if origin.startswith(self.dataset + "@"):
                    await _retry(lambda: self.zfs.promote(self.old.aside))
            except ZfsError as e:
                errors.append(f"promoting the old {self.old.aside} back failed: {e}")
        if name_is_ours and (self.received_new or self.old is not None):
            try:
                if await self.zfs.exists(self.dataset):
                    await _destroy(self.zfs, self.dataset)
                    self.log.info("restore_partial_dataset_destroyed")
            except ZfsError as e:
                errors.append(f"destroying the partial {self.dataset} failed: {e}")
        if self.old is not None and not errors:
            errors += await self._put_back(self.old)
        elif self.old is not None:
            errors.append(f"old dataset left at {self.old.aside}")
        if errors:
            self.log.error("restore_rollback_incomplete", errors=errors)
        else:
            self.log.info("restore_rolled_back", old=self.old.name if self.old else None)
        return errors


# ---------------------------------------------------------------------- helpers


# zfs recv's complaints about an increment that a full stream would not have.
_INCREMENT_REFUSED = (
    "does not match incremental source",
    "destination has been modified",
    "most recent snapshot",
    "invalid backup stream",
    "destination already exists",
)


async def _retry(fn: Callable[[], Awaitable[Any]], attempts: int = 10, delay: float = 0.3) -> Any:
    """Retry a zfs call that fails with 'busy' (zfs-fuse needs a moment after a killed recv).

    After a killed incremental receive into an existing filesystem, zfs-fuse's daemon is
    still cleaning up its hidden `%recv` clone for a moment: a destroy then says "dataset
    already exists"; that is retried too.
    """
    for i in range(attempts):
        try:
            return await fn()
        except ZfsError as e:
            if i == attempts - 1 or not (e.busy or "mounted" in e.stderr or "already exists" in e.stderr):
                raise
            await asyncio.sleep(delay)


async def _destroy(zfs: Zfs, name: str) -> None:
    async def go() -> None:
        try:
            await zfs.destroy(name, recursive=True)
        except ZfsError as e:
            if e.not_found:
                return
            if e.busy:
                # Never force: on zfs-fuse a forced unmount of a filesystem still in use
                # wedges the daemon and every mount on the machine. A plain unmount fails
                # while something uses it, and _retry tries again.
                with contextlib.suppress(ZfsError):
                    await zfs.unmount(name)
            raise

    await _retry(go)


def _chown_tree(root: Path, uid: int, gid: int) -> int:
    """chown -R `root` to uid:gid; returns how many entries changed.

    Every file of a PostgreSQL data dir belongs to the database user, so the sender's
    tree is either all ours already (same uid on both hosts) or all someone else's.
    When `root` and everything directly in it already belong to uid:gid, the deep walk
    (one FUSE round trip per file under zfs-fuse) is skipped.
    """
    def owned(st: os.stat_result) -> bool:
        return (st.st_uid, st.st_gid) == (uid, gid)

    top = [root / name for name in os.listdir(root) if name != ".zfs"]
    if owned(os.lstat(root)) and all(owned(os.lstat(p)) for p in top):
        return 0
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and ".zfs" in dirnames:
            dirnames.remove(".zfs")
        for name in [*dirnames, *filenames, None]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            try:
                if not owned(os.lstat(path)):
                    os.lchown(path, uid, gid)
                    changed += 1
            except FileNotFoundError:
                continue
    return changed


def _remove_pid_files(root: Path) -> list[str]:
    """postmaster.pid in the mountpoint or a data dir right under it (a live PG's snapshot has one)."""
    removed = []
    for path in [root / "postmaster.pid", *map(Path, glob.glob(str(root / "*" / "postmaster.pid")))]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(str(path))
    return removed


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket. The stream is one connection, but strangers may connect
    too (accept_stream closes them), so the backlog leaves room for the real sender."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _is_ip(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _json(text: str) -> dict[str, Any]:
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {_brief(text)}")
    return doc


def _brief(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."
