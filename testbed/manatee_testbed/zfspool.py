"""A real, file-backed ZFS pool for tests and the sandbox.

There is no kernel ZFS here: zfs-fuse provides ZFS in userspace, and ONE zfs-fuse
daemon serves every pool on the machine, including pools of other test runs. So
`ensure_zfs_fuse()` reuses a running daemon and only stops a daemon it started itself,
and only when no pool is left and nobody else holds a handle (a shared flock marks
each live user). `ZfsPool` creates a uniquely named pool on a sparse file and
destroys it completely (no pool, no mount, no file), also after a failed test.

Synchronous on purpose: used from pytest fixtures and CLI code.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from manatee.core.procs import pid_alive
from manatee.core.zfs import ZfsError

ZFS_FUSE = "/usr/sbin/zfs-fuse"
ZFS = "/usr/sbin/zfs"
ZPOOL = "/usr/sbin/zpool"

LOCK_DIR = Path("/tmp")
START_LOCK = LOCK_DIR / "manatee-zfs-fuse.start.lock"  # serialises check-and-start/stop
USERS_LOCK = LOCK_DIR / "manatee-zfs-fuse.users.lock"  # shared-locked by every live handle
DEFAULT_LOG = LOCK_DIR / "manatee-zfs-fuse.log"

#: FUSE options for every dataset the daemon mounts. max_write=4096: zfs-fuse 0.7 aborts
#: (`zfsfuse_write: Assertion uio.uio_resid == 0`, zfs_operations.c) when ZFS writes only
#: part of one FUSE write request, which happens when a request spans two records and the
#: quota (or the pool) runs out between them: PostgreSQL's multi-page WAL writes into a
#: full dataset did it within two tries. Requests of one page never span two records, so
#: a full dataset fails them whole (EDQUOT/ENOSPC) and the daemon lives on.
#: default_permissions is what /etc/zfs/zfsrc sets (the command line replaces it).
FUSE_OPTIONS = "default_permissions,max_write=4096"


def _run(argv: list[str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and cp.returncode != 0:
        raise ZfsError(argv, cp.returncode, cp.stderr)
    return cp


def zfs_fuse_pids() -> list[int]:
    """PIDs of live (non-zombie) processes named zfs-fuse in this mount namespace (a daemon
    in another one, e.g. a private one under `unshare -m`, serves none of our mounts)."""
    pids = []
    mine = None
    with contextlib.suppress(OSError):
        mine = os.readlink("/proc/self/ns/mnt")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        try:
            same_ns = mine is None or os.readlink(f"/proc/{entry}/ns/mnt") == mine
        except OSError:
            same_ns = True  # not allowed to look: count it, as before
        if comm == "zfs-fuse" and pid_alive(int(entry)) and same_ns:
            pids.append(int(entry))
    return pids


def full_dataset_unsafe() -> str | None:
    """Why filling a dataset to its quota could abort the running zfs-fuse (a daemon that
    another run started without FUSE_OPTIONS' max_write), or None when it is safe."""
    for pid in zfs_fuse_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            continue
        if not any("max_write=4096" in a for a in argv):
            return (f"zfs-fuse (pid {pid}) runs without -o {FUSE_OPTIONS} (started by another run or by "
                    f"hand): a write into a full dataset can abort it and every pool's mounts with it")
    return None


def zpool_answers(timeout: float = 10.0) -> bool:
    """True if the zfs-fuse daemon answers `zpool list`."""
    try:
        return _run([ZPOOL, "list", "-H"], timeout=timeout, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def pool_names() -> list[str]:
    cp = _run([ZPOOL, "list", "-H", "-o", "name"], check=False)
    if cp.returncode != 0:
        return []
    return [line.strip() for line in cp.stdout.splitlines() if line.strip()]


@dataclass
class ZfsFuseHandle:
    """What `ensure_zfs_fuse` got: a daemon it started (`proc` set) or one already running."""

    pid: int | None
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    _users_fd: int | None = field(default=None, repr=False)

    @property
    def started(self) -> bool:
        return self.proc is not None

    def release(self, timeout: float = 15.0) -> bool:
        """Drop this handle; stop the daemon only if we started it, no pool remains and
        no other handle is alive. Returns True if the daemon was stopped."""
        with flock(START_LOCK):
            if self._users_fd is not None:
                fcntl.flock(self._users_fd, fcntl.LOCK_UN)
                os.close(self._users_fd)
                self._users_fd = None
            if self.proc is None:
                return False
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if pool_names():
                return False
            if not _no_other_users():
                return False
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
            return True


@contextlib.contextmanager
def flock(path: Path, mode: int = 0o666):
    """An exclusive flock on `path` (created if missing) for the `with` block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _take_user_lock() -> int:
    fd = os.open(USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _no_other_users() -> bool:
    fd = os.open(USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def abort_daemon_streams() -> list[str]:
    """Destroy the TCP connections the zfs-fuse daemon itself holds (test teardown only).

    With both ends of a send|recv in one zfs-fuse daemon (one test machine), an aborted
    receive can deadlock against its sender: the send thread, holding the daemon's lock,
    blocks writing into a zero window that the receive thread would drain after taking the
    same lock. Only TCP's persist timeout (many minutes) ends it, and the pool stays "busy".
    On real hosts each end has its own ZFS. `ss -K` aborts the socket, the blocked write
    fails, and the daemon lets go. Returns the connections it aborted.
    """
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    aborted = []
    for line in out.stdout.splitlines():
        if '"zfs-fuse"' not in line:
            continue
        cols = line.split()
        local, peer = cols[3], cols[4]
        lip, lport = local.rsplit(":", 1)
        pip, pport = peer.rsplit(":", 1)
        subprocess.run(["ss", "-K", "-tn", "src", lip, "sport", "=", lport, "dst", pip, "dport", "=", pport],
                       capture_output=True, stdin=subprocess.DEVNULL)
        aborted.append(f"{local}->{peer}")
    return aborted


def ensure_zfs_fuse(log_path: Path | None = None, timeout: float = 30.0) -> ZfsFuseHandle:
    """Make sure a zfs-fuse daemon serves `zpool`/`zfs`; start one if none runs."""
    with flock(START_LOCK):
        users_fd = _take_user_lock()
        try:
            pids = zfs_fuse_pids()
            if pids:
                deadline = time.monotonic() + timeout
                while not zpool_answers():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"zfs-fuse (pid {pids}) runs but `zpool list` does not answer")
                    time.sleep(0.2)
                return ZfsFuseHandle(pid=pids[0], _users_fd=users_fd)
            log_path = Path(log_path or DEFAULT_LOG)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [ZFS_FUSE, "--no-daemon", "-o", FUSE_OPTIONS],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while not zpool_answers():
                if proc.poll() is not None:
                    raise RuntimeError(f"zfs-fuse exited with {proc.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait(5)
                    raise RuntimeError(f"zfs-fuse did not answer within {timeout:.0f}s; see {log_path}")
                time.sleep(0.1)
            return ZfsFuseHandle(pid=proc.pid, proc=proc, log_path=log_path, _users_fd=users_fd)
        except BaseException:
            os.close(users_fd)
            raise


def mounts_of_pool(pool: str) -> list[str]:
    """Mountpoints in /proc/mounts whose source is `pool` or a dataset in it."""
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 2 and (cols[0] == pool or cols[0].startswith(pool + "/")):
                found.append(cols[1].replace("\\040", " "))
    return found


def zfs_processes_on(pool: str) -> list[int]:
    """PIDs of zfs/zpool commands naming `pool` or a dataset in it (e.g. a stuck recv)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) not in ("zfs", "zpool"):
            continue
        for arg in argv[1:]:
            if arg == pool or arg.startswith(pool + "/") or arg.startswith(pool + "@"):
                pids.append(int(entry))
                break
    return pids


class ZfsPoolBusy(RuntimeError):
    """A pool cannot be destroyed safely: a process still uses one of its mounts."""

    def __init__(self, pool: str, holders: dict[int, str]):
        self.pool = pool
        self.holders = holders
        desc = ", ".join(f"pid {pid} ({what})" for pid, what in sorted(holders.items()))
        super().__init__(f"pool {pool} is busy: {desc}; not force-unmounting (it would wedge zfs-fuse)")


def processes_using(mountpoints: list[str]) -> dict[int, str]:
    """PIDs whose cwd, root, open files or mapped files lie under one of `mountpoints`.

    Reads only /proc links, never the mounts themselves (which may hang).
    """
    prefixes = [m.rstrip("/") + "/" for m in mountpoints]

    def under(path: str) -> bool:
        path = path.removesuffix(" (deleted)")
        return any(path == p[:-1] or path.startswith(p) for p in prefixes)

    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        base = f"/proc/{entry}"
        try:
            for link in ("cwd", "root"):
                with contextlib.suppress(OSError):
                    if under(os.readlink(f"{base}/{link}")):
                        found[pid] = link
            if pid not in found:
                with contextlib.suppress(OSError):
                    for fd in os.listdir(f"{base}/fd"):
                        with contextlib.suppress(OSError):
                            target = os.readlink(f"{base}/fd/{fd}")
                            if under(target):
                                found[pid] = f"fd {fd} {target}"
                                break
            if pid not in found:
                with contextlib.suppress(OSError), open(f"{base}/maps") as f:
                    for line in f:
                        cols = line.split(None, 5)
                        if len(cols) == 6 and under(cols[5].strip()):
                            found[pid] = f"maps {cols[5].strip()}"
                            break
        except OSError:
            continue
    return found


class ZfsPool:
    """A uniquely named pool on a sparse file under `base_dir`."""

    def __init__(self, base_dir: Path, name: str | None = None, size: str = "1G"):
        self.base_dir = Path(base_dir).resolve()
        self.name = name or f"mtest{uuid.uuid4().hex[:8]}"
        self.size = size
        self.file = self.base_dir / f"{self.name}.img"

    def __repr__(self) -> str:
        return f"ZfsPool({self.name!r}, file={str(self.file)!r})"

    def exists(self) -> bool:
        return _run([ZPOOL, "list", "-H", "-o", "name", self.name], check=False).returncode == 0

    def create(self) -> "ZfsPool":
        self.base_dir.mkdir(parents=True, exist_ok=True)
        _run(["truncate", "-s", self.size, str(self.file)])
        try:
            _run([ZPOOL, "create", "-f", "-m", "none", self.name, str(self.file)])
        except BaseException:
            with contextlib.suppress(OSError):
                self.file.unlink()
            raise
        return self

    def create_dataset(self, rel_name: str, mountpoint: Path | None = None, props: dict[str, str] | None = None) -> str:
        """Create `POOL/rel_name` (parents too); mounted at `mountpoint` if given."""
        full = f"{self.name}/{rel_name.strip('/')}"
        argv = [ZFS, "create", "-p"]
        if mountpoint is not None:
            argv += ["-o", f"mountpoint={Path(mountpoint).resolve()}"]
        for key, value in (props or {}).items():
            argv += ["-o", f"{key}={value}"]
        _run(argv + [full])
        return full

    def destroy(self) -> None:
        """Remove the pool, its mounts and its file; tolerates any partial state.

        Never force-unmounts: under zfs-fuse, `zfs unmount -f` (or `zpool destroy -f`) of a
        mount that a process still uses wedges the shared daemon (its unmount callback spins
        calling sync() with a global lock held) and hangs every zfs-fuse mount on the
        machine. So processes left using this pool's mounts (its name is unique: they are
        the test's) are killed first; if it is this very process, ZfsPoolBusy is raised.
        """
        for pid in zfs_processes_on(self.name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.exists():
            self._release_mounts()
            last: ZfsError | None = None
            # "pool is busy" outlives a killed `zfs send` for a while: zfs-fuse's daemon does the
            # sending itself and finishes the aborted stream on its own time (seconds on a
            # loaded machine), so wait up to ~90 s before giving up.
            for attempt in range(360):
                cp = _run([ZPOOL, "destroy", self.name], check=False)
                if cp.returncode == 0 or not self.exists():
                    last = None
                    break
                last = ZfsError(cp.args, cp.returncode, cp.stderr)
                if attempt == 8:
                    abort_daemon_streams()
                time.sleep(0.25)
                self._release_mounts()
            if last is not None:
                raise last
        for mnt in sorted(mounts_of_pool(self.name), key=len, reverse=True):
            # a dead fuse mount of a daemon that went away: nothing serves it any more
            subprocess.run(["umount", "-l", mnt], capture_output=True, stdin=subprocess.DEVNULL)
        with contextlib.suppress(FileNotFoundError):
            self.file.unlink()

    def _release_mounts(self, timeout: float = 10.0) -> None:
        """Kill other processes using this pool's mounts, then unmount (not forced)."""
        mounts = mounts_of_pool(self.name)
        deadline = time.monotonic() + timeout
        while mounts:
            holders = processes_using(mounts)
            if os.getpid() in holders:
                raise ZfsPoolBusy(self.name, {os.getpid(): holders[os.getpid()]})
            if not holders:
                break
            for pid in holders:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise ZfsPoolBusy(self.name, holders)
            time.sleep(0.1)
        cp = _run([ZFS, "list", "-H", "-o", "name,mounted", "-t", "filesystem", "-r", self.name], check=False)
        mounted = [ln.split("\t")[0] for ln in cp.stdout.splitlines() if ln.endswith("\tyes")]
        for ds in sorted(mounted, key=len, reverse=True):
            _run([ZFS, "unmount", ds], check=False)

    def __enter__(self) -> "ZfsPool":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()
