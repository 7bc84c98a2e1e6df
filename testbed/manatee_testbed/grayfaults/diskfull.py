"""Disk full on a node: its dataset's quota set 4 MB above its use (more if ZFS refuses that:
set_quota_above_use), then a burst of WAL
and table through the primary, committed a megabyte at a time, fills it: PostgreSQL's next
writes and the sitter's own config writes fail with EDQUOT, as on a real full disk; undone
by lifting the quota. (One statement for the whole burst did not always bite: when it
failed on the quota its aborted table gave the space back, and rewriting WAL in place costs
ZFS no net space, so the primary went on committing. A quota of exactly the use stalled
every writer on the dataset, the sitter's cycle for 27 s: not how a disk fills.)

Safe for the machine's one zfs-fuse daemon only when that daemon runs with
`zfspool.FUSE_OPTIONS` (max_write=4096, as `ensure_zfs_fuse` starts it): zfs-fuse 0.7
aborts when ZFS writes only part of a FUSE write request, which a multi-page WAL write that
runs into the quota between two records does (reproduced on a private daemon: aborted in
3 of 3 runs within two bursts; none in 28 bursts with one-page requests). So `disk_full`
refuses to fill a dataset when the running daemon was started without it.

One-page requests were not enough on a standby: the CI run of 2026-12-04 lost the daemon to
that same assertion while a sync's walreceiver (which writes WAL at any byte offset, into
pages PostgreSQL zero-filled whole, so the kernel may send a request across two pages and a
record boundary) replayed the primary's burst into a dataset at its quota. So a standby's
disk is filled on the standby, not through the primary: a filler file grown one page at a
page-aligned offset (each FUSE request then lies in one ZFS record, and a full dataset
refuses it whole), up to the quota, and then kept at the quota by a keeper thread that
takes back, page by page, any space ZFS frees while the fault holds. PostgreSQL's own
writes then meet a dataset already full and fail whole, instead of walking into its edge.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
from pathlib import Path

from manatee_testbed import zfspool
from manatee_testbed.grayfaults.record import load, update
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_config import ZFS_BIN
from manatee_testbed.sandbox_state import NodeState, SandboxError
from manatee_testbed.shardview import ShardView

#: Margin above `used` for the disk-full quota: the burst fills it.
QUOTA_MARGIN = 4 * 1024 * 1024
#: The burst: three times the margin, so the quota is reached whichever node it is on.
FILL_MB = 12
#: Tries at setting the quota (set_quota_above_use): each with a fresh `used` and twice the margin.
QUOTA_TRIES = 5
QUOTA_RETRY_PAUSE_S = 0.5
#: The standby filler's write: one page at a page-aligned offset (see the module's text).
PAGE = 4096
#: The filler file, at the root of the node's dataset (beside data/, never in it).
FILLER_NAME = ".disk-full-filler"
#: The keeper's pause after a refused page, and how long it holds a disk full at most
#: when nobody lifts it (a test that died, a nemesis that was killed).
KEEP_PAUSE_S = 0.02
KEEP_MAX_S = 900.0
#: The filler stops by itself after this much, whatever the quota says (a quota that was
#: lifted meanwhile must not let it fill the pool).
FILL_MAX_BYTES = 512 * 1024 * 1024

#: Keeper threads of this process, by node name: disk_lift stops them.
_keepers: dict[str, tuple[threading.Thread, threading.Event]] = {}


class FaultNotApplied(SandboxError):
    """A fault that could not be put in place: the node was never sick, so the nemesis does
    not count the round as one of that fault (nemesis_plan.Summary.count)."""


def _zfs(*args: str) -> str:
    cp = subprocess.run([ZFS_BIN, *args], capture_output=True, text=True, timeout=30)
    if cp.returncode != 0:
        raise SandboxError(f"zfs {' '.join(args)} failed: {cp.stderr.strip()}")
    return cp.stdout.strip()


def dataset_used(node: NodeState) -> int:
    return int(_zfs("get", "-Hpo", "value", "used", node.dataset))


def disk_full(sb: Sandbox, name: str, margin: int = QUOTA_MARGIN, fill_mb: int = FILL_MB,
              wait: bool = True) -> int:
    """Set the node's dataset quota to `used` + margin, then write `fill_mb` MB through the
    primary (in the background unless `wait`); returns the quota (bytes). A standby's dataset
    is filled on the standby instead (fill_pages) and kept full by a thread of this process
    until disk_lift (or KEEP_MAX_S)."""
    unsafe = zfspool.full_dataset_unsafe()
    if unsafe:
        raise SandboxError(f"disk-full refused: {unsafe}")
    node = sb.st.node(name)
    view = ShardView(sb)
    on_primary = view.writable(node)
    quota, margin = set_quota_above_use(node, margin)
    fill_mb = max(fill_mb, 3 * -(-margin // (1024 * 1024))) if fill_mb else 0  # a wider margin: a bigger burst
    filler = str(Path(node.mountpoint) / FILLER_NAME)
    update(sb, f"quota:{name}", {"dataset": node.dataset, "quota": quota, "filler": filler})
    if fill_mb and not on_primary:  # a standby: filled on the spot, then kept full
        print(f"disk-full filler on {name}: {fill_pages(filler)}", flush=True)
        _keep_full(name, filler)
        return quota
    dsn = view.find_primary() if fill_mb else None  # the writable primary's
    if dsn is not None:
        filler = threading.Thread(target=lambda: print(f"disk-full filler: {fill_wal(dsn, fill_mb)}", flush=True),
                                  name=f"disk-full-filler-{name}", daemon=True)
        filler.start()
        if wait:
            filler.join(90)
    return quota


def set_quota_above_use(node: NodeState, margin: int, tries: int = QUOTA_TRIES,
                        pause_s: float = QUOTA_RETRY_PAUSE_S) -> tuple[int, int]:
    """Set the node's dataset quota `margin` above its use; returns (quota, the margin used).

    ZFS refuses a quota below what the dataset uses *plus what is still being written to it*
    ("size is less than current used or reserved space"): a standby replaying a burst, or
    catching up after its own disk was full, has megabytes in flight that `zfs get used` does
    not show yet, more than a 4 MB margin. So `used` is read afresh right before every try, and
    every retry waits for the pending writes to land and doubles the margin (4, 8, 16, 32,
    64 MB). FaultNotApplied after `tries`, saying so plainly."""
    err: Exception | None = None
    quota = used = 0
    for attempt in range(tries):
        m = margin * 2 ** attempt
        used = dataset_used(node)
        quota = used + m
        try:
            _zfs("set", f"quota={quota}", node.dataset)
            return quota, m
        except SandboxError as e:
            err = e
            if attempt + 1 < tries:
                print(f"disk-full: quota {m >> 20} MB above a used of {used} refused on {node.name} "
                      f"(try {attempt + 1} of {tries}); again with a fresh used and {2 * m >> 20} MB", flush=True)
                time.sleep(pause_s)
    raise FaultNotApplied(f"disk_full on {node.name}: no quota could be set in {tries} tries, the last "
                          f"{quota} bytes ({quota - used} above a fresh used of {used}): {err}")


def fill_wal(dsn: str, mbytes: int = FILL_MB, timeout_s: float = 60.0) -> str:
    """Write about `mbytes` of table and WAL through `dsn` (the primary), one committed MB at
    a time and committed locally (synchronous_commit=local: a standby that cannot take it
    does not block the filler), so that a quota set by `disk_full` on the primary or a
    standby fills now and stays full (what was committed stays, and the pages a failed
    insert added to the table stay too). Returns how it ended (a full disk makes it fail:
    expected)."""
    import psycopg2

    try:
        conn = psycopg2.connect(dsn, connect_timeout=5, options=f"-c statement_timeout={int(timeout_s * 1000)}")
    except psycopg2.Error as e:
        return f"no connection: {str(e).strip()}"
    written = 0
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("set synchronous_commit = local")
            table = f"gray_fill_{os.getpid()}_{int(time.time() * 1000)}"
            cur.execute(f"create table {table} (g int, pad text)")
            for _ in range(mbytes):
                cur.execute(f"insert into {table} select g, repeat(md5(g::text), 32) "
                            f"from generate_series(1, %s) g", (1024 * 1024 // 1100,))
                written += 1
            return f"wrote {written} MB into {table}"
    except psycopg2.Error as e:
        return (f"failed after {written} MB: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def fill_pages(path: str, *, create: bool = True, stop: threading.Event | None = None, hold_s: float = 0.0,
               max_bytes: int = FILL_MAX_BYTES) -> str:
    """Grow the file at `path` one page at a time, at page-aligned offsets, until the dataset
    refuses (EDQUOT/ENOSPC); with `hold_s`, try again every KEEP_PAUSE_S for that long (or
    until `stop`), taking any space that frees up. The file is open only while a page goes
    in (a dataset being replaced must not be held busy), and only the first open may create
    it: a filler that is gone (lifted, or its dataset rebuilt) ends the fill. Returns what
    it did."""
    page = os.urandom(PAGE)  # not zeros: a dataset with compression would store nothing
    written = refused = 0
    until = time.monotonic() + hold_s
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    while written < max_bytes and not (stop is not None and stop.is_set()):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            return f"{written >> 10} kB written, {refused} page(s) refused; then the filler went: {e.strerror}"
        flags &= ~os.O_CREAT
        try:
            off = os.fstat(fd).st_size // PAGE * PAGE
            while written < max_bytes:
                if os.pwrite(fd, page, off) < PAGE:  # taken as a refusal: the next open realigns
                    raise OSError(errno.ENOSPC, "short write")
                off += PAGE
                written += PAGE
        except OSError as e:
            if e.errno not in (errno.EDQUOT, errno.ENOSPC):
                return f"stopped after {written >> 10} kB: {e}"
            refused += 1
        finally:
            os.close(fd)
        if time.monotonic() >= until:
            break
        time.sleep(KEEP_PAUSE_S)
    return f"{written >> 10} kB written, {refused} page(s) refused"


def _keep_full(name: str, path: str) -> None:
    stop = threading.Event()
    t = threading.Thread(target=lambda: print(f"disk-full keeper on {name}: "
                                              f"{fill_pages(path, create=False, stop=stop, hold_s=KEEP_MAX_S)}", flush=True),
                         name=f"disk-full-keeper-{name}", daemon=True)
    _keepers[name] = (t, stop)
    t.start()


def disk_lift(sb: Sandbox, name: str) -> bool:
    node = sb.st.node(name)
    rec = load(sb).get(f"quota:{name}")
    keeper = _keepers.pop(name, None)
    if keeper is not None:
        keeper[1].set()
        keeper[0].join(10)
    with contextlib.suppress(SandboxError):  # a dataset being rebuilt
        _zfs("set", "quota=none", node.dataset)
    if rec and rec.get("filler"):
        with contextlib.suppress(OSError):
            os.unlink(rec["filler"])
    update(sb, f"quota:{name}", None)
    return rec is not None
