"""A backupserver's HTTP API on a fake sender, for unit tests: `api_client(sender)` serves
the real app (signed requests, a static membership, a resolver for two names) in-process;
`FakeSender` records each job and finishes it when told; `post_backup` signs a POST /backup."""

from __future__ import annotations

import asyncio
import json

from aiohttp.test_utils import TestClient, TestServer

from manatee.backupserver.jobs import BackupJob, JobQueue
from manatee.backupserver.membership import StaticMembership
from manatee.backupserver.server import make_app
from manatee.core.auth import RequestVerifier, ShardSecret, sign_request

TOKEN = "ab" * 32
GOOD = {"host": "127.0.0.1", "port": 10001, "dataset": "zones/manatee/data", "streamToken": TOKEN}
SECRET = ShardSecret.of("the-shard-secret-0123456789")
MEMBERS = {"127.0.0.1", "127.0.0.2", "::1"}


class FakeSender:
    """Records jobs; each send waits until released (or fails if told to)."""

    def __init__(self) -> None:
        self.jobs: list[BackupJob] = []
        self.release = asyncio.Event()
        self.fail_with: str | None = None

    async def __call__(self, job: BackupJob) -> None:
        self.jobs.append(job)
        job.snapshot = "pool/ds@1700000000000"
        job.size = 1000
        await self.release.wait()
        if self.fail_with:
            raise RuntimeError(self.fail_with)
        job.completed = 1000


async def api_client(sender, **kw) -> tuple[TestClient, JobQueue]:
    queue = JobQueue(
        sender,
        max_concurrent=kw.pop("max_concurrent", 2),
        max_queued=kw.pop("max_queued", 8),
        keep_finished=kw.pop("keep_finished", 100),
    )

    async def resolver(host: str) -> str:
        table = {"node-a.example": "127.0.0.1", "node-b.example": "127.0.0.9"}
        if host in table:
            return table[host]
        if host[0].isdigit() or ":" in host:
            return host
        raise OSError(f"unknown host {host}")

    kw.setdefault("verifier", RequestVerifier(SECRET))
    kw.setdefault("membership", StaticMembership(MEMBERS))
    app = make_app(queue=queue, resolver=resolver, **kw)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client, queue


async def post_backup(client, body, *, raw: bytes | None = None, headers=None, secret=SECRET, **sign):
    data = raw if raw is not None else json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    h.update(sign_request(secret, "POST", "/backup", data, **sign))
    h.update(headers or {})
    return await client.post("/backup", data=data, headers=h)
