"""The async poll the PostgreSQL tests share: wait for a coroutine function to return
something truthy."""

from __future__ import annotations

import asyncio
import time


async def eventually(fn, timeout: float = 15.0, interval: float = 0.1, what: str = "condition",
                     tolerate: tuple[type[BaseException], ...] = ()):
    """Await `fn()` every `interval` s until it returns a truthy value (returned); an error of a
    `tolerate` type counts as not yet. AssertionError after `timeout` s, with the last result."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await fn()
            if last:
                return last
        except tolerate as e:
            last = e
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
