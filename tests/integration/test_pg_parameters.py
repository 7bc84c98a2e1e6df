"""postgresMgrCfg.parameters on real PostgreSQL 15: a reloadable parameter takes effect on
reload; a restart-only one is only reloaded and shows as pending_restart (PostgreSQL's own
pg_settings) until the operator restarts — manatee never restarts for it."""

from __future__ import annotations

import asyncio
import time


from manatee_testbed.postgres import PgNode, setting


PENDING = "select coalesce(string_agg(name, ',' order by name), '') as p from pg_settings where pending_restart"


async def _until(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await fn():
            return True
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached within {timeout}s")


async def test_parameters_reload_and_restart_only_ones_are_pending(pg_node: PgNode):
    pid = pg_node.proc.pid
    ch = await pg_node.apply(pg_node.role_config(parameters={"work_mem": "7MB", "shared_buffers": "48MB",
                                                             "wal_keep_size": "64MB"}))
    assert ch.reload_needed and not ch.restart_needed
    await _until(lambda: _is(pg_node, "work_mem", "7MB"))
    assert await setting(pg_node.client, "wal_keep_size") == "64MB"     # manatee's default overridden
    await _until(lambda: _pending(pg_node, "shared_buffers"))
    assert pg_node.proc.pid == pid                                      # never restarted behind one's back
    # the operator restarts: the pending parameter applies and nothing is pending any more
    await pg_node.stop()
    await pg_node.start()
    assert await setting(pg_node.client, "shared_buffers") == "48MB"
    assert await _pending(pg_node, "")
    # removing the parameters again: a reload back to the defaults; shared_buffers pending again
    ch = await pg_node.apply(pg_node.role_config())
    assert ch.reload_needed and not ch.restart_needed
    await _until(lambda: _is(pg_node, "work_mem", "4MB"))
    await _until(lambda: _pending(pg_node, "shared_buffers"))


async def _is(node: PgNode, name: str, value: str) -> bool:
    return await setting(node.client, name) == value


async def _pending(node: PgNode, names: str) -> bool:
    return (await node.psql(PENDING))[0]["p"] == names
