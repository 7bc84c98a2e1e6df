"""The sitter's dataset as /metrics and /state show it: its newest snapshot, its space
(available, used, quota), the old copies an interrupted restore left beside it and the base
snapshots it keeps for its peers (manatee.core.bases), each read
by one bounded `zfs` call per cache period and shared by every scrape and request
(manatee.sitter.metrics.MetricsCollector owns one).

The space is cheap to read and changes fast (a disk fills in seconds), so it has its own
short period, SPACE_CACHE_S, and is read before the snapshots: `/state` waits for a stale one
briefly, and an operator sees a disk fill or be freed on the next `manatee-adm show`. The
snapshot list, the old copies and the bases change rarely and cost more: SLOW_CACHE_S.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Iterable

from manatee.core.bases import bases_by_peer

SLOW_CACHE_S = 30.0         # the snapshot list and the old copies at most once per this
SPACE_CACHE_S = 2.0         # the dataset's space at most once per this
ZFS_TIMEOUT_S = 5.0         # a hung zfs-fuse must not hang the scrape


def newest_epoch_ms(names: Iterable[str]) -> int | None:
    """Newest of snapshot names that are epoch milliseconds (the snapshotter's); others ignored."""
    ms = [int(n) for n in names if n.isdigit() and len(n) >= 12]
    return max(ms) if ms else None


def parse_space(text: str) -> dict[str, int | None]:
    """`zfs get -Hp -o property,value available,used,quota` → bytes ('-' or 'none' → None;
    a quota of 0 means none)."""
    out: dict[str, int | None] = {}
    for line in text.splitlines():
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) >= 2:
            out[parts[0]] = int(parts[1]) if parts[1].isdigit() else None
    return out


class DatasetCache:
    """The newest snapshot (ms), the old copies and the space of `sitter.dataset`, cached (a
    failure too): the space for `space_s`, the rest for `cache_s`."""

    def __init__(self, sitter, log=None, *, cache_s: float = SLOW_CACHE_S, space_s: float = SPACE_CACHE_S):
        self.sitter, self.log = sitter, log
        self.cache_s, self.space_s = cache_s, min(space_s, cache_s)
        self.snap_ms: int | None = None
        self.space: dict[str, int | None] | None = None
        self.interrupted_copies: list[str] | None = None  # None: unknown
        self.bases: dict[str, str] | None = None  # peer -> snapshot name; None: unknown
        self._snap_at = self._space_at = -math.inf
        self._lock = asyncio.Lock()

    def stale(self) -> tuple[bool, bool]:
        """(the snapshot list is stale, the space is stale)."""
        now = time.monotonic()
        return now - self._snap_at >= self.cache_s, now - self._space_at >= self.space_s

    def refresh_soon(self) -> asyncio.Future | None:
        """Start refreshing in the background if anything is stale (the refresh, or None when
        nothing is to be done or one is already in flight)."""
        if any(self.stale()) and not self._lock.locked():
            task = asyncio.ensure_future(self.refresh())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return task
        return None

    async def refresh(self) -> int | None:
        """Read what is stale (each with a deadline), the space first; returns the newest
        snapshot's ms."""
        async with self._lock:
            snaps_stale, space_stale = self.stale()
            dataset = self.sitter.cfg.postgresMgrCfg.zfsClientCfg.dataset
            if space_stale:
                try:
                    self.space = parse_space(await asyncio.wait_for(self.sitter.dataset.space(), ZFS_TIMEOUT_S))
                except Exception as e:  # noqa: BLE001
                    self.space = None
                    self._debug("metrics_space_failed", dataset, e)
                self._space_at = time.monotonic()
            if snaps_stale:
                try:
                    snaps = await asyncio.wait_for(self.sitter.dataset.list_snapshots(), ZFS_TIMEOUT_S)
                    self.snap_ms = newest_epoch_ms(sn.name for sn in snaps)
                except Exception as e:  # noqa: BLE001 - no dataset yet, zfs hung: the metric is absent
                    self.snap_ms = None
                    self._debug("metrics_snapshot_list_failed", dataset, e)
                try:  # with the snapshots' period: a leftover copy changes rarely
                    self.interrupted_copies = await asyncio.wait_for(self.sitter.dataset.interrupted_copies(),
                                                                     ZFS_TIMEOUT_S)
                except Exception as e:  # noqa: BLE001
                    self.interrupted_copies = None
                    self._debug("metrics_old_copies_failed", dataset, e)
                try:
                    self.bases = bases_by_peer(await asyncio.wait_for(self.sitter.dataset.snapshot_bases(),
                                                                      ZFS_TIMEOUT_S))
                except Exception as e:  # noqa: BLE001
                    self.bases = None
                    self._debug("metrics_bases_failed", dataset, e)
                self._snap_at = time.monotonic()
            return self.snap_ms

    def _debug(self, event: str, dataset: str, e: Exception) -> None:
        if self.log:
            self.log.debug(event, dataset=dataset, error=str(e) or type(e).__name__)
