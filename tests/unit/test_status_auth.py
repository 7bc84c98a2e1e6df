"""The sitter's status server: POST /heartbeat and /rebuild need the shard secret's proof
(401, nothing recorded or requested otherwise); idle connections are bounded."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from manatee.core.auth import ShardSecret
from tests.status_fakes import IP, S, FakeSitter, _post, served

@pytest.fixture
async def server(request):
    kw = getattr(request, "param", {})
    sitter = FakeSitter(secret=kw.get("secret", S), insecure=kw.get("insecure", False),
                        max_connections=kw.get("max_connections", 256), idle_ms=kw.get("idle_ms", 10000))
    async with served(sitter) as srv:
        yield sitter, srv


def _hb(sitter):
    return {"id": sitter.election[0].id, "pgUrl": "tcp://postgres@127.0.0.1:5432/postgres", "wal": None,
            "streaming": True}


@pytest.mark.parametrize("secret, headers", [
    (None, None),
    (None, {"Authorization": "Bearer 0123456789abcdef-current"}),
    (ShardSecret.of("someone-elses-secret-x"), None),
])
async def test_unsigned_posts_401_and_nothing_happens(server, secret, headers):
    sitter, _ = server
    code, body = await _post(sitter, "/heartbeat", _hb(sitter), secret=secret, headers=headers)
    assert code == 401 and body["code"] == "NotAuthorized"
    code, body = await _post(sitter, "/rebuild", {"force": True}, secret=secret, headers=headers)
    assert code == 401
    assert sitter.heartbeats.beats == {} and sitter.rebuilds == [] and not sitter.wake.is_set()


async def test_signed_posts_work(server):
    sitter, _ = server
    assert (await _post(sitter, "/heartbeat", _hb(sitter)))[0] == 200
    assert list(sitter.heartbeats.beats) == [sitter.election[0].id]
    assert (await _post(sitter, "/rebuild", {}))[0] == 200
    assert sitter.rebuilds == [False]


@pytest.mark.parametrize("server", [{"secret": None}], indirect=True)
async def test_no_secret_loaded_refuses_everything(server):
    sitter, _ = server
    code, body = await _post(sitter, "/heartbeat", _hb(sitter), secret=None)
    assert code == 401 and "no shard secret" in body["message"]
    assert sitter.heartbeats.beats == {}


@pytest.mark.parametrize("server", [{"secret": None, "insecure": True}], indirect=True)
async def test_insecure_mode_accepts_unsigned(server):
    sitter, _ = server
    assert (await _post(sitter, "/heartbeat", _hb(sitter), secret=None))[0] == 200


@pytest.mark.parametrize("server", [{"max_connections": 50, "idle_ms": 1000}], indirect=True)
async def test_idle_connections_are_bounded_and_time_out(server):
    sitter, srv = server
    socks = []
    try:
        loop = asyncio.get_running_loop()
        for _ in range(300):  # connected from this loop: the server (same loop) keeps accepting
            s = socket.socket()
            s.setblocking(False)
            socks.append(s)
            await loop.sock_connect(s, (IP, sitter.cfg.status_port))
        await asyncio.sleep(0.3)
        assert len(srv.site.pool.conns) <= 50
        # the server still answers while hundreds of idle sockets knock
        async with aiohttp.ClientSession() as c:
            async with c.get(sitter.cfg.status_url + "/state") as r:
                assert r.status == 200
        t0 = time.monotonic()
        while srv.site.pool.conns and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.1)
        assert not srv.site.pool.conns  # the idle ones were closed after idleTimeout
        assert srv.site.pool.evicted >= 250
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("secret", [None, ShardSecret.of("someone-elses-secret-x")])
async def test_reload_needs_the_shard_secret(server, secret):
    sitter, _ = server
    code, body = await _post(sitter, "/reload", {}, secret=secret)
    assert code == 401 and body["code"] == "NotAuthorized"
    # signed: it passes authentication (outside manatee-sitter there is no daemon to reload)
    code, body = await _post(sitter, "/reload", {})
    assert code == 503 and body["code"] == "NotADaemon"
