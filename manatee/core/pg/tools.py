"""Offline PostgreSQL tools: ``initdb`` (run as the PostgreSQL user)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from manatee.core import nofollow
from manatee.core.log import get_logger
from manatee.core.pg.runas import DEFAULT_BINDIR, PgError, ensure_private_dir, run_as

log = get_logger("manatee.pg")


async def initdb(
    data_dir: Path,
    *,
    user: str = "postgres",
    bindir: Path = DEFAULT_BINDIR,
    auth_local: str = "trust",
    data_checksums: bool = True,
    sync: bool = True,
    timeout: float = 120.0,
    password: str | None = None,
    wal_segsize_mb: int | None = None,
) -> None:
    """Create a new cluster in `data_dir` (created, 0700, owned by `user`).

    `wal_segsize_mb`: initdb's --wal-segsize (a power of two, 1-1024; None: PostgreSQL's 16).

    `password` becomes the superuser's password (needed for md5/scram replication auth);
    it is passed through a private temporary file, never on a command line.

    Data checksums are on by default: they catch storage corruption PostgreSQL would
    otherwise replay or ship to standbys (ZFS checksums too, but not every data dir
    is on ZFS); they also imply ``wal_log_hints`` for pg_rewind. TCP access starts as
    ``reject``: :func:`manatee.core.pgconfig.write_role_config` writes the real pg_hba.
    `sync=False` skips initdb's final fsync (throwaway test clusters only).
    """
    data_dir = Path(data_dir)
    if (data_dir / "PG_VERSION").exists():
        raise PgError(f"initdb: {data_dir} already holds a PostgreSQL cluster")
    ensure_private_dir(data_dir, user)
    cmd: list[str | os.PathLike] = [
        Path(bindir) / "initdb",
        "-D", data_dir,
        "-U", user,
        "--auth-local", auth_local,
        "--auth-host", "reject",
        "-E", "UTF8",
        "--locale", "C",
        "--no-instructions",
    ]
    if data_checksums:
        cmd.append("--data-checksums")
    if not sync:
        cmd.append("--no-sync")
    if wal_segsize_mb is not None:
        cmd += ["--wal-segsize", str(int(wal_segsize_mb))]
    pwfile = None
    if password is not None:
        # Inside the new (private, empty) data directory's parent would be reachable by the
        # PostgreSQL user's links; create it fresh (O_EXCL|O_NOFOLLOW) through a directory
        # descriptor, whatever was planted at that name is replaced, not written through.
        pwfile = data_dir.parent / f".{data_dir.name}.pwfile"
        with nofollow.open_dir(pwfile.parent) as dfd:
            nofollow.create_new(dfd, pwfile.name, (password + "\n").encode(), mode=0o600, user=user)
        cmd += ["--pwfile", pwfile]
    try:
        await run_as(cmd, user=user, timeout=timeout)
    finally:
        if pwfile is not None:
            with nofollow.open_dir(pwfile.parent) as dfd, contextlib.suppress(FileNotFoundError):
                os.unlink(pwfile.name, dir_fd=dfd)
    log.info("pg_initdb", data_dir=str(data_dir), checksums=data_checksums)

