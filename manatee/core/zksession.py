"""A kazoo client that keeps its ZooKeeper session across a ZooKeeper restart (the session
handling every ZooKeeper user of manatee shares: the daemons' ZKClient, manatee.client and
the tests)."""

from __future__ import annotations

from typing import Any, Callable

from kazoo.client import KazooClient
from kazoo.protocol.serialization import Connect
from kazoo.retry import KazooRetry

__all__ = ["connect_reply_timeout", "resuming_kazoo", "hook_session_clock"]


def connect_reply_timeout(session_timeout: float) -> float:
    """How long to wait for the server's reply to a session (re)connect.

    kazoo waits the whole session timeout; a server that accepted the TCP connection while
    still starting up may never answer (ZooKeeper 3.8 leaves such a socket open), and by the
    time kazoo gives up the restarted server has expired the session we came to resume (F10:
    a sync lost its place after a ZooKeeper restart). A live server answers in
    milliseconds: give up early and let the connection retry try again."""
    return max(1.0, float(session_timeout) / 4)


def resuming_kazoo(hosts: str, session_timeout: float, **kw: Any) -> KazooClient:
    """A KazooClient that resumes its session after ZooKeeper comes back.

    A restarted ZooKeeper restores the sessions in its data dir, each with a fresh timeout
    counted from the server's start: a client must be back within that timeout. kazoo's
    default reconnect backoff grows to a minute, and it waits a whole session timeout for a
    connect reply; either makes it miss the window. Here reconnect attempts are at most a
    third of the session timeout apart and a connect reply is awaited for at most
    `connect_reply_timeout()`. Used by the daemons (ZKClient), manatee.client and the tests.
    Extra keyword arguments go to KazooClient."""
    session_timeout = float(session_timeout)
    kw.setdefault("connection_retry", KazooRetry(
        max_tries=-1, delay=0.05, backoff=2, max_jitter=0.1, max_delay=max(0.2, session_timeout / 3.0)))
    kz = KazooClient(hosts=hosts, timeout=session_timeout, **kw)
    cap = connect_reply_timeout(session_timeout)
    conn = kz._connection
    orig_invoke = getattr(conn, "_invoke", None)
    if orig_invoke is not None:

        def _invoke(timeout, request, xid=None):
            if isinstance(request, Connect):
                timeout = min(timeout, cap)
            return orig_invoke(timeout, request, xid)

        conn._invoke = _invoke
    return kz


def hook_session_clock(kz: KazooClient, on_connected: Callable[[int], None], on_heard: Callable[[], None]) -> None:
    """Call on_connected(negotiated session timeout, ms) when a session (re)connects and
    on_heard() for every read from the server. kazoo keeps neither, so two ConnectionHandler
    methods are wrapped on this instance (their signatures are checked against the installed
    kazoo by tests/unit/test_zk_encoding.py)."""
    conn = kz._connection
    orig_invoke = getattr(conn, "_invoke", None)
    orig_read = getattr(conn, "_read_socket", None)
    if orig_invoke is not None:

        def _invoke(timeout, request, xid=None):
            result = orig_invoke(timeout, request, xid)
            if isinstance(request, Connect) and result:
                on_connected(int(result[0].time_out))
            return result

        conn._invoke = _invoke
    if orig_read is not None:

        def _read_socket(read_timeout):
            on_heard()
            return orig_read(read_timeout)

        conn._read_socket = _read_socket
