"""`down`: stop and remove everything a sandbox made, from whatever state it is in (a
half-finished `up`, hung nodes, a wedged filesystem). What cannot be fixed is reported,
and the state file is kept so that `down` can run again."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time

from manatee.core.procs import pid_alive
from manatee_testbed import cgroups, network, sockdirs
from manatee_testbed.proctable import mounts_under, postmaster_shm
from manatee_testbed.sandbox_nodes import NodeOps
from manatee_testbed.sandbox_pool import PoolOps
from manatee_testbed.sandbox_state import SandboxError, dir_lock, state_path
from manatee_testbed.sandbox_zk import ZooKeeperOps


class TeardownOps(NodeOps, PoolOps, ZooKeeperOps):
    """`down` (a part of `Sandbox`)."""

    def down(self, keep: bool = False) -> list[str]:
        """Stop and remove everything this sandbox made, from whatever state it is in.
        Returns problems that could not be fixed (empty when all is gone)."""
        problems: list[str] = []
        st = self.st
        from manatee_testbed import grayfaults  # its helpers and tables (it imports the sandbox)

        with contextlib.suppress(Exception):
            grayfaults.undo_all(self, zk=False)
        with dir_lock(self.dir):
            self._heal_networks(problems)
            self._stop_all_nodes(problems)
            self._zk_teardown(problems)
            self._destroy_pool(problems)
            if st.cgroup and not cgroups.remove(st.cgroup):
                problems.append(f"cgroup {st.cgroup} stays busy")
            self._remove_socket_dirs(problems)
            left = mounts_under(self.dir) + (mounts_under(st.data_root) if st.data_root else [])
            if left:  # never walk into a mounted (maybe hung) filesystem
                problems.append(f"still mounted: {', '.join(left)}")
            if problems:
                problems.append(f"{state_path(self.dir)} is kept: `down` again once the above is fixed")
                return problems
            self._remove_files(keep)
        if not keep:
            with contextlib.suppress(OSError):
                (self.dir / "lock").unlink()
                self.dir.rmdir()
        self._st = None
        return problems

    def _heal_networks(self, problems: list[str]) -> None:
        """Every node's partition and source-address tables removed."""
        st = self.st
        for n in st.nodes:
            for prefix in (st.nft_prefix, network.SNAT_PREFIX):
                try:
                    network.heal(n.ip, prefix)
                except (network.NftError, OSError) as e:
                    problems.append(f"nftables table of node {n.name}: {e}")

    def _stop_all_nodes(self, problems: list[str]) -> None:
        """Graceful first (quick), then nothing may survive; PostgreSQL's shared memory freed."""
        st = self.st
        for n in st.nodes:
            for p in self.node_pids(n):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGCONT)
            for p in n.pids.values():
                if pid_alive(p):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(pid_alive(p) for n in st.nodes for p in n.pids.values()):
            time.sleep(0.1)
        for n in st.nodes:
            try:
                self._kill_node(n)
            except SandboxError as e:
                problems.append(str(e))
            shm = postmaster_shm(n.data_dir)
            if shm is not None:
                subprocess.run(["ipcrm", "-m", str(shm)], capture_output=True)

    def _remove_socket_dirs(self, problems: list[str]) -> None:
        """Each node's PostgreSQL socket dir (under /run/manatee: `down` of the sandbox's DIR
        does not reach it), once no live PostgreSQL holds it: a killed one leaves its socket
        and lock there. A dir still held is reported, not taken from a running server."""
        for n in self.st.nodes:
            why = sockdirs.remove_stale(n.socket_dir)
            if why is not None:
                problems.append(f"socket dir {n.socket_dir} of node {n.name} kept: {why}")

    def _remove_files(self, keep: bool) -> None:
        """The data root and DIR's contents (but the lock); keep=True: only the state file,
        renamed sandbox.json.down."""
        st = self.st
        if st.data_root:
            shutil.rmtree(st.data_root, ignore_errors=True)
        if keep:
            state_path(self.dir).rename(self.dir / "sandbox.json.down")
            return
        for entry in self.dir.iterdir():
            if entry.name == "lock":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
