"""Replacing a dataset without ever leaving nothing in its place: the old dataset is set
aside (unmounted, mountpoint=none, renamed), put back exactly as it was if the new copy
fails, and dropped only once the new copy is mounted and owned by the database user.

The zfs steps of :mod:`manatee.core.restore`; they raise :class:`ZfsError` and the
restore says which phase failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from manatee.core.zfs import Zfs, ZfsError

#: The user property a finished restore sets on the old copy it replaced, before destroying
#: it: a copy that carries it holds nothing anyone needs, so a sitter that died before the
#: destroy ended may destroy it at its next start (:func:`sweep_replaced`). An old copy
#: without it may be the only copy of the data (an interrupted restore): it is never
#: destroyed automatically.
REPLACED_PROP = "manatee:replaced"
DROP_TIMEOUT_S = 600.0  # one old copy's destroy (a whole dataset after a full stream)
KEPT_WHY = "an interrupted restore set it aside; it may hold the only copy of that data"
ASIDE = "-restore-"  # an old copy set aside is named <dataset>-restore-<epoch ms>


def aside_name(dataset: str, epoch_ms: int) -> str:
    return f"{dataset}{ASIDE}{epoch_ms}"


@dataclass
class OldDataset:
    name: str
    aside: str
    mountpoint: str
    mountpoint_source: str
    canmount: str
    mounted: bool
    steps: list[str] = field(default_factory=list)  # what was done to it, in order

    def fields(self) -> dict[str, Any]:
        """What a log line says about it."""
        return {"aside": self.aside, "mountpoint": self.mountpoint, "mountpoint_source": self.mountpoint_source,
                "canmount": self.canmount, "mounted": self.mounted}


async def describe(zfs: Zfs, name: str, aside: str) -> OldDataset:
    """`name` as it is now (mountpoint and its source, canmount, mounted), to be set aside as `aside`."""
    out = await zfs.run("get", "-H", "-p", "-o", "property,value,source", "mountpoint,canmount,mounted", name)
    props = {}
    for line in out.splitlines():
        cols = line.split("\t")
        if len(cols) >= 3:
            props[cols[0]] = (cols[1], cols[2])
    mountpoint, source = props.get("mountpoint", ("none", "default"))
    return OldDataset(name=name, aside=aside, mountpoint=mountpoint, mountpoint_source=source,
                      canmount=props.get("canmount", ("on", "default"))[0],
                      mounted=props.get("mounted", ("no", "-"))[0] == "yes")


async def set_aside(zfs: Zfs, old: OldDataset) -> None:
    """Unmount, canmount=noauto, mountpoint=none, rename to `old.aside`; each step done is
    recorded in `old.steps` (for :func:`put_back`) before the next one is tried."""
    if old.mounted:
        await zfs.unmount(old.name)
        old.steps.append("unmounted")
    await zfs.set(old.name, "canmount", "noauto")
    old.steps.append("canmount")
    await zfs.set(old.name, "mountpoint", "none")
    old.steps.append("mountpoint")
    await zfs.rename(old.name, old.aside)
    old.steps.append("renamed")


async def put_back(zfs: Zfs, old: OldDataset) -> list[str]:
    """Undo :func:`set_aside`; what could not be undone, one message each."""
    errors: list[str] = []
    if "renamed" in old.steps:
        try:
            await retry_busy(lambda: zfs.rename(old.aside, old.name))
        except ZfsError as e:
            return [f"old dataset is still at {old.aside}: rename back failed: {e}"]
    try:
        if "mountpoint" in old.steps:
            if old.mountpoint_source in ("local", "received"):
                await zfs.set(old.name, "mountpoint", old.mountpoint)
            else:
                await zfs.run("inherit", "mountpoint", old.name)
        if "canmount" in old.steps:
            await zfs.set(old.name, "canmount", old.canmount)
    except ZfsError as e:
        errors.append(f"restoring mountpoint/canmount of {old.name} failed: {e}")
    if old.mounted:
        try:
            if (await zfs.get(old.name, "mounted")) != "yes":
                await retry_busy(lambda: zfs.mount(old.name))
        except ZfsError as e:
            errors.append(f"mounting {old.name} at {old.mountpoint} failed: {e}")
    return errors


async def undo(zfs: Zfs, dataset: str, old: OldDataset | None, *, log: Any, cloned: bool,
               received: bool) -> list[str]:
    """After a failed receive into `dataset`: the partial copy destroyed and `old` put back;
    what could not be done, one message each. `cloned`: `dataset` was cloned from the old
    copy's snapshot and promoted (an incremental); `received`: a stream reached `dataset`."""
    errors: list[str] = []
    name_is_ours = old is None or "renamed" in old.steps
    if old is not None and cloned:
        # Give the old data its snapshots back, so that `dataset` can be destroyed. Asked
        # of zfs, not of our steps: a cancelled `zfs promote` may still have happened.
        try:
            origin = await zfs.get(old.aside, "origin")
            if origin.startswith(dataset + "@"):
                await retry_busy(lambda: zfs.promote(old.aside))
        except ZfsError as e:
            errors.append(f"promoting the old {old.aside} back failed: {e}")
    if name_is_ours and (received or old is not None):
        try:
            if await zfs.exists(dataset):
                await destroy(zfs, dataset)
                log.info("restore_partial_dataset_destroyed")
        except ZfsError as e:
            errors.append(f"destroying the partial {dataset} failed: {e}")
    if old is not None and not errors:
        errors += await put_back(zfs, old)
    elif old is not None:
        errors.append(f"old dataset left at {old.aside}")
    return errors


async def mount_at(zfs: Zfs, dataset: str, mountpoint: Path, canmount: str) -> None:
    """Mount a received `dataset` at `mountpoint` with the old dataset's canmount."""
    await zfs.set(dataset, "mountpoint", str(mountpoint))
    if canmount != "on":  # a received filesystem starts with canmount=on
        await zfs.set(dataset, "canmount", canmount)
    try:
        await zfs.mount(dataset)
    except ZfsError as e:
        if "already mounted" not in e.stderr:
            raise


async def retry_busy(fn: Callable[[], Awaitable[Any]], attempts: int = 10, delay: float = 0.3) -> Any:
    """Retry a zfs call that fails with 'busy' (zfs-fuse needs a moment after a killed recv).

    After a killed incremental receive into an existing filesystem, zfs-fuse's daemon is
    still cleaning up its hidden `%recv` clone for a moment: a destroy then says "dataset
    already exists"; that is retried too.
    """
    for i in range(attempts):
        try:
            return await fn()
        except ZfsError as e:
            if i == attempts - 1 or not (e.busy or "mounted" in e.stderr or "already exists" in e.stderr):
                raise
            await asyncio.sleep(delay)


async def destroy(zfs: Zfs, name: str) -> None:
    """`zfs destroy -r`, retried while busy; a dataset already gone is not an error."""
    async def go() -> None:
        try:
            await zfs.destroy(name, recursive=True)
        except ZfsError as e:
            if e.not_found:
                return
            if e.busy:
                # Never force: on zfs-fuse a forced unmount of a filesystem still in use
                # wedges the daemon and every mount on the machine. A plain unmount fails
                # while something uses it, and retry_busy tries again.
                with contextlib.suppress(ZfsError):
                    await zfs.unmount(name)
            raise

    await retry_busy(go)


async def drop_replaced(zfs: Zfs, aside: str, log: Any) -> bool:
    """Mark `aside` replaced, then destroy it (best effort, bounded); True if it is gone.

    For an old copy that a finished restore left behind on purpose (restore(drop_old=False)):
    its destroy then runs while PostgreSQL starts on the new copy instead of before.
    """
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(DROP_TIMEOUT_S):
            await zfs.set(aside, REPLACED_PROP, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            await destroy(zfs, aside)
    except Exception as e:  # noqa: BLE001 - best effort in the background: say so, keep going
        why = str(e) or f"{type(e).__name__}: not done within {DROP_TIMEOUT_S:g}s"
        log.error("restore_old_dataset_left", aside=aside, error=why)
        return False
    log.info("restore_old_dataset_destroyed", aside=aside, seconds=round(time.monotonic() - t0, 3))
    return True


async def old_copies(zfs: Zfs, dataset: str, timeout: float = 60.0) -> list[tuple[str, bool]]:
    """The old copies of `dataset` that restores set aside (`<dataset>-restore-*`), each with
    whether a finished restore marked it replaced. Raises (ZfsError, TimeoutError): unknown."""
    parent = dataset.rpartition("/")[0] or dataset
    out = await asyncio.wait_for(
        zfs.run("list", "-H", "-o", f"name,{REPLACED_PROP}", "-t", "filesystem", "-r", "-d", "1", parent), timeout)
    found = []
    for line in out.splitlines():
        name, _, mark = line.partition("\t")
        if name.startswith(f"{dataset}{ASIDE}"):
            found.append((name, mark.strip() not in ("", "-")))
    return found


async def sweep_replaced(zfs: Zfs, dataset: str, log: Any) -> list[str]:
    """Destroy the old copies of `dataset` marked replaced: those a restore finished with but
    whose destroy did not end (the sitter died). The unmarked ones are reported and kept.
    Returns the names destroyed."""
    try:
        found = await old_copies(zfs, dataset)
    except Exception as e:  # noqa: BLE001 - unknown: destroy nothing
        log.warning("restore_old_copies_unknown", error=str(e) or f"{type(e).__name__}: zfs list timed out")
        return []
    dropped = []
    for name, marked in found:
        if not marked:
            log.warning("restore_old_copy_kept", aside=name, why=KEPT_WHY)
        elif await drop_replaced(zfs, name, log):
            dropped.append(name)
    return dropped


def chown_tree(root: Path, uid: int, gid: int) -> int:
    """chown -R `root` to uid:gid; returns how many entries changed.

    Every file of a PostgreSQL data dir belongs to the database user, so the sender's
    tree is either all ours already (same uid on both hosts) or all someone else's.
    When `root` and everything directly in it already belong to uid:gid, the deep walk
    (one FUSE round trip per file under zfs-fuse) is skipped.
    """
    def owned(st: os.stat_result) -> bool:
        return (st.st_uid, st.st_gid) == (uid, gid)

    top = [root / name for name in os.listdir(root) if name != ".zfs"]
    if owned(os.lstat(root)) and all(owned(os.lstat(p)) for p in top):
        return 0
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and ".zfs" in dirnames:
            dirnames.remove(".zfs")
        for name in [*dirnames, *filenames, None]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            try:
                if not owned(os.lstat(path)):
                    os.lchown(path, uid, gid)
                    changed += 1
            except FileNotFoundError:
                continue
    return changed


def remove_pid_files(root: Path) -> list[str]:
    """postmaster.pid in the mountpoint or a data dir right under it (a live PG's snapshot has one)."""
    removed = []
    for path in [root / "postmaster.pid", *map(Path, glob.glob(str(root / "*" / "postmaster.pid")))]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(str(path))
    return removed

