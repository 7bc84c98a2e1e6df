"""ZooKeeper client for asyncio daemons: kazoo underneath, everything delivered on the loop.

Why a wrapper: kazoo runs its connection and callbacks in its own threads, and its
blocking calls would stall the event loop. Here every operation uses kazoo's *_async
call and resolves an asyncio future from kazoo's completion thread
(`loop.call_soon_threadsafe`); session-state changes and watch notifications are
likewise handed to the loop, so daemon code never runs in a kazoo thread.

Failure policy: kazoo reconnects by itself (exponential backoff capped at a third of the
session timeout). Operations do not wait for a reconnect: when the client is not
connected, or no reply comes within `op_timeout`, they raise `ConnectionLoss` and the
caller decides (`retry()` waits for the connection and tries again). As in ZooKeeper
itself, a write that failed with ConnectionLoss may or may not have been applied.

Session safety (the sitter's fencing, S1): `disconnected_since` is when the link was
lost, `last_heard_monotonic` when the server last sent anything. The server expires
the session `negotiated_session_timeout` after the last packet it got from us, so
`session_expiry_deadline()` (last heard + timeout) is the earliest moment another node
may have taken over; a primary cut off from ZooKeeper must stop writes before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Union

from kazoo.client import KazooClient
from kazoo.exceptions import (  # re-exported for callers
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NoNodeError,
    NodeExistsError,
    NotEmptyError,
    RolledBackError,
    SessionExpiredError,
)
from kazoo.protocol.serialization import Connect
from kazoo.protocol.states import KazooState, ZnodeStat
from kazoo.retry import KazooRetry
from kazoo.security import ACL, OPEN_ACL_UNSAFE, make_acl, make_digest_acl

from manatee.core.log import get_logger


__all__ = [
    "BadVersionError",
    "Check",
    "ConnectionClosedError",
    "ConnectionLoss",
    "Create",
    "Delete",
    "KazooException",
    "NoAuthError",
    "NoNodeError",
    "NodeExistsError",
    "NotEmptyError",
    "RolledBackError",
    "SessionExpiredError",
    "SetData",
    "WatchHandle",
    "ZKClient",
    "ZKDataError",
    "ZKError",
    "ZnodeStat",
    "decode_json",
    "encode_json",
    "encode_value",
    "connect_reply_timeout",
    "resuming_kazoo",
    "OPEN_ACL_UNSAFE",
    "ZKAuth",
    "shard_acl",
    "same_acl",
    "auth_from_env",
]

CONNECTED = KazooState.CONNECTED
SUSPENDED = KazooState.SUSPENDED
LOST = KazooState.LOST

Value = Union[bytes, str, dict, list, None]


class ZKError(Exception):
    """ZooKeeper is unusable for a reason the caller should report (unreachable, bad data)."""


class ZKDataError(ZKError, ValueError):
    """A znode's content is not what it should be (e.g. not JSON)."""


# --- a kazoo client that keeps its session across a ZooKeeper restart ------------------------


def connect_reply_timeout(session_timeout: float) -> float:
    """How long to wait for the server's reply to a session (re)connect.

    kazoo waits the whole session timeout; a server that accepted the TCP connection while
    still starting up may never answer (ZooKeeper 3.8 leaves such a socket open), and by the
    time kazoo gives up the restarted server has expired the session we came to resume (F10:
    a sync lost its place after a ZooKeeper restart). A live server answers in
    milliseconds: give up early and let the connection retry try again."""
    return max(1.0, float(session_timeout) / 4)


def resuming_kazoo(hosts: str, session_timeout: float, **kw: Any) -> KazooClient:
    """A KazooClient that resumes its session after ZooKeeper comes back.

    A restarted ZooKeeper restores the sessions in its data dir, each with a fresh timeout
    counted from the server's start: a client must be back within that timeout. kazoo's
    default reconnect backoff grows to a minute, and it waits a whole session timeout for a
    connect reply; either makes it miss the window. Here reconnect attempts are at most a
    third of the session timeout apart and a connect reply is awaited for at most
    `connect_reply_timeout()`. Used by the daemons (ZKClient), manatee.client and the tests.
    Extra keyword arguments go to KazooClient."""
    session_timeout = float(session_timeout)
    kw.setdefault("connection_retry", KazooRetry(
        max_tries=-1, delay=0.05, backoff=2, max_jitter=0.1, max_delay=max(0.2, session_timeout / 3.0)))
    kz = KazooClient(hosts=hosts, timeout=session_timeout, **kw)
    cap = connect_reply_timeout(session_timeout)
    conn = kz._connection
    orig_invoke = getattr(conn, "_invoke", None)
    if orig_invoke is not None:

        def _invoke(timeout, request, xid=None):
            if isinstance(request, Connect):
                timeout = min(timeout, cap)
            return orig_invoke(timeout, request, xid)

        conn._invoke = _invoke
    return kz


# --- auth and ACLs -------------------------------------------------------------------------


@dataclass(frozen=True)
class ZKAuth:
    """Digest auth for a shard: `credential` is "user:password". Its repr hides the password."""

    credential: str = field(repr=False)
    scheme: str = "digest"

    def __post_init__(self) -> None:
        if self.scheme != "digest":
            raise ValueError(f"ZooKeeper auth scheme must be 'digest', not {self.scheme!r}")
        user, sep, pw = self.credential.partition(":")
        if not sep or not user or not pw:
            raise ValueError("ZooKeeper credential must be 'user:password' (both non-empty)")

    @property
    def user(self) -> str:
        return self.credential.partition(":")[0]

    def auth_data(self) -> list[tuple[str, str]]:
        return [(self.scheme, self.credential)]

    def acl(self) -> list[ACL]:
        return shard_acl(self)


def shard_acl(auth: ZKAuth) -> list[ACL]:
    """The shard's znodes: readable by anyone (tools, manatee-stat, clients), created,
    changed, deleted and re-ACLed only by the holder of the shard's credential."""
    user, _, pw = auth.credential.partition(":")
    return [make_acl("world", "anyone", read=True), make_digest_acl(user, pw, all=True)]


def same_acl(a: Iterable[ACL], b: Iterable[ACL]) -> bool:
    key = lambda acl: (acl.perms, acl.id.scheme, acl.id.id)  # noqa: E731
    return sorted(map(key, a)) == sorted(map(key, b))


AUTH_FILE_ENV = "MANATEE_ZK_AUTH_FILE"


def auth_from_env() -> ZKAuth | None:
    """The CLIs' credential: $MANATEE_ZK_AUTH_FILE names a file holding "user:password"
    (None when unset). ValueError (naming the file, never its content) if it is unusable."""
    import os

    path = os.environ.get(AUTH_FILE_ENV)
    if not path:
        return None
    try:
        text = open(path, encoding="utf-8").read().strip()
    except OSError as e:
        raise ValueError(f"{AUTH_FILE_ENV}={path}: cannot read it: {e.strerror}") from None
    try:
        return ZKAuth(text)
    except ValueError as e:
        raise ValueError(f"{AUTH_FILE_ENV}={path}: {e}") from None


# --- encoding ------------------------------------------------------------------------------


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def decode_json(data: bytes | None) -> Any:
    """JSON from znode bytes; None for an empty node. Raises ValueError on garbage."""
    if not data:
        return None
    return json.loads(data.decode("utf-8"))


def encode_value(value: Value) -> bytes:
    """bytes as is, str as UTF-8, dict/list as JSON, None as empty."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return encode_json(value)
    raise TypeError(f"znode value must be bytes, str, dict or list, not {type(value).__name__}")


# --- transaction operations ----------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    path: str
    version: int


@dataclass(frozen=True)
class Create:
    path: str
    value: Value = b""
    ephemeral: bool = False
    sequence: bool = False


@dataclass(frozen=True)
class SetData:
    path: str
    value: Value
    version: int = -1


@dataclass(frozen=True)
class Delete:
    path: str
    version: int = -1


TxOp = Union[Check, Create, SetData, Delete, tuple]

_TUPLE_OPS = {"check": Check, "create": Create, "set": SetData, "delete": Delete}


def _as_op(op: TxOp) -> Check | Create | SetData | Delete:
    if isinstance(op, (Check, Create, SetData, Delete)):
        return op
    if isinstance(op, tuple) and op and op[0] in _TUPLE_OPS:
        return _TUPLE_OPS[op[0]](*op[1:])
    raise TypeError(
        f"transaction op {op!r}: expected Check/Create/SetData/Delete or a tuple "
        "('check', path, version) | ('create', path, value[, ephemeral[, sequence]]) | "
        "('set', path, value[, version]) | ('delete', path[, version])"
    )


# --- watches -------------------------------------------------------------------------------

_UNSET = object()

WatchCallback = Callable[[Any], Union[None, Awaitable[None]]]


class WatchHandle:
    """A children or data watch that keeps itself registered across reconnects and
    session loss. The callback runs on the loop, once at start with the current value
    and then on every change (None while the node does not exist). `cancel()` stops it.
    """

    def __init__(self, client: "ZKClient", path: str, kind: str, cb: WatchCallback):
        self.path = path
        self.kind = kind  # "children" | "data"
        self._client = client
        self._cb = cb
        self._loop = client._loop
        self._trigger = asyncio.Event()
        self._ready = asyncio.Event()
        self._cancelled = False
        # One object for every registration: kazoo keeps watchers in a set, so a path
        # watched again before it fired is not registered twice.
        self._kazoo_watcher = self._on_kazoo_event
        self._task = self._loop.create_task(self._run(), name=f"zk-watch-{kind}:{path}")

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True
        self._task.cancel()
        self._client._watches.discard(self)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the callback has been called with the initial value."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    def _on_kazoo_event(self, _event) -> None:  # kazoo callback thread
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._trigger.set)

    async def _read(self) -> tuple[Any, Any]:
        """(value for the callback, key that changes iff the value changed)."""
        c = self._client
        while True:
            try:
                if self.kind == "children":
                    kids = sorted(await c._op(c._kz.get_children_async, self.path, self._kazoo_watcher))
                    return kids, tuple(kids)
                data, stat = await c._op(c._kz.get_async, self.path, self._kazoo_watcher)
                return (data, stat), (stat.czxid, stat.mzxid)
            except NoNodeError:
                stat = await c._op(c._kz.exists_async, self.path, self._kazoo_watcher)
                if stat is None:
                    return None, None
                # created between the two calls: read it again

    async def _run(self) -> None:
        log = self._client._log
        last: Any = _UNSET
        while not self._cancelled:
            await self._client._connected_evt.wait()
            self._trigger.clear()
            try:
                value, key = await self._read()
            except ConnectionClosedError:
                return
            except (ConnectionLoss, SessionExpiredError):
                await asyncio.sleep(0.05)  # wait for the reconnect, then read again
                continue
            except Exception as e:  # noqa: BLE001 - keep watching; report it
                log.warning("zk_watch_read_failed", path=self.path, kind=self.kind, error=repr(e))
                await asyncio.sleep(0.5)
                continue
            if key != last or last is _UNSET:
                last = key
                try:
                    res = self._cb(value)
                    if inspect.isawaitable(res):
                        await res
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001
                    log.exception("zk_watch_callback_failed", path=self.path, kind=self.kind, error=repr(e))
            self._ready.set()
            await self._trigger.wait()


# --- client --------------------------------------------------------------------------------


class ZKClient:
    """One ZooKeeper session, used from one asyncio event loop.

    hosts: "h1:p1,h2:p2[/chroot]". session_timeout in seconds (the server may grant a
    different one: see `negotiated_session_timeout`). op_timeout (default: the session
    timeout) bounds every operation.
    """

    def __init__(
        self,
        hosts: str,
        session_timeout: float,
        *,
        connect_timeout: float = 10.0,
        op_timeout: float | None = None,
        logger=None,
        read_only: bool = False,
        auth: ZKAuth | None = None,
        tls: dict[str, Any] | None = None,
    ):
        if session_timeout <= 0:
            raise ValueError(f"session_timeout must be > 0 seconds, got {session_timeout!r}")
        self.hosts = hosts
        self.session_timeout = float(session_timeout)
        self.connect_timeout = float(connect_timeout)
        self.op_timeout = float(op_timeout) if op_timeout else self.session_timeout
        self._log = logger or get_logger("zk")
        self._read_only = read_only
        # With auth, every znode this client creates gets the shard's ACL (readable by all,
        # writable only with the credential). tls: KazooClient's use_ssl/ca/certfile/keyfile/
        # keyfile_password/verify_certs/check_hostname.
        self.auth = auth
        self.acl = auth.acl() if auth is not None else None
        self._kazoo_kw: dict[str, Any] = dict(tls or {})
        if auth is not None:
            self._kazoo_kw.update(auth_data=auth.auth_data(), default_acl=self.acl)
        self._kz = self._new_kazoo()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected_evt: asyncio.Event | None = None
        self._listeners: list[Callable[[str], Any]] = []
        self._watches: set[WatchHandle] = set()
        self._bg: set[asyncio.Task] = set()
        self._started = False
        self._closing = False
        self._closed = False
        # Written by kazoo's connection thread, read anywhere (plain attribute stores).
        self._state: str = LOST
        self._session_id: int | None = None
        self._negotiated_ms: int | None = None
        self._last_connected: float | None = None
        self._disconnected_since: float | None = None
        self._last_heard: float | None = None
        self.connect_reply_timeout = connect_reply_timeout(self.session_timeout)

    def _new_kazoo(self) -> KazooClient:
        """A fresh kazoo client, hooked and listened to. start() makes one per attempt: a
        kazoo client that was stopped after a failed attempt cannot be started again
        (issue 8: a sitter started before ZooKeeper never connected)."""
        try:
            kz = resuming_kazoo(self.hosts, self.session_timeout, read_only=self._read_only, **self._kazoo_kw)
        except (ValueError, KazooException) as e:
            raise ZKError(f"invalid ZooKeeper connect string {self.hosts!r}: {e}") from e
        self._hook_connection(kz)

        def listener(state: str) -> None:
            if kz is self._kz:  # a discarded attempt's client reports nothing
                self._on_kazoo_state(state)

        kz.add_listener(listener)
        return kz

    # -- kazoo thread side ------------------------------------------------------------
    def _hook_connection(self, kz: KazooClient) -> None:
        """Record the negotiated session timeout and the time of the last packet from the
        server. kazoo keeps neither, so wrap two ConnectionHandler methods on this
        instance (checked by tests/unit/test_zk_encoding.py against the installed kazoo)."""
        conn = kz._connection
        orig_invoke = getattr(conn, "_invoke", None)
        orig_read = getattr(conn, "_read_socket", None)
        if orig_invoke is not None:

            def _invoke(timeout, request, xid=None):
                result = orig_invoke(timeout, request, xid)
                if isinstance(request, Connect) and result and kz is self._kz:
                    self._negotiated_ms = int(result[0].time_out)
                    self._last_heard = time.monotonic()
                return result

            conn._invoke = _invoke
        if orig_read is not None:

            def _read_socket(read_timeout):
                if kz is self._kz:
                    self._last_heard = time.monotonic()
                return orig_read(read_timeout)

            conn._read_socket = _read_socket

    def _on_kazoo_state(self, state: str) -> None:  # kazoo connection thread: no blocking
        now = time.monotonic()
        self._state = state
        if state == CONNECTED:
            self._session_id = self._kz._session_id
            self._last_connected = now
            self._disconnected_since = None
        else:
            if self._disconnected_since is None:
                self._disconnected_since = now
            if state == LOST:
                self._session_id = None
        loop = self._loop
        if loop is None or self._closing:
            return
        with contextlib.suppress(RuntimeError):  # loop closed
            loop.call_soon_threadsafe(self._dispatch_state, state)

    # -- loop side --------------------------------------------------------------------
    def _dispatch_state(self, state: str) -> None:
        if self._closing:
            return
        if state == CONNECTED:
            self._connected_evt.set()
            for w in self._watches:  # re-read (and re-register) after any reconnect
                w._trigger.set()
        else:
            self._connected_evt.clear()
        self._log.info(
            "zk_state",
            state=state,
            hosts=self.hosts,
            session_id=self.session_id_hex,
            negotiated_timeout=self.negotiated_session_timeout,
        )
        for cb in list(self._listeners):
            try:
                res = cb(state)
                if inspect.isawaitable(res):
                    t = asyncio.ensure_future(res)
                    self._bg.add(t)
                    t.add_done_callback(self._bg.discard)
            except Exception as e:  # noqa: BLE001
                self._log.exception("zk_state_listener_failed", state=state, error=repr(e))

    def add_state_listener(self, cb: Callable[[str], Any]) -> None:
        """cb(state) on the loop for every change: "CONNECTED" | "SUSPENDED" | "LOST".

        cb may be a coroutine function (run as a task). Nothing is reported once close()
        has begun (no LOST for a deliberate close)."""
        self._listeners.append(cb)

    def remove_state_listener(self, cb: Callable[[str], Any]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(cb)

    # -- properties -------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state == CONNECTED and not self._closed

    @property
    def session_id(self) -> int | None:
        return self._session_id

    @property
    def session_id_hex(self) -> str | None:
        return None if self._session_id is None else f"0x{self._session_id:x}"

    @property
    def negotiated_session_timeout(self) -> float | None:
        """Seconds, as granted by the server at the last connect (None before that)."""
        return None if self._negotiated_ms is None else self._negotiated_ms / 1000.0

    @property
    def last_connected_monotonic(self) -> float | None:
        """time.monotonic() of the last transition to CONNECTED."""
        return self._last_connected

    @property
    def disconnected_since(self) -> float | None:
        """time.monotonic() when the connection was lost; None while connected."""
        return None if self._state == CONNECTED else self._disconnected_since

    @property
    def last_heard_monotonic(self) -> float | None:
        """time.monotonic() when the server last sent us anything (pings included)."""
        return self._last_heard

    def session_expiry_deadline(self) -> float | None:
        """While disconnected: the monotonic time from which the server may have expired
        our session (last heard + negotiated timeout). None while connected."""
        if self._state == CONNECTED or self._last_heard is None:
            return None
        timeout = self.negotiated_session_timeout or self.session_timeout
        return self._last_heard + timeout

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Connect; ZKError if no server answers within connect_timeout.

        After a ZKError, start() may be called again (the caller's retry loop): each attempt
        uses a fresh kazoo client, so the client connects whenever ZooKeeper comes up,
        whatever the start order. Calling it again once started (or after close()) is an
        error."""
        if self._closed:
            raise ZKError("ZKClient.start() after close()")
        if self._started:
            raise ZKError("ZKClient.start() called twice")
        self._loop = asyncio.get_running_loop()
        self._connected_evt = asyncio.Event()
        self._started = True
        # No thread waits here: the CONNECTED transition arrives through the listener.
        self._kz.start_async()
        try:
            await asyncio.wait_for(self._connected_evt.wait(), self.connect_timeout)
        except asyncio.TimeoutError:
            await self._reset_attempt()
            raise ZKError(
                f"cannot reach ZooKeeper at {self.hosts} within {self.connect_timeout:g}s"
            ) from None
        except BaseException:  # cancelled while connecting: leave no kazoo threads
            await asyncio.shield(self._shutdown_kazoo())
            self._closed = True
            raise
        if self._kz.chroot:
            with contextlib.suppress(KazooException):
                if await self.exists("/") is None:
                    self._log.warning("zk_chroot_missing", hosts=self.hosts, chroot=self._kz.chroot)

    async def _reset_attempt(self) -> None:
        """A failed connect attempt: stop its kazoo client (no threads left) and prepare a
        fresh one for the next start()."""
        old = self._kz
        self._kz = self._new_kazoo()  # first: the old client's last state reports are ignored
        await self._shutdown_kazoo(old)
        self._started = False
        self._state = LOST
        self._negotiated_ms = None

    async def close(self) -> None:
        """Close the session (its ephemeral nodes go at once) and stop kazoo's threads."""
        if self._closed:
            return
        self._closing = True
        for w in list(self._watches):
            w.cancel()
        for t in list(self._bg):
            t.cancel()
        if self._started:
            await self._shutdown_kazoo()
        self._closed = True
        self._state = LOST
        if self._connected_evt is not None:
            self._connected_evt.clear()

    async def _shutdown_kazoo(self, kz: KazooClient | None = None) -> None:
        kz = self._kz if kz is None else kz

        def stop_and_close():
            with contextlib.suppress(Exception):
                kz.stop()
            with contextlib.suppress(Exception):
                kz.close()

        await asyncio.to_thread(stop_and_close)

    async def __aenter__(self) -> "ZKClient":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected; ConnectionLoss after `timeout` seconds."""
        self._check_open()
        if self._state == CONNECTED:
            return
        try:
            await asyncio.wait_for(self._connected_evt.wait(), timeout)
        except asyncio.TimeoutError:
            raise ConnectionLoss(
                f"not connected to ZooKeeper at {self.hosts} after {timeout:g}s (state {self._state})"
            ) from None

    async def retry(self, fn: Callable[..., Awaitable[Any]], *args, timeout: float | None = None, **kw):
        """Call `await fn(*args, **kw)`, waiting for the connection and trying again after
        ConnectionLoss until `timeout` (default: the negotiated session timeout) has passed."""
        timeout = (self.negotiated_session_timeout or self.session_timeout) if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await fn(*args, **kw)
            except ConnectionLoss:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                await self.wait_connected(left)

    # -- operations -------------------------------------------------------------------
    def _check_open(self) -> None:
        if not self._started or self._closed or self._closing:
            raise ConnectionClosedError(f"ZKClient for {self.hosts} is not started or is closed")

    def _bridge(self, async_result) -> asyncio.Future:
        loop = self._loop
        fut = loop.create_future()

        def settle(value, exc):
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

        def on_done(ar):  # kazoo completion thread
            exc = ar.exception
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(settle, ar.value, exc)

        async_result.rawlink(on_done)
        return fut

    async def _op(self, fn: Callable, *args, **kw):
        self._check_open()
        if self._state != CONNECTED:
            raise ConnectionLoss(f"not connected to ZooKeeper at {self.hosts} (state {self._state})")
        fut = self._bridge(fn(*args, **kw))
        try:
            return await asyncio.wait_for(fut, self.op_timeout)
        except asyncio.TimeoutError:
            name = getattr(fn, "__name__", "operation").removesuffix("_async")
            where = f" {args[0]}" if args and isinstance(args[0], str) else ""
            raise ConnectionLoss(
                f"ZooKeeper {name}{where}: no reply from {self.hosts} within {self.op_timeout:g}s"
            ) from None

    async def create(
        self,
        path: str,
        value: Value = b"",
        *,
        ephemeral: bool = False,
        sequence: bool = False,
        makepath: bool = False,
    ) -> str:
        """Create a znode; returns its path (with the sequence suffix if sequence=True)."""
        return await self._op(
            self._kz.create_async,
            path,
            encode_value(value),
            ephemeral=ephemeral,
            sequence=sequence,
            makepath=makepath,
        )

    async def get(self, path: str) -> tuple[bytes, ZnodeStat]:
        return await self._op(self._kz.get_async, path)

    async def get_json(self, path: str) -> tuple[Any, ZnodeStat]:
        data, stat = await self.get(path)
        try:
            return decode_json(data), stat
        except ValueError as e:
            raise ZKDataError(f"znode {path} does not hold valid JSON: {e}") from e

    async def set(self, path: str, value: Value, version: int = -1) -> ZnodeStat:
        return await self._op(self._kz.set_async, path, encode_value(value), version)

    async def exists(self, path: str) -> ZnodeStat | None:
        return await self._op(self._kz.exists_async, path)

    async def get_children(self, path: str) -> list[str]:
        return await self._op(self._kz.get_children_async, path)

    async def ensure_path(self, path: str, acl: list[ACL] | None = None) -> None:
        """Create path and missing parents (with `acl`, default: this client's)."""
        await self._op(self._kz.ensure_path_async, path, acl)

    async def get_acls(self, path: str) -> tuple[list[ACL], ZnodeStat]:
        return await self._op(self._kz.get_acls_async, path)

    async def set_acls(self, path: str, acls: list[ACL], version: int = -1) -> ZnodeStat:
        return await self._op(self._kz.set_acls_async, path, acls, version)

    async def delete(self, path: str, version: int = -1, recursive: bool = False) -> None:
        """Delete a znode; recursive=True deletes its subtree first (a vanished node is fine
        there)."""
        if not recursive:
            await self._op(self._kz.delete_async, path, version)
            return
        try:
            children = await self.get_children(path)
        except NoNodeError:
            return
        for child in children:
            await self.delete(f"{path.rstrip('/')}/{child}", recursive=True)
        try:
            await self._op(self._kz.delete_async, path, version)
        except NoNodeError:
            if version != -1:
                raise

    async def transaction(self, ops: Iterable[TxOp]) -> list[Any]:
        """Run ops atomically. Returns one result per op (created path, ZnodeStat, True).
        On failure raises the error of the op that failed (BadVersionError, ...)."""
        ops = [_as_op(o) for o in ops]
        self._check_open()
        tx = self._kz.transaction()
        for op in ops:
            if isinstance(op, Check):
                tx.check(op.path, op.version)
            elif isinstance(op, Create):
                tx.create(op.path, encode_value(op.value), ephemeral=op.ephemeral, sequence=op.sequence)
            elif isinstance(op, SetData):
                tx.set_data(op.path, encode_value(op.value), op.version)
            else:
                tx.delete(op.path, op.version)
        results = await self._op(tx.commit_async)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            real = [e for e in errors if not isinstance(e, RolledBackError)]
            err = real[0] if real else errors[0]
            idx = results.index(err)
            op = ops[idx] if idx < len(ops) else None
            if not err.args and op is not None:
                err.args = (f"transaction op {idx} {type(op).__name__} {op.path}",)
            raise err
        return results

    # -- watches ----------------------------------------------------------------------
    def watch_children(self, path: str, cb: WatchCallback) -> WatchHandle:
        """cb(sorted children | None) on the loop, now and after every change."""
        return self._watch(path, "children", cb)

    def watch_data(self, path: str, cb: WatchCallback) -> WatchHandle:
        """cb((data, stat) | None) on the loop, now and after every change."""
        return self._watch(path, "data", cb)

    def _watch(self, path: str, kind: str, cb: WatchCallback) -> WatchHandle:
        self._check_open()
        h = WatchHandle(self, path, kind, cb)
        self._watches.add(h)
        return h

    def __repr__(self) -> str:
        return f"<ZKClient {self.hosts} state={self._state} session={self.session_id_hex}>"

