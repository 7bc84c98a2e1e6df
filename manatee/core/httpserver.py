"""A bounded aiohttp site: a cap on open connections and a timeout on idle ones.

aiohttp alone keeps a connection that never sends a request open forever and accepts
as many as the file-descriptor limit allows, so a few thousand idle sockets would use
up the daemon's descriptors and starve its real work. `BoundedTCPSite` wraps each
connection's protocol to

- close a connection with no request in progress once nothing has arrived on it for
  `idle_timeout` seconds (a connection that never sends a request, a slow-loris header,
  or a kept-alive one after its last answer), and one whose request has been in progress
  for more than `request_timeout` (120 s: a body trickled in byte by byte; every handler
  of these servers answers within seconds);
- hold at most `max_connections`: a new connection beyond the cap closes the oldest idle
  one (the flood's, not the operator's fresh request), or is itself closed when every
  connection has a request in progress.

Memory stays bounded too: request bodies are capped by the application's
`client_max_size`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from typing import Any, Optional

from aiohttp import web

SWEEP_INTERVAL = 0.5


class _Guard(asyncio.Protocol):
    """Delegates to aiohttp's request handler, recording activity for the pool."""

    __slots__ = ("inner", "pool", "transport", "last_rx", "opened", "busy_since")

    def __init__(self, inner: Any, pool: "ConnectionPool") -> None:
        self.inner = inner
        self.pool = pool
        self.transport: Optional[asyncio.BaseTransport] = None
        self.last_rx = self.opened = time.monotonic()
        self.busy_since: Optional[float] = None  # when the sweep first saw the current request

    @property
    def busy(self) -> bool:
        return bool(getattr(self.inner, "_request_in_progress", False))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inner.connection_made(transport)
        self.pool.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self) -> Optional[bool]:
        return self.inner.eof_received()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.pool.discard(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


REQUEST_TIMEOUT = 120.0


class ConnectionPool:
    def __init__(self, max_connections: int, idle_timeout: float, log: Any = None,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.log = log
        self.conns: OrderedDict[_Guard, None] = OrderedDict()
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        self._sweeper: Optional[asyncio.Task[None]] = None

    def add(self, g: _Guard) -> None:
        if len(self.conns) >= self.max_connections:
            victim = next((c for c in self.conns if not c.busy), None)
            if victim is None:
                self.refused += 1
                g.close()
                return
            self.evicted += 1
            self.conns.pop(victim, None)
            victim.close()
        self.conns[g] = None

    def discard(self, g: _Guard) -> None:
        self.conns.pop(g, None)

    def sweep(self, now: Optional[float] = None) -> int:
        now = time.monotonic() if now is None else now
        stale = []
        for c in self.conns:
            if c.busy:  # a request in progress: bounded too (a body trickled in byte by byte)
                if c.busy_since is None:
                    c.busy_since = now
                elif now - c.busy_since > self.request_timeout:
                    stale.append(c)
            else:
                c.busy_since = None
                if now - c.last_rx > self.idle_timeout:
                    stale.append(c)
        for c in stale:
            self.conns.pop(c, None)
            c.close()
        self.timed_out += len(stale)
        return len(stale)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL, self.idle_timeout / 2))
            self.sweep()

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeper
            self._sweeper = None
        for c in list(self.conns):
            c.close()


class BoundedTCPSite(web.TCPSite):
    """web.TCPSite with a ConnectionPool around every connection."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int,
                 idle_timeout: float, log: Any = None, **kw: Any) -> None:
        # asyncio accepts up to `backlog` connections per loop iteration, before it reads from
        # any of them: a batch as large as the pool would evict a fresh request's connection
        # (accepted, its bytes not read yet) together with the flood's.
        kw.setdefault("backlog", max(8, min(1024, max_connections // 4)))
        super().__init__(runner, host, port, **kw)
        self.pool = ConnectionPool(max_connections, idle_timeout, log)

    async def start(self) -> None:
        # BaseSite.start registers the site with the runner; then listen like TCPSite does,
        # with our factory around aiohttp's.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        pool = self.pool

        def factory() -> _Guard:
            return _Guard(server(), pool)

        self._server = await loop.create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
        pool.start()

    async def stop(self) -> None:
        await self.pool.stop()
        await super().stop()


def runner_kwargs(idle_timeout: float) -> dict[str, Any]:
    """aiohttp handler settings matching the pool: keep-alive no longer than the idle timeout."""
    return {"keepalive_timeout": idle_timeout, "access_log": None}
