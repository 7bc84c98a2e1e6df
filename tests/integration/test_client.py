"""manatee.client.ShardWatcher against a real ZooKeeper, the state node written by hand."""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time

import pytest
from kazoo.client import KazooClient

from manatee.client import ShardWatcher, ShardWatcherError
from tests.factories import peer_record as peer


def url(ip: str) -> str:
    return f"tcp://postgres@{ip}:5432/postgres"


def state(gen: int, primary: str, sync: str | None = None, *asyncs: str) -> bytes:
    return json.dumps({"generation": gen, "primary": peer(primary), "sync": peer(sync) if sync else None,
                       "async": [peer(a) for a in asyncs], "deposed": [], "initWal": "0/0"}).encode()


@pytest.fixture
def kz(zk_hosts):
    c = KazooClient(hosts=zk_hosts, timeout=10)
    c.start(timeout=15)
    yield c
    c.stop()
    c.close()


def test_watcher_follows_the_primary_and_calls_back_on_change(zk_hosts, kz):
    path = "/manatee/s1/state"
    kz.create(path, state(1, "10.0.0.1", "10.0.0.2", "10.0.0.3"), makepath=True)
    seen: queue.Queue = queue.Queue()
    threads: set[str] = set()

    def on_change(u):
        threads.add(threading.current_thread().name)
        seen.put(u)

    with ShardWatcher(zk_hosts, "s1", on_change=on_change, connect_timeout=10) as w:
        assert w.wait_for_primary(5) == url("10.0.0.1")
        assert seen.get(timeout=5) == url("10.0.0.1")  # the first primary seen is reported too
        assert w.topology.sync == url("10.0.0.2") and w.topology.asyncs == (url("10.0.0.3"),)
        assert w.connected

        # a change that keeps the primary (a new async) updates the topology, no callback
        kz.set(path, state(1, "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"))
        deadline = time.monotonic() + 5
        while len(w.topology.asyncs) != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert w.topology.asyncs == (url("10.0.0.3"), url("10.0.0.4"))
        assert seen.empty()

        # failover: the sync takes over
        kz.set(path, state(2, "10.0.0.2", "10.0.0.3"))
        assert seen.get(timeout=5) == url("10.0.0.2")
        assert w.primary_url == url("10.0.0.2") and w.topology.generation == 2
        assert w.wait_for_change(url("10.0.0.1"), 1) == url("10.0.0.2")

        # the state node removed (ZooKeeper lost it): the sitters hold that state and its
        # primary keeps serving, so the last known primary stays, with no callback
        kz.delete(path)
        time.sleep(0.5)
        assert seen.empty() and w.primary_url == url("10.0.0.2") and w.topology.generation == 2
        kz.create(path, state(2, "10.0.0.2", "10.0.0.3"))  # manatee-adm state-restore
        kz.set(path, state(3, "10.0.0.3"))
        assert seen.get(timeout=5) == url("10.0.0.3")
    # the first primary is reported during construction, later changes on kazoo's thread
    assert any(name != threading.current_thread().name for name in threads)


def test_wait_for_primary_blocks_until_the_shard_has_a_state(zk_hosts, kz):
    with ShardWatcher(zk_hosts, "/custom/shard2") as w:
        assert w.primary_url is None
        got: list = []
        t = threading.Thread(target=lambda: got.append(w.wait_for_primary(10)))
        t.start()
        time.sleep(0.2)
        assert t.is_alive()
        kz.create("/custom/shard2/state", state(1, "10.0.0.9"), makepath=True)
        t.join(10)
        assert got == [url("10.0.0.9")]


def test_bad_state_keeps_the_last_known_primary_and_a_failing_callback_keeps_the_watch(zk_hosts, kz):
    path = "/manatee/s3/state"
    kz.create(path, state(1, "10.0.0.1"), makepath=True)
    calls: list = []

    def on_change(u):
        calls.append(u)
        raise RuntimeError("application bug")

    with ShardWatcher(zk_hosts, "s3", on_change=on_change) as w:
        assert w.wait_for_primary(5) == url("10.0.0.1")
        kz.set(path, b"{garbage")
        time.sleep(0.3)
        assert w.primary_url == url("10.0.0.1")
        kz.set(path, state(2, "10.0.0.5"))
        assert w.wait_for_change(url("10.0.0.1"), 5) == url("10.0.0.5")
    deadline = time.monotonic() + 2
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert calls == [url("10.0.0.1"), url("10.0.0.5")]


async def test_async_wait(zk_hosts, kz):
    kz.create("/manatee/s4/state", state(1, "10.0.0.7"), makepath=True)
    with ShardWatcher(zk_hosts, "s4") as w:
        assert await w.wait_for_primary_async(5) == url("10.0.0.7")


def test_unreachable_zookeeper_is_one_clear_error():
    t0 = time.monotonic()
    with pytest.raises(ShardWatcherError, match="cannot reach ZooKeeper at 127.0.0.1:1"):
        ShardWatcher("127.0.0.1:1", "s", connect_timeout=1)
    assert time.monotonic() - t0 < 5


def test_close_wakes_a_waiter(zk_hosts):
    w = ShardWatcher(zk_hosts, "nothing-here")
    errs: list = []

    def waiter():
        try:
            w.wait_for_primary(10)
        except ShardWatcherError as e:
            errs.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    w.close()
    t.join(5)
    assert not t.is_alive() and len(errs) == 1
    w.close()  # idempotent


def test_watcher_starts_a_new_session_when_zookeeper_comes_back_without_its_data(zk_server_factory):
    """A ZooKeeper restarted empty refuses the watcher's old session for good (it saw newer
    zxids): the watcher starts a new one (manatee.core.zkresume), keeps the last known
    primary meanwhile, and sees the state once an operator restores it."""
    server = zk_server_factory()
    kz = KazooClient(hosts=server.connect_string, timeout=10)
    kz.start(timeout=15)
    kz.create("/manatee/s9/state", state(4, "10.0.0.1", "10.0.0.2"), makepath=True)
    for i in range(400):  # the watcher will see a zxid far above an empty server's
        kz.create(f"/n{i}")
    kz.stop()
    kz.close()
    with ShardWatcher(server.connect_string, "s9", session_timeout=1) as w:
        assert w.wait_for_primary(5) == url("10.0.0.1")
        server.stop()
        shutil.rmtree(server.data_dir / "version-2")
        server.start()
        deadline = time.monotonic() + 20
        while not w.connected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert w.connected, "the watcher never connected to the empty ZooKeeper"
        assert w.primary_url == url("10.0.0.1")  # kept while the state is lost
        kz = KazooClient(hosts=server.connect_string, timeout=10)
        kz.start(timeout=15)
        try:
            kz.create("/manatee/s9/state", state(5, "10.0.0.2", "10.0.0.1"), makepath=True)
            assert w.wait_for_change(url("10.0.0.1"), 10) == url("10.0.0.2")
        finally:
            kz.stop()
            kz.close()
