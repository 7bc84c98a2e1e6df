"""A stand-in for the sitter behind a real StatusServer (unit tests of the status server's
authentication, TLS and operator requests), and a signed POST to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import SimpleNamespace

import aiohttp

from manatee.core.auth import ShardSecret, sign_request
from manatee.core.config import HttpServerCfg
from manatee.core.procs import free_port
from manatee.sitter.heartbeat import HeartbeatTable
from manatee.sitter.snapshot import SitterSnapshot
from tests.observations import A

S = ShardSecret.of("0123456789abcdef-current")
IP = "127.0.0.1"


class Log:
    def __getattr__(self, name):
        return lambda *a, **k: None


class FakeSitter:
    def __init__(self, *, secret, insecure=False, max_connections=256, idle_ms=10000):
        port = free_port(IP)
        self.cfg = SimpleNamespace(ip=IP, status_port=port, status_url=f"http://{IP}:{port}", insecure=insecure,
                                   zkCfg=SimpleNamespace(auth=None, sessionTimeout=10000, session_timeout_s=10.0),
                                   statusServerCfg=HttpServerCfg(maxConnections=max_connections,
                                                                 idleTimeout=idle_ms))
        self.secret = secret
        self.election = (SimpleNamespace(ip=IP, id=f"{IP}:5432:10002:{port}"),)
        self.heartbeats = HeartbeatTable(expiration_s=10)
        self.wake = asyncio.Event()
        self.rebuilds: list[bool] = []
        self.snapshot = SitterSnapshot(me=A, election=self.election)

    def heartbeat_received(self, hb):
        self.heartbeats.record(hb)
        self.wake.set()

    def request_rebuild(self, force=False):
        self.rebuilds.append(force)
        return 200, {"ok": True}


@contextlib.asynccontextmanager
async def served(sitter):
    """A real StatusServer in front of `sitter`, started and stopped around the block."""
    from manatee.sitter.status import StatusServer

    srv = StatusServer(sitter, Log())
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def _post(sitter, path, body, secret=S, headers=None):
    data = json.dumps(body).encode()
    h = {"Content-Type": "application/json", **sign_request(secret, "POST", path, data), **(headers or {})}
    async with aiohttp.ClientSession() as s:
        async with s.post(sitter.cfg.status_url + path, data=data, headers=h) as r:
            return r.status, await r.json()
