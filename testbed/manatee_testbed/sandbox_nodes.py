"""A sandbox node's life: its ports, dataset, cgroup and source address; its three daemons
started (each in the node's cgroup), stopped gracefully, or killed like a host that dies."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from manatee.core.procs import pid_alive
from manatee_testbed import cgroups, network
from manatee_testbed.hang import resume as _resume_pids
from manatee_testbed.proctable import _CHILDREN, descendants, postgres_pids, postmaster_pid, reap_children
from manatee_testbed.sandbox_config import DEFAULT_PORTS, pick_port, write_node_configs, write_security_files
from manatee.core.httpjson import http_json
from manatee_testbed.sandbox_pool import create_dataset
from manatee_testbed.sandbox_state import NodeState, SandboxBase, SandboxError, dir_lock

DAEMONS = ("sitter", "snapshotter", "backupserver")
MODULES = {
    "sitter": "manatee.sitter.main",
    "snapshotter": "manatee.snapshotter.main",
    "backupserver": "manatee.backupserver.main",
}


def daemon_command(daemon: str, config: Path) -> list[str]:
    """The venv's console script (next to this interpreter), else `python -m`."""
    script = Path(sys.executable).parent / f"manatee-{daemon}"
    base = [str(script)] if script.exists() else [sys.executable, "-m", MODULES[daemon]]
    return base + ["-f", str(config), "--log-format", "text"]


def daemon_available(daemon: str) -> bool:
    if (Path(sys.executable).parent / f"manatee-{daemon}").exists():
        return True
    import importlib.util

    try:
        return importlib.util.find_spec(MODULES[daemon]) is not None
    except ModuleNotFoundError:
        return False


class NodeOps(SandboxBase):
    """A node's life (a part of `Sandbox`)."""

    def _new_node(self, name: str, ip: str, taken: set[tuple[str, int]]) -> NodeState:
        """A node's ports (free on its address, not in `taken`), dataset, mountpoint, dirs."""
        st = self.st
        node_dir = self.dir / "nodes" / name
        base = Path(st.data_root) / name if st.data_root else node_dir
        return NodeState(
            name=name, ip=ip,
            pg_port=pick_port(ip, DEFAULT_PORTS["pg"], taken),
            status_port=pick_port(ip, DEFAULT_PORTS["status"], taken),
            backup_port=pick_port(ip, DEFAULT_PORTS["backup"], taken),
            zfs_port=pick_port(ip, DEFAULT_PORTS["zfs"], taken),
            dataset=f"{st.pool}/{name}/pg", mountpoint=str(base / "pg"), dir=str(node_dir),
            cgroup=f"{st.cgroup}/{name}" if st.cgroup else None,
        )

    def _host_setup(self, node: NodeState) -> None:
        """The node's cgroup and its processes' source address (nothing without a cgroup)."""
        if node.cgroup:
            cgroups.create(node.cgroup)
            self._source_nat(node)

    def _source_nat(self, node: NodeState) -> None:
        try:
            network.source_nat(node.ip, node.cgroup)
        except network.NftError as e:
            raise SandboxError(f"node {node.name}: cannot give its processes the source address {node.ip}: {e}") from None

    def _wait_joined(self, node: NodeState, timeout: float) -> bool:
        """Until the node's sitter reports itself in the election (its /state lists it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _code, body = http_json(f"{node.status_url}/state", timeout=1.0, ctx=node.client_ctx())
            if isinstance(body, dict) and body.get("id") and body.get("id") in (body.get("election") or []):
                return True
            if not pid_alive(node.pids.get("sitter", 0) or 0):
                break
            time.sleep(0.2)
        self.out(f"node {node.name} has not joined the election yet; starting the next one anyway")
        return False

    def _start_node(self, node: NodeState, which: tuple[str, ...] = DAEMONS) -> list[str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        started = []
        for daemon in which:
            pid = node.pids.get(daemon)
            if pid and pid_alive(pid):
                continue
            cmd = daemon_command(daemon, node.config_path(daemon))
            log = open(node.log_path(daemon), "ab")
            log.write(f"--- manatee-sandbox start {time.strftime('%F %T')}: {' '.join(cmd)}\n".encode())
            log.flush()
            grp = node.cgroup
            pre = (lambda: cgroups.join_self(grp)) if grp else None
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=node.dir, env=env, start_new_session=True, preexec_fn=pre)
            finally:
                log.close()
            node.pids[daemon] = proc.pid
            _CHILDREN.append(proc)
            started.append(daemon)
        self.out(f"node {node.name} ({node.ip}): started {', '.join(started) or 'nothing (already running)'}")
        return started

    def node_pids(self, node: NodeState) -> list[int]:
        """Every live process of the node: its cgroup, its daemons and their descendants,
        and the postmaster of its data directory."""
        reap_children()
        pids: list[int] = []
        if node.cgroup:
            pids += cgroups.pids(node.cgroup)
        roots = [p for p in node.pids.values() if pid_alive(p)] + postgres_pids(node.data_dir)
        pids += roots + descendants(roots)
        seen: list[int] = []
        for p in pids:
            if p not in seen and pid_alive(p):
                seen.append(p)
        return seen

    def kill(self, name: str) -> list[int]:
        """Host death: every process of the node frozen, then SIGKILLed (PostgreSQL too)."""
        node = self.st.node(name)
        with dir_lock(self.dir):
            return self._kill_node(node)

    def _kill_node(self, node: NodeState, timeout: float = 10.0) -> list[int]:
        try:
            return cgroups.power_cut(lambda: self.node_pids(node), f"node {node.name}", timeout)
        except TimeoutError as e:
            raise SandboxError(str(e)) from None

    def stop(self, name: str, timeout: float = 90.0) -> list[str]:
        """Graceful: SIGTERM the daemons (the sitter stops PostgreSQL and hands over), wait;
        whatever is left after `timeout` is killed."""
        node = self.st.node(name)
        with dir_lock(self.dir):
            return self._stop_node(node, timeout)

    def _stop_node(self, node: NodeState, timeout: float) -> list[str]:
        alive = {d: p for d, p in node.pids.items() if pid_alive(p)}
        _resume_pids(self.node_pids(node))  # a hung node cannot stop gracefully
        for p in alive.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(pid_alive(p) for p in alive.values()):
            time.sleep(0.1)
        forced = [d for d, p in alive.items() if pid_alive(p)]
        if self.node_pids(node):
            self._kill_node(node)
        if forced:
            self.out(f"node {node.name}: {', '.join(forced)} did not stop within {timeout:.0f}s; killed")
        return list(alive)

    def start(self, name: str) -> list[str]:
        node = self.st.node(name)
        with dir_lock(self.dir):
            if postmaster_pid(node.data_dir) and not pid_alive(node.pids.get("sitter", 0) or 0):
                raise SandboxError(f"node {name}: PostgreSQL (pid {postmaster_pid(node.data_dir)}) runs without "
                                   f"its sitter; `kill {name}` first")
            self._host_setup(node)
            started = self._start_node(node)
            self.save()
            return started

    def crash_sitter(self, name: str, restart_after_s: float = 0.5) -> tuple[int, int]:
        """The sitter alone dies (SIGKILL) and a new one starts `restart_after_s` later, as a
        supervisor restarts it (systemd's Restart=on-failure; KillMode=mixed leaves its
        PostgreSQL running meanwhile). (old pid, new pid)."""
        node = self.st.node(name)
        with dir_lock(self.dir):
            old = node.pids.get("sitter", 0) or 0
            if not pid_alive(old):
                raise SandboxError(f"node {name}: its sitter is not running")
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while pid_alive(old) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(restart_after_s)
            self._start_node(node, ("sitter",))
            self.save()
            return old, node.pids["sitter"]

    def add_node(self, start: bool = True) -> NodeState:
        """A further node (next letter, next address) made the way `create` makes nodes —
        ports, empty dataset, configs, cgroup and source address — and, with start=True,
        its daemons started: its sitter joins the election and restores from its leader."""
        with dir_lock(self.dir):
            st = self.st
            if not st.nodes or not st.pool or not st.pool_file:
                raise SandboxError("add_node needs a created sandbox (run `up` first)")
            last = st.nodes[-1]
            if last.name >= "z":
                raise SandboxError(f"no node name left after {last.name!r}")
            name = chr(ord(last.name) + 1)
            ip = str(ipaddress.IPv4Address(last.ip) + 1)
            if int(ipaddress.IPv4Address(ip)) & 0xFF in (0, 255):
                raise SandboxError(f"no address left after {last.ip}")
            taken = {(n.ip, p) for n in st.nodes for p in (n.pg_port, n.status_port, n.backup_port, n.zfs_port)}
            node = self._new_node(name, ip, taken)
            st.nodes.append(node)
            write_security_files(st)
            write_node_configs(st, node)
            self.save()  # from here on `down` knows the node
            create_dataset(st, node)
            self._host_setup(node)
            if start:
                self._start_node(node)
            self.save()
        return node
