"""Asynchronous client for the `zfs` command.

Manatee backs each node's PostgreSQL data with a ZFS dataset: the snapshotter takes
snapshots, the backupserver streams them with `zfs send`, and a rebuilding node pipes
them into `zfs recv`. Every call here spawns the real `zfs` binary with an argument
list (never a shell string) and turns a failure into a `ZfsError` that carries the
command, its exit status and its stderr, so callers can log and act on it.

The client keeps to what both zfs-fuse (pool v23) and OpenZFS accept. Where they
differ it detects the difference at run time:
  * `zfs list` has no `-p`, so creation times come from `zfs get -Hp creation`;
  * `zfs holds` needs pyzfs in zfs-fuse and fails there, so `holds()` falls back to
    the `userrefs` property plus the tags this client placed itself;
  * `zfs send -nP` (size estimate) is absent from zfs-fuse, so the estimate falls back
    to the snapshot's `referenced` property.

Streaming (`send_to_socket()`, `recv_from_socket()`) hands a TCP socket to the zfs
process itself; the implementation is manatee.core.zfsstream. It is cancellation-safe:
on failure or cancellation the zfs child is SIGKILLed and reaped, so no
`zfs send`/`zfs recv` outlives its caller (the original leaked them, MANATEE-415).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from manatee.core.aio import finish_even_if_cancelled
from manatee.core.log import get_logger


BUSY_SETTLE_S = 3.0  # how long a filesystem may stay "busy" after an unmount (zfs-fuse)

SNAPSHOT_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]+")


class ZfsError(Exception):
    """A zfs/zpool command failed: what ran, how it ended, and what it said."""

    def __init__(self, cmd: list[str], returncode: int, stderr: str, detail: str | None = None):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr or ""
        self.detail = detail
        super().__init__(str(self))

    def __str__(self) -> str:
        cmd = " ".join(shlex.quote(c) for c in self.cmd)
        if self.returncode < 0:
            try:
                status = f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                status = f"killed by signal {-self.returncode}"
        else:
            status = f"exit {self.returncode}"
        err = " | ".join(line.strip() for line in self.stderr.strip().splitlines() if line.strip())
        if len(err) > 500:
            err = err[:497] + "..."
        parts = [f"{cmd}: {status}"]
        if self.detail:
            parts.append(self.detail)
        parts.append(f"stderr: {err}" if err else "no stderr")
        return "; ".join(parts)

    @property
    def not_found(self) -> bool:
        """True if zfs said the dataset/snapshot does not exist."""
        return "does not exist" in self.stderr

    @property
    def busy(self) -> bool:
        return "busy" in self.stderr


@dataclass(frozen=True)
class Snapshot:
    """One snapshot: `dataset@name`, with its creation time in epoch seconds."""

    dataset: str
    name: str
    creation: int = 0

    @property
    def full(self) -> str:
        return f"{self.dataset}@{self.name}"

    @classmethod
    def parse(cls, full: str, creation: int = 0) -> "Snapshot":
        dataset, sep, name = full.partition("@")
        if not sep or not dataset or not name:
            raise ValueError(f"not a snapshot name: {full!r}")
        return cls(dataset, name, creation)


def newest_first(snapshots: list[Snapshot]) -> list[Snapshot]:
    """Sort by creation time, ties broken by name (epoch-ms names sort in time order)."""
    return sorted(snapshots, key=lambda s: (s.creation, s.name), reverse=True)


def send_args(snapshot: str, incremental_from: str | None = None) -> list[str]:
    args = ["send"]
    if incremental_from:
        args += ["-i", incremental_from]
    args.append(snapshot)
    return args


def recv_args(dataset: str, *, force: bool = False, no_mount: bool = True) -> list[str]:
    args = ["recv"]
    if force:
        args.append("-F")
    if no_mount:
        args.append("-u")
    args.append(dataset)
    return args


def create_args(dataset: str, props: dict[str, Any] | None = None, parents: bool = False) -> list[str]:
    args = ["create"]
    if parents:
        args.append("-p")
    for key, value in (props or {}).items():
        args += ["-o", f"{key}={_prop_value(value)}"]
    args.append(dataset)
    return args


def _prop_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def parse_name_value(text: str) -> list[tuple[str, str]]:
    """Parse `zfs get -H -o name,value` output into (name, value) pairs."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, value = line.partition("\t")
        rows.append((name, value.strip()))
    return rows


def parse_local_values(text: str, dataset: str) -> dict[str, str]:
    """Snapshots of exactly `dataset` -> value, from `zfs get -Hp -o name,value,source -r -d 1`;
    a value that is not set on the snapshot itself (inherited, default) reads "-"."""
    out = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or not parts[0].startswith(dataset + "@"):
            continue
        name, value, source = parts
        out[name] = value if source == "local" else "-"
    return out


def parse_snapshot_creations(text: str, dataset: str) -> list[Snapshot]:
    """Snapshots of exactly `dataset` from `zfs get -Hp -o name,value -r -d 1 creation`."""
    out = []
    prefix = dataset + "@"
    for name, value in parse_name_value(text):
        if not name.startswith(prefix):
            continue  # the dataset itself, or a child filesystem
        try:
            creation = int(value)
        except ValueError:
            creation = 0
        out.append(Snapshot(dataset, name[len(prefix):], creation))
    return out


def parse_snapshot_guids(text: str, dataset: str) -> list[tuple[Snapshot, str]]:
    """(snapshot, guid) of exactly `dataset`'s snapshots from
    `zfs get -Hp -o name,property,value -r -d 1 creation,guid`, newest first."""
    prefix = dataset + "@"
    props: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[0].startswith(prefix):
            props.setdefault(cols[0], {})[cols[1]] = cols[2].strip()
    out = []
    for full, p in props.items():
        creation = p.get("creation", "")
        guid = p.get("guid", "")
        snap = Snapshot(dataset, full[len(prefix):], int(creation) if creation.isdigit() else 0)
        out.append((snap, guid if guid.isdigit() else ""))
    return sorted(out, key=lambda sg: (sg[0].creation, sg[0].name), reverse=True)


def parse_holds(text: str) -> set[str]:
    """Tags from `zfs holds -H SNAP` (columns: name, tag, timestamp)."""
    tags = set()
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) >= 2 and cols[1]:
            tags.add(cols[1])
    return tags


def default_snapshot_name() -> str:
    """Epoch milliseconds, 13 digits, as the original snapshotter names them."""
    return str(int(time.time() * 1000))


class Zfs:
    """Runs `zfs` for the daemons. One instance may be shared by many tasks.

    `timeout` (seconds; None: none here, the caller bounds its calls) is the deadline of each
    short command (everything but the send and receive streams, which have their own stall
    timeouts): past it the child is killed and the call fails with a ZfsError, so that a hung
    zfs-fuse fails a call instead of hanging its caller."""

    def __init__(self, zfs_path: str = "/usr/sbin/zfs", logger=None, timeout: float | None = None):
        self.zfs_path = zfs_path
        self.timeout = timeout
        self.log = logger if logger is not None else get_logger("manatee.zfs")
        self._send_estimate_supported: bool | None = None
        self._holds_supported: bool | None = None
        self._my_holds: dict[str, set[str]] = {}

    # ---------------------------------------------------------------- plumbing

    async def _exec(self, argv: list[str], stdin_data: bytes | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin_data is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin_data), self.timeout)
        except asyncio.TimeoutError:
            await _kill_and_reap(proc)
            raise ZfsError(argv, -9, "", detail=f"no answer within {self.timeout:g}s") from None
        except BaseException:
            await _kill_and_reap(proc)
            raise
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def run(self, *args: str) -> str:
        """Run `zfs ARGS...`; return stdout, raise ZfsError on a non-zero exit."""
        argv = [self.zfs_path, *map(str, args)]
        rc, out, err = await self._exec(argv)
        if rc != 0:
            raise ZfsError(argv, rc, err)
        return out

    # ---------------------------------------------------------------- datasets

    async def exists(self, name: str) -> bool:
        """True if the filesystem, volume or snapshot exists."""
        try:
            await self.run("list", "-H", "-o", "name", "-t", "all", name)
        except ZfsError as e:
            if e.not_found:
                return False
            raise
        return True

    async def create(self, dataset: str, *, props: dict[str, Any] | None = None, parents: bool = False) -> None:
        await self.run(*create_args(dataset, props, parents))

    async def _run_settling(self, *args: str, name: str) -> str:
        """Run, retrying briefly while a just-unmounted filesystem is still "busy".

        zfs-fuse releases a filesystem shortly after `zfs unmount` returns, so a rename
        or destroy right after an unmount can fail with "dataset is busy" for a moment.
        Snapshots are not retried: for them busy means held or cloned, which persists.
        """
        deadline = time.monotonic() + (0 if "@" in name else BUSY_SETTLE_S)
        while True:
            try:
                return await self.run(*args)
            except ZfsError as e:
                if not e.busy or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.1)

    async def destroy(self, name: str, *, recursive: bool = False) -> None:
        await self._run_settling("destroy", *(["-r"] if recursive else []), name, name=name)
        self._my_holds.pop(name, None)

    async def rollback(self, snapshot: str, *, recursive: bool = False) -> None:
        await self.run("rollback", *(["-r"] if recursive else []), snapshot)

    async def rename(self, old: str, new: str) -> None:
        await self._run_settling("rename", old, new, name=old)

    async def get(self, name: str, prop: str) -> str:
        """The parsable (-p) value of one property."""
        return (await self.run("get", "-H", "-p", "-o", "value", prop, name)).strip()

    async def get_int(self, name: str, prop: str) -> int:
        value = await self.get(name, prop)
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"zfs property {prop} of {name} is not an integer: {value!r}") from None

    async def set(self, name: str, prop: str, value: Any) -> None:
        await self.run("set", f"{prop}={_prop_value(value)}", name)

    async def inherit(self, name: str, prop: str) -> None:
        """Remove a local value (a user property is then unset on a snapshot)."""
        await self.run("inherit", prop, name)

    async def mount(self, dataset: str) -> None:
        await self.run("mount", dataset)

    async def unmount(self, dataset: str, force: bool = False) -> None:
        """Unmount; fails (busy) while a process uses the filesystem.

        Beware `force` on zfs-fuse: force-unmounting a filesystem that a process still
        uses wedges the whole zfs-fuse daemon (every mount on the machine hangs). Stop the
        users (e.g. PostgreSQL) first.
        """
        await self.run("unmount", *(["-f"] if force else []), dataset)

    # ---------------------------------------------------------------- snapshots

    async def snapshot(self, dataset: str, name: str | None = None) -> Snapshot:
        """Take `dataset@name` (default name: epoch milliseconds) and return it."""
        name = name or default_snapshot_name()
        if not SNAPSHOT_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid snapshot name {name!r}")
        full = f"{dataset}@{name}"
        await self.run("snapshot", full)
        try:
            creation = await self.get_int(full, "creation")
        except (ZfsError, ValueError):
            creation = int(time.time())
        return Snapshot(dataset, name, creation)

    async def list_snapshots(self, dataset: str) -> list[Snapshot]:
        """Snapshots of `dataset` (not of its children), newest first."""
        out = await self.run("get", "-H", "-p", "-o", "name,value", "-r", "-d", "1", "creation", dataset)
        return newest_first(parse_snapshot_creations(out, dataset))

    async def list_snapshot_guids(self, dataset: str) -> list[tuple[Snapshot, str]]:
        """Snapshots of `dataset` with their guids (kept by send/recv), newest first."""
        out = await self.run(
            "get", "-H", "-p", "-o", "name,property,value", "-r", "-d", "1", "creation,guid", dataset
        )
        return parse_snapshot_guids(out, dataset)

    async def snapshot_bases(self, dataset: str) -> dict[str, str]:
        """Each snapshot of `dataset` -> its local `manatee:bases` value ("-": unset);
        manatee.core.bases says what the values mean. One zfs call."""
        out = await self.run("get", "-H", "-p", "-o", "name,value,source", "-r", "-d", "1", "manatee:bases", dataset)
        return parse_local_values(out, dataset)

    async def clone(self, snapshot: str, dataset: str, *, props: dict[str, Any] | None = None) -> None:
        args = ["clone"]
        for key, value in (props or {}).items():
            args += ["-o", f"{key}={_prop_value(value)}"]
        await self.run(*args, snapshot, dataset)

    async def promote(self, clone: str) -> None:
        """Make `clone` independent of its origin (the origin's older snapshots move to it)."""
        await self._run_settling("promote", clone, name=clone)

    async def latest_snapshot(self, dataset: str, pattern: re.Pattern[str] | None = None) -> Snapshot | None:
        """Newest snapshot of `dataset` whose name matches `pattern` (all if None)."""
        for snap in await self.list_snapshots(dataset):
            if pattern is None or pattern.match(snap.name):
                return snap
        return None

    # ---------------------------------------------------------------- holds

    async def hold(self, tag: str, snapshot: str) -> None:
        """Place a user hold: a held snapshot cannot be destroyed (e.g. while it is sent)."""
        await self.run("hold", tag, snapshot)
        self._my_holds.setdefault(snapshot, set()).add(tag)

    async def release(self, tag: str, snapshot: str) -> None:
        await self.run("release", tag, snapshot)
        tags = self._my_holds.get(snapshot)
        if tags is not None:
            tags.discard(tag)
            if not tags:
                del self._my_holds[snapshot]

    async def userrefs(self, snapshot: str) -> int:
        """Number of user holds on `snapshot`."""
        return await self.get_int(snapshot, "userrefs")

    async def held_snapshots(self, dataset: str) -> set[str]:
        """Full names of the snapshots of `dataset` that carry at least one hold (one zfs call)."""
        out = await self.run("get", "-H", "-p", "-o", "name,value", "-r", "-d", "1", "userrefs", dataset)
        held = set()
        for name, value in parse_name_value(out):
            if name.startswith(dataset + "@") and value.isdigit() and int(value) > 0:
                held.add(name)
        return held

    async def holds(self, snapshot: str) -> set[str]:
        """Tags of the holds on `snapshot`.

        Uses `zfs holds -H`. zfs-fuse's `zfs holds` is broken (it needs pyzfs), so there
        the answer is the tags this client placed, checked against `userrefs`; holds
        placed by others appear as "<untracked-N>" so that len() still equals userrefs.
        """
        if self._holds_supported is not False:
            argv = [self.zfs_path, "holds", "-H", snapshot]
            rc, out, err = await self._exec(argv)
            if rc == 0:
                self._holds_supported = True
                return parse_holds(out)
            said = out + err  # zfs-fuse prints its pyzfs complaint on stdout
            if "pyzfs" not in said and "unrecognized command" not in said:
                raise ZfsError(argv, rc, err)
            self._holds_supported = False
        refs = await self.userrefs(snapshot)
        mine = set(self._my_holds.get(snapshot, set()))
        if refs == 0:
            self._my_holds.pop(snapshot, None)
            return set()
        tags = set(sorted(mine)[:refs])
        for i in range(refs - len(tags)):
            tags.add(f"<untracked-{i + 1}>")
        return tags

    # ---------------------------------------------------------------- send / recv

    async def estimate_send_size(self, snapshot: str, incremental_from: str | None = None) -> int:
        """Expected size in bytes of the send stream.

        OpenZFS answers exactly with `zfs send -nP`; zfs-fuse has no -n/-P, so there it is
        the snapshot's `referenced` (full stream) or the growth of `referenced` since the
        base snapshot (incremental; a lower bound, used only for progress).
        """
        if self._send_estimate_supported is not False:
            argv = [self.zfs_path, "send", "-n", "-P", *send_args(snapshot, incremental_from)[1:]]
            rc, out, err = await self._exec(argv)
            if rc == 0:
                self._send_estimate_supported = True
                for line in out.splitlines():
                    cols = line.split()
                    if len(cols) == 2 and cols[0] == "size" and cols[1].isdigit():
                        return int(cols[1])
            elif "invalid option" not in err and "usage" not in err:
                raise ZfsError(argv, rc, err)
            else:
                self._send_estimate_supported = False
        referenced = await self.get_int(snapshot, "referenced")
        if incremental_from is None:
            return referenced
        base = await self.get_int(incremental_from, "referenced")
        return max(referenced - base, 0)

    async def send_to_socket(
        self,
        snapshot: str,
        sock: socket.socket,
        *,
        incremental_from: str | None = None,
        progress: Callable[[int], None] | None = None,
        stall_timeout: float | None = None,
    ) -> int:
        """`zfs send [-i FROM] SNAPSHOT` with `sock` as its stdout; the bytes the peer acknowledged.

        See manatee.core.zfsstream.send_to_socket (the one streaming implementation):
        raises ZfsError if zfs send fails, zfsstream.StreamError if the receiver fails
        after the stream or nothing moves for `stall_timeout` s (default there).
        """
        from manatee.core import zfsstream  # zfsstream builds on this module

        extra = {} if stall_timeout is None else {"stall_timeout": stall_timeout}
        return await zfsstream.send_to_socket(
            self, snapshot, sock, incremental_from=incremental_from, progress=progress, **extra
        )

    async def recv_from_socket(
        self,
        dataset: str,
        sock: socket.socket,
        *,
        force: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """`zfs recv [-F] -u DATASET` with `sock` as its stdin; the bytes received.

        See manatee.core.zfsstream.recv_from_socket: raises ZfsError if zfs recv fails;
        on cancellation zfs recv is killed and reaped before CancelledError propagates.
        """
        from manatee.core import zfsstream

        return await zfsstream.recv_from_socket(self, dataset, sock, progress=progress, force=force)


# -------------------------------------------------------------------- helpers


async def _kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL `proc` if it still runs and wait for it, even if we are being cancelled."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    for stream in (proc.stdin,):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
    if proc.returncode is None:
        await finish_even_if_cancelled(proc.wait())
