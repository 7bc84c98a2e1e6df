"""`zfs send` straight into a TCP socket and `zfs recv` straight out of one.

The one streaming implementation: Zfs.send_to_socket/recv_from_socket delegate here.
Why not pipe the stream through Python: on a 2-core host the zfs work itself
(zfs-fuse's daemon, or the kernel) needs both cores at full speed, and copying every
byte through two Python processes halved the rebuild rate (126 vs 267 MB/s
measured, bench/restore_throughput.py). Handing the socket to zfs as its
stdout/stdin costs no copies at all; progress comes from the kernel's TCP counters
(TCP_INFO bytes_acked / bytes_received).

Failure handling is the point of these helpers. Under zfs-fuse the `zfs` command
passes its stdin/stdout to the zfs-fuse daemon, which does the reading/writing, so
killing `zfs send`/`zfs recv` alone does not stop the transfer. On failure or
cancellation we SIGKILL the zfs process AND shut the socket down, which makes the
daemon's (or the kernel's) next read/write fail, then reap the process. The
process's stderr goes to a pipe of our own, so waiting for it never depends on a
descriptor somebody else holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import termios
import time
from typing import Callable, Optional

from manatee.core.aio import finish_even_if_cancelled
from manatee.core.zfs import Zfs, ZfsError, recv_args, send_args

# struct tcp_info (linux/tcp.h): __u8 tcpi_state at 0, __u64 tcpi_bytes_acked at 120,
# tcpi_bytes_received at 128. Both counters count sequence space, so they include a SYN
# (bytes_acked of an actively opened socket starts at 1) and a FIN.
_TCP_INFO_LEN = 232
_BYTES_ACKED_OFF = 120
_BYTES_RECEIVED_OFF = 128
# States after the peer's FIN arrived (and before our own socket is closed).
_PEER_FIN_STATES = {6, 8, 9, 11}  # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING
STDERR_KEEP = 64 * 1024
POLL = 0.25

Progress = Callable[[int], None]


class StreamError(Exception):
    """The transfer failed outside zfs: the peer went away or nothing moved for too long."""


def tcp_counters(sock: socket.socket) -> Optional[tuple[int, int]]:
    """(bytes acked by the peer, bytes received) of a TCP socket; None if unknown."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError):
        return None
    if len(info) < _BYTES_RECEIVED_OFF + 8:
        return None
    return struct.unpack_from("=QQ", info, _BYTES_ACKED_OFF)


def _acked(sock: socket.socket) -> int:
    c = tcp_counters(sock)
    return c[0] if c else 0


def _consumed(sock: socket.socket) -> int:
    """Bytes this process has already read from `sock`: received by TCP minus those still
    waiting in the receive queue. (The sender may start streaming before zfs recv is
    spawned; bytes queued by then are part of the stream and must be counted.)"""
    try:
        unread = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        unread = 0
    return max(_payload_received(sock, 0) - unread, 0)


def _payload_received(sock: socket.socket, base: int) -> int:
    """Stream bytes received since bytes_received was `base`, without the peer's FIN."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError):
        return 0
    if len(info) < _BYTES_RECEIVED_OFF + 8:
        return 0
    n = struct.unpack_from("=Q", info, _BYTES_RECEIVED_OFF)[0] - base
    if info[0] in _PEER_FIN_STATES:  # the FIN counts as one received byte
        n -= 1
    return max(n, 0)


class _ZfsChild:
    """A zfs process whose stdin or stdout is a socket, stderr a pipe we own."""

    def __init__(self, argv: list[str], proc: asyncio.subprocess.Process, err_task: "asyncio.Future[str]",
                 err_transport: asyncio.BaseTransport) -> None:
        self.argv = argv
        self.proc = proc
        self.err_task = err_task
        self.err_transport = err_transport

    @classmethod
    async def spawn(cls, argv: list[str], *, stdin: int | None = None, stdout: int | None = None) -> "_ZfsChild":
        loop = asyncio.get_running_loop()
        err_r, err_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=stdout if stdout is not None else asyncio.subprocess.DEVNULL,
                stderr=err_w,
            )
        except BaseException:
            os.close(err_r)
            raise
        finally:
            os.close(err_w)
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(err_r, "rb", buffering=0)
        )
        return cls(argv, proc, asyncio.ensure_future(_read_capped(reader)), transport)

    async def stderr(self) -> str:
        try:
            return await asyncio.wait_for(asyncio.shield(self.err_task), 2.0)
        except Exception:  # noqa: BLE001 - best effort
            return ""

    async def wait(self, timeout: float) -> Optional[int]:
        try:
            return await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
        except asyncio.TimeoutError:
            return None

    async def kill(self, sock: socket.socket) -> None:
        """SIGKILL, cut the socket (stops a daemon-side transfer), reap; survives cancellation."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        try:
            await finish_even_if_cancelled(self.proc.wait())
        finally:
            self.close()

    def close(self) -> None:
        self.err_transport.close()
        self.err_task.cancel()


async def send_to_socket(
    zfs: Zfs,
    snapshot: str,
    sock: socket.socket,
    *,
    incremental_from: Optional[str] = None,
    progress: Optional[Progress] = None,
    stall_timeout: float = 300.0,
) -> int:
    """Run `zfs send [-i FROM] SNAPSHOT` with `sock` as its stdout; return the bytes the peer acknowledged.

    After zfs send exits, the write side is shut down and we wait for the peer to
    close its side (the restore client closes after `zfs recv` has finished), so a
    successful return means the receiver took the whole stream. Raises ZfsError if zfs
    send failed (also when the peer went away mid-stream: its write fails), StreamError
    if the receiver failed after the stream or nothing moved for `stall_timeout` s.
    """
    argv = [zfs.zfs_path, *send_args(snapshot, incremental_from)]
    sock.setblocking(True)  # the zfs side does blocking writes on this descriptor
    base = _acked(sock)  # an actively opened socket counts its SYN as one acked byte
    child = await _ZfsChild.spawn(argv, stdout=sock.fileno())
    ok = False
    try:
        watch = _Stall(sock, lambda sk: _acked(sk) - base, progress, stall_timeout)
        while True:
            rc = await child.wait(POLL)
            if rc is not None:
                break
            watch.check(argv, "zfs send")
        if rc != 0:
            raise ZfsError(argv, rc, await child.stderr(), f"after {watch.last} bytes")
        # Everything is in the socket: half-close and wait for the receiver to finish.
        # Our FIN takes one sequence number, which bytes_acked counts once it is acked.
        sent_all = watch.sample()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        watch.counter = lambda sk: max(sent_all, _acked(sk) - base - 1)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), POLL)
            except asyncio.TimeoutError:
                watch.check(argv, "the receiver to finish")
                continue
            except OSError as e:
                raise StreamError(f"the receiver failed after {watch.last} bytes: {e!r}") from e
            if not data:
                break
        sent = watch.sample()
        ok = True
        return sent
    finally:
        if ok:
            child.close()
        else:
            await child.kill(sock)


async def recv_from_socket(
    zfs: Zfs,
    dataset: str,
    sock: socket.socket,
    *,
    progress: Optional[Progress] = None,
    force: bool = False,
) -> int:
    """Run `zfs recv [-F] -u DATASET` with `sock` as its stdin; return the bytes received.

    Raises ZfsError when zfs recv fails (a stream cut short ends that way). On
    cancellation zfs recv is killed and the socket shut down before CancelledError
    propagates. Stall detection is the caller's (it knows the sender's state).
    """
    argv = [zfs.zfs_path, *recv_args(dataset, force=force, no_mount=True)]
    sock.setblocking(True)
    base = _consumed(sock)
    child = await _ZfsChild.spawn(argv, stdin=sock.fileno())
    ok = False
    try:
        while True:
            rc = await child.wait(POLL)
            if progress is not None:
                progress(_payload_received(sock, base))
            if rc is not None:
                break
        received = _payload_received(sock, base)
        if rc != 0:
            raise ZfsError(argv, rc, await child.stderr(), f"after {received} bytes")
        ok = True
        return received
    finally:
        if ok:
            child.close()
        else:
            await child.kill(sock)


class _Stall:
    """Reports progress from a TCP counter and fails when it stops moving."""

    def __init__(self, sock: socket.socket, counter, progress: Optional[Progress], stall_timeout: float):
        self.sock = sock
        self.counter = counter
        self.progress = progress
        self.stall_timeout = stall_timeout
        self.last = 0
        self.changed = time.monotonic()

    def sample(self) -> int:
        n = self.counter(self.sock)
        if n != self.last:
            self.last = n
            self.changed = time.monotonic()
            if self.progress is not None:
                self.progress(n)
        return n

    def check(self, argv: list[str], what: str) -> None:
        self.sample()
        if time.monotonic() - self.changed > self.stall_timeout:
            raise StreamError(
                f"stalled waiting for {what}: no progress for {self.stall_timeout:g}s after {self.last} bytes"
            )


async def _read_capped(reader: asyncio.StreamReader) -> str:
    buf = bytearray()
    while True:
        data = await reader.read(65536)
        if not data:
            break
        buf += data
        if len(buf) > STDERR_KEEP:
            del buf[: len(buf) - STDERR_KEEP]
    return buf.decode(errors="replace")


# ---------------------------------------------------------------------- authenticated accept

HEADER_TIMEOUT = 10.0
MAX_PENDING_HEADERS = 32


async def _read_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))  # never more than the header
        if not chunk:
            break
        buf += chunk
    return buf


async def accept_stream(
    listener: socket.socket,
    header_len: int,
    header_ok: Callable[[bytes], bool],
    *,
    header_timeout: float = HEADER_TIMEOUT,
    on_reject: Optional[Callable[[object, str], None]] = None,
) -> tuple[socket.socket, object]:
    """The first connection on `listener` whose first `header_len` bytes pass `header_ok`.

    Every other connection is closed and listening goes on: a stranger who connects first,
    sends garbage, or sends nothing (for `header_timeout` s) never reaches the caller, and
    headers are checked concurrently so a slow stranger does not delay the real sender.
    Exactly the header is read, so the returned socket is positioned at the stream's first byte.
    """
    loop = asyncio.get_running_loop()
    pending: dict[asyncio.Task, None] = {}  # header checks, oldest first
    accept: Optional[asyncio.Future] = None

    async def check(conn: socket.socket, peer: object) -> Optional[tuple[socket.socket, object]]:
        why = "bad header"
        try:
            header = await asyncio.wait_for(_read_exactly(conn, header_len), header_timeout)
            if len(header) == header_len and header_ok(header):
                return conn, peer
            if len(header) < header_len:
                why = f"closed after {len(header)} of {header_len} header bytes"
        except asyncio.TimeoutError:
            why = f"no header within {header_timeout:g}s"
        except OSError as e:
            why = f"{type(e).__name__}: {e}"
        except asyncio.CancelledError:
            conn.close()
            raise
        conn.close()
        if on_reject is not None:
            on_reject(peer, why)
        return None

    try:
        while True:
            if accept is None:
                accept = asyncio.ensure_future(loop.sock_accept(listener))
            done, _ = await asyncio.wait({accept, *pending}, return_when=asyncio.FIRST_COMPLETED)
            if accept in done:
                conn, peer = accept.result()
                accept = None
                conn.setblocking(False)
                if len(pending) >= MAX_PENDING_HEADERS:
                    # Drop the connection that has waited longest for its header (the real
                    # sender writes its header at once), never the newcomer.
                    oldest = next(iter(pending))
                    del pending[oldest]
                    oldest.cancel()
                    if on_reject is not None:
                        on_reject(None, "too many connections waiting for their header: dropped the oldest")
                pending[asyncio.ensure_future(check(conn, peer))] = None
            for t in [t for t in done if t in pending]:
                del pending[t]
                got = t.result()
                if got is not None:
                    return got
    finally:
        if accept is not None:
            accept.cancel()
            with contextlib.suppress(BaseException):
                conn_peer = await accept
                conn_peer[0].close()
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(BaseException):
                await t
