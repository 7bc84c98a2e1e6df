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
import time
from typing import Any, Awaitable, Callable, Iterable

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
from kazoo.protocol.states import KazooState, ZnodeStat
from kazoo.security import ACL

from manatee.core import zkresume
from manatee.core.log import get_logger
from manatee.core.zkauth import ZKAuth
from manatee.core.zkdata import Check, Create, SetData, TxOp, Value, as_op, decode_json, encode_value
from manatee.core.zksession import connect_reply_timeout, hook_session_clock, resuming_kazoo
from manatee.core.zkwatch import WatchCallback, WatchHandle

__all__ = [
    "BadVersionError", "ConnectionClosedError", "ConnectionLoss", "KazooException", "NoAuthError",
    "NoNodeError", "NodeExistsError", "NotEmptyError", "RolledBackError", "SessionExpiredError",
    "ZKClient", "ZKDataError", "ZKError", "ZnodeStat",
]

CONNECTED = KazooState.CONNECTED
SUSPENDED = KazooState.SUSPENDED
LOST = KazooState.LOST


class ZKError(Exception):
    """ZooKeeper is unusable for a reason the caller should report (unreachable, bad data)."""


class ZKDataError(ZKError, ValueError):
    """A znode's content is not what it should be (e.g. not JSON)."""


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
        self._told_expired = False  # the server said our session expired (until a new one)
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
        """Keep the negotiated session timeout and the time of the last packet from the
        server (what fencing is computed from); a discarded attempt's client records nothing."""
        def connected(negotiated_ms: int) -> None:
            if kz is self._kz:
                self._connect_reply(negotiated_ms)

        def heard() -> None:
            if kz is self._kz:
                self._last_heard = time.monotonic()

        hook_session_clock(kz, connected, heard)

    def _connect_reply(self, negotiated_ms: int) -> None:
        # A timeout of 0 is the server saying our session expired: no sign of life, so the
        # expiry deadline is then passed, not moved on (it restarted a fenced primary: F7)
        if negotiated_ms > 0:
            self._negotiated_ms, self._last_heard, self._told_expired = negotiated_ms, time.monotonic(), False
        else:
            self._told_expired = True

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
        self._log.info("zk_state", state=state, hosts=self.hosts, session_id=self.session_id_hex,
                       negotiated_timeout=self.negotiated_session_timeout)
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
        if self._told_expired:
            return self._last_heard
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
        self._bg.add(asyncio.ensure_future(zkresume.watch(self)))  # cancelled by close()
        if self._kz.chroot:
            with contextlib.suppress(KazooException):
                if await self.exists("/") is None:
                    self._log.warning("zk_chroot_missing", hosts=self.hosts, chroot=self._kz.chroot)

    async def _abandon_session(self, why: str) -> None:
        """Give up the session (LOST, as an expiry) and start a new one on a fresh client."""
        self._log.warning("zk_session_abandoned", hosts=self.hosts, session_id=self.session_id_hex, why=why)
        old = self._swap_kazoo()
        self._on_kazoo_state(LOST)
        await self._shutdown_kazoo(old)
        if not self._closing:
            self._kz.start_async()

    def _swap_kazoo(self) -> KazooClient:
        """Put a fresh kazoo client in place (the old one's reports are ignored); return the old."""
        old, self._kz, self._negotiated_ms = self._kz, self._new_kazoo(), None
        return old

    async def _reset_attempt(self) -> None:
        """A failed connect attempt: stop its kazoo client (no threads left) and prepare a
        fresh one for the next start()."""
        await self._shutdown_kazoo(self._swap_kazoo())
        self._started, self._state = False, LOST

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
        name = getattr(fn, "__name__", "operation").removesuffix("_async")
        where = f" {args[0]}" if args and isinstance(args[0], str) else ""
        try:
            return await asyncio.wait_for(fut, self.op_timeout)
        except asyncio.TimeoutError:
            raise ConnectionLoss(
                f"ZooKeeper {name}{where}: no reply from {self.hosts} within {self.op_timeout:g}s"
            ) from None
        except NoAuthError as e:  # kazoo's says nothing: name the znode and the likely cause
            if e.args:
                raise
            raise NoAuthError(f"ZooKeeper {name}{where}: refused by the znode's ACL (NoAuth): its ACL no "
                              f"longer admits this client's credential (zkCfg.auth), e.g. changed by "
                              f"hand") from None

    async def create(self, path: str, value: Value = b"", *, ephemeral: bool = False, sequence: bool = False,
                     makepath: bool = False) -> str:
        """Create a znode; returns its path (with the sequence suffix if sequence=True)."""
        return await self._op(self._kz.create_async, path, encode_value(value), ephemeral=ephemeral,
                              sequence=sequence, makepath=makepath)

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
        ops = [as_op(o) for o in ops]
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
                err.args = (f"transaction op {idx} {type(op).__name__} {op.path}: {type(err).__name__}"
                            + (" (refused by the znode's ACL)" if isinstance(err, NoAuthError) else ""),)
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

