"""manatee.core.zk.ZKClient against a real ZooKeeper started by tests/fixtures_zk.py."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import pytest

from manatee.core.procs import free_port
from manatee.core.zk import (
    BadVersionError,
    ConnectionLoss,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    ZKClient,
    ZKDataError,
    ZKError,
)
from manatee.core.zkdata import Check, Create, Delete, SetData


async def eventually(pred, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s")


def _non_asyncio_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.name.startswith("asyncio_")}


@pytest.fixture
async def zk(zk_hosts):
    c = ZKClient(zk_hosts, session_timeout=5, connect_timeout=10)
    await c.start()
    yield c
    await c.close()


async def test_connect_reports_session(zk):
    assert zk.state == "CONNECTED" and zk.connected
    assert isinstance(zk.session_id, int) and zk.session_id > 0
    assert zk.negotiated_session_timeout == pytest.approx(5.0)
    assert zk.disconnected_since is None
    assert zk.session_expiry_deadline() is None
    assert zk.last_connected_monotonic is not None and zk.last_connected_monotonic <= time.monotonic()
    assert zk.last_heard_monotonic is not None


async def test_crud_roundtrip(zk):
    assert await zk.create("/a", b"raw") == "/a"
    assert (await zk.get("/a"))[0] == b"raw"
    await zk.create("/s", "text")
    assert (await zk.get("/s"))[0] == b"text"
    await zk.create("/j", {"role": "primary", "n": [1, 2]})
    val, stat = await zk.get_json("/j")
    assert val == {"role": "primary", "n": [1, 2]} and stat.version == 0
    await zk.create("/l", [1, "x"])
    assert (await zk.get_json("/l"))[0] == [1, "x"]
    await zk.create("/empty")
    assert (await zk.get_json("/empty"))[0] is None

    st = await zk.set("/j", {"role": "sync"})
    assert st.version == 1
    assert (await zk.get_json("/j"))[0] == {"role": "sync"}
    with pytest.raises(BadVersionError):
        await zk.set("/j", {"role": "stale"}, version=0)
    assert (await zk.set("/j", b"x", version=1)).version == 2

    with pytest.raises(NodeExistsError):
        await zk.create("/a")
    with pytest.raises(NoNodeError):
        await zk.get("/missing")
    with pytest.raises(NoNodeError):
        await zk.create("/no/parent")
    assert await zk.create("/deep/er/node", b"1", makepath=True) == "/deep/er/node"
    await zk.ensure_path("/p/q/r")
    assert await zk.exists("/p/q/r") is not None
    assert await zk.exists("/nope") is None
    assert sorted(await zk.get_children("/")) == ["a", "deep", "empty", "j", "l", "p", "s"]

    with pytest.raises(NotEmptyError):
        await zk.delete("/p")
    with pytest.raises(BadVersionError):
        await zk.delete("/a", version=7)
    await zk.delete("/a", version=0)
    await zk.delete("/p", recursive=True)
    await zk.delete("/p", recursive=True)  # already gone: fine
    assert await zk.exists("/p") is None
    with pytest.raises(NoNodeError):
        await zk.delete("/a")


async def test_get_json_on_garbage_names_the_node(zk):
    await zk.create("/bad", b"{not json")
    with pytest.raises(ZKDataError, match="/bad"):
        await zk.get_json("/bad")


async def test_ephemeral_node_goes_with_its_session(zk_hosts, zk):
    owner = ZKClient(zk_hosts, session_timeout=5)
    await owner.start()
    await zk.ensure_path("/election")
    path = await owner.create("/election/node-", {"ip": "127.0.0.2"}, ephemeral=True, sequence=True)
    stat = await zk.exists(path)
    assert stat is not None and stat.ephemeralOwner == owner.session_id
    await owner.close()
    # close() ends the session at once: no waiting for the session timeout
    assert await zk.exists(path) is None


async def test_sequence_nodes_are_ordered(zk):
    await zk.ensure_path("/history")
    created = [await zk.create("/history/", {"i": i}, sequence=True) for i in range(12)]
    names = [p.rsplit("/", 1)[1] for p in created]
    assert all(len(n) == 10 and n.isdigit() for n in names)
    assert [int(n) for n in names] == sorted(int(n) for n in names)
    assert len(set(names)) == 12
    assert sorted(await zk.get_children("/history")) == names
    for i, p in enumerate(created):
        assert (await zk.get_json(p))[0] == {"i": i}


async def test_transaction_compare_and_set(zk):
    await zk.create("/state", {"gen": 1})
    _, stat = await zk.get_json("/state")
    results = await zk.transaction(
        [
            Check("/state", stat.version),
            SetData("/state", {"gen": 2}, stat.version),
            Create("/history-1", b"h1"),
        ]
    )
    assert results[0] is True and results[1].version == stat.version + 1 and results[2] == "/history-1"

    # the same CAS again is stale now: nothing of it may be applied
    with pytest.raises(BadVersionError):
        await zk.transaction(
            [
                ("check", "/state", stat.version),
                ("set", "/state", {"gen": 99}, stat.version),
                ("create", "/history-2", b"h2"),
            ]
        )
    assert (await zk.get_json("/state"))[0] == {"gen": 2}
    assert await zk.exists("/history-2") is None

    with pytest.raises(NodeExistsError):
        await zk.transaction([Create("/history-3"), Create("/history-1")])
    assert await zk.exists("/history-3") is None

    await zk.transaction([Delete("/history-1"), ("delete", "/state", 1)])
    assert await zk.exists("/history-1") is None and await zk.exists("/state") is None

    with pytest.raises(TypeError):
        await zk.transaction([("frobnicate", "/x")])


async def test_watch_children_fires_on_the_loop(zk):
    loop_thread = threading.get_ident()
    seen: list = []
    threads: set[int] = set()

    def cb(children):
        threads.add(threading.get_ident())
        seen.append(children)

    handle = zk.watch_children("/w", cb)
    await handle.wait_ready(5)
    assert seen == [None]  # not there yet
    await zk.create("/w")
    await eventually(lambda: seen[-1] == [], what="watch sees node created")
    await zk.create("/w/b")
    await zk.create("/w/a")
    await eventually(lambda: seen[-1] == ["a", "b"], what="watch sees children")
    await zk.delete("/w/b")
    await eventually(lambda: seen[-1] == ["a"], what="watch sees child deleted")
    await zk.delete("/w", recursive=True)
    await eventually(lambda: seen[-1] is None, what="watch sees node deleted")
    assert threads == {loop_thread}

    handle.cancel()
    n = len(seen)
    await zk.create("/w")
    await zk.create("/w/c")
    await asyncio.sleep(0.5)
    assert len(seen) == n
    assert handle.cancelled


async def test_watch_data_async_callback(zk):
    loop_thread = threading.get_ident()
    seen: list = []

    async def cb(value):
        assert threading.get_ident() == loop_thread
        await asyncio.sleep(0)
        seen.append(None if value is None else (value[0], value[1].version))

    await zk.create("/d", {"v": 1})
    handle = zk.watch_data("/d", cb)
    await handle.wait_ready(5)
    assert seen == [(b'{"v":1}', 0)]
    await zk.set("/d", {"v": 2})
    await eventually(lambda: seen[-1] == (b'{"v":2}', 1), what="data change seen")
    await zk.delete("/d")
    await eventually(lambda: seen[-1] is None, what="deletion seen")
    await zk.create("/d", b"again")
    await eventually(lambda: seen[-1] == (b"again", 0), what="re-creation seen")
    handle.cancel()


async def test_watch_callback_errors_do_not_stop_the_watch(zk):
    seen: list = []

    def cb(children):
        seen.append(children)
        if len(seen) == 2:
            raise RuntimeError("callback bug")

    await zk.create("/e")
    h = zk.watch_children("/e", cb)
    await h.wait_ready(5)
    await zk.create("/e/1")
    await eventually(lambda: len(seen) == 2)
    await zk.create("/e/2")
    await eventually(lambda: seen[-1] == ["1", "2"], what="watch alive after callback error")
    h.cancel()


async def test_close_leaves_no_kazoo_threads(zk_hosts):
    before = _non_asyncio_threads()
    c = ZKClient(zk_hosts, session_timeout=3)
    await c.start()
    h = c.watch_children("/", lambda _c: None)
    await h.wait_ready(5)
    assert _non_asyncio_threads() - before  # kazoo runs threads while open
    await c.close()
    assert _non_asyncio_threads() - before == set()
    assert not c.connected
    with pytest.raises(Exception, match="closed"):
        await c.get("/")


async def test_unreachable_zookeeper_is_a_clear_error():
    port = free_port()
    hosts = f"127.0.0.1:{port}"
    before = _non_asyncio_threads()
    c = ZKClient(hosts, session_timeout=2, connect_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(ZKError) as ei:
        await c.start()
    elapsed = time.monotonic() - t0
    assert str(ei.value) == f"cannot reach ZooKeeper at {hosts} within 2s"
    assert 1.9 <= elapsed < 6
    assert _non_asyncio_threads() - before == set()
    await c.close()


def test_bad_connect_string_is_a_clear_error():
    with pytest.raises(ZKError, match="invalid ZooKeeper connect string"):
        ZKClient("127.0.0.1:notaport", session_timeout=2)


async def test_suspended_then_connected_when_server_restarts(zk_server_factory):
    server = zk_server_factory()
    loop_thread = threading.get_ident()
    states: list[str] = []
    threads: set[int] = set()

    def listener(state):
        threads.add(threading.get_ident())
        states.append(state)

    # A generous timeout: the property is "same session after a restart", and a restart
    # on a loaded 2-core CI machine can take longer than a short session timeout.
    c = ZKClient(server.connect_string, session_timeout=12, connect_timeout=10)
    c.add_state_listener(listener)
    await c.start()
    try:
        await eventually(lambda: states == ["CONNECTED"], what="initial CONNECTED")
        eph = await c.create("/eph", b"x", ephemeral=True)
        sid = c.session_id
        seen: list = []
        h = c.watch_children("/", seen.append)
        await h.wait_ready(5)

        server.stop()
        await eventually(lambda: states[-1] == "SUSPENDED", timeout=6, what="SUSPENDED")
        assert c.disconnected_since is not None and not c.connected
        assert c.session_expiry_deadline() is not None
        t0 = time.monotonic()
        with pytest.raises(ConnectionLoss):
            await c.get("/")
        assert time.monotonic() - t0 < 0.5  # fails fast, does not wait for a reconnect

        server.start()
        await eventually(lambda: states[-1] == "CONNECTED", timeout=8, what="reconnected")
        assert states == ["CONNECTED", "SUSPENDED", "CONNECTED"]
        assert c.session_id == sid and c.disconnected_since is None
        assert await c.exists(eph) is not None  # same session: ephemeral kept
        await c.create("/after")
        await eventually(lambda: seen and seen[-1] == ["after", "eph", "zookeeper"],
                         what="watch re-registered after reconnect")
        assert threads == {loop_thread}

        # a retrying caller rides over a short outage
        server.stop()
        await eventually(lambda: states[-1] == "SUSPENDED", timeout=6)
        restart = asyncio.get_running_loop().run_in_executor(None, server.start)
        data, _ = await c.retry(c.get, "/after", timeout=15)
        assert data == b""
        await restart
    finally:
        await c.close()


async def test_session_survives_server_down_longer_than_timeout(zk_server_factory):
    """ZooKeeper restores sessions from its data dir with a fresh timeout: a server that
    was down for 2x the session timeout does not expire its clients (F10)."""
    server = zk_server_factory()
    states: list[str] = []
    c = ZKClient(server.connect_string, session_timeout=2, connect_timeout=10)
    c.add_state_listener(states.append)
    await c.start()
    try:
        await c.create("/eph", b"x", ephemeral=True)
        sid = c.session_id
        server.stop()
        await asyncio.sleep(4.5)
        assert states[-1] == "SUSPENDED"
        server.start()
        await eventually(lambda: states[-1] == "CONNECTED", timeout=6)
        assert "LOST" not in states and c.session_id == sid
        assert await c.exists("/eph") is not None
    finally:
        await c.close()


async def test_lost_when_cut_off_past_session_timeout(zk_server_factory, tcp_proxy_factory):
    """Link cut (server up): the server expires the session; on heal the client sees
    LOST, then CONNECTED with a new session, and its watches come back."""
    server = zk_server_factory()
    proxy = tcp_proxy_factory(server.host, server.port)
    observer = ZKClient(server.connect_string, session_timeout=10)
    c = ZKClient(proxy.address, session_timeout=2, connect_timeout=10)
    states: list[str] = []
    c.add_state_listener(states.append)
    await observer.start()
    await c.start()
    try:
        assert c.negotiated_session_timeout == pytest.approx(2.0)
        old_sid = c.session_id
        eph = await c.create("/primary", b"me", ephemeral=True)
        seen: list = []
        h = c.watch_data("/flag", seen.append)
        await h.wait_ready(5)

        proxy.block()
        t_cut = time.monotonic()
        await eventually(lambda: states[-1] == "SUSPENDED", timeout=5, what="SUSPENDED")
        deadline = c.session_expiry_deadline()
        assert deadline is not None and deadline <= t_cut + 2.0 + 0.1

        # the server expires the session about 2 s after the last ping it got
        t_gone = None
        for _ in range(200):
            if await observer.exists(eph) is None:
                t_gone = time.monotonic()
                break
            await asyncio.sleep(0.05)
        assert t_gone is not None, "ephemeral node of the cut-off client was not removed"
        # never before the deadline the client computed (its fencing point)
        assert t_gone >= deadline - 0.05, (t_gone - deadline)
        assert states[-1] == "SUSPENDED"  # the client cannot know yet

        # On the heal the server answers "expired" (a timeout of 0): that is no sign of life,
        # so until the new session the deadline stays passed (a fenced primary restarted: F7)
        ahead: list[float] = []

        async def sample_deadline() -> None:
            while True:
                d = c.session_expiry_deadline()
                if d is not None:
                    ahead.append(d - time.monotonic())
                await asyncio.sleep(0.001)

        sampler = asyncio.create_task(sample_deadline())
        proxy.unblock()
        await eventually(lambda: states[-2:] == ["LOST", "CONNECTED"], timeout=8, what="LOST then CONNECTED")
        sampler.cancel()
        assert ahead and max(ahead) <= 0, f"the expiry deadline moved {max(ahead):.2f} s ahead after 'expired'"
        assert c.session_id not in (None, old_sid)
        assert await c.exists(eph) is None
        await observer.create("/flag", b"up")
        await eventually(lambda: seen and seen[-1] is not None and seen[-1][0] == b"up",
                         what="watch re-established on the new session")
    finally:
        await c.close()
        await observer.close()


async def test_ensemble_failover_and_full_outage(zk_ensemble):
    """Clients move to another member when theirs dies, and keep their session through a
    whole-ensemble outage of 2x the session timeout (F10)."""
    ens = zk_ensemble
    states: list[str] = []
    c = ZKClient(ens.connect_string, session_timeout=2, connect_timeout=10)
    c.add_state_listener(states.append)
    await c.start()
    try:
        eph = await c.create("/primary", {"id": "n1"}, ephemeral=True)
        sid = c.session_id
        # which member are we on? stop that one
        port = int(c._kz._connection._socket.getpeername()[1])
        idx = next(i for i, s in enumerate(ens.servers) if s.port == port)
        await asyncio.to_thread(ens.stop_server, idx)
        await eventually(lambda: states[-1] == "CONNECTED" and len(states) >= 3, timeout=10,
                         what="reconnected to another member")
        assert c.session_id == sid and await c.exists(eph) is not None
        await asyncio.to_thread(ens.start_server, idx)

        await asyncio.to_thread(ens.stop)
        await eventually(lambda: states[-1] == "SUSPENDED", timeout=5)
        await asyncio.sleep(4.0)  # 2x the session timeout with no ZooKeeper at all
        await asyncio.to_thread(ens.start)
        await eventually(lambda: states[-1] == "CONNECTED", timeout=15, what="back after outage")
        assert "LOST" not in states and c.session_id == sid
        assert (await c.get_json(eph))[0] == {"id": "n1"}
    finally:
        await c.close()


async def test_operation_without_reply_raises_connection_loss(zk_server, tcp_proxy_factory):
    proxy = tcp_proxy_factory(zk_server.host, zk_server.port)
    c = ZKClient(proxy.address, session_timeout=3, op_timeout=0.5)
    await c.start()
    try:
        assert (await c.exists("/")) is not None
        proxy.block()
        t0 = time.monotonic()
        with pytest.raises(ConnectionLoss, match=r"ZooKeeper get /zookeeper: no reply .* within 0.5s"):
            await c.get("/zookeeper")
        assert 0.4 < time.monotonic() - t0 < 2
    finally:
        await c.close()


async def test_cancelled_start_leaves_no_threads():
    before = _non_asyncio_threads()
    c = ZKClient(f"127.0.0.1:{free_port()}", session_timeout=2, connect_timeout=30)
    task = asyncio.ensure_future(c.start())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: _non_asyncio_threads() - before == set(), timeout=5,
                     what="kazoo threads gone")


async def test_a_session_a_wiped_zookeeper_refuses_is_abandoned_for_a_new_one(zk_server_factory):
    """ZooKeeper back with an empty data directory refuses to resume a session whose client
    has seen a newer zxid than its own ("client must try another server"), for ever: kazoo
    stays SUSPENDED. The client abandons it (LOST, as an expiry) once a new session is
    accepted and ours has not come back (manatee.core.zkresume), and starts a new one."""
    server = zk_server_factory()
    states: list[str] = []
    c = ZKClient(server.connect_string, session_timeout=1, connect_timeout=10)
    c.add_state_listener(states.append)
    await c.start()
    try:
        # our client sees a zxid far above a fresh server's (each probe's session adds two
        # transactions there: these would take the probes over a minute to pass)
        await asyncio.gather(*(c.create(f"/n{i}", b"x") for i in range(400)))
        sid = c.session_id
        server.stop()
        shutil.rmtree(server.data_dir / "version-2")
        server.start()
        await eventually(lambda: states[-1] == "CONNECTED" and c.session_id != sid, timeout=20,
                         what="a new session")
        assert states[:2] == ["CONNECTED", "SUSPENDED"] and "LOST" in states
        assert await c.exists("/n0") is None  # the server's data is gone
        await c.create("/after", b"y", ephemeral=True)
    finally:
        await c.close()
