"""PostgreSQL's config files, written off the sitter's event loop and within a bound.

write_role_config fsyncs each file it replaces and then their directory. On a disk that
stalls (zfs under a burst of writes, a device that is dying) one fsync can take seconds; on
the event loop it would freeze everything the sitter serves meanwhile: /state, POST /reload,
its heartbeats. Here the write runs in a worker thread, and the cycle waits for it at most
`timeout` seconds; then TimeoutError (an OSError: the config write failed, so what the files
hold is unknown and the cycle acts on nothing destructive).

Writes never overlap: a write that outlived its bound is waited for (within the bound again)
before the next one starts, and what it changed is kept. The next write finds the files
already as it wants them, so without that its reload or restart would be lost.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from manatee.core.pgconfig import ConfigChange, RoleConfig, write_role_config


def merged(a: ConfigChange, b: ConfigChange) -> ConfigChange:
    """What it takes for two writes in a row to take effect."""
    return ConfigChange(restart_needed=a.restart_needed or b.restart_needed,
                        reload_needed=a.reload_needed or b.reload_needed,
                        changed=tuple(dict.fromkeys((*a.changed, *b.changed))))


class ConfigWriter:
    def __init__(self) -> None:
        self._pending: asyncio.Future | None = None  # the write in flight (one that outlived its bound)

    async def write(self, data_dir: Path, rc: RoleConfig, *, user: str | None, timeout: float) -> ConfigChange:
        """write_role_config(data_dir, rc) in a thread; TimeoutError after `timeout` seconds
        (the write goes on, and the next call waits for it first)."""
        earlier = ConfigChange()
        if self._pending is not None:
            done = await self._finished(timeout, "an earlier write of PostgreSQL's config")
            if done.exception() is None:  # (its error was the cycle's then; this write replaces it)
                earlier = done.result()
        self._pending = asyncio.ensure_future(asyncio.to_thread(write_role_config, data_dir, rc, user=user))
        return merged(earlier, (await self._finished(timeout, "writing PostgreSQL's config")).result())

    async def _finished(self, timeout: float, what: str) -> asyncio.Future:
        pending = self._pending
        assert pending is not None
        await asyncio.wait({pending}, timeout=timeout)  # (never cancels the write itself)
        if not pending.done():
            raise TimeoutError(f"{what} has not finished within {timeout:g}s: the disk stalls")
        self._pending = None
        return pending
