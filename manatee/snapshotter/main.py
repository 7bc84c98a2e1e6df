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


def health_session(config: SnapshotterConfig) -> aiohttp.ClientSession | None:
    """The HTTP session for the health check (TLS when the config has it), or None without
    a healthUrl. Must be made and closed inside the running event loop."""
    if not config.healthUrl:
        return None
    ssl = config.tls.client_context() if config.tls else True
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl))


def snapshotter_for(config: SnapshotterConfig, log, session: aiohttp.ClientSession | None) -> Snapshotter:
    """The daemon's Snapshotter for `config`: every poll asks healthUrl through `session`
    (when given) before it snapshots."""
    zfs = Zfs(zfs_path=config.zfsPath, logger=log)  # the Snapshotter bounds each call (zfs_timeout)
    return Snapshotter(
        zfs,
        config.dataset,
        interval_s=config.poll_interval_s,
        keep=config.snapshotNumber,
        logger=log,
        health_check=http_health_check(config.healthUrl, session) if session and config.healthUrl else None,
        min_free_pct=config.minFreePercent,
    )


async def run(config: SnapshotterConfig, log, stop: asyncio.Event) -> int:
    session = health_session(config)
    try:
        await snapshotter_for(config, log, session).run(stop)
    finally:
        if session is not None:
            await session.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return daemon_main("manatee-snapshotter", SnapshotterConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
