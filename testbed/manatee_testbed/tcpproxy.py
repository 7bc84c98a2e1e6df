"""TcpProxy: a forwarder for tests that must cut one client's link to a server (a ZooKeeper
client's, say) while the server and every other client carry on."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from manatee.core.procs import free_port


class TcpProxy:
    """A TCP forwarder whose link can be cut: `block()` black-holes every byte in both
    directions (connections hang like under a real partition, new ones are accepted and
    go nowhere); `unblock()` closes the connections that lived through the cut and
    forwards new ones again. Runs its own event loop in a daemon thread.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int | None = None,
    ):
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.listen_port = listen_port or free_port(listen_host)
        self._blocked = False
        self._conns: set[_ProxyConn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def blocked(self) -> bool:
        return self._blocked

    def start(self) -> "TcpProxy":
        ready = threading.Event()
        err: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.listen_host, self.listen_port)
                )
            except BaseException as e:  # noqa: BLE001 - reported to start()
                err.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"tcpproxy-{self.listen_port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if err:
            raise err[0]
        return self

    def _call(self, fn) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        done = threading.Event()

        def wrapped():
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(wrapped)
        done.wait(5)

    def block(self) -> None:
        def go():
            self._blocked = True
            for c in self._conns:
                c.cut = True

        self._call(go)

    def unblock(self) -> None:
        def go():
            self._blocked = False
            for c in list(self._conns):
                if c.cut:
                    c.close()

        self._call(go)

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown():
            if self._server is not None:
                self._server.close()
            for c in list(self._conns):
                c.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

        with contextlib.suppress(RuntimeError):
            fut = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = None

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _ProxyConn(self, writer)
        self._conns.add(conn)
        try:
            if self._blocked:
                conn.cut = True
                await conn.drain_forever(reader)
                return
            try:
                ur, uw = await asyncio.open_connection(*self.target)
            except OSError:
                return
            conn.upstream = uw
            await asyncio.gather(conn.pump(reader, uw), conn.pump(ur, writer))
        finally:
            conn.close()
            self._conns.discard(conn)


class _ProxyConn:
    def __init__(self, proxy: TcpProxy, client_writer: asyncio.StreamWriter):
        self.proxy = proxy
        self.client = client_writer
        self.upstream: asyncio.StreamWriter | None = None
        self.cut = False

    async def drain_forever(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    async def pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if self.cut:
                    continue  # black hole
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if not self.cut:
                self.close()

    def close(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.close()
