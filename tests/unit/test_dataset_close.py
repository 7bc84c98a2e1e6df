"""ZfsDataset.close at the sitter's exit: a background drop or sweep is let finish, bounded,
then cancelled (its zfs child killed and reaped by Zfs._exec), so that no zfs child outlives
the daemon's event loop (CI 2026-12-05: asyncio warned about one after a sitter that could
not bind its port exited, one line too many for test_daemon_signals)."""

import asyncio

from manatee.sitter.dataset import ZfsDataset


def _dataset(task) -> ZfsDataset:
    d = ZfsDataset.__new__(ZfsDataset)
    d.dropping = task
    return d


def test_close_waits_for_a_background_step_that_ends():
    async def main():
        done = []

        async def drop():
            await asyncio.sleep(0.05)
            done.append(True)
        await _dataset(asyncio.ensure_future(drop())).close(wait_s=5)
        return done
    assert asyncio.run(main()) == [True]


def test_close_cancels_a_background_step_that_does_not_end_in_time():
    async def main():
        cancelled = []

        async def hung():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
        task = asyncio.ensure_future(hung())
        await _dataset(task).close(wait_s=0.05)
        return task, cancelled
    task, cancelled = asyncio.run(main())
    assert task.cancelled() and cancelled == [True]


def test_close_with_nothing_running_returns_at_once():
    asyncio.run(_dataset(None).close(wait_s=0))
