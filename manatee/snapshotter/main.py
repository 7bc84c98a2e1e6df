"""`manatee-snapshotter -f etc/snapshotter.json [-v]`: the snapshot daemon's entry point."""

from __future__ import annotations

import asyncio
import sys

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


async def run(config: SnapshotterConfig, log, stop: asyncio.Event) -> int:
    zfs = Zfs(zfs_path=config.zfsPath, logger=log)  # the Snapshotter bounds each call (zfs_timeout)
    ssl = config.tls.client_context() if config.tls else True
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl)) if config.healthUrl else None
    try:
        snapshotter = Snapshotter(
            zfs,
            config.dataset,
            interval_s=config.poll_interval_s,
            keep=config.snapshotNumber,
            logger=log,
            health_check=http_health_check(config.healthUrl, session) if session else None,
            min_free_pct=config.minFreePercent,
        )
        await snapshotter.run(stop)
    finally:
        if session is not None:
            await session.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return daemon_main("manatee-snapshotter", SnapshotterConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
