"""``pg_rewind`` and ``pg_controldata`` on this node's (stopped) data directory, run as the
PostgreSQL OS user with a deadline; what they print, parsed.

pg_rewind makes a diverged data directory follow another server's history by copying
only the blocks changed since the two timelines forked (plus the config files and the
WAL after the fork), so its cost follows the divergence, not the database's size. Its
``--dry-run`` says how much it would copy ("need to copy N MB"); the sitter weighs that
against a ZFS stream (manatee.shard.rebuildpath). A password travels in the environment
(PGPASSWORD), never on a command line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

from manatee.core.pg.runas import DEFAULT_BINDIR, PgError, run_as

NEED_TO_COPY = re.compile(r"need to copy (\d+) MB \(total source directory size is (\d+) MB\)")
NO_REWIND = re.compile(r"^pg_rewind: no rewind required", re.M)
DIVERGED_AT = re.compile(r"servers diverged at WAL location ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)")
DONE = re.compile(r"^pg_rewind: Done!", re.M)


@dataclass(frozen=True)
class RewindReport:
    """What one pg_rewind run said. `copy_mb`/`source_mb`: None if it did not say (e.g.
    nothing to rewind); `needed`: False when it found the target already on the source's
    history ("no rewind required"); `done`: a real run reached its end."""

    copy_mb: int | None
    source_mb: int | None
    needed: bool
    diverged_at: str | None
    done: bool


def parse_output(text: str) -> RewindReport:
    """Read pg_rewind's messages (C locale). Unparsable output: every field unknown."""
    m = NEED_TO_COPY.search(text)
    d = DIVERGED_AT.search(text)
    return RewindReport(
        copy_mb=int(m.group(1)) if m else None, source_mb=int(m.group(2)) if m else None,
        needed=not NO_REWIND.search(text), diverged_at=f"{d.group(1)} on timeline {d.group(2)}" if d else None,
        done=bool(DONE.search(text)))


def rewind_argv(data_dir: Path, source_conninfo: str, *, bindir: Path = DEFAULT_BINDIR,
                dry_run: bool = False) -> list[str]:
    """pg_rewind's command line: the target directory and the source server (a conninfo
    without its password). Never --no-sync: a rewound directory must survive a crash."""
    argv = [str(Path(bindir) / "pg_rewind"), "--target-pgdata", str(data_dir),
            "--source-server", source_conninfo, "--progress"]  # --progress: "need to copy N MB"
    if dry_run:
        argv.append("--dry-run")
    return argv


async def pg_rewind(data_dir: Path, source_conninfo: str, *, user: str = "postgres",
                    bindir: Path = DEFAULT_BINDIR, password: str | None = None, timeout: float = 600.0,
                    dry_run: bool = False) -> RewindReport:
    """Run pg_rewind (as `user`, within `timeout` seconds: the child is killed after it).
    Raises PgError if it fails, does not finish, or a real run does not say it is done."""
    env = {"PGPASSWORD": password} if password else {}
    out = await run_as(rewind_argv(data_dir, source_conninfo, bindir=bindir, dry_run=dry_run), user=user,
                       timeout=timeout, extra_env=env, merge_stderr=True)
    report = parse_output(out)
    if not dry_run and report.needed and not report.done:
        raise PgError(f"pg_rewind ended without saying it was done: {out.strip()[-500:]}")
    return report


#: Control-file states of a cleanly stopped cluster: pg_rewind (its dry run too) needs one.
CLEAN_STATES = frozenset({"shut down", "shut down in recovery"})


async def finish_crash_recovery(data_dir: Path, *, user: str = "postgres", bindir: Path = DEFAULT_BINDIR,
                                timeout: float = 600.0) -> None:
    """Bring a cluster stopped while running to a clean shutdown, as pg_rewind itself does
    before a real run (its --dry-run does not, and then refuses): PostgreSQL in single-user
    mode replays its WAL, writes a shutdown checkpoint and exits (stdin is empty)."""
    await run_as([os.fspath(Path(bindir) / "postgres"), "--single", "-F", "-D", os.fspath(data_dir), "template1"],
                 user=user, timeout=timeout, merge_stderr=True)


START_WAL_FILE = re.compile(r"^START WAL LOCATION: [0-9A-F]+/[0-9A-F]+ \(file ([0-9A-F]{24})\)", re.M)


def missing_start_wal(backup_label: str, wal_files: list[str]) -> str | None:
    """After a rewind: the WAL segment recovery starts from (backup_label's START WAL
    LOCATION file) if pg_wal holds it under no timeline, else None. Without it the node
    could never start streaming (the source recycled it); an unparsable label: its text."""
    m = START_WAL_FILE.search(backup_label)
    if m is None:
        return f"no START WAL LOCATION in backup_label: {backup_label[:200]!r}"
    segment = m.group(1)[8:]  # the segment number; the first 8 digits name the timeline
    return None if any(len(f) == 24 and f[8:] == segment for f in wal_files) else m.group(1)


def parse_controldata(text: str) -> dict[str, str]:
    """pg_controldata's "key: value" lines (C locale) as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


async def controldata(data_dir: Path, *, user: str = "postgres", bindir: Path = DEFAULT_BINDIR,
                      timeout: float = 10.0) -> dict[str, str]:
    """This data directory's control file, read by pg_controldata (PgError if unreadable)."""
    return parse_controldata(await run_as([os.fspath(Path(bindir) / "pg_controldata"), "-D", os.fspath(data_dir)],
                                          user=user, timeout=timeout))


#: The login role pg_rewind connects to its source as: no superuser, no replication, only
#: execute on the functions pg_rewind calls (GRANTS). Its password derives from the shard
#: secret (rewind_password), so every member knows it and nobody else does.
REWIND_ROLE = "manatee_rewind"
GRANTS = (*(f"GRANT EXECUTE ON FUNCTION pg_catalog.{fn} TO {REWIND_ROLE}" for fn in (
    "pg_ls_dir(text, boolean, boolean)", "pg_stat_file(text, boolean)", "pg_read_binary_file(text)",
    "pg_read_binary_file(text, bigint, bigint, boolean)")),
    # CHECKPOINT (as SET ROLE pg_checkpoint: the role is NOINHERIT): a source's control file
    # names its new timeline only after a checkpoint (a restartpoint on a standby); before
    # it, pg_rewind sees one timeline and finds "no rewind required"
    f"GRANT pg_checkpoint TO {REWIND_ROLE}")
CHECKPOINT_SQL = "SET ROLE pg_checkpoint; CHECKPOINT; RESET ROLE"


def rewind_password(secret, enabled: bool = True) -> str | None:
    """The rewind role's password: an HMAC of a fixed label under the shard secret's signing
    key (a ShardSecret). None without a secret (insecure mode) or when rewind is off."""
    if secret is None or not enabled:
        return None
    return hmac.new(secret.signing_key, b"manatee pg_rewind role password", hashlib.sha256).hexdigest()
