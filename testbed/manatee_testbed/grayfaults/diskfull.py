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
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time

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
    primary (in the background unless `wait`); returns the quota (bytes)."""
    unsafe = zfspool.full_dataset_unsafe()
    if unsafe:
        raise SandboxError(f"disk-full refused: {unsafe}")
    node = sb.st.node(name)
    quota, margin = set_quota_above_use(node, margin)
    fill_mb = max(fill_mb, 3 * -(-margin // (1024 * 1024))) if fill_mb else 0  # a wider margin: a bigger burst
    update(sb, f"quota:{name}", {"dataset": node.dataset, "quota": quota})
    dsn = ShardView(sb).find_primary() if fill_mb else None  # the writable primary's
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


def disk_lift(sb: Sandbox, name: str) -> bool:
    node = sb.st.node(name)
    had = f"quota:{name}" in load(sb)
    with contextlib.suppress(SandboxError):  # a dataset being rebuilt
        _zfs("set", "quota=none", node.dataset)
    update(sb, f"quota:{name}", None)
    return had
