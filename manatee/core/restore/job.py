"""The backupserver's side of a restore: one job, asked for by a signed ``POST /backup``
and polled (``GET`` of its path) until the sender says it is done or failed."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from typing import Any, Optional

import aiohttp
from yarl import URL

from manatee.core.auth import ShardSecret, sign_request
from manatee.core.restore.outcome import RestoreError

POLL_FAILURES_ALLOWED = 3  # consecutive failed GETs of the job before giving up
HTTP_TIMEOUT = 10.0


def job_session(listen_host: str, ssl_context: Any) -> aiohttp.ClientSession:
    """An HTTP session that asks from our own address: the backupserver admits only shard members."""
    local = (listen_host, 0) if _is_ip(listen_host) else None
    connector = aiohttp.TCPConnector(local_addr=local, force_close=True, ssl=ssl_context or True)
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
                                 headers={"Content-Type": "application/json"}, connector=connector)


async def signed_post(http: aiohttp.ClientSession, url: str, secret: Optional[ShardSecret],
                      body: dict[str, Any]) -> tuple[int, str]:
    """POST `body` as JSON with the shard secret's proof (manatee.core.auth): status and text."""
    data = json.dumps(body).encode()
    async with http.post(url, data=data, headers=sign_request(secret, "POST", URL(url).path, data)) as resp:
        return resp.status, await resp.text()


class BackupJob:
    """One backup job on the backupserver at `backup_url`."""

    def __init__(self, http: aiohttp.ClientSession, backup_url: str, secret: Optional[ShardSecret], log: Any,
                 poll_interval: float) -> None:
        self.http = http
        self.backup_url = backup_url
        self.secret = secret
        self.log = log
        self.poll_interval = poll_interval
        self.jobid: Optional[str] = None
        self.path: Optional[str] = None
        self.poll_failures = 0

    async def _post(self, url: str, body: dict[str, Any]) -> tuple[int, str]:
        return await signed_post(self.http, url, self.secret, body)

    async def request(self, body: dict[str, Any]) -> bool:
        """Ask for the job; True if the server did not know the snapshot offer and was asked without it."""
        url = f"{self.backup_url}/backup"
        dropped = False
        try:
            status, text = await self._post(url, body)
            if status == 400 and "snapshots" in body and "UnknownParameter" in text:
                # A backupserver from before incremental rebuilds: ask it the old way.
                self.log.info("restore_server_without_incremental", answer=brief(text))
                dropped = True
                status, text = await self._post(url, {k: v for k, v in body.items() if k != "snapshots"})
            if status != 200:
                raise RestoreError(f"backupserver {url} refused the backup request: HTTP {status}: {brief(text)}",
                                   phase="requesting")
            doc = json_object(text)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise RestoreError(f"POST {url} failed: {type(e).__name__}: {e}", phase="requesting") from e
        jobid, jobpath = doc.get("jobid"), doc.get("jobPath")
        if not isinstance(jobid, str) or not isinstance(jobpath, str) or not jobpath.startswith("/"):
            raise RestoreError(f"backupserver {url} answered without a job: {brief(text)}", phase="requesting")
        self.jobid, self.path = jobid, jobpath
        return dropped

    async def get(self, phase: str) -> dict[str, Any]:
        """The job as the sender sees it; RestoreError on an HTTP error status."""
        url = f"{self.backup_url}{self.path}"
        async with self.http.get(url) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RestoreError(f"GET {url}: HTTP {resp.status}: {brief(text)}", phase=phase)
            return json_object(text)

    async def poll(self, phase: str) -> Optional[dict[str, Any]]:
        """The job; None after a failed GET, RestoreError once too many failed in a row."""
        try:
            job = await self.get(phase)
        except RestoreError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            self.poll_failures += 1
            self.log.warning("restore_poll_failed", failures=self.poll_failures, error=f"{type(e).__name__}: {e}")
            if self.poll_failures >= POLL_FAILURES_ALLOWED:
                raise RestoreError(
                    f"backupserver {self.backup_url} stopped answering ({self.poll_failures} failed polls of "
                    f"{self.path}: {type(e).__name__}: {e})",
                    phase=phase,
                ) from e
            return None
        self.poll_failures = 0
        return job

    def failed(self, job: dict[str, Any], phase: str) -> RestoreError:
        return RestoreError(f"backupserver job {self.jobid} failed: {job.get('error', 'no error given')}",
                            phase=phase)

    async def error_detail(self, phase: str) -> str:
        """The sender's view of a failed stream, if it can still be asked (best effort)."""
        try:
            job = await asyncio.wait_for(self.get(phase), 3.0)
        except Exception as e:  # noqa: BLE001
            return f"; backupserver unreachable: {type(e).__name__}: {e}"
        if job.get("error"):
            return f"; sender says: {job['error']}"
        return ""

    async def final(self, phase: str) -> Optional[dict[str, Any]]:
        """After zfs recv accepted a complete stream, confirm with the sender (bounded wait).

        zfs recv only succeeds on a complete, checksummed stream, so an unreachable
        sender at this point is logged, not fatal; a sender that says "failed" is.
        """
        deadline = time.monotonic() + 15.0
        while True:
            try:
                job = await self.get(phase)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, RestoreError) as e:
                self.log.warning("restore_final_poll_failed", error=f"{type(e).__name__}: {e}")
                return None
            if job.get("done") == "failed":
                raise self.failed(job, "receiving")
            if job.get("done") is True or time.monotonic() > deadline:
                return job
            await asyncio.sleep(min(self.poll_interval, 0.05))


def _is_ip(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def json_object(text: str) -> dict[str, Any]:
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {brief(text)}")
    return doc


def brief(text: str, n: int = 300) -> str:
    """`text` on one line, cut to `n` characters."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."
