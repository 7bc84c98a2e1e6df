"""ZKClient waits only briefly for the reply to a session (re)connect: a ZooKeeper that
accepted the TCP connection while starting up may never answer, and waiting kazoo's whole
session timeout for it let the restarted server expire the session the client came to
resume (found by F10: ZooKeeper stopped and started again; a sitter lost its place)."""

from __future__ import annotations

from kazoo.protocol.connection import ConnectionHandler
from kazoo.protocol.serialization import Connect, GetData

from manatee.core.zk import ZKClient


def test_connect_reply_wait_is_capped_other_requests_untouched(monkeypatch):
    seen: list[tuple[str, float]] = []

    def fake_invoke(self, timeout, request, xid=None):
        seen.append((type(request).__name__, timeout))
        return None

    monkeypatch.setattr(ConnectionHandler, "_invoke", fake_invoke)
    c = ZKClient("127.0.0.1:1", session_timeout=5)
    assert c.connect_reply_timeout == 1.25
    connect = Connect(0, 0, 5000, 0, b"\x00" * 16, False)
    c._kz._connection._invoke(5.0, connect)          # kazoo asks for session_timeout / hosts
    c._kz._connection._invoke(0.5, connect)          # a shorter wait stays as it is
    c._kz._connection._invoke(5.0, GetData("/x", None))
    assert seen == [("Connect", 1.25), ("Connect", 0.5), ("GetData", 5.0)]


def test_connect_reply_wait_has_a_floor_and_scales_with_the_session():
    assert ZKClient("127.0.0.1:1", session_timeout=2).connect_reply_timeout == 1.0
    assert ZKClient("127.0.0.1:1", session_timeout=60).connect_reply_timeout == 15.0


def test_resuming_kazoo_caps_connect_wait_and_reconnect_backoff(monkeypatch):
    """The plain-kazoo users (manatee.client, tests) get the same reconnect behaviour as
    ZKClient: the CI failure this pins down was a test's own default KazooClient losing its
    session across a ZooKeeper restart (backoff grown past the restored session's timeout)."""
    from manatee.core.zksession import resuming_kazoo

    seen: list[tuple[str, float]] = []

    def fake_invoke(self, timeout, request, xid=None):
        seen.append((type(request).__name__, timeout))
        return None

    monkeypatch.setattr(ConnectionHandler, "_invoke", fake_invoke)
    kz = resuming_kazoo("127.0.0.1:1", 6)
    connect = Connect(0, 0, 6000, 0, b"\x00" * 16, False)
    kz._connection._invoke(6.0, connect)
    kz._connection._invoke(6.0, GetData("/x", None))
    assert seen == [("Connect", 1.5), ("GetData", 6.0)]
    assert kz._conn_retry.max_delay == 2.0
    assert kz._conn_retry.max_tries == -1


def test_a_connect_reply_saying_expired_passes_the_expiry_deadline_instead_of_moving_it(monkeypatch):
    """F7, 2026-12-06: the server answers a reconnect of an expired session with a timeout of 0.
    Taken as a sign of life, it moved the deadline a whole session on, and a fenced primary
    (SUSPENDED until kazoo said LOST) saw its session 'not yet expired' and restarted."""
    import time
    from types import SimpleNamespace

    replies = iter([5000, 0, 4000])

    def fake_invoke(self, timeout, request, xid=None):
        return SimpleNamespace(time_out=next(replies)), 0

    monkeypatch.setattr(ConnectionHandler, "_invoke", fake_invoke)
    c = ZKClient("127.0.0.1:1", session_timeout=5)
    connect = Connect(0, 0, 5000, 0, b"\x00" * 16, False)
    c._kz._connection._invoke(1.0, connect)  # the session is granted
    c._state = "SUSPENDED"
    c._last_heard -= 1.0  # last heard a second ago
    before = c.session_expiry_deadline()
    assert before is not None and before > time.monotonic() + 3.5
    c._kz._connection._invoke(1.0, connect)  # "expired"
    assert c.session_expiry_deadline() <= time.monotonic()
    assert c.negotiated_session_timeout == 5.0  # the granted timeout is kept, not 0
    c._kz._connection._invoke(1.0, connect)  # a new session: its own deadline again
    assert c.session_expiry_deadline() > time.monotonic() + 3.5
    assert c.negotiated_session_timeout == 4.0
