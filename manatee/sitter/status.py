"""The sitter's HTTP server on statusPort: health for operators and load balancers, the
sitter's state, and the daisy-chain heartbeat endpoint standbys post to.

  GET  /liveness   200 while the sitter's loop runs (no ZooKeeper, no PostgreSQL needed); 503
                   when it has gone without an observation for longer than any step may take
  GET  /readiness  200 when the node serves its role: ZooKeeper connected, PostgreSQL healthy,
                   and it is the writable primary or a streaming standby; else 503
  GET  /ping       200 when PostgreSQL runs, answers and holds a database (not restoring), else
                   503; ZooKeeper is not needed (a snapshotter's healthUrl)
  GET  /state      what the sitter knows and decided (JSON)
  GET  /primary    200 only on the writable primary, else 503
  GET  /replica    200 only on a streaming standby [within ?lag=<bytes|duration>], else 503
  GET  /sync       the same, only on the shard's sync
  GET  /async      the same, only on an async
  GET  /read-only  200 on any node serving reads: the writable primary or a streaming standby
                   [within ?lag=]
  GET  /restore    progress of the last restore
  GET  /metrics    Prometheus exposition (see manatee/sitter/metrics.py), from cached observations
  POST /heartbeat  {id, pgUrl, wal, streaming, free, sick, leaving}: signed with the shard secret, from election members
  POST /rebuild    {force}: signed with the shard secret (manatee-adm rebuild), from members/this host
  POST /reload     {}: signed; re-read the config file as SIGHUP does (manatee-adm reload)
  POST /restart    {force}: signed; the sitter restarts its PostgreSQL in its current role in its
                   next cycle (manatee-adm restart); refused (409) on the primary unless forced

POST requests without a valid proof of the shard secret get 401 and change nothing
(manatee.core.auth). The server is bounded (manatee.core.httpserver): at most
statusServerCfg.maxConnections connections, idle ones closed after idleTimeout.
Status codes and bodies are documented in docs/observability.md. `?lag=` is 16kB, 1MB, 500ms,
10s...: a standby further behind answers 503, and so does one whose lag is not known; a bad
value is 400 naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from aiohttp import web

from manatee.core.auth import SCHEME, RequestVerifier, authorization_ok
from manatee.core.httpserver import BoundedTCPSite, runner_kwargs
from manatee.sitter.heartbeat import parse_heartbeat
from manatee.sitter.metrics import (
    CONTENT_TYPE, MetricsCollector, lag_within, parse_lag, streaming_replica, writable_primary,
)
from manatee.sitter.snapshot import debug_state
from manatee.shard.rebuildpath import rebuild_request_refusal
from manatee.shard.state import CONNECTED

MAX_BODY = 4096
LIVENESS_MIN_S = 120.0  # /liveness: the least time without an observation that counts as stuck
STATE_SPACE_WAIT_S = 1.0  # /state waits at most this for a stale dataset's space to be read again


def _json(status: int, body) -> web.Response:
    return web.json_response(body, status=status)


def _force_of(raw: bytes) -> tuple[bool, web.Response | None]:
    """(force, None) from a body {} or {"force": bool}; else (False, the 400)."""
    try:
        body = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False, _json(400, {"code": "BadRequest", "message": "body must be JSON"})
    if not isinstance(body, dict) or not isinstance(body.get("force", False), bool) or set(body) - {"force"}:
        return False, _json(400, {"code": "BadRequest", "message": 'body must be {} or {"force": true|false}'})
    return body.get("force", False), None


class StatusServer:
    """The routes read the loop's published snapshot (`sitter.snapshot`, frozen) and ask it for
    changes only through its methods (heartbeat_received, request_rebuild, request_restart)."""

    def __init__(self, sitter, log):
        self.sitter, self.log = sitter, log
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes([
            web.get("/ping", self.ping), web.get("/state", self.state),
            web.get("/primary", self.primary), web.get("/replica", self.replica),
            web.get("/sync", self.sync), web.get("/async", self.async_), web.get("/read-only", self.read_only),
            web.get("/liveness", self.liveness), web.get("/readiness", self.readiness),
            web.get("/restore", self.restore), web.post("/heartbeat", self.heartbeat),
            web.get("/metrics", self.metrics), web.post("/rebuild", self.rebuild),
            web.post("/reload", self.reload), web.post("/restart", self.restart),
            web.get("/", self.index),
        ])
        self.runner: web.AppRunner | None = None
        self.collector = MetricsCollector(sitter, log)
        secret = getattr(sitter, "secret", None)
        self.verifier = RequestVerifier(secret) if secret is not None else None
        self.open_posts = secret is None and bool(getattr(sitter.cfg, "insecure", False))
        self.site: BoundedTCPSite | None = None
        self._refused_logged: dict[tuple[str, str | None], float] = {}  # (path, remote) -> last warning

    async def start(self) -> None:
        cfg = self.sitter.cfg
        bounds = cfg.statusServerCfg
        idle = bounds.idle_timeout_s
        self.runner = web.AppRunner(self.app, **runner_kwargs(idle))
        await self.runner.setup()
        tls = getattr(cfg, "tls", None)
        self.site = BoundedTCPSite(self.runner, cfg.ip, cfg.status_port, reuse_address=True,
                                   max_connections=bounds.maxConnections, idle_timeout=idle, log=self.log,
                                   ssl_context=tls.server_context() if tls else None)
        await self.site.start()
        self.log.info("status_server_listening", url=cfg.status_url, max_connections=bounds.maxConnections,
                      authenticated=not self.open_posts, tls=bool(tls))

    async def _signed_body(self, req: web.Request) -> tuple[bytes | None, web.Response | None]:
        """(raw body, None) when the request proves the shard secret, else (None, the 401/413)."""
        try:
            raw = await req.read()
        except web.HTTPRequestEntityTooLarge:
            return None, _json(413, {"code": "TooLarge", "message": f"body over {MAX_BODY} bytes"})
        if self.open_posts:
            return raw, None
        why = "this sitter has no shard secret loaded: refusing" if self.verifier is None else \
            authorization_ok(self.verifier, req.method, req.path, raw, req.headers.get("Authorization"))
        if why is None:
            return raw, None
        key, now = (req.path, req.remote), time.monotonic()
        if now - self._refused_logged.get(key, -60.0) >= 60.0:  # a misconfigured peer retries every second
            if len(self._refused_logged) > 1000:
                self._refused_logged.clear()
            self._refused_logged[key] = now
            self.log.warning("request_unauthorized", path=req.path, remote=req.remote, error=why)
        return None, web.json_response({"code": "NotAuthorized", "message": why}, status=401,
                                       headers={"WWW-Authenticate": SCHEME})

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def index(self, _req):
        return _json(200, {"routes": ["GET /liveness", "GET /readiness", "GET /ping", "GET /state",
                                      "GET /primary", "GET /replica", "GET /sync", "GET /async",
                                      "GET /read-only", "GET /restore", "GET /metrics",
                                      "POST /heartbeat", "POST /rebuild", "POST /reload",
                                      "POST /restart"]})

    # -- health ---------------------------------------------------------------------------

    def _stuck_after(self) -> float:
        """How long the loop may go without a new observation before it counts as stuck: longer
        than any bounded step (PostgreSQL start/stop/promote, opsTimeout) can take, twice, plus
        two session timeouts. A restore is exempt (it runs for as long as the copy takes)."""
        ops = getattr(getattr(self.sitter.cfg, "postgresMgrCfg", None), "ops_timeout_s", 60.0)
        return max(LIVENESS_MIN_S, 2 * ops + 2 * float(self.sitter.snapshot.session_timeout))

    async def liveness(self, _req):
        """The event loop answers (this handler runs) and the sitter's loop is not stuck: its last
        observation is recent, or it is restoring, or it has not observed yet (waiting for
        ZooKeeper is alive). Needs neither ZooKeeper nor PostgreSQL."""
        s = self.sitter.snapshot
        at = s.last_pg_at
        ago = time.monotonic() - at if at else None
        alive = ago is None or s.restoring or ago <= self._stuck_after()
        return _json(200 if alive else 503, {"alive": alive, "role": s.role, "zk": s.zk_state,
                                             "uptimeSeconds": round(time.monotonic() - s.started, 3),
                                             "lastObservationAgoSeconds": None if ago is None else round(ago, 3),
                                             "stuckAfterSeconds": self._stuck_after()})

    @staticmethod
    def _pg_serving(s) -> tuple[bool, dict]:
        pgs = s.last_pg
        return s.pg_serving, {"running": bool(pgs and pgs.running), "healthy": bool(pgs and pgs.healthy),
                              "restoring": s.restoring}

    async def ping(self, _req):
        s = self.sitter.snapshot
        ok, pg = self._pg_serving(s)
        return _json(200 if ok else 503, {"healthy": ok, "zk": s.zk_state, "role": s.role, "pg": pg})

    async def readiness(self, _req):
        s = self.sitter.snapshot
        pg_ok, pg = self._pg_serving(s)
        serving = writable_primary(s) or streaming_replica(s)
        ok = pg_ok and s.zk_state == CONNECTED and serving
        return _json(200 if ok else 503, {"ready": ok, "zk": s.zk_state, "role": s.role, "pg": pg,
                                          "serving": serving})

    async def state(self, _req):
        body = debug_state(self.sitter.snapshot, self.sitter.cfg, time.monotonic())
        # {available, used, quota} bytes from the metrics' cached `zfs get` (None: not known yet);
        # a stale space is read again and this request waits for it a little (the space is
        # read first), so that a disk that just filled, or was just freed, shows as such
        space_stale = self.collector.zfs.stale()[1]
        refresh = self.collector.refresh_slow_soon()
        if refresh is not None and space_stale:
            with contextlib.suppress(Exception):  # not in time (or failed): the cached value, as before
                await asyncio.wait_for(asyncio.shield(refresh), STATE_SPACE_WAIT_S)
        body["dataset"] = self.collector.space
        # old copies an interrupted restore left beside the dataset (kept: they may hold the only
        # copy of that data); None: unknown
        body["oldCopiesKept"] = self.collector.zfs.interrupted_copies
        # the snapshot shared with each peer, kept for its next incremental rebuild; None: unknown
        body["bases"] = self.collector.zfs.bases
        return _json(200, body)

    async def primary(self, _req):
        s = self.sitter.snapshot
        ok = writable_primary(s)
        return _json(200 if ok else 503, {"primary": ok, "role": s.role})

    async def _standby_check(self, req, name: str, place_ok) -> web.Response:
        """/replica, /sync, /async, /read-only: a streaming standby whose place qualifies, within
        ?lag= when given (the writable primary too for /read-only: it has no lag)."""
        s = self.sitter.snapshot
        lag = req.query.get("lag")
        try:
            limit = parse_lag(lag) if lag is not None else None
        except ValueError as e:
            return _json(400, {"code": "BadRequest", "message": str(e)})
        t = s.target
        place = s.place
        body = {"role": s.role, "place": place, "upstream": t.upstream.id if t and t.upstream else None}
        if name == "read-only" and writable_primary(s):
            return _json(200, {name: True, **body, "lag": None})
        ok = streaming_replica(s) and place_ok(place)
        if ok and limit is not None:
            v = await self.collector.observe()
            kind, bound = limit
            within = lag_within(v, kind, bound)
            body["lag"] = {"bytes": v.standby_lag_bytes, "seconds": v.standby_lag_seconds,
                           "limit": {kind: bound}}
            ok = within is True
        return _json(200 if ok else 503, {name: ok, **body})

    async def replica(self, req):
        return await self._standby_check(req, "replica", lambda place: True)

    async def sync(self, req):
        return await self._standby_check(req, "sync", lambda place: place == "sync")

    async def async_(self, req):
        return await self._standby_check(req, "async", lambda place: place == "async")

    async def read_only(self, req):
        return await self._standby_check(req, "read-only", lambda place: True)

    async def metrics(self, _req):
        body = await self.collector.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def restore(self, _req):
        return _json(200, {"restore": self.sitter.snapshot.restore_progress})

    async def rebuild(self, req: web.Request):
        """manatee-adm rebuild: restore this node from its upstream. It destroys the node's
        data (kept aside until the new copy streams), so only this host, loopback and the
        shard's members may ask, with the shard secret's proof. Body: optional {"force": bool}."""
        raw, denied = await self._signed_body(req)
        if denied is not None:
            return denied
        members = {p.ip for p in self.sitter.snapshot.election} | {self.sitter.cfg.ip}
        if req.remote not in members and not (req.remote or "").startswith("127."):
            self.log.warning("rebuild_refused", remote=req.remote)
            return _json(403, {"code": "Forbidden",
                               "message": f"{req.remote} is neither this host nor a member of the shard"})
        force, bad = _force_of(raw)
        if bad is not None:
            return bad
        refused = await self._upstream_refusal()
        if refused is not None:
            self.log.warning("rebuild_refused", remote=req.remote, why=refused)
            return _json(409, {"code": "UpstreamCannotServe", "message": refused})
        code, out = self.sitter.request_rebuild(force)
        return _json(code, out)

    async def _upstream_refusal(self) -> str | None:
        """Why a rebuild asked now would only hold this node waiting (None: it may be asked):
        my upstream's answer, judged by `rebuildpath.rebuild_request_refusal`. manatee-adm
        rebuild asks the same before it sends the request; this is for a request sent without it."""
        from manatee.sitter.dataset import UpstreamNotReady, UpstreamUnknown

        s = self.sitter.snapshot
        up = s.target.upstream if s.target is not None else None
        if up is None or s.restoring or getattr(self.sitter, "dataset", None) is None:
            return None  # the primary, a deposed node: the sitter answers for itself
        try:
            await self.sitter.dataset.check_upstream(up)
        except UpstreamUnknown as e:
            return rebuild_request_refusal(s.place, str(e), known=False)
        except UpstreamNotReady as e:
            return rebuild_request_refusal(s.place, str(e), known=True)
        return None

    async def restart(self, req: web.Request):
        """manatee-adm restart: restart this node's PostgreSQL in its current role. The sitter
        does it in its next cycle (a fast stop, then a start), never behind its back. Signed with
        the shard secret; body {} or {"force": bool} (force: also on the primary)."""
        raw, denied = await self._signed_body(req)
        if denied is not None:
            return denied
        force, bad = _force_of(raw)
        if bad is not None:
            return bad
        code, out = self.sitter.request_restart(force)
        self.log.info("restart_requested", remote=req.remote, force=force, status=code)
        return _json(code, out)

    async def reload(self, req: web.Request):
        """manatee-adm reload: re-read the config file as SIGHUP does (the PostgreSQL parameters
        apply in the next cycle, by pg_reload_conf()). Signed with the shard secret; body {}."""
        raw, denied = await self._signed_body(req)
        if denied is not None:
            return denied
        from manatee.core.daemon import request_reload

        out = request_reload()
        if out is None:
            return _json(503, {"code": "NotADaemon", "message": "this sitter does not run under manatee-sitter"})
        self.log.info("reload_requested", remote=req.remote, ok=out.get("ok"))
        return _json(200 if out.get("ok") else 400, out)

    async def heartbeat(self, req: web.Request):
        raw, denied = await self._signed_body(req)
        if denied is not None:
            return denied
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _json(400, {"code": "BadRequest", "message": "body must be JSON"})
        members = {p.id for p in self.sitter.snapshot.election}
        try:
            hb = parse_heartbeat(body, members.__contains__, time.monotonic(), remote=req.remote)
        except PermissionError as e:
            self.log.warning("heartbeat_refused", error=str(e), remote=req.remote)
            return _json(403, {"code": "NotAMember", "message": str(e)})
        except ValueError as e:
            return _json(400, {"code": "BadRequest", "message": str(e)})
        self.sitter.heartbeat_received(hb)
        return _json(200, {})
