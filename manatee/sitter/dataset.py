"""The sitter's ZFS dataset: create it, restore it from an upstream's backupserver, and what
the metrics read of it (snapshots, space). Every zfs call has a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Callable, Sequence

from manatee.core.pg.rewind import rewind_password
from manatee.core.restore import after_restore, old_copies, sweep_replaced
from manatee.core.restore import restore as restore_dataset
from manatee.core.restore.source import Candidate
from manatee.core.restore.source import choose as choose_source
from manatee.core.zfs import Zfs, ZfsError
from manatee.shard.rebuildpath import cannot_restore_from
from manatee.shard.state import Peer
from manatee.sitter.rewinder import Rewinder
from manatee.sitter.statememory import MEMORY_PROP

ZFS_TIMEOUT_S = 30.0  # a zfs list/create in the cycle


def interrupted(found: Sequence[tuple[str, bool]], *, restoring_since_ms: int | None = None,
                dropping: str | None = None) -> list[str]:
    """Of the old copies (name `<dataset>-restore-<epoch ms>`, marked replaced or not), those an
    interrupted restore left: unmarked, not the one being dropped, and not the aside of a
    restore running since `restoring_since_ms` (named after a later ms)."""
    out = []
    for name, marked in found:
        ms = name.rpartition("-")[2]
        ours = restoring_since_ms is not None and ms.isdigit() and int(ms) >= restoring_since_ms
        if not (marked or name == dropping or ours):
            out.append(name)
    return out


class UpstreamNotReady(RuntimeError):
    """The node to restore from cannot serve a usable copy yet; the next cycle tries again."""


class UpstreamUnknown(UpstreamNotReady):
    """Whether the node to restore from can serve is not known: its sitter did not answer."""


class ZfsDataset:
    def __init__(self, cfg, log, *, secret=None, ssl_context=None):
        """cfg: SitterConfig."""
        self.cfg, self.log, self.secret, self.ssl_context = cfg, log, secret, ssl_context
        z = cfg.postgresMgrCfg.zfsClientCfg
        self.z = z
        self.zfs = Zfs(zfs_path=z.zfsPath, logger=log)
        self.data_dir = Path(cfg.postgresMgrCfg.dataDir)
        self.rewinder = Rewinder(cfg, log, self.zfs, rewind_password(secret, cfg.postgresMgrCfg.rebuildRewind))
        self.dropping: asyncio.Future | None = None  # destroying a replaced old copy, in the background
        self.dropping_name: str | None = None
        self.restoring_since_ms: int | None = None  # a restore of ours runs: its aside is not a leftover

    def sweep(self) -> None:
        """At start: destroy, in the background, old copies a finished restore marked replaced
        but whose destroy never ended (this sitter died); see manatee.core.restore.swap."""
        self.dropping = asyncio.ensure_future(sweep_replaced(self.zfs, self.z.dataset, self.log))

    async def settled(self) -> None:
        """Wait for a background drop (bounded inside), so that no zfs step of a new rebuild
        races it; a cancelled caller leaves it running."""
        if self.dropping is not None:
            await asyncio.shield(self.dropping)
            self.dropping = self.dropping_name = None

    async def close(self, wait_s: float = 10.0) -> None:
        """At exit: let a background drop or sweep end (at most `wait_s`; then it is cancelled,
        which kills and reaps its zfs child, and the next start sweeps what it left), so that
        no zfs child outlives the daemon's event loop."""
        task = self.dropping
        if task is None or task.done():
            return
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def interrupted_copies(self) -> list[str]:
        """Old copies an interrupted restore left aside (`<dataset>-restore-<ms>` without the
        replaced mark), never destroyed automatically: /state and `manatee-adm show` report
        them. Ours in flight (a restore running, a copy being dropped) are not. Raises when
        zfs cannot tell."""
        found = await old_copies(self.zfs, self.z.dataset, ZFS_TIMEOUT_S)
        return interrupted(found, restoring_since_ms=self.restoring_since_ms, dropping=self.dropping_name)

    async def ensure(self) -> None:
        z = self.z
        # ZFS calls get a deadline too (a cancelled zfs child is killed and reaped)
        if not await asyncio.wait_for(self.zfs.exists(z.dataset), ZFS_TIMEOUT_S):
            await asyncio.wait_for(self.zfs.create(z.dataset, props={"mountpoint": z.mountpoint}, parents=True),
                                   ZFS_TIMEOUT_S)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)

    async def check_upstream(self, upstream: Peer) -> None:
        """Restore only from an upstream whose PostgreSQL runs and answers: a snapshot taken
        while it is still being created (initdb) or restored is not a database."""
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
                async with http.get(f"{upstream.status_url}/state", ssl=self.ssl_context or True) as resp:
                    body = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            raise UpstreamUnknown(f"cannot ask {upstream.status_url} whether it can be restored from: {e}") from None
        why = cannot_restore_from(body)
        if why is not None:
            said = body.get("reason") if isinstance(body, dict) else None
            raise UpstreamNotReady(f"upstream {upstream.id}: {why} (its sitter says: {said or '?'})")

    async def restore(self, upstream: Peer, progress: Callable, also: Sequence[Peer] = ()) -> object:
        """Receive the upstream's dataset (manatee.core.restore); returns its RestoreResult.
        `also`: members ahead of the upstream that may send an increment instead when the
        upstream shares no snapshot with us (manatee.core.restore.source)."""
        z = self.z
        await self.settled()
        listen_host = z.zfsHost or self.cfg.ip
        peers = (upstream, *also)
        name = str if len({str(p) for p in peers}) == len(peers) else (lambda p: p.id)  # IPs, unless shared
        chosen = await choose_source(
            self.zfs, z.dataset, Candidate(name(upstream), upstream.backup_url),
            [Candidate(name(p), p.backup_url) for p in also],
            secret=self.secret, listen_host=listen_host, ssl_context=self.ssl_context, log=self.log)
        self.restoring_since_ms = int(time.time() * 1000) - 1000  # its aside is named after a later ms
        try:
            res = await restore_dataset(
                self.zfs, dataset=z.dataset, mountpoint=Path(z.mountpoint), backup_url=chosen.source.backup_url,
                listen_host=listen_host, listen_port=z.zfsPort,
                owner=self.cfg.postgresMgrCfg.dbUser, secret=self.secret, ssl_context=self.ssl_context,
                poll_interval=z.poll_interval_s, progress=progress, logger=self.log, source_reason=chosen.reason,
                drop_old=False)
            # The base mark and the old copy's destroy run while PostgreSQL starts on the new copy.
            self.dropping_name = res.old_copy
            self.dropping = asyncio.ensure_future(after_restore(
                self.zfs, self.log, snapshot=res.snapshot, source=res.source, old_copy=res.old_copy))
        finally:
            self.restoring_since_ms = None
        return res

    async def rewind(self, upstream: Peer, cause: str | None, progress: Callable, ahead: Sequence[Peer] = ()) -> object:
        """pg_rewind my data to follow `upstream` if the facts and its dry run say so
        (manatee.sitter.rewinder): its RewindResult, or why not (a str; the data is then as
        it was and the caller restores from a stream). `ahead`: the members ahead of it."""
        await self.settled()
        return await self.rewinder.run(upstream, cause, progress, ahead)

    def list_snapshots(self):
        return self.zfs.list_snapshots(self.z.dataset)

    def snapshot_bases(self):
        """Each snapshot -> its `manatee:bases` mark (manatee.core.bases)."""
        return self.zfs.snapshot_bases(self.z.dataset)

    async def available(self, timeout: float) -> int | None:
        """Bytes free for my dataset (`zfs get -Hp -o value available`, within `timeout`
        seconds; None if ZFS names no number)."""
        out = (await asyncio.wait_for(self.zfs.run("get", "-Hp", "-o", "value", "available", self.z.dataset),
                                      timeout)).strip()
        return int(out) if out.isdigit() else None

    async def read_memory(self, timeout: float) -> str | None:
        """The dataset's `manatee:state-memory` (manatee.sitter.statememory): its raw value
        ('-' when unset), None when the dataset does not exist (it holds no data)."""
        try:
            return await asyncio.wait_for(self.zfs.get(self.z.dataset, MEMORY_PROP), timeout)
        except ZfsError as e:
            if e.not_found:
                return None
            raise

    async def write_memory(self, value: str, timeout: float) -> None:
        await asyncio.wait_for(self.zfs.set(self.z.dataset, MEMORY_PROP, value), timeout)

    def space(self):
        """`zfs get -Hp -o property,value available,used,quota <dataset>` (the metrics parse it)."""
        return self.zfs.run("get", "-Hp", "-o", "property,value", "available,used,quota", self.z.dataset)
