"""Queries to PostgreSQL off the event loop, each with a deadline.

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
import socket
import threading
from typing import Any

import psycopg2
import psycopg2.extensions

from manatee.core.log import get_logger
from manatee.core.pg.runas import PgError
from manatee.core.pgquote import create_role_sql, render_conninfo

log = get_logger("manatee.pg")


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

    async def in_recovery(self) -> bool:
        return bool((await self.query("select pg_is_in_recovery() as r"))[0]["r"])

    async def promote(self, wait: bool = True, timeout: int = 60) -> None:
        """pg_promote(); with wait, returns once the node is out of recovery."""
        rows = await self.query(
            "select pg_promote(%s, %s) as ok", (wait, int(timeout)), timeout=float(timeout) + self.connect_timeout + 5
        )
        if wait and not rows[0]["ok"]:
            raise PgError(f"pg_promote on {self.where} did not finish within {timeout}s")


# The persistent connection is kept for PostgreSQL's lifetime so that a connection storm cannot
# lock the sitter out: an operator's idle_session_timeout or idle_in_transaction_session_timeout
# (postgresql.conf, ALTER ROLE or DATABASE; the startup packet's settings win over those) must
# not end it between two status queries.
KEEP_ME = " -c idle_session_timeout=0 -c idle_in_transaction_session_timeout=0"


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
            conn = psycopg2.connect(dsn, options=f"-c statement_timeout={ms} -c lock_timeout={ms}{KEEP_ME}")
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
            elif not broken:  # e.g. cancelled at statement_timeout inside a transaction block
                _end_open_block(client, conn, state)
            if not broken or fresh or attempt == 2 or state["abandoned"]:
                raise
        except BaseException:
            if state["abandoned"]:
                _close_broken(client, conn, state)
            else:
                _end_open_block(client, conn, state)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _end_open_block(client: PgClient, conn: Any, state: dict[str, Any]) -> None:
    """A statement of an explicit transaction block failed ("begin; ...; commit" sent as one
    string): PostgreSQL keeps the block open and aborted, and would refuse every later query
    on this kept connection ("current transaction is aborted"; sandbox trial 2026-12-06, a
    start during XID wraparound protection left the sitter blind). End it, or drop the
    connection if that fails."""
    from psycopg2 import extensions

    try:
        if conn.closed or conn.info.transaction_status == extensions.TRANSACTION_STATUS_IDLE:
            return
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - whatever it is, this connection is not reused
        _close_broken(client, conn, state)


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
        shut_socket(conn)


def shut_socket(conn: Any) -> None:
    """Shut down the socket of psycopg2 connection `conn` without closing it: whatever is
    blocked on it returns at once, and no cancel request is sent to a (maybe hung) server."""
    with contextlib.suppress(OSError, psycopg2.Error):
        fd = os.dup(conn.fileno())
        s = socket.socket(fileno=fd)
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.close()


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

