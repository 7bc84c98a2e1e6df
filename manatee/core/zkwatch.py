"""ZKClient's self-renewing watches: a children or data watch that stays registered across
reconnects and session loss and calls back on the client's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Union

from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, NoNodeError, SessionExpiredError

if TYPE_CHECKING:
    from manatee.core.zk import ZKClient

__all__ = ["WatchHandle", "WatchCallback"]

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
