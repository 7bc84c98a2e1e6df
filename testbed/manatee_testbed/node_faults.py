"""Faults on one sandbox node besides its death (`kill`, in sandbox_nodes): a network
partition from ZooKeeper and the other nodes (nftables), and a hung host (SIGSTOP)."""

from __future__ import annotations

from manatee_testbed import network
from manatee_testbed.hang import hang as _hang_pids
from manatee_testbed.hang import resume as _resume_pids
from manatee_testbed.sandbox_nodes import NodeOps
from manatee_testbed.sandbox_state import NodeState, SandboxError


class NodeFaultOps(NodeOps):
    """Partitions and hangs (a part of `Sandbox`)."""

    def peers_of(self, node: NodeState) -> list[str]:
        return [self.st.zk_host] + [n.ip for n in self.st.nodes if n.name != node.name]

    def partition(self, name: str) -> str:
        node = self.st.node(name)
        others = [n.cgroup for n in self.st.nodes if n.name != name and n.cgroup]
        try:
            return network.partition(node.ip, self.peers_of(node), self.st.nft_prefix,
                                     cgroup=node.cgroup, peer_cgroups=others)
        except network.NftError as e:
            raise SandboxError(f"partition of node {name} failed: {e}") from None

    def heal(self, name: str) -> bool:
        node = self.st.node(name)
        try:
            return network.heal(node.ip, self.st.nft_prefix)
        except network.NftError as e:
            raise SandboxError(f"heal of node {name} failed: {e}") from None

    def hang(self, name: str) -> list[int]:
        """A hung host: every process of the node stopped (its daemons lead their own
        process groups; PostgreSQL and children are reached through the cgroup/tree)."""
        node = self.st.node(name)
        pids = self.node_pids(node)
        if not pids:
            raise SandboxError(f"node {name} has no running process to hang")
        _hang_pids(pids)
        return pids

    def resume(self, name: str) -> list[int]:
        node = self.st.node(name)
        pids = self.node_pids(node)
        _resume_pids(pids)
        return pids
