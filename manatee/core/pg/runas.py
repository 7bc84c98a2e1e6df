"""Running PostgreSQL's programs as the PostgreSQL OS user, and the error every part of
:mod:`manatee.core.pg` raises.

PostgreSQL refuses to run as root; the sitter is root. Every PostgreSQL binary runs as
the PostgreSQL OS user (uid, gid and its supplementary groups), with a minimal C-locale
environment so messages and ``pg_controldata`` keys are English.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from manatee.core import nofollow

DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")


class PgError(Exception):
    """A PostgreSQL command or query failed; the message says which and why.

    ``pgcode`` is PostgreSQL's SQLSTATE when the server reported the error
    (e.g. ``25006`` read_only_sql_transaction), else None. ``timed_out``: no answer came
    within the deadline (or the server cancelled the statement at statement_timeout) —
    unlike a refusal ("too many clients"), a sign that the server may be hung.
    """

    def __init__(self, message: str, *, pgcode: str | None = None, sql: str | None = None,
                 timed_out: bool = False):
        super().__init__(message)
        self.pgcode = pgcode
        self.sql = sql
        self.timed_out = timed_out or pgcode == "57014"  # query_canceled (statement_timeout)



def pg_env(user: str) -> dict[str, str]:
    pw = pwd.getpwnam(user)
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "HOME": pw.pw_dir, "USER": user}


def as_user(user: str) -> dict[str, Any]:
    """subprocess kwargs that drop to `user` (nothing if we already are that user)."""
    pw = pwd.getpwnam(user)
    if os.geteuid() == pw.pw_uid:
        return {}
    if os.geteuid() != 0:
        raise PgError(f"cannot run PostgreSQL as {user!r}: this process is uid {os.geteuid()}, not root")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": os.getgrouplist(user, pw.pw_gid)}


def ensure_private_dir(path: Path, user: str = "postgres") -> None:
    """`path` exists, owned by `user`, mode 0700 (data and socket directories), set through
    a descriptor of the directory itself: a link at `path` is refused, never followed."""
    try:
        nofollow.ensure_private_dir(path, user)
    except nofollow.UnsafePath as e:
        raise PgError(f"refusing to use {path}: {e.strerror}") from None


async def run_as(
    cmd: Sequence[str | os.PathLike], *, user: str = "postgres", timeout: float = 120.0, cwd: str = "/",
    extra_env: dict[str, str] | None = None, merge_stderr: bool = False,
) -> str:
    """Run a PostgreSQL tool as `user`; return stdout, raise PgError with stderr on failure.

    `extra_env`: added to the minimal environment (e.g. PGPASSWORD: never on a command
    line, which every user can read). `merge_stderr`: stderr is returned with stdout (tools
    that report on stderr, like pg_rewind)."""
    argv = [str(c) for c in cmd]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
            cwd=cwd,
            env={**pg_env(user), **(extra_env or {})},
            **as_user(user),
        )
    except OSError as e:
        raise PgError(f"cannot run {' '.join(argv)}: {e}") from e
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise PgError(f"{' '.join(argv)} did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        msg = (err or out).decode(errors="replace").strip()
        raise PgError(f"{' '.join(argv)} failed with exit status {proc.returncode}: {msg}")
    return out.decode(errors="replace")

