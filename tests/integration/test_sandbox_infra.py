"""The sandbox's own machinery on real ZooKeeper, ZFS, nftables and cgroups, without
depending on the sitter: create, start daemons in a node's cgroup, hang/resume,
partition/heal, kill (every process of the node), and `down` leaving nothing behind."""

from __future__ import annotations

import os
import random
import shutil
import socket
import time

import pytest

from manatee.core.procs import pid_alive, wait_port
from manatee_testbed import cgroups, network
from manatee_testbed.hang import stopped
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_state import load_state
from manatee_testbed.zfspool import ZfsPool, mounts_of_pool
from manatee_testbed.zookeeper import ZK_SERVER_SH, four_letter_word

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or not ZK_SERVER_SH.exists(),
    reason="needs root, nftables and ZooKeeper",
)

SIDE = ("snapshotter", "backupserver")


def _eventually(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _first_ip() -> str:
    return f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.11"


def test_sandbox_machinery_and_down_leaves_nothing(zfs_fuse, tmp_path):
    lines: list[str] = []
    sb = Sandbox(tmp_path / "sb", out=lines.append)
    st = sb.create(nodes=2, session_timeout_ms=4000, first_ip=_first_ip(), require_daemons=SIDE)
    a, b = st.nodes
    recorded = []
    try:
        assert four_letter_word(st.zk_host, st.zk_port, "ruok") == "imok"
        pool = ZfsPool(tmp_path / "sb" / "zpool", st.pool)
        assert pool.exists()
        assert sorted(mounts_of_pool(st.pool)) == sorted([a.mountpoint, b.mountpoint])
        assert load_state(tmp_path / "sb") == st  # a second invocation sees the same sandbox
        if st.cgroup:  # each node's processes get its address as their source
            assert network.partitioned(a.ip, network.SNAT_PREFIX) and network.partitioned(b.ip, network.SNAT_PREFIX)

        for node in (a, b):
            sb._start_node(node, which=SIDE)
        sb.save()
        for node in (a, b):
            wait_port(node.ip, node.backup_port, timeout=30)
        recorded = [p for n in (a, b) for p in n.pids.values()]

        if a.cgroup:
            assert set(a.pids.values()) <= set(cgroups.pids(a.cgroup))
        status = sb.status()
        assert [n["role"] for n in status["nodes"]] == ["down", "down"]  # no sitter here
        assert all(p["alive"] for n in status["nodes"] for d, p in n["processes"].items() if d in SIDE)

        # hang / resume
        frozen = sb.hang("a")
        assert set(a.pids.values()) <= set(frozen)
        assert _eventually(lambda: all(stopped(p) for p in a.pids.values()))
        assert sb.node_status(a)["hung"] and sb.node_status(a)["role"] == "hung"
        assert not any(stopped(p) for p in b.pids.values())
        sb.resume("a")
        assert _eventually(lambda: not any(stopped(p) for p in a.pids.values()))

        # partition / heal: b's address cannot reach a's backupserver, then can again
        sb.partition("a")
        assert network.partitioned(a.ip)
        assert sb.node_status(a)["partitioned"] is True
        with pytest.raises(OSError):
            socket.create_connection((a.ip, a.backup_port), timeout=1.0, source_address=(b.ip, 0))
        assert sb.heal("a") is True
        socket.create_connection((a.ip, a.backup_port), timeout=2.0, source_address=(b.ip, 0)).close()

        # kill: every process of a dies at once, b is untouched
        killed = sb.kill("a")
        assert set(a.pids.values()) <= set(killed)
        assert not any(pid_alive(p) for p in a.pids.values())
        assert sb.node_pids(a) == []
        assert all(pid_alive(p) for p in b.pids.values())

        # start brings the node's daemons back (new pids, recorded in the state file)
        sb._start_node(a, which=SIDE)
        sb.save()
        wait_port(a.ip, a.backup_port, timeout=30)
        recorded += list(a.pids.values())
        assert load_state(tmp_path / "sb").node("a").pids == a.pids
    finally:
        problems = Sandbox(tmp_path / "sb").down()

    assert problems == []
    time.sleep(0.2)
    assert not any(pid_alive(p) for p in recorded), [p for p in recorded if pid_alive(p)]
    assert not pid_alive(st.zk_pid)
    assert not ZfsPool(tmp_path, st.pool).exists()
    assert mounts_of_pool(st.pool) == []
    assert not network.partitioned(a.ip) and not network.partitioned(b.ip)
    assert not network.partitioned(a.ip, network.SNAT_PREFIX) and not network.partitioned(b.ip, network.SNAT_PREFIX)
    assert st.cgroup is None or not cgroups.exists(st.cgroup)
    assert not (tmp_path / "sb").exists()
    assert st.data_root is None or not os.path.exists(st.data_root)
