"""Streams a fresh snapshot of this node's dataset to a restoring peer over TCP.

Per job: take `dataset@<epoch ms>` now (the receiver gets current data and needs
little WAL catch-up; the 13-digit name is the snapshotter's format, so its
retention prunes these later), `zfs hold` it for the duration of the send so the
snapshotter cannot destroy it mid-stream, connect to the receiver, and hand the
socket to `zfs send` as its stdout (manatee.core.zfsstream: no copies through
Python). The stream starts with a 40-byte header proving the shard secret for the
job's one-time token (manatee.core.auth.stream_header). The hold is released on every exit path; on failure or cancellation zfs
send is killed and the socket shut down, which also stops zfs-fuse's daemon.

When the request offers the requester's snapshots (manatee.core.incremental), the
newest one this dataset also has is held too and the stream is `zfs send -i` from
it: only the blocks written since then travel.

After a stream completes, the snapshot sent is marked as the base this node shares with
the receiver (manatee.core.bases), in the background: the job is done without waiting.
An increment's base keeps its mark (the receiver may have failed and kept only that).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from typing import Any, Optional

from manatee.backupserver.jobs import BackupJob
from manatee.core.aio import finish_even_if_cancelled
from manatee.core.auth import STREAM_HEADER_LEN, ShardSecret, stream_header
from manatee.core.bases import mark_base
from manatee.core.incremental import SnapshotRef, common_to_json, newest_common
from manatee.core.log import get_logger
from manatee.core.zfs import Snapshot, Zfs, ZfsError
from manatee.core.zfsstream import StreamError, tcp_counters

# One fixed tag: every job holds its own fresh snapshot, and a fixed tag lets a
# restarted backupserver find and release holds left by a crashed one (zfs-fuse
# cannot list hold tags).
HOLD_TAG = "manatee-backupserver"
# The base of an incremental send may serve several jobs at once: one hold per base
# (this tag), counted in-process, released by the last job using it.
BASE_HOLD_TAG = "manatee-backupserver-base"


class SendError(Exception):
    """A send that could not complete; the message is what the job's `error` shows."""


class ZfsSender:
    def __init__(
        self,
        zfs: Zfs,
        dataset: str,
        *,
        connect_timeout: float = 10.0,
        stall_timeout: float = 300.0,
        source_address: Optional[str] = None,
        secret: Optional[ShardSecret] = None,
        logger: Any = None,
    ) -> None:
        self.zfs = zfs
        self.secret = secret
        self.source_address = source_address
        self.dataset = dataset
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.log = logger if logger is not None else get_logger("manatee.backupserver.sender")
        self._base_users: dict[str, int] = {}
        self._base_lock = asyncio.Lock()
        self._mark_lock = asyncio.Lock()  # one read-modify-write of the base marks at a time
        self._marking: set[asyncio.Task] = set()

    async def fresh_snapshot(self) -> Snapshot:
        """`dataset@<epoch ms>`; retried with a later name if that ms is already taken."""
        last: Optional[Exception] = None
        for _ in range(20):
            name = str(int(time.time() * 1000))
            try:
                return await self.zfs.snapshot(self.dataset, name)
            except ZfsError as e:
                if "exists" not in e.stderr:
                    raise SendError(f"cannot snapshot {self.dataset}: {e}") from e
                last = e
                await asyncio.sleep(0.002)
        raise SendError(f"cannot snapshot {self.dataset}: {last}")

    async def release_stale_holds(self) -> list[str]:
        """Release holds a previous (crashed) backupserver left on `dataset`'s snapshots.

        Call at start-up, before any job runs. Snapshots held by someone else keep
        their holds: releasing a tag that is not there is a harmless error.
        """
        released = []
        try:
            held = await self.zfs.held_snapshots(self.dataset)
        except ZfsError as e:
            self.log.warning("backup_stale_holds_check_failed", dataset=self.dataset, error=str(e))
            return released
        for snap in sorted(held):
            for tag in (HOLD_TAG, BASE_HOLD_TAG):
                try:
                    await self.zfs.release(tag, snap)
                except ZfsError:
                    continue
                if snap not in released:
                    released.append(snap)
        if released:
            self.log.info("backup_stale_holds_released", snapshots=released)
        return released

    async def __call__(self, job: BackupJob) -> None:
        base = await self.incremental_base(job)
        try:
            await self._send(job, base)
        finally:
            if base is not None:
                await finish_even_if_cancelled(self._drop_base(base))

    async def _drop_base(self, base: str) -> None:
        async with self._base_lock:
            self._base_users[base] -= 1
            if not self._base_users[base]:
                del self._base_users[base]
                await self._release(BASE_HOLD_TAG, base)

    async def common_with(self, offered: tuple[SnapshotRef, ...]) -> Optional[dict[str, object]]:
        """The newest of our snapshots whose guid is offered, as `POST /snapshots/common` answers
        it (ZfsError propagates: the requester then does not know, and asks its upstream)."""
        return common_to_json(newest_common(await self.zfs.list_snapshot_guids(self.dataset), offered))

    async def incremental_base(self, job: BackupJob) -> Optional[str]:
        """The newest snapshot the requester also has, held for the send; None: send in full.

        Sets `job.incremental` and `job.path_reason`. Any doubt (the listing fails, the
        snapshot vanished before the hold) means a full stream, which is always correct.
        """
        if not job.offered:
            job.path_reason = "the request offered no snapshots"
            return None
        try:
            common = newest_common(await self.zfs.list_snapshot_guids(self.dataset), job.offered)
        except ZfsError as e:
            job.path_reason = f"cannot list the snapshots of {self.dataset}: {e}"
            return None
        if common is None:
            job.path_reason = f"none of the {len(job.offered)} offered snapshots exists here"
            return None
        snap, guid = common
        async with self._base_lock:
            if not self._base_users.get(snap.full):
                try:
                    await self.zfs.hold(BASE_HOLD_TAG, snap.full)
                except ZfsError as e:
                    job.path_reason = f"cannot hold the common snapshot {snap.full}: {e}"
                    return None
            self._base_users[snap.full] = self._base_users.get(snap.full, 0) + 1
        job.incremental = {"from": snap.full, "guid": guid}
        job.path_reason = f"newest common snapshot {snap.name}"
        return snap.full

    async def _send(self, job: BackupJob, base: Optional[str]) -> None:
        snap = await self.fresh_snapshot()
        job.snapshot = snap.full
        await self.zfs.hold(HOLD_TAG, snap.full)
        sock: Optional[socket.socket] = None
        try:
            with contextlib.suppress(ZfsError, ValueError):
                job.size = await self.zfs.estimate_send_size(snap.full, base)
            self.log.info(
                "backup_send_connecting",
                jobid=job.jobid,
                snapshot=snap.full,
                address=job.address,
                port=job.port,
                size=job.size,
                incremental_from=base,
                why=job.path_reason,
            )
            sock = await self._connect(job.address, job.port)
            # Prove the shard secret before the first byte of the stream: the receiver
            # checks this header before anything reaches its zfs recv.
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_sendall(sock, stream_header(self.secret, job.stream_token)),
                    self.connect_timeout,
                )
            except (OSError, asyncio.TimeoutError) as e:
                raise SendError(f"cannot send the stream header to {job.address}:{job.port}: {e!r}") from e
            await _header_acked(sock)

            def progress(sent: int) -> None:
                job.completed = sent
                if job.size is None or job.size < sent:
                    job.size = sent

            try:
                sent = await self.zfs.send_to_socket(
                    snap.full, sock, incremental_from=base, progress=progress, stall_timeout=self.stall_timeout
                )
            except (ZfsError, StreamError) as e:
                raise SendError(f"sending {snap.full} to {job.address}:{job.port} failed: {e}") from e
            job.completed = sent
            if job.size is None or job.size != sent:
                job.size = sent
            self._mark_sent(snap.full, job.address, base)
        finally:
            if sock is not None:
                sock.close()
            await self._release(HOLD_TAG, snap.full)

    def _mark_sent(self, snapshot: str, receiver: str, base: Optional[str]) -> None:
        """Mark `snapshot` as the base shared with `receiver`, in the background. The mark on
        an increment's `base` stays: if the receiver's side failed, that is what it still has."""
        async def mark() -> None:
            async with self._mark_lock:
                await mark_base(self.zfs, self.dataset, snapshot, receiver, self.log, keep=(base,) if base else ())

        task = asyncio.get_running_loop().create_task(mark(), name=f"mark-base-{snapshot}")
        self._marking.add(task)
        task.add_done_callback(self._marking.discard)

    @property
    def mark_lock(self) -> asyncio.Lock:
        """Held for each read-modify-write of the base marks (the stale-mark check takes it too)."""
        return self._mark_lock

    async def marks_settled(self) -> None:
        """Wait for the base marks being written (tests, shutdown)."""
        while self._marking:
            await asyncio.gather(*self._marking, return_exceptions=True)

    async def _connect(self, address: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            local = self._local_addr(address)
            if local is not None:
                sock.bind(local)
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (address, port)), self.connect_timeout
            )
        except asyncio.TimeoutError:
            sock.close()
            raise SendError(
                f"connect to {address}:{port} timed out after {self.connect_timeout:g}s"
            ) from None
        except OSError as e:
            sock.close()
            raise SendError(f"cannot connect to {address}:{port}: {e}") from e
        except BaseException:
            sock.close()
            raise
        return sock

    def _local_addr(self, dest: str) -> Optional[tuple[str, int]]:
        """Connect from our own listen address (so peers see this node's IP), same family only."""
        if not self.source_address:
            return None
        try:
            src = ipaddress.ip_address(self.source_address)
            dst = ipaddress.ip_address(dest)
        except ValueError:
            return None
        if src.is_unspecified or src.version != dst.version:
            return None
        return (self.source_address, 0)

    async def _release(self, tag: str, snapshot: str) -> None:
        """Release the hold even while being cancelled; a failure is logged, not raised."""
        try:
            await finish_even_if_cancelled(self.zfs.release(tag, snapshot))
        except Exception as e:  # noqa: BLE001 - logged: a leftover hold is released at next start
            self.log.error("backup_hold_release_failed", snapshot=snapshot, tag=tag, error=str(e))


async def _header_acked(sock: socket.socket, timeout: float = 2.0) -> None:
    """Wait (briefly) until the peer acknowledged the header, so that the stream's progress
    counter (TCP bytes acked) counts zfs send's bytes only."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = tcp_counters(sock)
        if c is None or c[0] >= 1 + STREAM_HEADER_LEN:  # +1: the SYN
            return
        await asyncio.sleep(0.005)
