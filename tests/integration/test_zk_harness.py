"""manatee_testbed.zookeeper: real ZooKeeper servers, an ensemble and the link-cutting proxy."""

from __future__ import annotations

import socket
import time

import pytest
from kazoo.client import KazooClient

from manatee.core.procs import pid_alive
from manatee.core.zk import ZKClient
from manatee_testbed.tcpproxy import TcpProxy
from manatee_testbed.zookeeper import (
    ZooKeeperEnsemble,
    ZooKeeperServer,
    ZooKeeperStartError,
    four_letter_word,
)


def kazoo(connect: str, timeout: float = 10) -> KazooClient:
    kz = KazooClient(hosts=connect, timeout=timeout)
    kz.start(timeout=15)
    return kz


def test_server_lifecycle_keeps_data(tmp_path):
    s = ZooKeeperServer(tmp_path / "zk", tick_ms=200)
    assert not s.running and s.pid is None
    t0 = time.monotonic()
    s.start()
    try:
        started_in = time.monotonic() - t0
        assert started_in < 10, started_in
        assert s.running and pid_alive(s.pid)
        assert s.connect_string == f"127.0.0.1:{s.port}"
        assert four_letter_word(s.host, s.port, "ruok") == "imok"
        assert s.mode() == "standalone"
        cfg = (tmp_path / "zk" / "zoo.cfg").read_text()
        assert "tickTime=200\n" in cfg and "minSessionTimeout=400\n" in cfg
        assert "maxSessionTimeout=60000\n" in cfg and "admin.enableServer=false\n" in cfg
        assert "Starting server" in s.log_path.read_text()  # the JVM's log reaches the file

        kz = kazoo(s.connect_string)
        kz.create("/kept", b"v1")
        kz.stop()
        kz.close()

        old_pid = s.pid
        s.restart()
        assert s.running and s.pid != old_pid and not pid_alive(old_pid)
        kz = kazoo(s.connect_string)
        assert kz.get("/kept")[0] == b"v1"
        kz.set("/kept", b"v2")
        kz.stop()
        kz.close()

        s.kill()  # crash: no clean shutdown, committed data still there
        assert not s.running and not pid_alive(old_pid)
        s.start()
        kz = kazoo(s.connect_string)
        assert kz.get("/kept")[0] == b"v2"
        kz.stop()
        kz.close()
    finally:
        pid = s.pid
        s.close()
    assert not s.running and not pid_alive(pid)
    assert (tmp_path / "zk" / "data" / "version-2").is_dir()  # close() keeps data by default


def test_context_manager_stops_by_pid(tmp_path):
    with ZooKeeperServer(tmp_path / "zk") as s:
        pid = s.pid
        assert four_letter_word(s.host, s.port, "ruok") == "imok"
    assert not pid_alive(pid)
    assert four_letter_word(s.host, s.port, "ruok") == ""


@pytest.mark.parametrize("asked,granted", [(1.0, 1.0), (2.0, 2.0), (60.0, 60.0), (120.0, 60.0), (0.1, 0.4)])
async def test_session_timeouts_granted(zk_server, asked, granted):
    c = ZKClient(zk_server.connect_string, session_timeout=asked)
    await c.start()
    try:
        assert c.negotiated_session_timeout == pytest.approx(granted)
    finally:
        await c.close()


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        s = ZooKeeperServer(tmp_path / "zk", port=port)
        t0 = time.monotonic()
        with pytest.raises(ZooKeeperStartError) as ei:
            s.start(timeout=15)
        assert time.monotonic() - t0 < 15
        assert str(s.cfg_path) in str(ei.value) or str(port) in str(ei.value)
        assert not s.running


def test_pause_and_resume(zk_server_factory):
    s = zk_server_factory()
    s.pause()
    assert four_letter_word(s.host, s.port, "ruok", timeout=0.5) == ""
    s.resume()
    deadline = time.monotonic() + 5
    while four_letter_word(s.host, s.port, "ruok") != "imok":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_ensemble_survives_full_restart(zk_ensemble):
    ens = zk_ensemble
    assert len(ens) == 3
    assert sorted(s.mode() for s in ens.servers) == ["follower", "follower", "leader"]
    assert ens.connect_string == ",".join(f"127.0.0.1:{s.port}" for s in ens.servers)
    ports = {p for s in ens.servers for p in (s.port,)}
    assert len(ports) == 3

    kz = kazoo(ens.connect_string)
    kz.create("/shard/state", b'{"generation":1}', makepath=True)
    kz.stop()
    kz.close()

    # lose the leader: the other two elect a new one and keep serving
    li = ens.leader_index()
    ens.stop_server(li)
    kz = kazoo(ens.connect_string)
    kz.set("/shard/state", b'{"generation":2}')
    kz.stop()
    kz.close()
    ens.start_server(li)

    pids = [s.pid for s in ens.servers]
    ens.stop()
    assert not any(pid_alive(p) for p in pids)
    assert all(four_letter_word(s.host, s.port, "ruok", 0.3) == "" for s in ens.servers)
    ens.start()
    assert sorted(s.mode() for s in ens.servers) == ["follower", "follower", "leader"]
    kz = kazoo(ens.connect_string)
    assert kz.get("/shard/state")[0] == b'{"generation":2}'
    kz.stop()
    kz.close()


def test_proxy_forwards_and_cuts(zk_server):
    with TcpProxy(zk_server.host, zk_server.port) as proxy:
        host, port = proxy.address.split(":")
        assert four_letter_word(host, int(port), "ruok") == "imok"
        proxy.block()
        assert proxy.blocked
        t0 = time.monotonic()
        assert four_letter_word(host, int(port), "ruok", timeout=0.5) == ""  # hangs, no reply
        assert time.monotonic() - t0 >= 0.4
        proxy.unblock()
        assert four_letter_word(host, int(port), "ruok") == "imok"


def test_ensemble_context_manager(tmp_path):
    with ZooKeeperEnsemble(tmp_path / "ens", size=3) as ens:
        pids = [s.pid for s in ens.servers]
        assert ens.leader_index() is not None
    assert not any(pid_alive(p) for p in pids)


def test_auto_port_taken_meanwhile_is_replaced(tmp_path, zk_server):
    """Another ZooKeeper grabbed our auto-chosen port between choosing and binding: the
    harness must not mistake it for ours, and must move to a fresh port."""
    s = ZooKeeperServer(tmp_path / "zk")
    s.port = zk_server.port  # simulate the race
    try:
        s.start(timeout=20)
        assert s.port != zk_server.port and s.running and s.answering_is_us()
        assert zk_server.running and zk_server.answering_is_us()
    finally:
        s.close()
