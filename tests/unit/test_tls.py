"""TLS: the `tls` config section is checked at start (naming the key), and a bounded server
with it serves HTTPS that a client verifies against the CA, with client certificates when
required. Real certificates (openssl) and real sockets on 127.0.0.1; no mocks."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from manatee.core.config import ConfigError, validate
from manatee.core.httpserver import BoundedTCPSite, runner_kwargs
from manatee.core.tls import ENV_CA, ENV_CERT, ENV_KEY, TlsCfg, client_context_from_env
from manatee_testbed.certs import make_ca, make_node_cert
from manatee.sitter.config import SitterConfig

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

SAMPLE = json.loads((Path(__file__).parents[2] / "etc" / "sitter.json").read_text())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d / "ca")
    node = make_node_cert(d / "certs", ca, "a", "127.0.0.1")
    stranger_ca = make_ca(d / "other", name="someone else")
    stranger = make_node_cert(d / "other", stranger_ca, "x", "127.0.0.1")
    return {"ca": ca, "node": node, "stranger": stranger}


def tls(pki, **over) -> dict:
    return {"certFile": pki["node"].cert, "keyFile": pki["node"].key, "caFile": pki["ca"].cert, **over}


def test_a_valid_section_loads(pki):
    cfg = validate(tls(pki, requireClientCert=True), TlsCfg)
    assert cfg.requireClientCert and cfg.server_context() and cfg.client_context()


@pytest.mark.parametrize("key", ["certFile", "keyFile", "caFile"])
def test_a_missing_file_is_named(pki, key):
    with pytest.raises(ConfigError) as e:
        validate(tls(pki, **{key: "/nonexistent/x.pem"}), TlsCfg)
    assert key in str(e.value) and "/nonexistent/x.pem" in str(e.value)


def test_relative_path_refused(pki):
    with pytest.raises(ConfigError, match="certFile must be an absolute path"):
        validate(tls(pki, certFile="a.pem"), TlsCfg)


def test_a_world_readable_key_is_refused(pki, tmp_path):
    key = tmp_path / "k.key"
    key.write_bytes(Path(pki["node"].key).read_bytes())
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match="keyFile .*readable by every user"):
        validate(tls(pki, keyFile=str(key)), TlsCfg)


def test_key_of_another_certificate_is_refused(pki):
    with pytest.raises(ConfigError, match="cannot be loaded together"):
        validate(tls(pki, keyFile=pki["stranger"].key), TlsCfg)


def test_client_certs_need_a_ca(pki):
    with pytest.raises(ConfigError, match="requireClientCert needs caFile"):
        validate({"certFile": pki["node"].cert, "keyFile": pki["node"].key, "requireClientCert": True}, TlsCfg)


def test_sitter_urls_become_https_with_tls(pki):
    data = copy.deepcopy(SAMPLE)
    assert validate(data, SitterConfig).status_url.startswith("http://")
    data["tls"] = tls(pki)
    c = validate(data, SitterConfig)
    assert c.status_url.startswith("https://") and c.backup_url.startswith("https://")


async def _state(_req):
    return web.json_response({"ok": True})


async def _serve(ctx):
    app = web.Application()
    app.router.add_get("/state", _state)
    runner = web.AppRunner(app, **runner_kwargs(5))
    await runner.setup()
    site = BoundedTCPSite(runner, "127.0.0.1", 0, max_connections=16, idle_timeout=5, ssl_context=ctx)
    await site.start()
    return runner, site._bound_port


async def _get(url, ctx):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        async with s.get(url, ssl=ctx) as r:
            return r.status


def test_https_with_client_certificates(pki):
    server = validate(tls(pki, requireClientCert=True), TlsCfg)

    async def go():
        runner, port = await _serve(server.server_context())
        url = f"https://127.0.0.1:{port}/state"
        try:
            assert await _get(url, server.client_context()) == 200
            # no client certificate: the handshake fails
            no_cert = client_context_from_env({ENV_CA: pki["ca"].cert})
            with pytest.raises(aiohttp.ClientError):
                await _get(url, no_cert)
            # a client that does not trust our CA refuses the server
            other = client_context_from_env({ENV_CA: pki["stranger"].cert.replace("x.pem", "ca.pem"),
                                             ENV_CERT: pki["stranger"].cert, ENV_KEY: pki["stranger"].key})
            with pytest.raises(aiohttp.ClientError):
                await _get(url, other)
            # plain http to the TLS port gets nothing
            with pytest.raises(aiohttp.ClientError):
                await _get(f"http://127.0.0.1:{port}/state", None)
        finally:
            await runner.cleanup()

    asyncio.run(go())


def test_adm_http_json_uses_the_env_files(pki, monkeypatch):
    from manatee.core.httpjson import http_json

    server = validate(tls(pki, requireClientCert=True), TlsCfg)
    loop = asyncio.new_event_loop()
    runner, port = loop.run_until_complete(_serve(server.server_context()))
    import threading

    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        url = f"https://127.0.0.1:{port}/state"
        monkeypatch.setenv(ENV_CA, pki["ca"].cert)
        monkeypatch.setenv(ENV_CERT, pki["node"].cert)
        monkeypatch.setenv(ENV_KEY, pki["node"].key)
        assert http_json(url, timeout=5) == (200, {"ok": True})
        monkeypatch.delenv(ENV_CERT)
        monkeypatch.delenv(ENV_KEY)
        code, _ = http_json(url, timeout=5)
        assert code == 0  # no client certificate: refused
        monkeypatch.setenv(ENV_CERT, "/nonexistent.pem")
        code, msg = http_json(url, timeout=5)
        assert code == 0 and "MANATEE_TLS_CERT" in msg
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)


@pytest.mark.parametrize("client_cert", [True, False])
async def test_a_heartbeat_over_https_needs_the_client_certificate(pki, client_cert):
    """The sitter's status server with `tls` and the real heartbeat client: with its
    certificate the beat lands; without one (a stranger) the handshake fails, nothing lands."""
    from manatee.sitter.heartbeat import HeartbeatSender
    from manatee.sitter.status import StatusServer
    from tests.status_fakes import S, FakeSitter, Log

    cfg = validate(tls(pki, requireClientCert=True), TlsCfg)
    sitter = FakeSitter(secret=S)
    sitter.cfg.tls = cfg
    sitter.cfg.status_url = sitter.cfg.status_url.replace("http://", "https://")
    srv = StatusServer(sitter, Log())
    await srv.start()
    ctx = cfg.client_context() if client_cert else client_context_from_env({ENV_CA: pki["ca"].cert})
    sender = HeartbeatSender(me_id=sitter.election[0].id, pg_url="tcp://postgres@127.0.0.1:5432/postgres",
                             interval_s=0.05, timeout_s=2, status=lambda: {"wal": None, "streaming": True},
                             log=Log(), source_ip="127.0.0.1", secret=S, ssl_context=ctx)
    sender.upstream_url = sitter.cfg.status_url
    stop = asyncio.Event()
    task = asyncio.ensure_future(sender.run(stop))
    try:
        for _ in range(40):
            if sender.last_ok:
                break
            await asyncio.sleep(0.05)
        assert bool(sender.last_ok) == client_cert
        assert (sender._failures == 0) == client_cert
    finally:
        stop.set()
        await task
        await srv.stop()
