"""A recording writer: sequential inserts into the shard's primary, and what happened to each.

Every fault test (and the fault soak) runs one while it breaks things, then checks the
data against what the writer saw (see manatee_testbed.checks). Why it is built this way:

* It runs in its own thread with psycopg2 in *asynchronous* mode (non-blocking socket
  polled with select), so it never holds an event loop, and ``stop()`` returns promptly
  even while a commit hangs on a SIGSTOPped or partitioned server.
* It never cancels a commit. A cancelled synchronous-replication wait makes COMMIT
  return success with only a WARNING although the sync may not have the data (see
  reference/environment.md). When a commit takes longer than ``commit_timeout`` the
  writer *abandons* it instead: it shuts the socket down without a cancel request, and
  records the id as ``failed`` (outcome unknown: the row may or may not exist).
* Each id is used once: a client-side counter, strictly increasing, never reused even
  when a commit failed, so "acked id N missing" means exactly one lost transaction.
* Every INSERT runs as its own implicit transaction (autocommit): the statement returns
  success only after the COMMIT, including the wait for the synchronous standby. A
  success that came with any NOTICE/WARNING is recorded as ``warned``, not ``acked``.

Times are ``time.monotonic()`` seconds; take fault timestamps with the same clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from manatee.core.log import get_logger
from manatee.core.pg import shut_socket
from manatee_testbed.writer_record import ACKED, FAILED, WARNED, Attempt, Outage, WriteRecord

log = get_logger("manatee_testbed.writer")

#: How often blocking waits wake up to look at the stop flag.
_TICK = 0.05

#: SQL for the `node` column: the address:port of the server that executed the insert
#: (inet_server_addr() is NULL over a unix socket: then "local:<port>").
NODE_EXPR = (
    "coalesce(host(inet_server_addr()) || ':' || current_setting('port'),"
    " 'local:' || current_setting('port'))"
)


def table_identifier(table: str) -> sql.Composable:
    """`table` or `schema.table` as a safely quoted SQL identifier."""
    return sql.Identifier(*table.split("."))


def node_host(node: str | None) -> str | None:
    """The address part of a `node` column value ("127.0.0.12:5432" → "127.0.0.12")."""
    if node is None:
        return None
    return node.rsplit(":", 1)[0] if ":" in node else node



class WriterError(Exception):
    """Raised by wait helpers; carries the writer's stats in the message."""


class _Abandoned(Exception):
    """A statement or connect did not finish in time, or the writer is stopping."""


class RecordingWriter(WriteRecord):
    """Inserts ids 1, 2, 3 … (continuing after the table's max id) into `table` on whatever
    node `find_primary()` names, and records each id's outcome.

    find_primary: returns a libpq DSN (key=value or URI) of the current primary, or None
        when none is known. Called in the writer thread: on every (re)connect and, while
        connected, every `follow_primary` seconds (a changed DSN makes the writer move).
        Exceptions from it are logged and count as None.
    interval: pause after each successful commit. retry_interval: pause after a failure.
    connect_timeout: seconds to establish a connection (enforced by the writer).
    commit_timeout: seconds after which a commit is abandoned (socket shut down, never
        cancelled) and its id recorded as failed; None waits forever (still stoppable).
    start_id: first id; default max(id)+1 of the table on the first primary reached.
    """

    def __init__(
        self,
        find_primary: Callable[[], str | None],
        *,
        table: str = "manatee_writes",
        interval: float = 0.01,
        connect_timeout: float = 2,
        commit_timeout: float | None = 5.0,
        retry_interval: float = 0.1,
        follow_primary: float | None = 1.0,
        start_id: int | None = None,
        name: str = "writer",
    ):
        self.find_primary = find_primary
        self.table = table
        self.interval = interval
        self.connect_timeout = connect_timeout
        self.commit_timeout = commit_timeout
        self.retry_interval = retry_interval
        self.follow_primary = follow_primary
        self.name = name
        self.token = uuid.uuid4().hex[:8]

        super().__init__()  # the record and its lock (`_cond`), which also guards the fields below
        self._next_id = start_id
        self._ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connect_failures = 0
        self._no_primary = 0
        self._last_error: str | None = None
        self._dsn: str | None = None
        self._started_at: float | None = None

        self._conn: Any = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> RecordingWriter:
        if self._thread is not None:
            raise WriterError(f"{self.name} already started")
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"recording-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop writing; an in-flight commit is abandoned (recorded as failed), never
        cancelled. Returns whether the thread ended within `timeout` (it can only lag
        behind if `find_primary` itself blocks)."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        ended = not self._thread.is_alive()
        if not ended:
            log.warning("writer_stop_timeout", writer=self.name, timeout=timeout)
        with self._cond:
            if self._stopped_at is None:
                self._stopped_at = time.monotonic()
            self._cond.notify_all()
        return ended

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> RecordingWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def astop(self, timeout: float = 5.0) -> bool:
        """stop() without holding the event loop."""
        return await asyncio.to_thread(self.stop, timeout)

    async def await_acks(self, n: int, timeout: float = 10.0, *, since_call: bool = True) -> int:
        """wait_for_acks() without holding the event loop."""
        return await asyncio.to_thread(self.wait_for_acks, n, timeout, since_call=since_call)

    async def __aenter__(self) -> RecordingWriter:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    # ------------------------------------------------------------------ results

    def stats(self) -> dict[str, Any]:
        with self._cond:
            now = self._now_or_stopped()
            outs = self._outages_locked()
            t = self._success_times
            return {
                "writer": self.name,
                "running": self.running,
                "dsn": self._dsn,
                "next_id": self._next_id,
                "attempts": len(self._attempts),
                "acked": len(self._acked),
                "warned": len(self._warned),
                "failed": len(self._failed),
                "connect_failures": self._connect_failures,
                "no_primary": self._no_primary,
                "outages": len(outs),
                "outage_open": self._open is not None,
                "longest_outage": round(max((o.duration(now) for o in outs), default=0.0), 3),
                "longest_ack_gap": round(max((b - a for a, b in zip(t, t[1:])), default=0.0), 3),
                "last_error": self._last_error,
            }

    def wait_for_acks(self, n: int, timeout: float = 10.0, *, since_call: bool = True) -> int:
        """Block until `n` more successful commits (acked or warned) than at the call
        (or `n` in total with since_call=False). Returns the total; raises WriterError
        with the writer's stats on timeout or if the writer stopped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = n + (len(self._success_times) if since_call else 0)
            while len(self._success_times) < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set() or (self._thread is not None and not self._thread.is_alive()):
                    break
                self._cond.wait(min(left, 0.2))
            have = len(self._success_times)
        if have < target:
            raise WriterError(f"{self.name}: {have}/{target} successful commits after {timeout}s: {self.stats()}")
        return have

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        last_check = 0.0
        try:
            while not self._stop.is_set():
                if self._conn is None:
                    dsn = self._ask_primary()
                    if dsn is None:
                        self._note_failure(time.monotonic(), "no primary known", no_primary=True)
                        self._stop.wait(self.retry_interval)
                        continue
                    if not self._open_connection(dsn):
                        self._stop.wait(self.retry_interval)
                        continue
                    last_check = time.monotonic()
                elif self.follow_primary is not None and time.monotonic() - last_check >= self.follow_primary:
                    last_check = time.monotonic()
                    dsn = self._ask_primary()
                    if dsn is not None and dsn != self._dsn:
                        log.info("writer_primary_changed", writer=self.name, old=self._dsn, new=dsn)
                        self._close()
                        continue
                if self._attempt():
                    self._stop.wait(self.interval)
                else:
                    self._close()
                    self._stop.wait(self.retry_interval)
        except BaseException as e:  # noqa: BLE001 - a dead writer must say why
            log.exception("writer_crashed", writer=self.name)
            with self._cond:
                self._last_error = f"writer crashed: {type(e).__name__}: {e}"
        finally:
            self._close()
            with self._cond:
                if self._stopped_at is None and self._stop.is_set():
                    self._stopped_at = time.monotonic()
                self._cond.notify_all()

    def _ask_primary(self) -> str | None:
        try:
            return self.find_primary()
        except Exception as e:  # noqa: BLE001 - the harness's lookup may fail mid-fault
            with self._cond:
                self._last_error = f"find_primary: {type(e).__name__}: {e}"
            return None

    def _open_connection(self, dsn: str) -> bool:
        """Connect (and on first use create the table and pick the first id)."""
        started = time.monotonic()
        try:
            self._conn = self._connect(dsn)
            self._dsn = dsn
            if not self._ready:
                self._setup()
        except (psycopg2.Error, _Abandoned, OSError) as e:
            self._close()
            with self._cond:
                self._connect_failures += 1
            if not self._stop.is_set():
                self._note_failure(started, f"connect/setup on {dsn}: {_describe(e)}")
            return False
        log.info("writer_connected", writer=self.name, dsn=dsn, next_id=self._next_id)
        return True

    def _connect(self, dsn: str) -> Any:
        params = psycopg2.extensions.parse_dsn(dsn)
        extra: dict[str, Any] = {}
        defaults = {
            "application_name": f"manatee-{self.name}",
            "keepalives": 1,
            "keepalives_idle": 1,
            "keepalives_interval": 1,
            "keepalives_count": 3,
        }
        for k, v in defaults.items():
            if k not in params:
                extra[k] = v
        conn = psycopg2.connect(dsn, async_=1, **extra)
        try:
            self._wait(conn, time.monotonic() + self.connect_timeout)
        except BaseException:
            _shut(conn)
            raise
        return conn

    def _setup(self) -> None:
        """Create the table if missing (checked first: CREATE … IF NOT EXISTS fails on a
        read-only node even when the table exists) and continue after its max id."""
        ident = table_identifier(self.table)
        deadline = None if self.commit_timeout is None else time.monotonic() + self.commit_timeout
        exists = self._query("select to_regclass(%s) is not null", (self.table,), deadline)[0][0]
        if not exists:
            self._query(
                sql.SQL(
                    "create table if not exists {} (id bigint primary key,"
                    " written_at timestamptz not null default now(), node text, payload text)"
                ).format(ident),
                None,
                deadline,
                fetch=False,
            )
        (max_id,) = self._query(sql.SQL("select coalesce(max(id), 0) from {}").format(ident), None, deadline)[0]
        if self._next_id is None:
            self._next_id = int(max_id) + 1
        elif self._next_id <= int(max_id):
            log.warning("writer_start_id_below_max", writer=self.name, start_id=self._next_id, max_id=int(max_id))
        self._ready = True
        log.info("writer_setup", writer=self.name, table=self.table, first_id=self._next_id)

    def _query(self, q: Any, params: Any, deadline: float | None, *, fetch: bool = True) -> list[tuple]:
        cur = self._conn.cursor()
        cur.execute(q, params)
        self._wait(self._conn, deadline)
        rows = cur.fetchall() if fetch else []
        del self._conn.notices[:]
        return rows

    def _attempt(self) -> bool:
        """Insert the next id; True if its commit returned success."""
        conn, dsn = self._conn, self._dsn
        assert conn is not None and dsn is not None and self._next_id is not None
        ident = table_identifier(self.table)
        with self._cond:
            id_ = self._next_id
            self._next_id += 1
        payload = f"{self.token}:{id_}:{uuid.uuid4().hex[:8]}"
        del conn.notices[:]
        started = time.monotonic()
        deadline = None if self.commit_timeout is None else started + self.commit_timeout
        error: str | None = None
        try:
            cur = conn.cursor()
            cur.execute(
                sql.SQL("insert into {} (id, node, payload) values (%s, " + NODE_EXPR + ", %s)").format(ident),
                (id_, payload),
            )
            self._wait(conn, deadline)
        except (psycopg2.Error, _Abandoned, OSError) as e:
            error = _describe(e)
        finished = time.monotonic()
        notices = tuple(n.strip() for n in conn.notices)
        if error is not None:
            outcome = FAILED
        elif notices:
            outcome = WARNED
        else:
            outcome = ACKED
        attempt = Attempt(id_, dsn, started, finished, outcome, error, notices)
        with self._cond:
            self._attempts.append(attempt)
            if outcome == FAILED:
                self._failed.add(id_)
                self._last_error = f"id {id_} on {dsn}: {error}"
            else:
                (self._warned if outcome == WARNED else self._acked).add(id_)
                self._note_success_locked(finished)
            self._cond.notify_all()
        if outcome == FAILED and not self._stop.is_set():  # abandoned by stop(): no outage
            self._note_failure(started, None)
            log.debug("writer_commit_failed", writer=self.name, id=id_, dsn=dsn, error=error)
        elif outcome == WARNED:
            log.warning("writer_commit_warned", writer=self.name, id=id_, dsn=dsn, notices=list(notices))
        return outcome != FAILED

    def _note_success_locked(self, at: float) -> None:
        self._success_times.append(at)
        self._last_success = at
        if self._open is not None:
            o = self._open
            self._outages.append(Outage(o["start"], at, o["last_ack"], o["failures"]))
            log.info("writer_outage_over", writer=self.name, seconds=round(at - o["start"], 3), failures=o["failures"])
            self._open = None

    def _note_failure(self, at: float, error: str | None, *, no_primary: bool = False) -> None:
        with self._cond:
            if error is not None:
                self._last_error = error
            if no_primary:
                self._no_primary += 1
            if self._last_success is None:
                return  # no outage before the first success
            if self._open is None:
                self._open = {"start": at, "last_ack": self._last_success, "failures": 0}
                log.info("writer_outage", writer=self.name, error=self._last_error)
            self._open["failures"] += 1

    def _wait(self, conn: Any, deadline: float | None) -> None:
        """Drive an async psycopg2 operation to completion; abandon it (never cancel) at
        the deadline or on stop()."""
        while True:
            state = conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            if self._stop.is_set():
                raise _Abandoned("writer stopping")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise _Abandoned("no answer before the deadline: abandoned (socket shut down, not cancelled)")
            wait = _TICK if deadline is None else min(_TICK, deadline - now)
            if state == psycopg2.extensions.POLL_READ:
                select.select([conn.fileno()], [], [], wait)
            elif state == psycopg2.extensions.POLL_WRITE:
                select.select([], [conn.fileno()], [], wait)
            else:  # pragma: no cover - psycopg2 documents only the three states
                raise psycopg2.OperationalError(f"unexpected poll state {state}")

    def _close(self) -> None:
        if self._conn is not None:
            _shut(self._conn)
            self._conn = None


def _shut(conn: Any) -> None:
    """Shut the socket down, then close: no cancel request is ever sent."""
    with contextlib.suppress(Exception):
        if not conn.closed:
            shut_socket(conn)
    with contextlib.suppress(Exception):
        conn.close()


def _describe(e: BaseException) -> str:
    code = getattr(e, "pgcode", None)
    text = (getattr(e, "pgerror", None) or str(e) or type(e).__name__).strip().replace("\n", " ")
    return f"{type(e).__name__}{f' [{code}]' if code else ''}: {text}"


__all__ = ["RecordingWriter", "WriterError", "NODE_EXPR", "node_host", "table_identifier"]
