"""The postmaster as a direct child, and every process of its data directory.

* The postmaster is exec'd directly (not via ``pg_ctl``, which double-forks): PID 1
  here reaps lazily, so only a direct child can be told dead from alive reliably.
  It runs in its own session; stdout/stderr go to a log file.
* Backends call ``setsid()`` themselves, so a process group does not cover them.
  "PostgreSQL of this data directory" is therefore every process running the
  ``postgres`` executable whose working directory is the data directory (the
  postmaster chdirs there and its children inherit it); :meth:`PostgresProcess.stop`
  returns only when none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import time
from pathlib import Path
from typing import Any, Literal

from manatee.core import nofollow
from manatee.core.log import get_logger
from manatee.core.pg.client import PgClient
from manatee.core.pg.runas import DEFAULT_BINDIR, PgError, as_user, ensure_private_dir, pg_env
from manatee.core.procs import pid_alive, pid_exists

log = get_logger("manatee.pg")

#: sun_path is 108 bytes on Linux, including the NUL.
_MAX_SOCKET_PATH = 107


def pg_processes(data_dir: Path, *, uid: int | None = None) -> list[int]:
    """Live processes running the postgres executable with `data_dir` as working directory."""
    real = os.path.realpath(data_dir)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd").removesuffix(" (deleted)")
            if cwd != real:
                continue
            exe = os.path.basename(os.readlink(f"/proc/{name}/exe").removesuffix(" (deleted)"))
            if exe not in ("postgres", "postmaster"):
                continue
            if uid is not None and os.stat(f"/proc/{name}").st_uid != uid:
                continue
        except OSError:  # gone, a zombie, or a kernel thread
            continue
        if pid_alive(int(name)):
            found.append(int(name))
    return found


def _lock_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return None
    except OSError:
        return -1
    try:
        return int(first)
    except ValueError:
        return -1


def _is_postgres(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith(("postgres", "postmaster"))
    except OSError:
        return False



class PostgresProcess:
    """One postmaster, a direct child of this process (never daemonised).

    listen address, port and socket directory are also passed on the command line,
    so the instance is always where this object connects to it (and never on the
    distribution's default /var/run/postgresql socket), whatever the config files say.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        user: str = "postgres",
        bindir: Path = DEFAULT_BINDIR,
        log_file: Path,
        socket_dir: Path,
        host: str,
        port: int,
    ):
        self.data_dir = Path(data_dir)
        self.user = user
        self.bindir = Path(bindir)
        self.log_file = Path(log_file)
        self.socket_dir = Path(socket_dir)
        self.host = host
        self.port = int(port)
        self._proc: asyncio.subprocess.Process | None = None
        self._uid = pwd.getpwnam(user).pw_uid

    # -- state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """Started and not yet exited (an unreaped postmaster counts as exited)."""
        return self._proc is not None and self._proc.returncode is None and pid_alive(self._proc.pid)

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    def client(self, **kw: Any) -> PgClient:
        """A client over this instance's unix socket (trust auth, never the network)."""
        return PgClient(str(self.socket_dir), self.port, user=self.user, **kw)

    def processes(self) -> list[int]:
        return pg_processes(self.data_dir, uid=self._uid)

    # -- start

    async def start(self) -> None:
        """Spawn ``postgres -D data_dir``; returns at once (see :meth:`wait_ready`)."""
        if self.running:
            raise PgError(f"postgres on {self.data_dir} already running as pid {self.pid}")
        if not (self.data_dir / "PG_VERSION").exists():
            raise PgError(f"cannot start postgres: {self.data_dir} is not a PostgreSQL data directory")
        sock = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(sock)) > _MAX_SOCKET_PATH:
            raise PgError(f"unix socket path too long ({len(str(sock))} > {_MAX_SOCKET_PATH}): {sock}")
        ensure_private_dir(self.socket_dir, self.user)
        self._clear_stale_locks()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.bindir / "postgres"),
            "-D", str(self.data_dir),
            "-h", self.host,
            "-p", str(self.port),
            "-k", str(self.socket_dir),
        ]
        try:
            log_fd = nofollow.open_append(self.log_file, mode=0o640, user=self.user)
        except OSError as e:
            raise PgError(f"cannot open the PostgreSQL log {self.log_file}: {e}") from None
        with os.fdopen(log_fd, "ab") as logf:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=str(self.data_dir),
                    env=pg_env(self.user),
                    start_new_session=True,
                    **as_user(self.user),
                )
            except OSError as e:
                raise PgError(f"cannot run {' '.join(argv)}: {e}") from e
        log.info("pg_started", pid=self._proc.pid, data_dir=str(self.data_dir), host=self.host, port=self.port)

    def _clear_stale_locks(self) -> None:
        """Remove lock files that would stop a start but belong to no live PostgreSQL.

        PostgreSQL itself ignores a lock file whose pid is dead; but after a crash the
        pid may have been reused by an unrelated process, and then PostgreSQL refuses
        to start ("lock file already exists"). We know better: nothing runs on this
        data dir, so the lock is stale.
        """
        live = self.processes()
        if live:
            raise PgError(f"postgres already running on {self.data_dir} (pids {live}): not starting another")
        pidfile = self.data_dir / "postmaster.pid"
        pid = _lock_pid(pidfile)
        # a pid that exists: reused by another process, or the killed postmaster not yet
        # reaped (a zombie: PostgreSQL's kill(pid, 0) takes it for a live postmaster)
        if pid is not None and (pid == -1 or pid_exists(pid)):
            log.warning("pg_stale_lock_removed", path=str(pidfile), pid=pid)
            pidfile.unlink(missing_ok=True)
        socklock = self.socket_dir / f".s.PGSQL.{self.port}.lock"
        pid = _lock_pid(socklock)
        if pid is not None and (pid == -1 or pid_exists(pid)):
            if pid > 0 and _is_postgres(pid):
                raise PgError(f"socket lock {socklock} is held by postgres pid {pid} (another instance?)")
            log.warning("pg_stale_lock_removed", path=str(socklock), pid=pid)
            socklock.unlink(missing_ok=True)

    # -- readiness

    def log_tail(self, nbytes: int = 3000) -> str:
        try:
            with os.fdopen(nofollow.open_read(self.log_file), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace")
        except OSError as e:
            return f"(no log: {e})"

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``SELECT 1`` works over the socket; PgError if postgres exits or time runs out."""
        if self._proc is None:
            raise PgError(f"postgres on {self.data_dir} was never started")
        client = self.client(connect_timeout=2)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            if not self.running:
                await self._reap_quietly()
                raise PgError(
                    f"postgres on {self.data_dir} exited with status {self.returncode} before accepting "
                    f"connections; log tail:\n{self.log_tail()}"
                )
            try:
                await client.query("select 1", timeout=max(0.5, min(3.0, deadline - time.monotonic())))
                return
            except PgError as e:
                last = e
            if time.monotonic() >= deadline:
                raise PgError(
                    f"postgres on {self.data_dir} not accepting connections after {timeout:.0f}s: {last}; "
                    f"log tail:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.1)

    async def _reap_quietly(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 2)

    # -- stop

    async def stop(self, *, mode: Literal["fast", "immediate"] = "fast", timeout: float = 10.0) -> None:
        """Stop PostgreSQL; returns when the postmaster is reaped and no process of the data dir is left.

        fast: SIGINT (rollback sessions, checkpoint), then SIGQUIT, then SIGKILL, each after
        `timeout`. immediate: SIGQUIT (no checkpoint; crash recovery at next start), then SIGKILL.
        """
        if mode == "fast":
            sigs = [signal.SIGINT, signal.SIGQUIT, signal.SIGKILL]
        elif mode == "immediate":
            sigs = [signal.SIGQUIT, signal.SIGKILL]
        else:
            raise ValueError(f"stop mode must be 'fast' or 'immediate', not {mode!r}")
        proc = self._proc
        if proc is not None and proc.returncode is None:
            for sig in sigs:
                if sig == signal.SIGKILL:
                    self._killpg()
                else:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, sig)
                try:
                    await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
                    break
                except asyncio.TimeoutError:
                    log.warning("pg_stop_escalating", pid=proc.pid, signal=signal.Signals(sig).name)
            else:
                raise PgError(f"postgres pid {proc.pid} on {self.data_dir} did not exit even after SIGKILL")
            log.info("pg_stopped", pid=proc.pid, mode=mode, status=proc.returncode)
        await self._kill_leftovers()

    async def kill(self) -> None:
        """SIGKILL the postmaster and every process of the data dir (a crash, not a shutdown)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._killpg()
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), 10)
            except asyncio.TimeoutError:
                raise PgError(f"postgres pid {proc.pid} did not exit after SIGKILL") from None
            log.info("pg_killed", pid=proc.pid)
        await self._kill_leftovers()

    def _killpg(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def _kill_leftovers(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = self.processes()
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)  # ours if we are a subreaper
            if time.monotonic() >= deadline:
                raise PgError(f"postgres processes of {self.data_dir} still alive after SIGKILL: {left}")
            await asyncio.sleep(0.05)

