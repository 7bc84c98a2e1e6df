"""The receiving end of a restore's stream: the one-connection listener, the stream's
header read before ``zfs recv`` sees it, and what ``zfs recv`` says when it refuses an
increment that a full stream would not have been refused for."""

from __future__ import annotations

import asyncio
import socket
import time

from manatee.core import incremental as inc
from manatee.core.restore.outcome import RestoreError

# zfs recv's complaints about an increment that a full stream would not have.
INCREMENT_REFUSED = (
    "does not match incremental source",
    "destination has been modified",
    "most recent snapshot",
    "invalid backup stream",
    "destination already exists",
)


def listen(host: str, port: int) -> socket.socket:
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


async def peek_header(conn: socket.socket, timeout: float) -> inc.StreamHeader:
    """The stream's BEGIN record, read without consuming it (zfs recv reads it again)."""
    deadline = time.monotonic() + timeout
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
                f"no stream header within {timeout:g}s of the sender connecting", phase="receiving"
            )
        await asyncio.sleep(0.02)
