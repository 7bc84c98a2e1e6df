"""pytest plugin: real PostgreSQL nodes on private temp dirs and random 127/8 addresses.

`pg_node` is one started, read-write primary. `pg_node_factory(name)` makes more
(not initialised: call init()/clone_from() yourself). Every node is killed and its
directories removed at teardown, also when the test fails; teardown fails the test
if any postgres process of those data dirs survives.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from manatee.core.procs import free_port
from manatee_testbed.postgres import PgNode


def random_loopback_ip() -> str:
    """A 127/8 address unlikely to be used by a parallel test run (127.0.0.x is left to others)."""
    return f"127.{random.randint(10, 250)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


def _base_dir() -> Path:
    # pytest's tmp_path is under a 0700 root-owned dir the postgres user cannot traverse,
    # and socket paths must stay short (108 bytes): use our own dir under /tmp.
    d = Path(tempfile.mkdtemp(prefix=f"mpg-{uuid.uuid4().hex[:6]}-", dir="/tmp"))
    os.chmod(d, 0o755)
    return d


@pytest.fixture
async def pg_node_factory():
    nodes: list[PgNode] = []
    base = _base_dir()

    def make(name: str | None = None, *, ip: str | None = None, port: int | None = None) -> PgNode:
        name = name or f"pg{len(nodes)}"
        ip = ip or random_loopback_ip()
        node = PgNode(
            name,
            ip,
            port or free_port(ip),
            data_dir=base / name / "data",
            work_dir=base / name,
        )
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        errors = []
        for node in nodes:
            try:
                await node.kill()
            except Exception as e:  # noqa: BLE001 - report all, clean up the rest
                errors.append(f"{node}: {e}")
        left = {n.name: n.proc.processes() for n in nodes if n.proc.processes()}
        shutil.rmtree(base, ignore_errors=True)
        if errors or left:
            pytest.fail(f"postgres teardown left processes: {left} errors: {errors}")


@pytest.fixture
async def pg_node(pg_node_factory) -> PgNode:
    node = pg_node_factory("pg")
    await node.init()
    await node.start()
    return node


__all__ = ["pg_manager_for", "pg_node", "pg_node_factory", "primary_and_standby", "random_loopback_ip"]


def pg_manager_for(node: PgNode, health_chk_timeout_ms: int = 2000):
    """The sitter's PgManager over a running test node (its postmaster adopted as the child)."""
    from manatee.core.log import get_logger
    from manatee.sitter.config import SitterConfig
    from manatee.sitter.pgmanager import PgManager

    cfg = SitterConfig.model_validate({
        "ip": node.ip, "zoneId": node.name, "postgresPort": node.port, "insecure": True,
        "zkCfg": {"connStr": "127.0.0.1:2181"},
        "postgresMgrCfg": {"dataDir": str(node.data_dir), "socketDir": str(node.socket_dir),
                           "healthChkTimeout": health_chk_timeout_ms,
                           "replicationAuth": {"password": "not-used-by-these-tests"},
                           "zfsClientCfg": {"dataset": "unused/ds"}}})
    pm = PgManager(cfg, get_logger("test"))
    pm.proc = node.proc  # the running postmaster is this manager's child for the test
    return pm


async def primary_and_standby(pg_node_factory, *setup_sql: str, names=("primary", "standby"),
                              standby_parameters: dict | None = None) -> tuple[PgNode, PgNode]:
    """A started primary that ran `setup_sql`, and a started hot standby cloned from it
    (streaming; not waited for: the caller waits for what it needs replayed)."""
    p: PgNode = pg_node_factory(names[0])
    s: PgNode = pg_node_factory(names[1])
    await p.init()
    await p.start()
    for sql in setup_sql:
        await p.execute(sql)
    await s.clone_from(p, **({"parameters": standby_parameters} if standby_parameters else {}))
    await s.start()
    return p, s
