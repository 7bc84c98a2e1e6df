"""`manatee-snapshotter -f etc/snapshotter.json [-v]`: the snapshot daemon's entry point."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import AsyncIterator

import aiohttp

from manatee.core.daemon import daemon_main
from manatee.core.zfs import Zfs
from manatee.snapshotter.config import SnapshotterConfig
from manatee.snapshotter.snapshotter import Snapshotter

HEALTH_TIMEOUT_S = 5.0


def http_health_check(url: str, session: aiohttp.ClientSession):
    """A health check that is True when GET `url` answers 200 (the sitter's /ping)."""

    async def check() -> bool:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as resp:
            return resp.status == 200

    return check


@contextlib.asynccontextmanager
async def open_snapshotter(config: SnapshotterConfig, log) -> AsyncIterator[Snapshotter]:
    """The daemon's Snapshotter for `config`; with a healthUrl every poll asks it first,
    through an HTTP session (TLS when the config has it) closed on the way out."""
    ssl = config.tls.client_context() if config.tls else True
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl)) if config.healthUrl else None
    try:
        yield Snapshotter(
            Zfs(zfs_path=config.zfsPath, logger=log),  # the Snapshotter bounds each call (zfs_timeout)
            config.dataset,
            interval_s=config.poll_interval_s,
            keep=config.snapshotNumber,
            logger=log,
            health_check=http_health_check(config.healthUrl, session) if session else None,
            min_free_pct=config.minFreePercent,
        )
    finally:
        if session is not None:
            await session.close()


async def run(config: SnapshotterConfig, log, stop: asyncio.Event) -> int:
    async with open_snapshotter(config, log) as snapshotter:
        await snapshotter.run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    return daemon_main("manatee-snapshotter", SnapshotterConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
