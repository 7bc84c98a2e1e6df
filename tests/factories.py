"""Test data built the same way by every kind of test: a shard's peers and a sandbox's
state. Pure values, no I/O; a test module imports these, never another test module."""

from __future__ import annotations

from typing import Any

from manatee.shard.state import Peer
from manatee_testbed.sandbox_config import node_addresses, node_names
from manatee_testbed.sandbox_state import NodeState, SandboxState


def peer(ip: str, zone: str | None = None, *, port: int = 5432, status: bool = True) -> Peer:
    """The peer a sitter on `ip` publishes: PostgreSQL on `port`, its status server on
    port+1, its backupserver on 10002; zone 'zone-<ip>' unless named (status=False: a
    record without a status URL, as older sitters wrote)."""
    return Peer(id=f"{ip}:{port}:10002:{port + 1}", zone_id=zone or f"zone-{ip}", ip=ip,
                pg_url=f"tcp://postgres@{ip}:{port}/postgres", backup_url=f"http://{ip}:10002",
                status_url=f"http://{ip}:{port + 1}" if status else "")


def peer_record(ip: str) -> dict[str, Any]:
    """A peer as a client reads it from the state znode (zone 'z-<ip>', no status URL)."""
    rec = peer(ip, f"z-{ip}", status=False).to_json()
    del rec["statusUrl"]
    return rec


def make_state(tmp_path, n=3, session=6000, auth="scram-sha-256") -> SandboxState:
    """A sandbox's state as `create` records it: `n` nodes from 127.0.0.11, ZooKeeper on
    127.0.0.10:2181, a cgroup, and a sitter pid on every node (nothing runs)."""
    st = SandboxState(id="ab12cd34", dir=str(tmp_path), shard="1", session_timeout_ms=session,
                      zk_host="127.0.0.10", zk_port=2181, pool="msandboxab12cd34",
                      pool_file=str(tmp_path / "zpool" / "msandboxab12cd34.img"),
                      secret="s3cret-s3cret-s3cret", repl_password="pw-123456", admin_password="admin-pw-654321",
                      auth_method=auth, cgroup="manatee-sandbox-ab12cd34")
    _, ips = node_addresses("127.0.0.11", n)
    for name, ip in zip(node_names(n), ips):
        st.nodes.append(NodeState(name=name, ip=ip, pg_port=5432, status_port=5433, backup_port=10002,
                                  zfs_port=10001, dataset=f"{st.pool}/{name}/pg",
                                  mountpoint=str(tmp_path / "nodes" / name / "pg"),
                                  dir=str(tmp_path / "nodes" / name), cgroup=f"{st.cgroup}/{name}",
                                  pids={"sitter": 123}))
    return st
