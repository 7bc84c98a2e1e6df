"""Pytest fixtures for real ZFS (zfs-fuse): the daemon, a fresh pool per test, a client.

Loaded as a plugin by tests/conftest.py. The daemon is shared machine-wide and only
stopped if this session started it and nothing else uses it.
"""

from __future__ import annotations

import os
import shutil

import pytest

from manatee.core.zfs import Zfs
from manatee_testbed.zfspool import ZFS_FUSE, ZfsPool, ensure_zfs_fuse, mounts_of_pool


@pytest.fixture(scope="session")
def zfs_fuse(tmp_path_factory):
    if os.geteuid() != 0 or not os.path.exists(ZFS_FUSE) or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root, zfs-fuse and /dev/fuse")
    handle = ensure_zfs_fuse(log_path=tmp_path_factory.mktemp("zfs-fuse") / "zfs-fuse.log")
    yield handle
    handle.release()


@pytest.fixture
def zpool(zfs_fuse, tmp_path):
    """A fresh, uniquely named 1 GiB pool (mountpoint none), destroyed after the test."""
    pool = ZfsPool(tmp_path / "zpool")
    pool.create()
    try:
        yield pool
    finally:
        pool.destroy()
        assert not pool.exists(), f"pool {pool.name} survived teardown"
        assert not mounts_of_pool(pool.name), f"mounts of {pool.name} survived teardown"
        shutil.rmtree(tmp_path / "zpool", ignore_errors=True)


@pytest.fixture
def zfs(zfs_fuse):
    """A manatee.core.zfs.Zfs client for the system zfs binaries."""
    return Zfs()
