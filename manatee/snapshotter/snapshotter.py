"""Periodic ZFS snapshots of a node's PostgreSQL dataset, with retention.

The backupserver sends the newest snapshot to a node that is being rebuilt, so a
recent snapshot must always exist. Every poll the snapshotter takes
`DATASET@<epoch-ms>` and then prunes: only snapshots named by 13 digits (its own, as
in the original since MANATEE-214) are ever destroyed, so an operator's snapshots are
safe; the newest `keep` stay; held snapshots (a send is using them) are skipped, and so
are base snapshots (the newest one this node shares with a peer, marked `manatee:bases`
by the sender and the receiver of a rebuild: manatee.core.bases), so that the next
rebuild of either can be an increment however long ago they last exchanged a stream.
Any failure (missing dataset during a rebuild, busy snapshot, dependent clone, ZFS
down) is logged and retried at the next poll: the snapshotter never dies of it
(MANATEE-307/332/400/405).

Disk pressure: snapshots pin old blocks, so on a busy dataset they eat the space
PostgreSQL needs. Before each snapshot the snapshotter reads the dataset's `used` and
`available` (which respects its quota); when free space is below `min_free_pct` percent
of the two it takes no snapshot and prunes every unheld managed snapshot but the newest
(a rebuild still has one to send), base snapshots included, logging why
(`disk_pressure`). A failed read is unknown, not pressure: the poll goes on as usual.
A failed read of the base marks is unknown too: that poll prunes nothing.

Every zfs call has a deadline (`zfs_timeout`, ZFS_TIMEOUT_S): a hung zfs-fuse is killed
and counts as a failed call, so a poll always ends and the next one tries again.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Collection, Iterable

from manatee.core.bases import is_marked
from manatee.core.zfs import Snapshot, Zfs, ZfsError, newest_first

MANAGED_NAME = re.compile(r"[0-9]{13}")  # fullmatch: no trailing newline, ASCII only

HealthCheck = Callable[[], Awaitable[bool]]
ZFS_TIMEOUT_S = 60.0  # one zfs call of a poll (a destroy of a large snapshot included)


def is_managed(name: str) -> bool:
    """True for snapshot names the snapshotter owns (epoch milliseconds, 13 digits)."""
    return MANAGED_NAME.fullmatch(name) is not None


def _retention_split(
    snapshots: Iterable[Snapshot], keep: int, held: Collection[str], bases: Collection[str] = ()
) -> tuple[list[Snapshot], list[Snapshot]]:
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    managed = newest_first([s for s in snapshots if is_managed(s.name)])
    old = managed[keep:]
    spared = set(held) | set(bases)
    return [s for s in old if s.full not in spared], [s for s in old if s.full in spared]


def choose_snapshots_to_destroy(snapshots: Iterable[Snapshot], keep: int, held: Collection[str],
                                bases: Collection[str] = ()) -> list[Snapshot]:
    """Which snapshots to destroy, oldest first.

    Only epoch-ms names count; the newest `keep` of them stay; of the older ones those
    whose full name is in `held` are skipped (they stay until released), and so are the
    base snapshots in `bases` (they stay while marked).
    """
    destroy, _ = _retention_split(snapshots, keep, held, bases)
    return destroy[::-1]


@dataclass(frozen=True)
class SpacePlan:
    """What a poll does about disk space: take a snapshot or not, and how many managed
    snapshots to keep; `reason` says why (None: no pressure)."""

    take_snapshot: bool
    keep: int
    reason: str | None = None


#: Snapshots kept under disk pressure: the newest, so that a rebuild has one to send.
KEEP_UNDER_PRESSURE = 1


def plan_for_space(used: int | None, available: int | None, min_free_pct: float, keep: int) -> SpacePlan:
    """The disk-pressure decision. used/available in bytes (None: could not be read, which
    is no evidence of pressure); min_free_pct 0 turns the check off."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    if min_free_pct <= 0 or used is None or available is None or used < 0 or available < 0:
        return SpacePlan(True, keep)
    total = used + available
    free_pct = 100.0 * available / total if total else 0.0
    if free_pct >= min_free_pct:
        return SpacePlan(True, keep)
    return SpacePlan(False, min(keep, KEEP_UNDER_PRESSURE),
                     f"{free_pct:.1f}% free ({available} of {total} bytes) is below minFreePercent "
                     f"{min_free_pct:g}%: no new snapshot, pruning all but the newest {KEEP_UNDER_PRESSURE}")


def held_beyond_retention(snapshots: Iterable[Snapshot], keep: int, held: Collection[str]) -> list[Snapshot]:
    """The old managed snapshots that would be destroyed but are held."""
    _, skipped = _retention_split(snapshots, keep, held)
    return skipped[::-1]


def bases_beyond_retention(snapshots: Iterable[Snapshot], keep: int, held: Collection[str],
                           bases: Collection[str]) -> list[Snapshot]:
    """The old managed snapshots that would be destroyed but are kept as bases (and not held)."""
    destroy_if_no_bases, _ = _retention_split(snapshots, keep, held)
    bases = set(bases)
    return [s for s in destroy_if_no_bases[::-1] if s.full in bases]


@dataclass
class RunResult:
    """What one poll did."""

    snapshot: Snapshot | None = None
    destroyed: list[str] = field(default_factory=list)
    skipped_held: list[str] = field(default_factory=list)
    kept_bases: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unhealthy: bool = False
    pressure: str | None = None       # why no snapshot was taken for lack of space

    @property
    def ok(self) -> bool:
        return not self.errors and not self.unhealthy


class Snapshotter:
    def __init__(
        self,
        zfs: Zfs,
        dataset: str,
        *,
        interval_s: float,
        keep: int,
        logger,
        health_check: HealthCheck | None = None,
        min_free_pct: float = 0.0,
        zfs_timeout: float = ZFS_TIMEOUT_S,
    ):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.zfs = zfs
        self.dataset = dataset
        self.interval_s = interval_s
        self.keep = keep
        self.log = logger.bind(dataset=dataset) if hasattr(logger, "bind") else logger
        self.health_check = health_check
        self.min_free_pct = min_free_pct
        self.zfs_timeout = zfs_timeout
        self.runs = 0
        self.last_result: RunResult | None = None

    async def run_once(self) -> RunResult:
        """Snapshot (if healthy), then prune. Never raises except on cancellation."""
        result = RunResult()
        self.runs += 1
        plan = await self._space_plan()
        if plan.reason:
            result.pressure = plan.reason
            self.log.warning("disk_pressure", reason=plan.reason)
        if plan.take_snapshot and await self._healthy():
            await self._take_snapshot(result)
        elif plan.take_snapshot:
            result.unhealthy = True
        await self._prune(result, plan.keep, keep_bases=plan.reason is None)
        self.last_result = result
        return result

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every interval_s (first poll at once) until `stop` is set."""
        self.log.info("snapshotter_started", interval_s=self.interval_s, keep=self.keep)
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a poll must never kill the daemon
                self.log.exception("snapshot_poll_crashed", error=repr(e))
            delay = max(0.0, self.interval_s - (time.monotonic() - started))
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
        self.log.info("snapshotter_stopped", runs=self.runs)

    async def _zfs(self, what: str, call: Awaitable):
        """`call` within zfs_timeout; past it the call is cancelled (Zfs kills its child) and
        counts as a failed one (ZfsError)."""
        try:
            return await asyncio.wait_for(call, self.zfs_timeout)
        except asyncio.TimeoutError:
            raise ZfsError(["zfs", what, self.dataset], -9, "",
                           detail=f"no answer within {self.zfs_timeout:g}s") from None

    async def _healthy(self) -> bool:
        if self.health_check is None:
            return True
        try:
            healthy = bool(await self.health_check())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            self.log.warning("health_check_failed", error=repr(e))
            return False
        if not healthy:
            self.log.info("snapshot_skipped_unhealthy")
        return healthy

    async def _space_plan(self) -> SpacePlan:
        used = available = None
        if self.min_free_pct > 0:
            try:
                used = await self._zfs("get used", self.zfs.get_int(self.dataset, "used"))
                available = await self._zfs("get available", self.zfs.get_int(self.dataset, "available"))
            except (ZfsError, ValueError) as e:
                self.log.info("free_space_unknown", error=str(e))
        return plan_for_space(used, available, self.min_free_pct, self.keep)

    async def _take_snapshot(self, result: RunResult) -> None:
        try:
            snap = await self._zfs("snapshot", self.zfs.snapshot(self.dataset))
        except ZfsError as e:
            result.errors.append(str(e))
            event = "snapshot_dataset_missing" if e.not_found else "snapshot_failed"
            self.log.warning(event, error=str(e))
            return
        result.snapshot = snap
        self.log.info("snapshot_taken", snapshot=snap.full)

    async def _prune(self, result: RunResult, keep: int | None = None, *, keep_bases: bool = True) -> None:
        """Destroy what retention lets go. Base snapshots stay unless `keep_bases` is
        False (disk pressure: space for PostgreSQL comes before a cheaper rebuild)."""
        keep = self.keep if keep is None else keep
        try:
            snapshots = await self._zfs("list", self.zfs.list_snapshots(self.dataset))
            held = await self._zfs("get userrefs", self.zfs.held_snapshots(self.dataset))
            marks = await self._zfs("get manatee:bases", self.zfs.snapshot_bases(self.dataset)) if keep_bases else {}
        except ZfsError as e:
            if not result.errors:  # the snapshot error already says it
                result.errors.append(str(e))
                self.log.warning("snapshot_list_failed", error=str(e))
            return
        bases = {name for name, value in marks.items() if is_marked(value)}
        for snap in held_beyond_retention(snapshots, keep, held):
            result.skipped_held.append(snap.full)
            self.log.info("snapshot_prune_skipped_held", snapshot=snap.full)
        for snap in bases_beyond_retention(snapshots, keep, held, bases):
            result.kept_bases.append(snap.full)
            self.log.info("snapshot_kept_as_base", snapshot=snap.full, peers=marks[snap.full])
        for snap in choose_snapshots_to_destroy(snapshots, keep, held, bases):
            try:
                await self._zfs("destroy", self.zfs.destroy(snap.full))
            except ZfsError as e:
                result.errors.append(str(e))
                self.log.warning("snapshot_destroy_failed", snapshot=snap.full, busy=e.busy, error=str(e))
                continue
            result.destroyed.append(snap.full)
            self.log.info("snapshot_destroyed", snapshot=snap.full)
