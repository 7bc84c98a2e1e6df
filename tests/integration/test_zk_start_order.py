"""ZKClient on a real ZooKeeper, whatever the start order, and the negotiated session timeout
(issue 8 items 5 and 6).

- A client started while ZooKeeper is down used to fail its first start() and then fail every
  retry with "ZKClient.start() called twice" forever; each attempt now uses a fresh kazoo
  client, so the retry loop the daemons run connects within a few seconds of ZooKeeper's start.
- ZooKeeper clamps the session timeout to its maxSessionTimeout; the client reports what the
  server granted, and the fencing deadline uses it.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from manatee.core.zk import ZKClient, ZKError
from manatee_testbed.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.timeout(120)


def _kazoo_threads() -> int:
    return sum(1 for t in threading.enumerate() if not t.name.startswith(("asyncio_", "MainThread")))


async def _connect_retrying(zk: ZKClient, attempts: list[str]) -> None:
    """The daemons' loop (Sitter._connect): start, and after a ZKError wait and start again."""
    while True:
        try:
            await zk.start()
            return
        except ZKError as e:
            attempts.append(str(e))
            await asyncio.sleep(0.2)


def test_a_client_started_before_zookeeper_connects_once_it_is_up(tmp_path):
    server = ZooKeeperServer(tmp_path / "zk", tick_ms=200)  # not started yet
    threads_before = _kazoo_threads()

    async def main() -> tuple[float, list[str]]:
        zk = ZKClient(server.connect_string, session_timeout=4, connect_timeout=1)
        attempts: list[str] = []
        task = asyncio.ensure_future(_connect_retrying(zk, attempts))
        await asyncio.sleep(3.5)  # several failed attempts while ZooKeeper is down
        assert not task.done() and len(attempts) >= 2
        assert all("cannot reach ZooKeeper" in a for a in attempts), attempts  # never "called twice"
        await asyncio.to_thread(server.start)
        up = time.monotonic()
        await asyncio.wait_for(task, 15)
        took = time.monotonic() - up
        try:
            assert zk.connected
            await zk.create("/started-late", b"x")
            assert (await zk.get("/started-late"))[0] == b"x"
            assert zk.negotiated_session_timeout == 4.0
        finally:
            await zk.close()
        return took, attempts

    try:
        took, attempts = asyncio.run(main())
    finally:
        server.close(remove=True)
    print(f"connected {took:.2f} s after ZooKeeper served, after {len(attempts)} failed attempts")
    assert took < 5.0
    deadline = time.monotonic() + 5  # the failed attempts' kazoo threads are all gone
    while _kazoo_threads() > threads_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _kazoo_threads() <= threads_before


def test_start_after_close_or_twice_is_refused(zk_hosts):
    async def main():
        zk = ZKClient(zk_hosts, session_timeout=4, connect_timeout=5)
        await zk.start()
        with pytest.raises(ZKError, match="called twice"):
            await zk.start()
        await zk.close()
        with pytest.raises(ZKError, match="after close"):
            await zk.start()

    asyncio.run(main())


def test_the_negotiated_session_timeout_is_what_the_server_granted(zk_server_factory):
    server = zk_server_factory(tick_ms=200, max_session_ms=3000)

    async def main():
        zk = ZKClient(server.connect_string, session_timeout=20, connect_timeout=10)
        await zk.start()
        try:
            assert zk.session_timeout == 20.0
            assert zk.negotiated_session_timeout == 3.0  # capped by maxSessionTimeout
            # the fencing deadline (while cut off) counts the granted timeout, not the asked one
            zk._state = "SUSPENDED"
            heard = zk.last_heard_monotonic
            assert zk.session_expiry_deadline() == pytest.approx(heard + 3.0)
            zk._state = "CONNECTED"
        finally:
            await zk.close()

    asyncio.run(main())
