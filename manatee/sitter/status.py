"""The sitter's HTTP server on statusPort: health for operators and load balancers, the
sitter's state, and the daisy-chain heartbeat endpoint standbys post to.

  GET  /ping       200 if this sitter is connected and its PostgreSQL is healthy, else 503
  GET  /state      what the sitter knows and decided (JSON)
  GET  /primary    200 only on the writable primary, else 503
  GET  /replica    200 only on a standby that is streaming, else 503
  GET  /restore    progress of the last restore
  GET  /metrics    Prometheus text format 0.0.4 (see manatee/sitter/metrics.py)
  POST /heartbeat  {id, pgUrl, wal, streaming}: accepted only from election members
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from manatee.sitter.heartbeat import parse_heartbeat
from manatee.sitter.metrics import CONTENT_TYPE, MetricsCollector, streaming_replica, writable_primary
from manatee.sitter.state import CONNECTED

MAX_BODY = 4096


def _json(status: int, body) -> web.Response:
    return web.json_response(body, status=status)


class StatusServer:
    def __init__(self, sitter, log):
        self.sitter, self.log = sitter, log
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes([
            web.get("/ping", self.ping), web.get("/state", self.state),
            web.get("/primary", self.primary), web.get("/replica", self.replica),
            web.get("/restore", self.restore), web.post("/heartbeat", self.heartbeat),
            web.get("/metrics", self.metrics), web.post("/rebuild", self.rebuild),
            web.get("/", self.index),
        ])
        self.runner: web.AppRunner | None = None
        self.collector = MetricsCollector(sitter, log)

    async def start(self) -> None:
        cfg = self.sitter.cfg
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, cfg.ip, cfg.status_port, reuse_address=True).start()
        self.log.info("status_server_listening", url=cfg.status_url)

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def index(self, _req):
        return _json(200, {"routes": ["GET /ping", "GET /state", "GET /primary", "GET /replica",
                                      "GET /restore", "GET /metrics", "POST /heartbeat",
                                      "POST /rebuild"]})

    async def ping(self, _req):
        s = self.sitter
        pgs = s.last_pg
        healthy = s.zk_state == CONNECTED and (pgs is None or not pgs.running or pgs.healthy)
        body = {"healthy": healthy, "zk": s.zk_state, "role": s.role,
                "pg": None if pgs is None else {"running": pgs.running, "healthy": pgs.healthy}}
        return _json(200 if healthy else 503, body)

    async def state(self, _req):
        return _json(200, self.sitter.debug_state())

    async def primary(self, _req):
        s = self.sitter
        ok = writable_primary(s)
        return _json(200 if ok else 503, {"primary": ok, "role": s.role})

    async def replica(self, _req):
        s = self.sitter
        t = s.target
        ok = streaming_replica(s)
        return _json(200 if ok else 503, {"replica": ok, "role": s.role,
                                          "upstream": t.upstream.id if t and t.upstream else None})

    async def metrics(self, _req):
        text = await self.collector.render()
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def restore(self, _req):
        return _json(200, {"restore": self.sitter.restore_progress})

    async def rebuild(self, req: web.Request):
        """manatee-adm rebuild: restore this node from its upstream. It destroys the node's
        data (kept aside until the new copy streams), so only this host, loopback and the
        shard's members may ask. Body: optional {"force": bool}."""
        members = {p.ip for p in self.sitter.election} | {self.sitter.cfg.ip}
        if req.remote not in members and not (req.remote or "").startswith("127."):
            self.log.warning("rebuild_refused", remote=req.remote)
            return _json(403, {"code": "Forbidden",
                               "message": f"{req.remote} is neither this host nor a member of the shard"})
        try:
            body = await req.json() if req.can_read_body else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _json(400, {"code": "BadRequest", "message": "body must be JSON"})
        except web.HTTPRequestEntityTooLarge:
            return _json(413, {"code": "TooLarge", "message": f"body over {MAX_BODY} bytes"})
        if not isinstance(body, dict) or not isinstance(body.get("force", False), bool) \
                or set(body) - {"force"}:
            return _json(400, {"code": "BadRequest", "message": 'body must be {} or {"force": true|false}'})
        code, out = self.sitter.request_rebuild(body.get("force", False))
        return _json(code, out)

    async def heartbeat(self, req: web.Request):
        try:
            body = await req.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _json(400, {"code": "BadRequest", "message": "body must be JSON"})
        except web.HTTPRequestEntityTooLarge:
            return _json(413, {"code": "TooLarge", "message": f"body over {MAX_BODY} bytes"})
        members = {p.id for p in self.sitter.election}
        try:
            hb = parse_heartbeat(body, members.__contains__, time.monotonic(), remote=req.remote)
        except PermissionError as e:
            self.log.warning("heartbeat_refused", error=str(e), remote=req.remote)
            return _json(403, {"code": "NotAMember", "message": str(e)})
        except ValueError as e:
            return _json(400, {"code": "BadRequest", "message": str(e)})
        first = hb.peer_id not in self.sitter.heartbeats.beats
        self.sitter.heartbeats.record(hb)
        if first:
            self.log.info("heartbeat_new_standby", standby=hb.peer_id)
            self.sitter.wake.set()
        return _json(200, {})
