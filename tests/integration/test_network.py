"""nftables partitions between 127.x addresses really drop traffic (connections hang, not
refused) and heal really restores it; nothing is left in the ruleset afterwards."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

from manatee_testbed import cgroups, network

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft (nftables)"
)


@pytest.fixture
def prefix():
    p = "mtest" + uuid.uuid4().hex[:8]
    yield p
    network.heal_all(p)
    assert network.tables(p) == []


@pytest.fixture
def addrs():
    """Two addresses in a range nobody else here uses, so our drops hit only our sockets."""
    b, c = random.randint(100, 250), random.randint(2, 120)
    return f"127.77.{b}.{c}", f"127.77.{b}.{c + 100}"


def _listener(ip: str) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, 0))
    s.listen()
    return s


def _connect(addr, source_ip: str | None, timeout: float) -> socket.socket:
    return socket.create_connection(addr, timeout=timeout, source_address=(source_ip, 0) if source_ip else None)


def test_partition_hangs_both_directions_and_heal_restores(prefix, addrs):
    a, b = addrs
    srv = _listener(a)
    cli = _connect(srv.getsockname(), b, 2)
    conn, _ = srv.accept()
    cli.sendall(b"before")
    assert conn.recv(10) == b"before"

    table = network.partition(a, [b, "127.0.0.1"], prefix)
    assert table == f"{prefix}_{a.replace('.', '_')}"
    assert network.partitioned(a, prefix)
    assert not network.partitioned(b, prefix)

    # b -> a: sent but never delivered (no error: a hang)
    cli.sendall(b"during")
    conn.settimeout(1.0)
    with pytest.raises(socket.timeout):
        conn.recv(10)
    # a -> b likewise
    conn.sendall(b"reply")
    cli.settimeout(1.0)
    with pytest.raises(socket.timeout):
        cli.recv(10)
    # a new connection times out instead of being refused
    t0 = time.monotonic()
    with pytest.raises((socket.timeout, TimeoutError)):
        _connect(srv.getsockname(), b, 1.0)
    assert time.monotonic() - t0 >= 0.9

    assert network.heal(a, prefix) is True
    assert not network.partitioned(a, prefix)
    assert network.heal(a, prefix) is False
    # TCP retransmits what was dropped
    conn.settimeout(15)
    cli.settimeout(15)
    assert conn.recv(10) == b"during"
    assert cli.recv(10) == b"reply"
    _connect(srv.getsockname(), b, 2).close()
    for s in (cli, conn, srv):
        s.close()


def test_partition_leaves_other_addresses_alone(prefix, addrs):
    a, b = addrs
    third = a.rsplit(".", 1)[0] + ".250"
    srv = _listener(a)
    network.partition(a, [b], prefix)
    _connect(srv.getsockname(), third, 2).close()  # not a peer: passes
    with pytest.raises((socket.timeout, TimeoutError)):
        _connect(srv.getsockname(), b, 0.7)
    srv.close()


def test_repartition_replaces_and_heal_all_removes_everything(prefix, addrs):
    a, b = addrs
    srv = _listener(a)
    network.partition(a, [b], prefix)
    network.partition(a, ["127.0.0.1"], prefix)  # replaces: b is no longer cut off
    _connect(srv.getsockname(), b, 2).close()
    network.partition(b, [a], prefix)
    assert sorted(network.heal_all(prefix)) == sorted(
        [network.table_name(a, prefix), network.table_name(b, prefix)]
    )
    assert network.tables(prefix) == []
    _connect(srv.getsockname(), b, 2).close()
    srv.close()


def test_bad_arguments_are_refused(prefix):
    with pytest.raises(ValueError, match="no peer"):
        network.rules_script("127.0.0.12", ["127.0.0.12"], prefix)
    with pytest.raises(ValueError):
        network.table_name("::1", prefix)
    with pytest.raises(ValueError, match="prefix"):
        network.table_name("127.0.0.12", "bad-prefix")


_CHILD = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0).close()
    print("connected")
except OSError as e:
    print("failed", type(e).__name__)
"""


def _child_connects(addr, cgroup: str | None) -> str:
    pre = (lambda: cgroups.join_self(cgroup)) if cgroup else None
    cp = subprocess.run([sys.executable, "-c", _CHILD, addr[0], str(addr[1])],
                        capture_output=True, text=True, timeout=20, preexec_fn=pre)
    return cp.stdout.strip()


@pytest.mark.skipif(not cgroups.available(), reason="needs a writable cgroup2 hierarchy")
def test_cgroup_rules_cut_unbound_sockets(prefix, addrs):
    """Unbound sockets send from 127.0.0.1: only the node's cgroup identifies them."""
    a, b = addrs
    grp = f"{prefix}/node_a"
    peer_grp = f"{prefix}/node_b"
    cgroups.create(grp)
    cgroups.create(peer_grp)
    srv_b = _listener(b)
    srv_a = _listener(a)
    try:
        network.partition(a, [b], prefix, cgroup=grp, peer_cgroups=[peer_grp])
        # node a's unbound socket to its peer b: dropped
        assert _child_connects(srv_b.getsockname(), grp).startswith("failed")
        # node b's unbound socket to a: dropped
        assert _child_connects(srv_a.getsockname(), peer_grp).startswith("failed")
        # a process outside both groups (the operator) still reaches both
        assert _child_connects(srv_b.getsockname(), None) == "connected"
        assert _child_connects(srv_a.getsockname(), None) == "connected"
        network.heal(a, prefix)
        assert _child_connects(srv_b.getsockname(), grp) == "connected"
        assert _child_connects(srv_a.getsockname(), peer_grp) == "connected"
    finally:
        srv_a.close()
        srv_b.close()
        network.heal_all(prefix)
        assert cgroups.remove(prefix)
    assert not cgroups.exists(prefix)


_PEER = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2.0)
print(c.recv(64).decode())
"""


def _peer_seen_by_server(srv: socket.socket, cgroup: str | None) -> str:
    """Run a client (in `cgroup`) against srv; return the client address the server saw."""
    import threading

    seen: list[str] = []

    def serve():
        conn, peer = srv.accept()
        seen.append(peer[0])
        conn.sendall(peer[0].encode())
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    pre = (lambda: cgroups.join_self(cgroup)) if cgroup else None
    cp = subprocess.run([sys.executable, "-c", _PEER, *map(str, srv.getsockname())],
                        capture_output=True, text=True, timeout=20, preexec_fn=pre)
    t.join(5)
    assert cp.stdout.strip() == seen[0], cp.stderr
    return seen[0]


@pytest.mark.skipif(not cgroups.available(), reason="needs a writable cgroup2 hierarchy")
def test_source_nat_gives_a_nodes_processes_its_address(prefix, addrs):
    a, b = addrs
    grp = f"{prefix}/node_a"
    cgroups.create(grp)
    srv = _listener(b)
    try:
        assert _peer_seen_by_server(srv, grp) == "127.0.0.1"
        table = network.source_nat(a, grp, table_prefix=prefix + "snat")
        assert table in network.tables(prefix + "snat")
        assert _peer_seen_by_server(srv, grp) == a  # the node's processes now come from a
        assert _peer_seen_by_server(srv, None) == "127.0.0.1"  # everyone else as before
        assert network.remove_source_nat(a, table_prefix=prefix + "snat") is True
        assert _peer_seen_by_server(srv, grp) == "127.0.0.1"
    finally:
        srv.close()
        network.heal_all(prefix + "snat")
        assert cgroups.remove(prefix)
    assert network.tables(prefix + "snat") == []
