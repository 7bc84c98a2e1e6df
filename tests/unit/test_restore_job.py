"""The restore's side of the backupserver conversation, without ZFS: polling that tolerates a
few failed GETs but not many, and what a poll of the job says about the stream."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from manatee.core.restore import RestoreError
from manatee.core.restore.driver import _Restore, _StreamWatch
from manatee.core.restore.job import POLL_FAILURES_ALLOWED, BackupJob

LOG = structlog.get_logger("test")


async def _polls(answers: list[str]) -> list:
    """What BackupJob.poll makes of a server answering `answers` in turn (200, body as given)."""
    pending = list(answers)

    async def job(request):
        return web.Response(text=pending.pop(0), content_type="application/json")

    app = web.Application()
    app.router.add_get("/backup/j1", job)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    seen: list = []
    try:
        async with aiohttp.ClientSession() as http:
            bj = BackupJob(http, str(server.make_url("")).rstrip("/"), None, LOG, 0.01)
            bj.jobid, bj.path = "j1", "/backup/j1"
            while pending:
                try:
                    seen.append(await bj.poll("receiving"))
                except RestoreError as e:
                    seen.append(e)
    finally:
        await server.close()
    return seen


async def test_a_few_failed_polls_are_tolerated_and_a_good_one_resets_the_count():
    bad = ["not json"] * (POLL_FAILURES_ALLOWED - 1)
    seen = await _polls([*bad, '{"done": false}', *bad, '{"done": true}'])
    assert seen == [None] * len(bad) + [{"done": False}] + [None] * len(bad) + [{"done": True}]


async def test_too_many_failed_polls_in_a_row_end_the_restore():
    seen = await _polls(["not json"] * POLL_FAILURES_ALLOWED)
    assert seen[:-1] == [None] * (POLL_FAILURES_ALLOWED - 1)
    assert isinstance(seen[-1], RestoreError) and "stopped answering" in str(seen[-1])
    assert seen[-1].phase == "receiving"


def _restore(stall_timeout: float = 5.0) -> _Restore:
    r = _Restore(None, dataset="p/b", mountpoint="/nonexistent", backup_url="http://127.0.0.1:1",
                 listen_host="127.0.0.1", listen_port=1, owner=None, secret=None, poll_interval=0.1,
                 timeout=5, stall_timeout=stall_timeout, progress=None, logger=LOG)
    r.job = BackupJob(None, r.backup_url, None, LOG, 0.1)  # type: ignore[arg-type]
    r.job.jobid = r.state.jobid = "j1"
    r.accept_task = asyncio.get_running_loop().create_future()  # nobody has connected yet
    return r


async def test_a_job_done_before_any_stream_arrived_is_an_error():
    r = _restore()
    with pytest.raises(RestoreError, match="complete but no stream arrived"):
        r._follow_job({"done": True}, _StreamWatch(last_change=time.monotonic()))


async def test_a_failed_sender_job_is_an_error_with_its_reason():
    r = _restore()
    with pytest.raises(RestoreError, match="job j1 failed: disk on fire"):
        r._follow_job({"done": "failed", "error": "disk on fire"}, _StreamWatch(last_change=time.monotonic()))


async def test_a_stream_without_progress_for_stall_timeout_is_an_error_and_progress_is_not():
    r = _restore(stall_timeout=5.0)
    r.recv_task = asyncio.get_running_loop().create_future()  # zfs recv running
    r.received = 100
    watch = _StreamWatch(last_change=time.monotonic() - 10, last_count=99)
    r._follow_job({"done": False, "size": 1000, "snapshot": "p/a@1"}, watch)  # 99 -> 100: progress
    assert watch.last_count == 100 and r.state.size == 1000 and r.state.snapshot == "p/a@1"
    watch.last_change = time.monotonic() - 10
    with pytest.raises(RestoreError, match="stalled: no data for 5s after 100 bytes"):
        r._follow_job({"done": False}, watch)
    r.recv_task.cancel()
