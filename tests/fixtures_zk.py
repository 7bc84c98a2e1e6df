"""pytest fixtures for a real ZooKeeper (loaded as a plugin by tests/conftest.py).

- zk_server          one standalone server for the whole test session (tick 200 ms, so
                     session timeouts from 0.4 s to 60 s are granted)
- zk_hosts           "127.0.0.1:PORT/t-<uuid8>": a fresh chroot on zk_server per test,
                     created before and deleted after, so tests never see each other's data
- zk_server_factory  make(**ZooKeeperServer kwargs) -> a started private server, for tests
                     that stop, restart or pause ZooKeeper; all stopped at teardown
- zk_ensemble        a started 3-server ensemble, function-scoped (tests that stop ZK)
- tcp_proxy_factory  make(host, port) -> a started TcpProxy (cut a client's link)

Every server is stopped by PID at teardown, whatever the test's outcome.
"""

from __future__ import annotations

import uuid

import pytest
from kazoo.client import KazooClient

from manatee_testbed.tcpproxy import TcpProxy
from manatee_testbed.zookeeper import ZooKeeperEnsemble, ZooKeeperServer


def _with_kazoo(connect: str, fn) -> None:
    kz = KazooClient(hosts=connect, timeout=10)
    kz.start(timeout=15)
    try:
        fn(kz)
    finally:
        kz.stop()
        kz.close()


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory):
    server = ZooKeeperServer(tmp_path_factory.mktemp("zk-session"), tick_ms=200)
    server.start()
    try:
        yield server
    finally:
        server.close(remove=True)


@pytest.fixture
def zk_hosts(zk_server):
    chroot = f"/t-{uuid.uuid4().hex[:8]}"
    if not zk_server.running:  # a test stopped the shared server: bring it back
        zk_server.start()
    _with_kazoo(zk_server.connect_string, lambda kz: kz.ensure_path(chroot))
    yield f"{zk_server.connect_string}{chroot}"
    if zk_server.running:
        _with_kazoo(zk_server.connect_string, lambda kz: kz.delete(chroot, recursive=True))


@pytest.fixture
def zk_server_factory(tmp_path):
    servers: list[ZooKeeperServer] = []

    def make(**kwargs) -> ZooKeeperServer:
        kwargs.setdefault("tick_ms", 200)
        s = ZooKeeperServer(tmp_path / f"zk-{len(servers)}", **kwargs)
        servers.append(s)
        s.start()
        return s

    yield make
    for s in servers:
        s.resume()  # a paused JVM would ignore SIGTERM until SIGKILL
        s.close(remove=True)


@pytest.fixture
def zk_ensemble(tmp_path):
    ens = ZooKeeperEnsemble(tmp_path / "zk-ensemble", size=3, tick_ms=200)
    try:
        ens.start()
        yield ens
    finally:
        ens.close(remove=True)


@pytest.fixture
def tcp_proxy_factory():
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        p = TcpProxy(host, port).start()
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.close()
