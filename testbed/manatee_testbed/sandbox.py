"""A real local shard for people and fault tests: ZooKeeper, a file-backed ZFS pool and N
nodes (sitter + snapshotter + backupserver each) on their own 127.0.0.x addresses.

Everything the sandbox starts is recorded in DIR/sandbox.json as soon as it exists, so a
later, separate invocation (`status`, `kill b`, `down`) finds the shard, and `down` can
clean up after a half-finished `up`. Each node's processes run in a cgroup of their
own (when cgroup2 is writable): that is how `kill`/`hang` reach every process of a
"host" (PostgreSQL included, whoever its parent is now) and how partitions also cut
sockets that send from 127.0.0.1.

Layout of DIR:
    sandbox.json   state (the source of truth for every command)
    lock           serialises commands that change the sandbox
    zookeeper/     zoo.cfg, data/, zookeeper.log
    zpool/         the pool's sparse file
    nodes/<name>/  sitter.json snapshotter.json backupserver.json, <daemon>.log,
                   pg/ (the dataset's mountpoint: data/, postgresql.log)

`Sandbox` is made of one part per concern, each in its own module:
    sandbox_state     the state file, its records and the directory lock (SandboxBase)
    sandbox_config    node names, addresses and ports; the daemons' config files
    proctable         /proc scanning; the daemons this process started
    sandbox_zk        ZooKeeper: standalone or ensemble, outages, restarts
    sandbox_pool      the ZFS pool and the nodes' datasets
    sandbox_nodes     a node's daemons: start, graceful stop, kill (host death), add_node
    node_faults       partitions and hangs
    sandbox_health    status, health, wait_healthy
    sandbox_teardown  down
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from typing import Any

from manatee_testbed import cgroups
from manatee_testbed.node_faults import NodeFaultOps
from manatee_testbed.sandbox_config import (
    PG_BIN,
    node_addresses,
    node_names,
    postgres_can_reach,
    write_node_configs,
    write_security_files,
)
from manatee_testbed.sandbox_health import HealthOps
from manatee_testbed.sandbox_nodes import DAEMONS, daemon_available
from manatee_testbed.sandbox_pool import create_dataset
from manatee_testbed.sandbox_state import SandboxError, SandboxState, dir_lock
from manatee_testbed.sandbox_teardown import TeardownOps

DEFAULT_FIRST_IP = "127.0.0.11"
DEFAULT_SESSION_TIMEOUT_MS = 6000
CGROUP_PREFIX = "manatee-sandbox"
ZK_SERVER_COUNTS = (1, 3)


def check_create(nodes: int, session_timeout_ms: int, shard: str, first_ip: str, zk_servers: int,
                 require_daemons: tuple[str, ...]) -> tuple[list[str], str, list[str]]:
    """`create`'s arguments and host checked before anything is made: (node names,
    ZooKeeper's address, the nodes' addresses)."""
    if zk_servers not in ZK_SERVER_COUNTS:
        raise SandboxError(f"--zk-servers {zk_servers}: must be one of {', '.join(map(str, ZK_SERVER_COUNTS))}")
    if session_timeout_ms < 1000:
        raise SandboxError(f"--session-timeout {session_timeout_ms} ms: must be at least 1000")
    if not shard.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise SandboxError(f"--shard {shard!r}: letters, digits, '.', '-' and '_' only")
    names = node_names(nodes)
    zk_ip, ips = node_addresses(first_ip, nodes)
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root (ZFS, nftables, PostgreSQL as user postgres)")
    missing = [d for d in require_daemons if not daemon_available(d)]
    if missing:
        raise SandboxError(f"daemons not installed: {', '.join('manatee-' + d for d in missing)} "
                           "(run scripts/install-deps.sh)")
    return names, zk_ip, ips


class Sandbox(TeardownOps, NodeFaultOps, HealthOps):
    """Operations on the sandbox in `dir`. `out` receives progress lines."""

    def up(
        self,
        nodes: int = 3,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
        shard: str = "1",
        first_ip: str = DEFAULT_FIRST_IP,
        timeout: float = 240.0,
        auth_method: str = "scram-sha-256",
        zk_servers: int = 1,
        tls: bool = False,
        zk_auth: bool = False,
        health_timeout_ms: int | None = None,
        expiration_ms: int | None = None,
    ) -> dict[str, Any]:
        """create(), start every node, wait until healthy and writable; what `status` says.
        zk_servers=3: a ZooKeeper ensemble of three servers instead of one standalone.
        tls: HTTPS with client certificates everywhere; zk_auth: ZooKeeper digest auth + ACLs."""
        t0 = time.monotonic()
        self.create(nodes, session_timeout_ms, shard, first_ip, auth_method, zk_servers=zk_servers,
                    tls=tls, zk_auth=zk_auth, health_timeout_ms=health_timeout_ms,
                    expiration_ms=expiration_ms)
        began = time.monotonic()
        with dir_lock(self.dir):
            # One at a time, each once the previous one has its place in the election: the
            # election order (a, b, c...) is then the chain (primary, sync, async...).
            for i, node in enumerate(self.st.nodes):
                self._start_node(node)
                self.save()
                if i < len(self.st.nodes) - 1:
                    self._wait_joined(node, 30.0)
        timeout = max(30.0, timeout - (time.monotonic() - began))
        self.out(f"started {len(self.st.nodes)} node(s); waiting for the shard to be healthy and writable "
                 f"(up to {timeout:.0f}s)")
        self.wait_healthy(timeout)
        info = self.describe()
        info["seconds"] = round(time.monotonic() - t0, 1)
        return info

    def create(
        self,
        nodes: int = 3,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
        shard: str = "1",
        first_ip: str = DEFAULT_FIRST_IP,
        auth_method: str = "scram-sha-256",
        *,
        require_daemons: tuple[str, ...] = DAEMONS,
        zk_servers: int = 1,
        tls: bool = False,
        zk_auth: bool = False,
        health_timeout_ms: int | None = None,
        expiration_ms: int | None = None,
    ) -> SandboxState:
        """Everything but the daemons: ZooKeeper running (one standalone server, or with
        zk_servers=3 an ensemble on the same address), pool, datasets, configs, cgroups."""
        names, zk_ip, ips = check_create(nodes, session_timeout_ms, shard, first_ip, zk_servers, require_daemons)
        if self.exists():
            raise SandboxError(f"a sandbox already exists in {self.dir} (`down` it first, or use --dir)")
        self.dir.mkdir(parents=True, exist_ok=True)
        with dir_lock(self.dir):
            sid = secrets.token_hex(4)
            data_root = None if postgres_can_reach(self.dir) else f"/var/tmp/manatee-sandbox-{sid}"
            st = SandboxState(
                id=sid, dir=str(self.dir), shard=shard, session_timeout_ms=session_timeout_ms,
                secret=secrets.token_urlsafe(32), repl_password=secrets.token_urlsafe(12),
                admin_password=secrets.token_urlsafe(12),
                auth_method=auth_method, data_root=data_root, tls=tls,
                zk_auth=f"manatee-{sid}:{secrets.token_urlsafe(18)}" if zk_auth else "",
                cgroup=f"{CGROUP_PREFIX}-{sid}" if cgroups.available() else None,
                health_timeout_ms=health_timeout_ms, expiration_ms=expiration_ms,
            )
            self._st = st
            self.save()
            if data_root:
                self.out(f"note: postgres cannot reach {self.dir}; data goes to {data_root}")
            if zk_servers == 1:
                self._start_zookeeper(zk_ip)
            else:
                self._start_zk_ensemble(zk_ip, zk_servers)
            self._create_pool()
            taken: set[tuple[str, int]] = set()
            for name, ip in zip(names, ips):
                st.nodes.append(self._new_node(name, ip, taken))
            write_security_files(st)
            for node in st.nodes:
                write_node_configs(st, node)
            self.save()
            for node in st.nodes:
                create_dataset(st, node)
                self._host_setup(node)
            if not st.cgroup:
                self.out("note: no writable cgroup2 hierarchy: node traffic leaves from 127.0.0.1 "
                         "and partitions only cut sockets bound to a node's address")
        return st

    def psql_argv(self, name: str | None, extra: list[str]) -> list[str]:
        node = self.st.node(name) if name else self.primary()
        if node is None:
            raise SandboxError("no node reports itself primary right now (see `status`); name a node: psql NODE")
        psql = shutil.which("psql") or f"{PG_BIN}/psql"
        return [psql, "-h", node.socket_dir, "-p", str(node.pg_port), "-U", "postgres", "-d", "postgres", *extra]
