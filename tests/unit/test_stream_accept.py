"""accept_stream: only a connection that proves the secret for this restore's token gets through;
strangers (first, silent, garbage, wrong secret) are closed and never abort the wait."""

from __future__ import annotations

import asyncio
import socket

from manatee.core.auth import STREAM_HEADER_LEN, ShardSecret, new_stream_token, stream_header, stream_header_ok
from manatee.core.zfsstream import accept_stream

S = ShardSecret.of("0123456789abcdef-current")


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.setblocking(False)
    return s


async def _connect(port: int, data: bytes | None) -> socket.socket:
    loop = asyncio.get_running_loop()
    c = socket.socket()
    c.setblocking(False)
    await loop.sock_connect(c, ("127.0.0.1", port))
    if data:
        await loop.sock_sendall(c, data)
    return c


async def test_strangers_first_then_the_real_sender():
    token = new_stream_token()
    lst = _listener()
    port = lst.getsockname()[1]
    rejected: list[str] = []
    task = asyncio.ensure_future(accept_stream(lst, STREAM_HEADER_LEN, lambda h: stream_header_ok(S, token, h),
                                               header_timeout=1.0, on_reject=lambda p, why: rejected.append(why)))
    strangers = [
        await _connect(port, None),  # silent: times out, never blocks the others
        await _connect(port, b"\x00\x11zfs-stream-bytes" * 10),  # garbage stream
        await _connect(port, stream_header(ShardSecret.of("someone-elses-secret-x"), token)),
        await _connect(port, stream_header(S, new_stream_token()) + b"payload"),  # another restore's token
    ]
    await asyncio.sleep(0.2)
    assert not task.done()
    real = await _connect(port, stream_header(S, token) + b"FIRST-STREAM-BYTES")
    conn, peer = await asyncio.wait_for(task, 5)
    try:
        conn.setblocking(True)
        conn.settimeout(2)
        assert conn.recv(100) == b"FIRST-STREAM-BYTES"  # exactly the header was consumed
        assert len(rejected) >= 3 and all("header" in w or "bad" in w for w in rejected)
    finally:
        conn.close()
        real.close()
        for s in strangers:
            s.close()
        lst.close()


async def test_stranger_hanging_up_mid_header_does_not_end_the_wait():
    token = new_stream_token()
    lst = _listener()
    port = lst.getsockname()[1]
    task = asyncio.ensure_future(accept_stream(lst, STREAM_HEADER_LEN, lambda h: stream_header_ok(S, token, h)))
    s = await _connect(port, stream_header(S, token)[:10])
    s.close()
    await asyncio.sleep(0.2)
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    lst.close()


async def test_a_crowd_of_silent_strangers_does_not_lock_out_the_sender(monkeypatch):
    import manatee.core.zfsstream as zs

    monkeypatch.setattr(zs, "MAX_PENDING_HEADERS", 4)
    token = new_stream_token()
    lst = _listener()
    port = lst.getsockname()[1]
    task = asyncio.ensure_future(accept_stream(lst, STREAM_HEADER_LEN, lambda h: stream_header_ok(S, token, h),
                                               header_timeout=30))
    crowd = [await _connect(port, None) for _ in range(10)]  # more than the pending cap, all silent
    await asyncio.sleep(0.2)
    real = await _connect(port, stream_header(S, token) + b"X")
    conn, _ = await asyncio.wait_for(task, 5)
    conn.close()
    real.close()
    for s in crowd:
        s.close()
    lst.close()
