"""JobQueue: concurrency cap, queue bound, retention of finished jobs, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from manatee.backupserver.jobs import BackupJob, JobQueue, JobState, QueueFull


def _job(port: int = 1) -> BackupJob:
    return BackupJob(host="127.0.0.1", port=port, dataset="p/d", address="127.0.0.1")


async def _wait(pred, timeout=2.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_concurrency_cap_is_never_exceeded():
    active = 0
    peak = 0
    gate = asyncio.Event()

    async def sender(job):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await gate.wait()
        await asyncio.sleep(0.01)
        active -= 1

    q = JobQueue(sender, max_concurrent=2, max_queued=10)
    jobs = [q.submit(_job(i + 1)) for i in range(6)]
    await _wait(lambda: q.running == 2)
    await asyncio.sleep(0.05)
    assert q.running == 2 and q.queued == 4
    assert [j.state for j in jobs].count(JobState.QUEUED) == 4
    gate.set()
    await _wait(lambda: all(j.finished for j in jobs))
    assert peak == 2
    assert all(j.done is True for j in jobs)
    assert all(j.started_at and j.finished_at >= j.started_at for j in jobs)
    await q.close()


async def test_queue_bound():
    gate = asyncio.Event()

    async def sender(job):
        await gate.wait()

    q = JobQueue(sender, max_concurrent=1, max_queued=2)
    for i in range(3):
        q.submit(_job())
    with pytest.raises(QueueFull, match="maxQueuedJobs=2"):
        q.submit(_job())
    gate.set()
    await _wait(lambda: q.running == 0 and q.queued == 0)
    q.submit(_job())
    await q.close()


async def test_failure_marks_failed_with_error_text():
    async def sender(job):
        job.completed = 10
        raise OSError("peer reset the connection")

    q = JobQueue(sender)
    j = q.submit(_job())
    await _wait(lambda: j.finished)
    assert j.done == "failed"
    assert j.to_json()["error"] == "peer reset the connection"
    assert j.to_json()["completed"] == 10
    await q.close()


async def test_finished_jobs_are_kept_but_bounded():
    async def sender(job):
        return None

    q = JobQueue(sender, max_concurrent=2, max_queued=50, keep_finished=5)
    jobs = [q.submit(_job()) for _ in range(12)]
    await _wait(lambda: all(j.finished for j in jobs))
    kept = [j for j in jobs if q.get(j.jobid) is not None]
    assert len(kept) == 5
    # the newest finished ones are kept
    assert {j.jobid for j in kept} <= {j.jobid for j in jobs[-7:]}
    await q.close()


async def test_close_cancels_running_and_queued():
    cancelled = []

    async def sender(job):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(job.jobid)
            raise

    q = JobQueue(sender, max_concurrent=1, max_queued=5)
    a, b = q.submit(_job()), q.submit(_job())
    await _wait(lambda: a.state is JobState.SENDING)
    await q.close()
    assert cancelled == [a.jobid]
    assert a.done == "failed" and "shutting down" in a.error
    assert b.done == "failed"
    with pytest.raises(QueueFull):
        q.submit(_job())
