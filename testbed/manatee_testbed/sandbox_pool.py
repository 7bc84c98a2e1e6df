"""The sandbox's ZFS pool: a file-backed pool on zfs-fuse (started here when no daemon
runs), a dataset per node, and both removed by `down` (the daemon only when this sandbox
started it and nobody else uses it)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from manatee.core.procs import pid_alive, terminate
from manatee_testbed import zfspool
from manatee_testbed.sandbox_state import NodeState, SandboxBase, SandboxState


def create_dataset(st: SandboxState, node: NodeState) -> None:
    """The node's (empty) dataset, mounted at its mountpoint."""
    Path(node.mountpoint).parent.mkdir(parents=True, exist_ok=True)
    zfspool.ZfsPool(Path(st.pool_file).parent, st.pool).create_dataset(f"{node.name}/pg", Path(node.mountpoint))


class PoolOps(SandboxBase):
    """The pool's life (a part of `Sandbox`)."""

    def _create_pool(self) -> None:
        st = self.st
        handle = zfspool.ensure_zfs_fuse(log_path=self.dir / "zfs-fuse.log")
        if handle.started:
            st.zfs_fuse_pid = handle.pid
        pool = zfspool.ZfsPool(self.dir / "zpool", f"msandbox{st.id}", size="4G")
        st.pool, st.pool_file = pool.name, str(pool.file)
        self.save()
        self.out(f"creating ZFS pool {pool.name} on {pool.file}")
        pool.create()
        # The handle's shared lock would be dropped at exit anyway; the pool keeps any
        # other user of zfs-fuse from stopping the daemon while the sandbox lives.
        if handle._users_fd is not None:
            os.close(handle._users_fd)
            handle._users_fd = None

    def _destroy_pool(self, problems: list[str]) -> None:
        """`down`: the pool, then the zfs-fuse daemon if this sandbox started it."""
        st = self.st
        if not st.pool:
            return
        try:
            zfspool.ZfsPool(Path(st.pool_file or self.dir / "zpool").parent, st.pool).destroy()
        except Exception as e:  # noqa: BLE001 - report and go on cleaning
            problems.append(f"pool {st.pool}: {e}")
        if st.zfs_fuse_pid:
            self._stop_zfs_fuse(st.zfs_fuse_pid)

    @staticmethod
    def _stop_zfs_fuse(pid: int) -> None:
        """Stop the zfs-fuse daemon this sandbox started, unless anyone else uses it."""
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return
        if comm != "zfs-fuse" or not pid_alive(pid):
            return
        fd = os.open(zfspool.START_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if zfspool.pool_names():
                return
            ufd = os.open(zfspool.USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(ufd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            finally:
                os.close(ufd)
            terminate(pid, timeout=15, group=False)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
