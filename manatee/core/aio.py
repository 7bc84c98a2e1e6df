"""asyncio helpers shared by the daemons."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable


async def finish_even_if_cancelled(aw: Awaitable[Any]) -> Any:
    """Run `aw` to completion even if the caller is cancelled meanwhile, then re-raise the
    cancellation. For clean-up that must not be cut short: killing and reaping a zfs
    process, releasing a snapshot hold, putting a dataset back after a failed restore."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
        except Exception:  # noqa: BLE001 - the task's own exception is raised below
            break
    if cancelled:
        raise asyncio.CancelledError()
    return task.result()
