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

`send()` and `recv()` stream through large buffers and are cancellation-safe: when
the coroutine fails or is cancelled the zfs child is SIGKILLed and reaped, so no
`zfs send`/`zfs recv` outlives its caller (the original leaked them, MANATEE-415).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import os
import re
import select
import shlex
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Union

try:  # the lead's logging helper; structlog directly until it exists
    from manatee.core.log import get_logger
except ImportError:  # pragma: no cover - fallback only during bootstrap
    import structlog

    def get_logger(name: str):  # type: ignore[no-redef]
        return structlog.get_logger(name)


# Reads take everything buffered (up to READ_MAX): a StreamReader read of less than
# its buffer memmoves the rest, which costs more than the copy itself at these sizes.
READ_MAX = 16 << 20
PIPE_LIMIT = 1 << 20  # StreamReader buffer limit for zfs stdout (reading pauses at 2x)
SPLICE_MAX = 1 << 20  # bytes per splice(2) call
PIPE_SIZE = 1 << 20  # kernel pipe buffer (F_SETPIPE_SZ; the default pipe-max-size)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
WRITE_HIGH_WATER = 8 << 20  # write-buffer high-water mark for zfs stdin
STDERR_KEEP = 64 * 1024  # bytes of stderr kept for error messages
RECV_ABORT_GRACE_S = 3.0  # after EOF, how long zfs recv may take to abort before SIGKILL
BUSY_SETTLE_S = 3.0  # how long a filesystem may stay "busy" after an unmount (zfs-fuse)

SNAPSHOT_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]+")

Output = Union[asyncio.StreamWriter, Callable[[bytes], Any]]
Progress = Callable[[int, int], None]


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
    """Runs `zfs`/`zpool` for the daemons. One instance may be shared by many tasks."""

    def __init__(self, zfs_path: str = "/usr/sbin/zfs", zpool_path: str = "/usr/sbin/zpool", logger=None):
        self.zfs_path = zfs_path
        self.zpool_path = zpool_path
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
            out, err = await proc.communicate(stdin_data)
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

    async def run_zpool(self, *args: str) -> str:
        argv = [self.zpool_path, *map(str, args)]
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

    async def send(
        self,
        snapshot: str,
        out: Output,
        *,
        incremental_from: str | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Stream `zfs send [-i FROM] SNAPSHOT` into `out`; return the bytes sent.

        `out` is an asyncio.StreamWriter (written and drained, so a slow peer applies
        backpressure) or a callable taking each chunk (may be async). `progress(sent,
        total)` is called after each chunk; total is the estimate, never below sent.
        On any failure the zfs process is killed and reaped and ZfsError is raised
        (CancelledError propagates as is).
        """
        total = 0
        if progress is not None:
            try:
                total = await self.estimate_send_size(snapshot, incremental_from)
            except (ZfsError, ValueError) as e:
                self.log.warning("zfs_send_estimate_failed", snapshot=snapshot, error=str(e))
        write = _writer_for(out)
        sock_fd = await _spliceable_socket(out)
        argv = [self.zfs_path, *send_args(snapshot, incremental_from)]
        # Our own pipe, not asyncio's PIPE: closing its read end on failure stops the
        # sender at once (zfs-fuse's daemon writes the stream itself and would go on),
        # and Process.wait() does not wait for a stdout nobody reads any more.
        r, child_fd = _pipe()
        stream = transport = None
        try:
            if sock_fd is None:
                stream, transport = await _connect_read(r)
            else:
                os.set_blocking(r, False)
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=child_fd, stderr=asyncio.subprocess.PIPE
            )
        except BaseException:
            _close_read(r, transport)
            raise
        finally:
            os.close(child_fd)
        stderr_task = asyncio.ensure_future(_read_capped(proc.stderr))
        sent = 0

        def count(n: int) -> None:
            nonlocal sent
            sent += n
            if progress is not None:
                progress(sent, max(total, sent))

        self.log.debug("zfs_send_start", snapshot=snapshot, incremental_from=incremental_from, pid=proc.pid,
                       splice=sock_fd is not None)
        try:
            try:
                if sock_fd is not None:
                    await _splice_loop(r, sock_fd, count)
                else:
                    while True:
                        chunk = await stream.read(READ_MAX)
                        if not chunk:
                            break
                        await write(chunk)
                        count(len(chunk))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                _close_read(r, transport)
                await _kill_and_reap(proc)
                err = await _finish(stderr_task)
                raise ZfsError(argv, proc.returncode, err, f"output failed after {sent} bytes: {e!r}") from e
            rc = await proc.wait()
            err = await _finish(stderr_task)
            if rc != 0:
                raise ZfsError(argv, rc, err, f"after {sent} bytes")
        finally:
            _close_read(r, transport)
            await _kill_and_reap(proc)
            stderr_task.cancel()
        self.log.debug("zfs_send_done", snapshot=snapshot, bytes=sent)
        return sent

    async def recv(
        self,
        dataset: str,
        source: asyncio.StreamReader,
        *,
        force: bool = False,
        no_mount: bool = True,
    ) -> int:
        """Pipe `source` into `zfs recv [-F] [-u] DATASET` until EOF; return the bytes received.

        On failure or cancellation the receive is aborted and zfs recv reaped before the
        error (ZfsError, with stderr) or the CancelledError propagates: its input pipe is
        closed first, so ZFS sees a truncated stream and cleans up, and it is SIGKILLed if
        it has not exited within RECV_ABORT_GRACE_S. A target that did not exist before and
        is left behind half-received is destroyed, so a retry starts clean.
        """
        argv = [self.zfs_path, *recv_args(dataset, force=force, no_mount=no_mount)]
        existed = await self.exists(dataset)
        pipe, child_fd = await _write_pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=child_fd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
        except BaseException:
            with contextlib.suppress(Exception):
                pipe.transport.abort()
            raise
        finally:
            os.close(child_fd)
        stderr_task = asyncio.ensure_future(_read_capped(proc.stderr))
        received = 0
        ok = False

        def count(n: int) -> None:
            nonlocal received
            received += n

        taken = _take_socket(source)
        self.log.debug("zfs_recv_start", dataset=dataset, pid=proc.pid, splice=taken is not None)
        try:
            try:
                if taken is not None:
                    sock_fd, buffered = taken
                    if buffered:  # what the reader held already goes first, and fully
                        pipe.transport.set_write_buffer_limits(high=0)
                        pipe.write(buffered)
                        count(len(buffered))
                        await pipe.drain()
                        if pipe.transport.get_write_buffer_size():
                            raise RuntimeError("zfs recv input buffer did not drain before splicing")
                    await _splice_loop(sock_fd, _pipe_fd(pipe), count)
                else:
                    while True:
                        chunk = await source.read(READ_MAX)
                        if not chunk:
                            break
                        pipe.write(chunk)
                        count(len(chunk))
                        await pipe.drain()
                pipe.close()
                await pipe.wait_closed()
            except asyncio.CancelledError:
                raise
            except (ConnectionError, BrokenPipeError) as e:
                # zfs recv quit early (bad stream, dataset exists ...) or the peer went away
                rc = await _abort_recv(proc, pipe)
                err = await _finish(stderr_task)
                raise ZfsError(argv, rc, err, f"stream broken after {received} bytes: {e!r}") from e
            except Exception as e:
                rc = await _abort_recv(proc, pipe)
                err = await _finish(stderr_task)
                raise ZfsError(argv, rc, err, f"input failed after {received} bytes: {e!r}") from e
            rc = await proc.wait()
            err = await _finish(stderr_task)
            if rc != 0:
                raise ZfsError(argv, rc, err, f"after {received} bytes")
            ok = True
        finally:
            if not ok:
                await _shielded(self._abort_cleanup(proc, pipe, dataset, existed))
            stderr_task.cancel()
        self.log.debug("zfs_recv_done", dataset=dataset, bytes=received)
        return received

    async def _abort_cleanup(self, proc, pipe: asyncio.StreamWriter, dataset: str, existed: bool) -> None:
        await _abort_recv(proc, pipe)
        if existed:
            return
        try:
            if await self.exists(dataset):
                self.log.warning("zfs_recv_partial_destroyed", dataset=dataset)
                await self.destroy(dataset, recursive=True)
        except (ZfsError, OSError) as e:
            self.log.warning("zfs_recv_partial_destroy_failed", dataset=dataset, error=str(e))


# -------------------------------------------------------------------- helpers


def _writer_for(out: Output) -> Callable[[bytes], Awaitable[None]]:
    if isinstance(out, asyncio.StreamWriter):
        with contextlib.suppress(AttributeError):
            out.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

        async def write_stream(chunk: bytes) -> None:
            out.write(chunk)
            await out.drain()

        return write_stream
    if not callable(out):
        raise TypeError(f"send output must be a StreamWriter or a callable, not {type(out).__name__}")

    async def write_callable(chunk: bytes) -> None:
        result = out(chunk)
        if inspect.isawaitable(result):
            await result

    return write_callable


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()  # close-on-exec; the child gets its end by dup2
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)  # fewer, larger transfers
    return r, w


async def _connect_read(r: int) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    """A StreamReader on pipe fd `r` (the transport owns and closes it)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=PIPE_LIMIT, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(r, "rb", buffering=0, closefd=True)
    )
    return reader, transport


def _close_read(r: int, transport: asyncio.ReadTransport | None) -> None:
    """Close the read end of a send pipe once (directly, or through its transport)."""
    if transport is not None:
        transport.close()
        return
    with contextlib.suppress(OSError):
        os.close(r)


def _pipe_fd(pipe: asyncio.StreamWriter) -> int:
    return pipe.transport.get_extra_info("pipe").fileno()


# ---- zero-copy relay with splice(2) between a socket and a zfs pipe
#
# A restore streams the whole dataset through Python (backupserver: zfs send -> TCP;
# sitter: TCP -> zfs recv). Copying it through StreamReader buffers costs several
# memory copies per byte and much CPU on a busy host; splice moves it inside the kernel.


def _splice_supported() -> bool:
    return hasattr(os, "splice")


async def _spliceable_socket(out) -> int | None:
    """The socket fd behind a plain (non-TLS) StreamWriter, drained; None if not usable."""
    if not _splice_supported() or not isinstance(out, asyncio.StreamWriter):
        return None
    transport = out.transport
    if transport.is_closing() or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return None
    await out.drain()
    if transport.get_write_buffer_size() != 0:
        return None
    return sock.fileno()


def _take_socket(source) -> tuple[int, bytes] | None:
    """Take over the socket behind a StreamReader for splicing: (fd, bytes already buffered).

    Only for a plain socket StreamReader that is not at EOF; its transport is paused for
    good (the caller owns the connection and closes it after the receive).
    """
    if not _splice_supported() or not isinstance(source, asyncio.StreamReader):
        return None
    transport = getattr(source, "_transport", None)
    buffer = getattr(source, "_buffer", None)
    if transport is None or not isinstance(buffer, bytearray) or getattr(source, "_eof", True):
        return None
    if source.exception() is not None or transport.is_closing():
        return None
    if transport.get_extra_info("sslcontext") is not None or not hasattr(transport, "pause_reading"):
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return None
    transport.pause_reading()
    data = bytes(buffer)
    buffer.clear()
    return sock.fileno(), data


async def _splice_loop(src_fd: int, dst_fd: int, count: Callable[[int], None]) -> None:
    """Move bytes from fd `src_fd` to fd `dst_fd` until EOF on `src_fd` (both non-blocking).

    Works on duplicates: the event loop refuses to watch an fd that a transport owns.
    """
    src, dst = os.dup(src_fd), os.dup(dst_fd)
    try:
        await _splice_fds(src, dst, count)
    finally:
        os.close(src)
        os.close(dst)


async def _splice_fds(src: int, dst: int, count: Callable[[int], None]) -> None:
    loop = asyncio.get_running_loop()
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    poller = select.poll()
    poller.register(src, select.POLLIN)
    poller.register(dst, select.POLLOUT)
    while True:
        try:
            n = os.splice(src, dst, SPLICE_MAX, flags=flags)
        except BlockingIOError:
            ready = dict(poller.poll(0))
            if not ready.get(src, 0) & (select.POLLIN | select.POLLHUP | select.POLLERR):
                await _fd_ready(loop, src, read=True)
            elif not ready.get(dst, 0) & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                await _fd_ready(loop, dst, read=False)
            continue
        if n == 0:
            return
        count(n)


async def _fd_ready(loop: asyncio.AbstractEventLoop, fd: int, *, read: bool) -> None:
    fut = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_reader if read else loop.add_writer)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_reader if read else loop.remove_writer)(fd)


async def _write_pipe() -> tuple[asyncio.StreamWriter, int]:
    """(writer with drain(), read fd for the child)."""
    loop = asyncio.get_running_loop()
    r, w = _pipe()
    os.set_blocking(w, False)
    try:
        protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop)
        transport, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(w, "wb", buffering=0))
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    except BaseException:
        os.close(r)
        raise
    return asyncio.StreamWriter(transport, protocol, None, loop), r


async def _read_capped(stream: asyncio.StreamReader | None) -> str:
    """Read a stream to EOF, keeping the last STDERR_KEEP bytes."""
    if stream is None:
        return ""
    buf = bytearray()
    while True:
        data = await stream.read(65536)
        if not data:
            break
        buf += data
        if len(buf) > STDERR_KEEP:
            del buf[: len(buf) - STDERR_KEEP]
    return buf.decode(errors="replace")


async def _finish(task: "asyncio.Future[str]", timeout: float = 2.0) -> str:
    """The stderr collected by `task`; what we have if the pipe stays open too long."""
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout)
    except asyncio.TimeoutError:
        return ""
    except Exception:  # noqa: BLE001 - stderr is best effort
        return ""


async def _abort_recv(proc: asyncio.subprocess.Process, pipe: asyncio.StreamWriter) -> int:
    """End a zfs recv: EOF on its input (ZFS aborts the receive cleanly), SIGKILL after a grace."""
    with contextlib.suppress(Exception):  # abort() of an already closed pipe raises
        pipe.transport.abort()  # drop anything unsent: the stream is truncated either way
    if proc.returncode is None:
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), RECV_ABORT_GRACE_S)
        except asyncio.TimeoutError:
            pass
    await _kill_and_reap(proc)
    return proc.returncode if proc.returncode is not None else -signal.SIGKILL


async def _shielded(coro) -> None:
    """Run `coro` to completion even if the caller is cancelled meanwhile; re-raise that after."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError()


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
        waiter = asyncio.ensure_future(proc.wait())
        cancelled = False
        while not waiter.done():
            try:
                await asyncio.shield(waiter)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError()
