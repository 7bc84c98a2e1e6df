"""manatee-backupserver: serve `zfs send` streams of this node's dataset to shard peers.

    manatee-backupserver -f etc/backupserver.json
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Optional

from aiohttp import web

from manatee.backupserver.basecheck import BaseMarkCheck, http_asker
from manatee.backupserver.config import BackupServerConfig
from manatee.backupserver.jobs import JobQueue
from manatee.backupserver.membership import MembershipUnavailable, ShardMembership
from manatee.backupserver.sender import ZfsSender
from manatee.backupserver.server import make_app
from manatee.core.auth import RequestVerifier, daemon_secret
from manatee.core.daemon import daemon_main
from manatee.core.httpserver import BoundedTCPSite, runner_kwargs
from manatee.core.zfs import Zfs, ZfsError

NAME = "manatee-backupserver"
ZFS_CALL_TIMEOUT_S = 60.0  # each short zfs command (snapshot, hold, list, get); the stream has its stall timeout


class ZkHolder:
    """ZooKeeper for membership checks, connected in the background.

    The backupserver serves even while ZooKeeper is unreachable, but until a session
    exists every backup request gets 503 (membership cannot be checked), never a pass.
    """

    def __init__(self, config: BackupServerConfig, log: Any) -> None:
        assert config.zkCfg is not None
        self.cfg = config.zkCfg
        self.log = log
        self.zk: Optional[Any] = None
        self._task: Optional[asyncio.Task[None]] = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._connect_loop())

    async def _connect_loop(self) -> None:
        from manatee.core.zk import ZKClient, ZKError

        delay = 1.0
        while True:
            zk = ZKClient(
                self.cfg.connStr,
                session_timeout=self.cfg.sessionTimeout / 1000.0,
                connect_timeout=self.cfg.connectTimeout / 1000.0,
                logger=self.log,
                **self.cfg.client_options(),
            )
            try:
                await zk.start()
            except ZKError as e:
                self.log.warning("backupserver_zk_unreachable", error=str(e), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.zk = zk
            self.log.info("backupserver_zk_connected", hosts=self.cfg.connStr)
            return

    async def get_children(self, path: str) -> list[str]:
        if self.zk is None:
            raise MembershipUnavailable(f"not connected to ZooKeeper at {self.cfg.connStr} yet")
        return await self.zk.get_children(path)

    async def get(self, path: str) -> Any:
        if self.zk is None:
            raise MembershipUnavailable(f"not connected to ZooKeeper at {self.cfg.connStr} yet")
        return await self.zk.get(path)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.zk is not None:
            with contextlib.suppress(Exception):
                await self.zk.close()


def start_base_check(config: BackupServerConfig, zfs: Zfs, sender: ZfsSender,
                     membership: Optional[ShardMembership], secret: Any, log: Any) -> Optional[asyncio.Task]:
    """The periodic check for stale base marks (manatee.backupserver.basecheck); none without
    ZooKeeper membership (insecure mode without zkCfg): the members cannot be known."""
    if membership is None:
        log.info("base_check_off", why="no zkCfg/shardPath: the members to ask are not known")
        return None
    server_cfg = config.backupServerCfg
    check = BaseMarkCheck(
        zfs, config.backupSenderCfg.dataset, peer_urls=membership.backup_urls, reaped=membership.reaped,
        ask=http_asker(server_cfg.host, secret, config.tls.client_context() if config.tls else None),
        lock=sender.mark_lock, log=log)
    return asyncio.get_running_loop().create_task(
        check.run(config.backupSenderCfg.base_check_interval_s), name="base-check")


async def stop_marking(sender: ZfsSender, base_check: Optional[asyncio.Task]) -> None:
    """At shutdown: stop the stale-mark check; a base mark in flight is bounded by its own timeout."""
    if base_check is not None:
        base_check.cancel()
        with contextlib.suppress(BaseException):
            await base_check
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(sender.marks_settled(), 5)


async def run(config: BackupServerConfig, log: Any, stop: asyncio.Event) -> int:
    sender_cfg = config.backupSenderCfg
    server_cfg = config.backupServerCfg
    secret = daemon_secret(config.secretFile, config.insecure, log, NAME)
    zfs = Zfs(zfs_path=sender_cfg.zfsPath, logger=log, timeout=ZFS_CALL_TIMEOUT_S)
    dataset_ok = False
    try:
        dataset_ok = await zfs.exists(sender_cfg.dataset)
        if not dataset_ok:
            log.warning("backup_dataset_missing", dataset=sender_cfg.dataset)
    except (ZfsError, OSError) as e:
        log.warning("backup_dataset_check_failed", dataset=sender_cfg.dataset, error=str(e))

    zk: Optional[ZkHolder] = None
    membership: Optional[ShardMembership] = None
    if config.zkCfg is not None and config.shardPath is not None:
        zk = ZkHolder(config, log)
        zk.start()
        membership = ShardMembership(zk, config.shardPath)
    sender = ZfsSender(
        zfs,
        sender_cfg.dataset,
        connect_timeout=sender_cfg.connectTimeout,
        stall_timeout=sender_cfg.stallTimeout,
        source_address=server_cfg.host,
        secret=secret,
        logger=log,
    )
    if dataset_ok:
        await sender.release_stale_holds()
    base_check = start_base_check(config, zfs, sender, membership, secret, log)
    queue = JobQueue(
        sender,
        max_concurrent=server_cfg.maxConcurrentSends,
        max_queued=server_cfg.maxQueuedJobs,
        keep_finished=server_cfg.keepFinishedJobs,
        logger=log,
    )
    app = make_app(
        queue=queue,
        membership=membership,
        verifier=None if secret is None else RequestVerifier(secret),
        max_body_bytes=server_cfg.maxBodyBytes,
        logger=log,
        common=sender.common_with,
    )
    idle = server_cfg.idle_timeout_s
    runner = web.AppRunner(app, handle_signals=False, **runner_kwargs(idle))
    await runner.setup()
    try:
        site = BoundedTCPSite(runner, server_cfg.host, server_cfg.port, reuse_address=True,
                              max_connections=server_cfg.maxConnections, idle_timeout=idle, log=log,
                              ssl_context=config.tls.server_context() if config.tls else None)
        try:
            await site.start()
        except OSError as e:
            log.error(
                "backupserver_listen_failed", host=server_cfg.host, port=server_cfg.port, error=str(e)
            )
            return 1
        log.info(
            "backupserver_listening",
            host=server_cfg.host,
            port=server_cfg.port,
            dataset=sender_cfg.dataset,
            membership=config.shardPath or "any",
            secret=secret is not None,
            insecure=config.insecure,
            tls=config.tls is not None,
        )
        await stop.wait()
        return 0
    finally:
        # Sends first: cancelling kills each zfs send and releases its hold.
        await queue.close()
        await stop_marking(sender, base_check)
        await runner.cleanup()
        if zk is not None:
            await zk.close()


def main(argv: list[str] | None = None) -> int:
    return daemon_main(NAME, BackupServerConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
