"""The backupserver's HTTP API (the original's REST shape, hardened).

    POST /backup          {host, port, dataset} -> {jobid, jobPath}
    GET  /backup/<jobid>  -> the job
    GET  /ping            -> {"ok": true}
    POST /snapshots/common {snapshots} -> {"common": {name, guid, creation} | null}

`/snapshots/common` starts no send: it answers which of the offered snapshots (the
requester's, by guid) this node has, the newest; a rebuilding node asks each member it
could stream from (manatee.core.restore.source). It passes the same first checks.

Every answer, error or not, is JSON; errors are {"code", "message"}. A request
can only make this server stream the whole database to an address, so the
order of checks is: body size (413), proof of the shard secret (401: an HMAC of
the request, manatee.core.auth), requester is a shard member (403), content type
(415), body shape (400), target host is a shard member (403), queue room (503).
Membership fails closed: no election node, or ZooKeeper not answering, refuses.
The body carries a one-time `streamToken`; the stream starts with its HMAC.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Protocol

from aiohttp import web

from manatee.backupserver.jobs import BackupJob, JobQueue, QueueFull
from manatee.backupserver.membership import MembershipUnavailable
from manatee.backupserver.validation import (
    ValidationError,
    is_ip_address,
    validate_backup_request,
    validate_common_request,
)
from manatee.core.incremental import SnapshotRef
from manatee.core.auth import SCHEME, RequestVerifier, authorization_ok
from manatee.core.log import get_logger

DEFAULT_MAX_BODY_BYTES = 16 * 1024

LOG_KEY: web.AppKey[Any] = web.AppKey("log", object)
API_KEY: web.AppKey["BackupApi"] = web.AppKey("api", object)


class Membership(Protocol):
    async def is_member(self, ip: str) -> bool:
        """True/False; raises MembershipUnavailable when it cannot be known (refuse)."""


Resolver = Callable[[str], Awaitable[str]]


async def resolve_host(host: str) -> str:
    """The address we will connect to for `host` (an IP literal is returned as is)."""
    if is_ip_address(host):
        return host
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout=5.0
    )
    if not infos:
        raise OSError(f"no address for {host}")
    return infos[0][4][0]


def normalize_ip(ip: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes a.b.c.d."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _error(status: int, code: str, message: str, headers: Optional[dict] = None) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status, headers=headers)


_HTTP_CODES = {
    400: "BadRequest",
    401: "NotAuthorized",
    403: "Forbidden",
    404: "ResourceNotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
}


@web.middleware
async def json_errors(request: web.Request, handler):
    """Turn aiohttp's own HTTP errors (unknown route, bad method...) into JSON errors."""
    log = request.app[LOG_KEY]
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "HttpError")
        if e.status == 404:
            message = f"no such route: {request.method} {request.path}"
        elif e.status == 405:
            message = f"method {request.method} not allowed on {request.path}"
        else:
            message = e.reason or code
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        return _error(e.status, code, message, headers=headers or None)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - never let one request take the server down
        log.exception("backupserver_request_failed", method=request.method, path=request.path)
        return _error(500, "InternalError", f"{type(e).__name__}: {e}")


@dataclass(kw_only=True)
class BackupApi:
    """The REST API's handlers over the job queue, with the checks every request passes."""

    queue: JobQueue
    membership: Optional[Membership]
    verifier: Optional[RequestVerifier]
    max_body_bytes: int
    resolver: Resolver
    log: Any
    # the newest snapshot shared with an offer (ZfsSender.common_with); None: not answered (404)
    common: Optional[Callable[[tuple[SnapshotRef, ...]], Awaitable[Optional[dict]]]] = None

    # --- checks ------------------------------------------------------------------

    def _check_proof(self, request: web.Request, body: bytes) -> Optional[web.Response]:
        why = authorization_ok(self.verifier, request.method, request.path, body,
                               request.headers.get("Authorization"))
        if why is None:
            return None
        return _error(401, "NotAuthorized", why, headers={"WWW-Authenticate": SCHEME})

    async def _member(self, ip: str, what: str) -> Optional[web.Response]:
        """None if `ip` may take part, else the 403/503 response (fails closed)."""
        if self.membership is None:
            if self.verifier is None:
                return None  # insecure mode without ZooKeeper: the operator chose to admit anyone
            return _error(403, "Forbidden", "shard membership is not configured (zkCfg, shardPath): refusing")
        try:
            ok = await self.membership.is_member(ip)
        except MembershipUnavailable as e:
            return _error(
                503, "ServiceUnavailable", f"cannot check shard membership of {what} {ip}: {e}"
            )
        if ok is True:
            return None
        return _error(403, "Forbidden", f"{what} {ip} is not a member of this shard")

    # --- handlers ----------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "running": self.queue.running, "queued": self.queue.queued}
        )

    async def _signed_json(self, request: web.Request, what: str) -> tuple[Optional[web.Response], Any]:
        """The checks every POST passes, in order: body size (413), proof of the shard secret
        (401), requester is a member (403/503), content type (415), JSON (400). Returns
        (the refusal, None) or (None, the decoded body)."""
        requester = normalize_ip(request.remote or "")
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            return _error(
                413,
                "PayloadTooLarge",
                f"body of {length} bytes exceeds the limit of {self.max_body_bytes} bytes",
            ), None
        raw = await request.content.read(self.max_body_bytes + 1)
        if len(raw) > self.max_body_bytes:
            return _error(
                413,
                "PayloadTooLarge",
                f"body exceeds the limit of {self.max_body_bytes} bytes",
            ), None
        denied = self._check_proof(request, raw)
        if denied is not None:
            self.log.warning(f"{what}_unauthorized", requester=requester)
            return denied, None
        denied = await self._member(requester, "requester")
        if denied is not None:
            self.log.warning(f"{what}_denied", requester=requester, reason="requester")
            return denied, None

        if request.content_type != "application/json":
            return _error(
                415,
                "UnsupportedMediaType",
                f"Content-Type must be application/json, got {request.content_type or 'none'}",
            ), None
        try:
            return None, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            return _error(400, "MalformedJson", f"body is not UTF-8: {e}"), None
        except json.JSONDecodeError as e:
            return _error(400, "MalformedJson", f"body is not valid JSON: {e}"), None

    async def post_common(self, request: web.Request) -> web.Response:
        """Which of the offered snapshots this node also has: the newest, or null. Starts no
        send; a requester uses it to pick the member it takes an incremental stream from."""
        denied, body = await self._signed_json(request, "common_request")
        if denied is not None:
            return denied
        if self.common is None:
            return _error(404, "ResourceNotFound", "this backupserver cannot compare snapshots")
        try:
            offered = validate_common_request(body)
        except ValidationError as e:
            return _error(400, e.code, e.message)
        try:
            common = await self.common(offered)
        except Exception as e:  # noqa: BLE001 - e.g. zfs list failed: the requester treats it as unknown
            return _error(503, "ServiceUnavailable", f"cannot list this node's snapshots: {e}")
        return web.json_response({"common": common})

    async def post_backup(self, request: web.Request) -> web.Response:
        requester = normalize_ip(request.remote or "")
        denied, body = await self._signed_json(request, "backup_request")
        if denied is not None:
            return denied
        try:
            req = validate_backup_request(body)
        except ValidationError as e:
            self.log.info("backup_request_invalid", requester=requester, error=e.message)
            return _error(400, e.code, e.message)

        try:
            address = normalize_ip(await self.resolver(req.host))
        except (OSError, asyncio.TimeoutError) as e:
            return _error(400, "InvalidArgument", f"host {req.host!r} does not resolve: {e}")
        denied = await self._member(address, "host")
        if denied is not None:
            self.log.warning(
                "backup_request_denied", requester=requester, host=req.host, reason="host"
            )
            return denied

        job = BackupJob(
            host=req.host,
            port=req.port,
            dataset=req.dataset,
            address=address,
            requester=requester,
            stream_token=req.stream_token,
            offered=req.snapshots,
        )
        try:
            self.queue.submit(job)
        except QueueFull as e:
            self.log.warning("backup_queue_full", requester=requester, error=str(e))
            return _error(
                503, "ServiceUnavailable", f"too many backup jobs: {e}", headers={"Retry-After": "5"}
            )
        self.log.info(
            "backup_job_queued",
            jobid=job.jobid,
            requester=requester,
            host=req.host,
            address=address,
            port=req.port,
            dataset=req.dataset,
        )
        return web.json_response({"jobid": job.jobid, "jobPath": f"/backup/{job.jobid}"})

    async def get_backup(self, request: web.Request) -> web.Response:
        jobid = request.match_info["jobid"]
        try:
            canonical = str(uuid.UUID(jobid))
        except ValueError:
            return _error(404, "ResourceNotFound", f"no job {jobid[:80]!r}: not a job id (uuid)")
        job = self.queue.get(canonical)
        if job is None:
            return _error(404, "ResourceNotFound", f"no job {canonical}")
        return web.json_response(job.to_json())


def make_app(
    *,
    queue: JobQueue,
    membership: Optional[Membership] = None,
    verifier: Optional[RequestVerifier] = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    resolver: Resolver = resolve_host,
    logger: Any = None,
    common: Optional[Callable[[tuple[SnapshotRef, ...]], Awaitable[Optional[dict]]]] = None,
) -> web.Application:
    if logger is None:
        logger = get_logger("manatee.backupserver")
    api = BackupApi(
        queue=queue,
        membership=membership,
        verifier=verifier,
        max_body_bytes=max_body_bytes,
        resolver=resolver,
        log=logger,
        common=common,
    )
    # client_max_size is a second bound in case anything reads the body via aiohttp.
    app = web.Application(middlewares=[json_errors], client_max_size=max_body_bytes + 1)
    app[LOG_KEY] = logger
    app[API_KEY] = api
    app.router.add_get("/ping", api.ping)
    app.router.add_post("/backup", api.post_backup)
    app.router.add_post("/backup/", api.post_backup)
    app.router.add_get("/backup/{jobid}", api.get_backup)
    app.router.add_post("/snapshots/common", api.post_common)
    return app
