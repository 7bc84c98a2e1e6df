"""PostgreSQL control: initdb, the postmaster as a direct child, queries, pg_controldata.

Why it is shaped like this:

* PostgreSQL refuses to run as root; the sitter is root. Every PostgreSQL binary
  runs as the PostgreSQL OS user (uid, gid and its supplementary groups), with a
  minimal C-locale environment so messages and ``pg_controldata`` keys are English.
* The postmaster is exec'd directly (not via ``pg_ctl``, which double-forks): PID 1
  here reaps lazily, so only a direct child can be told dead from alive reliably.
  It runs in its own session; stdout/stderr go to a log file.
* Backends call ``setsid()`` themselves, so a process group does not cover them.
  "PostgreSQL of this data directory" is therefore every process running the
  ``postgres`` executable whose working directory is the data directory (the
  postmaster chdirs there and its children inherit it); :meth:`PostgresProcess.stop`
  returns only when none is left.
* psycopg2 blocks. Each query runs in its own short-lived daemon thread with a
  deadline; on timeout the connection's socket is shut down so the thread ends
  even if the server hangs (SIGSTOP, partition), and the event loop is never held.
* The sitter's own client is ``persistent``: one connection, opened as soon as
  PostgreSQL accepts connections and reused (serialized) by every status query, reload,
  promote and metrics scrape, with ``statement_timeout``/``lock_timeout`` set to each
  call's deadline. Clients that take every connection slot (superuser ones included:
  PostgreSQL 15 has no ``reserved_connections``) cannot lock the sitter out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import psycopg2
import psycopg2.extensions

from manatee.core import nofollow
from manatee.core.lsn import Lsn
from manatee.core.pgconfig import create_role_sql, render_conninfo
from manatee.core.procs import pid_alive

try:
    from manatee.core.log import get_logger
except ImportError:  # pragma: no cover - the lead's log module may not exist yet
    import structlog

    get_logger = structlog.get_logger

log = get_logger("manatee.pg")

DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
#: sun_path is 108 bytes on Linux, including the NUL.
_MAX_SOCKET_PATH = 107


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


# --------------------------------------------------------------------------- running as the PG user


def _pg_env(user: str) -> dict[str, str]:
    pw = pwd.getpwnam(user)
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "HOME": pw.pw_dir, "USER": user}


def _as_user(user: str) -> dict[str, Any]:
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
    cmd: Sequence[str | os.PathLike], *, user: str = "postgres", timeout: float = 120.0, cwd: str = "/"
) -> str:
    """Run a PostgreSQL tool as `user`; return stdout, raise PgError with stderr on failure."""
    argv = [str(c) for c in cmd]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=_pg_env(user),
            **_as_user(user),
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


# --------------------------------------------------------------------------- offline helpers


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


async def controldata(data_dir: Path, *, user: str = "postgres", bindir: Path = DEFAULT_BINDIR) -> dict[str, str]:
    """`pg_controldata` of a (preferably stopped) data dir as {"Latest checkpoint location": "0/16B3748", ...}."""
    out = await run_as([Path(bindir) / "pg_controldata", "-D", data_dir], user=user, timeout=30)
    result: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            result[key.strip()] = value.strip()
    if "Database cluster state" not in result:
        raise PgError(f"pg_controldata -D {data_dir}: unexpected output: {out[:200]!r}")
    return result


def controldata_timeline(cd: dict[str, str]) -> int:
    """Timeline of the latest checkpoint (minimum recovery timeline if that is later)."""
    tli = int(cd["Latest checkpoint's TimeLineID"])
    min_tli = int(cd.get("Min recovery ending loc's timeline", "0") or 0)
    return max(tli, min_tli)


def controldata_checkpoint(cd: dict[str, str]) -> Lsn:
    return Lsn.parse(cd["Latest checkpoint location"])


# --------------------------------------------------------------------------- processes of a data dir


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


# --------------------------------------------------------------------------- the postmaster


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
                    env=_pg_env(self.user),
                    start_new_session=True,
                    **_as_user(self.user),
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
        if pid is not None and (pid == -1 or pid_alive(pid)):
            log.warning("pg_stale_lock_removed", path=str(pidfile), pid=pid)
            pidfile.unlink(missing_ok=True)
        socklock = self.socket_dir / f".s.PGSQL.{self.port}.lock"
        pid = _lock_pid(socklock)
        if pid is not None and (pid == -1 or pid_alive(pid)):
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

    async def wait_exit(self) -> int | None:
        """Until the postmaster has exited and been reaped; its exit status."""
        if self._proc is None:
            return None
        return await self._proc.wait()

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

    def signal_all(self, sig: int) -> list[int]:
        """Send `sig` to the postmaster and every backend (e.g. SIGSTOP/SIGCONT to simulate a hang)."""
        pids = set(self.processes())
        if self.running and self._proc is not None:
            pids.add(self._proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return sorted(pids)

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


# --------------------------------------------------------------------------- roles


async def ensure_role(client: PgClient, name: str, password: str | None, *,
                      replication: bool = False, superuser: bool = False) -> bool:
    """Create login role `name` on a primary if it does not exist; True if created.

    An existing role is left as it is (its password included: rotation is an operator's
    ALTER ROLE, see docs/security.md). The statement runs in its own read-write
    transaction with ``synchronous_commit = local``: a primary kept read-only, or waiting
    for a sync that is not there yet, still creates it at once (it reaches the standbys
    with the WAL). The password travels as a SCRAM verifier, never in clear.
    """
    rows = await client.query("select rolsuper, rolreplication from pg_roles where rolname = %s", (name,))
    if rows:
        if replication and rows[0]["rolsuper"]:
            log.warning("pg_replication_role_is_superuser", role=name)
        return False
    sql = create_role_sql(name, password, replication=replication, superuser=superuser)
    try:
        await client.execute(f"begin read write; set local synchronous_commit = local; {sql}; commit")
    except PgError as e:
        if e.pgcode == "42710":  # duplicate_object: created meanwhile
            return False
        raise
    log.info("pg_role_created", role=name, replication=replication, superuser=superuser)
    return True


# --------------------------------------------------------------------------- queries


class PgClient:
    """Queries over a fresh psycopg2 connection per call (autocommit), off the event loop.

    `host` is a hostname/IP, or an absolute socket directory for a unix-socket connection.
    Every call has a deadline (`query_timeout` unless given): connect_timeout bounds
    connecting, and on expiry the connection's socket is shut down so a hung server
    cannot keep a thread forever.

    `persistent=True`: one connection kept open and reused by every call, one call at a
    time (the deadline covers waiting for the previous call too). statement_timeout and
    lock_timeout are set to the call's deadline on the server as well. A connection that
    broke (server restarted) is replaced once within the call; one whose call timed out is
    dropped and the next call connects again. :meth:`connect` opens it ahead of need.
    """

    def __init__(
        self,
        host: str,
        port: int,
        user: str = "postgres",
        dbname: str = "postgres",
        connect_timeout: int = 2,
        *,
        password: str | None = None,
        query_timeout: float = 10.0,
        application_name: str = "manatee",
        persistent: bool = False,
    ):
        self.persistent = persistent
        self._conn: Any = None  # the persistent connection (psycopg2), guarded by _conn_lock
        self._conn_ms: int | None = None  # its statement_timeout/lock_timeout (ms)
        self._conn_lock = threading.Lock()
        self._serial: asyncio.Lock | None = None  # one persistent call at a time
        self._serial_loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[str, Any] | None = None
        self.host = str(host)
        self.port = int(port)
        self.user = user
        self.dbname = dbname
        self.connect_timeout = max(1, int(connect_timeout))
        self.password = password
        self.query_timeout = query_timeout
        self.application_name = application_name

    def __repr__(self) -> str:
        return f"PgClient({self.where})"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def dsn(self) -> str:
        params: list[tuple[str, str | int | None]] = [
            ("host", self.host),
            ("port", self.port),
            ("user", self.user),
            ("dbname", self.dbname),
            ("password", self.password),
            ("connect_timeout", self.connect_timeout),
            ("application_name", self.application_name),
        ]
        if not self.host.startswith("/"):
            params += [("keepalives", 1), ("keepalives_idle", 5), ("keepalives_interval", 2), ("keepalives_count", 3)]
        return render_conninfo(params)

    # -- core

    async def query(self, sql: str, params: Any = None, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Rows as dicts keyed by PostgreSQL's column names."""
        return await self._call(sql, params, fetch=True, timeout=timeout)

    async def execute(self, sql: str, params: Any = None, *, timeout: float | None = None) -> None:
        await self._call(sql, params, fetch=False, timeout=timeout)

    async def connect(self, timeout: float | None = None) -> None:
        """Open the persistent connection now (e.g. as soon as PostgreSQL starts, before
        clients can take every slot). PgError if it cannot be opened in time."""
        await self.query("select 1", timeout=timeout)

    def close(self) -> None:
        """Drop the persistent connection (PostgreSQL is being stopped or was killed)."""
        if self._inflight is not None:
            _abandon(self._inflight)  # its thread closes the connection when it errors out
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None and self._inflight is None:
            with contextlib.suppress(Exception):
                conn.close()

    def _serializer(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._serial is None or self._serial_loop is not loop:
            self._serial, self._serial_loop = asyncio.Lock(), loop
        return self._serial

    async def _call(self, sql: str, params: Any, *, fetch: bool, timeout: float | None) -> list[dict[str, Any]]:
        timeout = self.query_timeout if timeout is None else timeout
        if not self.persistent:
            return await self._run(sql, params, fetch, timeout, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        serial = self._serializer()
        try:
            await asyncio.wait_for(serial.acquire(), timeout)
        except asyncio.TimeoutError:
            raise PgError(f"query on {self.where} timed out after {timeout:.1f}s waiting for the "
                          f"previous query on the monitoring connection: {sql}", sql=sql, timed_out=True) from None
        try:
            return await self._run(sql, params, fetch, max(0.05, deadline - loop.time()), self)
        finally:
            serial.release()

    async def _run(self, sql: str, params: Any, fetch: bool, timeout: float,
                   owner: PgClient | None) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        state: dict[str, Any] = {"conn": None, "abandoned": False, "lock": threading.Lock(),
                                 "timeout_ms": max(1, int(timeout * 1000))}
        dsn = self.dsn()

        def deliver(setter: str, value: Any) -> None:
            if not fut.done() and not state["abandoned"]:
                getattr(fut, setter)(value)

        def work() -> None:
            try:
                if owner is not None:
                    result = _persistent_query(owner, dsn, sql, params, fetch, state)
                else:
                    result = _blocking_query(dsn, sql, params, fetch, state)
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                value, setter = e, "set_exception"
            else:
                value, setter = result, "set_result"
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                loop.call_soon_threadsafe(deliver, setter, value)

        if owner is not None:
            self._inflight = state
        threading.Thread(target=work, name="pg-query", daemon=True).start()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            self._drop(state)
            raise PgError(f"query on {self.where} timed out after {timeout:.1f}s: {sql}", sql=sql,
                          timed_out=True) from None
        except asyncio.CancelledError:
            self._drop(state)
            raise
        except psycopg2.Error as e:
            text = (e.pgerror or str(e)).strip()
            raise PgError(f"query on {self.where} failed: {sql}: {text}", pgcode=e.pgcode, sql=sql) from e
        finally:
            if owner is not None and self._inflight is state:
                self._inflight = None

    def _drop(self, state: dict[str, Any]) -> None:
        """A call gave up: unblock its thread; a persistent connection is not reused."""
        _abandon(state)
        with self._conn_lock:
            if self._conn is not None and self._conn is state.get("conn"):
                self._conn = None

    # -- helpers

    async def health(self, timeout: float | None = None) -> bool:
        """SELECT 1 answered within the timeout. Never raises."""
        try:
            await self.query("select 1", timeout=timeout if timeout is not None else self.connect_timeout + 1)
            return True
        except Exception:  # noqa: BLE001 - health is a yes/no answer
            return False

    async def in_recovery(self) -> bool:
        return bool((await self.query("select pg_is_in_recovery() as r"))[0]["r"])

    async def wal_position(self) -> Lsn:
        """Primary: pg_current_wal_lsn(). Standby: the greater of received and replayed LSN."""
        row = (
            await self.query(
                "select pg_is_in_recovery() as rec,"
                " case when pg_is_in_recovery() then null else pg_current_wal_lsn() end as cur,"
                " pg_last_wal_receive_lsn() as recv, pg_last_wal_replay_lsn() as replay"
            )
        )[0]
        if not row["rec"]:
            return Lsn.parse(row["cur"])
        known = [Lsn.parse(v) for v in (row["recv"], row["replay"]) if v is not None]
        if not known:
            raise PgError(f"standby at {self.where} reports neither a received nor a replayed WAL position")
        return max(known)

    async def replication_rows(self) -> list[dict[str, Any]]:
        """pg_stat_replication, PostgreSQL's column names (``*_lsn`` as text)."""
        return await self.query("select * from pg_stat_replication order by application_name, pid")

    async def wal_receiver(self) -> dict[str, Any] | None:
        rows = await self.query("select * from pg_stat_wal_receiver")
        return rows[0] if rows else None

    async def timeline(self) -> int:
        """Current timeline: a primary's from its current WAL file name; a standby's from
        the WAL receiver (last received timeline), else the last restartpoint."""
        row = (
            await self.query(
                "select case when pg_is_in_recovery() then null"
                " else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end as primary_tli,"
                " (select received_tli from pg_stat_wal_receiver) as recv_tli,"
                " (select timeline_id from pg_control_checkpoint()) as ckpt_tli"
            )
        )[0]
        for key in ("primary_tli", "recv_tli", "ckpt_tli"):
            if row[key]:
                return int(row[key])
        raise PgError(f"cannot tell the timeline of {self.where}: {row}")

    async def setting(self, name: str) -> str:
        return (await self.query("select current_setting(%s) as v", (name,)))[0]["v"]

    async def reload(self) -> None:
        """pg_reload_conf(): the postmaster re-reads its files (asynchronously)."""
        await self.query("select pg_reload_conf()")

    async def promote(self, wait: bool = True, timeout: int = 60) -> None:
        """pg_promote(); with wait, returns once the node is out of recovery."""
        rows = await self.query(
            "select pg_promote(%s, %s) as ok", (wait, int(timeout)), timeout=float(timeout) + self.connect_timeout + 5
        )
        if wait and not rows[0]["ok"]:
            raise PgError(f"pg_promote on {self.where} did not finish within {timeout}s")


def _blocking_query(dsn: str, sql: str, params: Any, fetch: bool, state: dict[str, Any]) -> list[dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    try:
        state["conn"] = conn
        if state["abandoned"]:
            raise PgError("query abandoned (timed out while connecting)")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            if fetch and cur.description is not None:
                cols = [d.name for d in cur.description]
                return [dict(zip(cols, row)) for row in cur.fetchall()]
            return []
    finally:
        with state["lock"]:  # _abandon must never touch a closed (reusable) fd
            conn.close()


def _persistent_query(client: PgClient, dsn: str, sql: str, params: Any, fetch: bool,
                      state: dict[str, Any]) -> list[dict[str, Any]]:
    """`sql` on the client's persistent connection (opened here if there is none); once more
    on a fresh one if a reused connection turns out broken (e.g. PostgreSQL restarted)."""
    ms = state["timeout_ms"]
    for attempt in (1, 2):
        with client._conn_lock:
            conn = client._conn
        fresh = conn is None or conn.closed
        if fresh:
            conn = psycopg2.connect(dsn, options=f"-c statement_timeout={ms} -c lock_timeout={ms}")
            conn.autocommit = True
            with client._conn_lock:
                client._conn, client._conn_ms = conn, ms  # what the session's timeouts are now
        state["conn"] = conn
        if state["abandoned"]:
            _close_broken(client, conn, state)
            raise PgError("query abandoned (timed out while connecting)")
        try:
            with conn.cursor() as cur:
                if client._conn_ms != ms:
                    cur.execute(f"set statement_timeout = {ms}; set lock_timeout = {ms}")
                    client._conn_ms = ms
                cur.execute(sql, params)
                if fetch and cur.description is not None:
                    cols = [d.name for d in cur.description]
                    return [dict(zip(cols, row)) for row in cur.fetchall()]
                return []
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = bool(conn.closed) or state["abandoned"]
            if broken or attempt == 2:
                _close_broken(client, conn, state)
            if not broken or fresh or attempt == 2 or state["abandoned"]:
                raise
        except BaseException:
            if state["abandoned"]:
                _close_broken(client, conn, state)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _close_broken(client: PgClient, conn: Any, state: dict[str, Any]) -> None:
    with client._conn_lock:
        if client._conn is conn:
            client._conn = None
    with state["lock"]:
        with contextlib.suppress(Exception):
            conn.close()


def _abandon(state: dict[str, Any]) -> None:
    """Make a blocked query thread give up: shut down its connection's socket."""
    state["abandoned"] = True
    with state["lock"]:
        conn = state.get("conn")
        if conn is None or conn.closed:
            return
        with contextlib.suppress(OSError, psycopg2.Error):
            fd = os.dup(conn.fileno())
            s = socket.socket(fileno=fd)
            try:
                s.shutdown(socket.SHUT_RDWR)
            finally:
                s.close()
