"""HTTP API of the backupserver: validation, auth, membership, queue limits.

The sender here is a fake (an awaitable that waits on an event): these tests are
about the HTTP surface only. The real sender is exercised in
tests/integration/test_backup_restore.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from manatee.backupserver.membership import MembershipUnavailable, StaticMembership
from manatee.core.auth import RequestVerifier, ShardSecret, sign_request
from tests.backupserver_fakes import GOOD, SECRET, TOKEN, FakeSender, api_client, post_backup


@pytest.fixture
async def sender():
    s = FakeSender()
    yield s
    s.release.set()


@pytest.fixture
async def api(sender):
    client, queue = await api_client(sender)
    yield client
    await queue.close()
    await client.close()


async def _assert_ping(client):
    r = await client.get("/ping")
    assert r.status == 200
    assert (await r.json())["ok"] is True


async def test_ping(api):
    await _assert_ping(api)


async def test_post_and_get_job_lifecycle(api, sender):
    r = await post_backup(api, GOOD)
    assert r.status == 200, await r.text()
    body = await r.json()
    jobid = body["jobid"]
    assert str(uuid.UUID(jobid)) == jobid
    assert body["jobPath"] == f"/backup/{jobid}"

    await asyncio.sleep(0.05)
    job = await (await api.get(body["jobPath"])).json()
    assert job["jobid"] == jobid
    assert job["done"] is False
    assert job["state"] == "sending"
    assert (job["host"], job["port"], job["dataset"]) == ("127.0.0.1", 10001, "zones/manatee/data")
    assert job["snapshot"] == "pool/ds@1700000000000"
    assert job["size"] == 1000 and job["completed"] == 0
    assert job["started"] is not None and job["finished"] is None
    assert "error" not in job

    sender.release.set()
    for _ in range(50):
        job = await (await api.get(body["jobPath"])).json()
        if job["done"] is not False:
            break
        await asyncio.sleep(0.02)
    assert job["done"] is True
    assert job["state"] == "done"
    assert job["completed"] == 1000
    assert job["finished"] is not None


async def test_failed_job_reports_failed_and_error(sender):
    client, queue = await api_client(sender)
    try:
        sender.fail_with = "connection refused by 127.0.0.1:10001"
        sender.release.set()
        r = await post_backup(client, GOOD)
        jobpath = (await r.json())["jobPath"]
        for _ in range(50):
            job = await (await client.get(jobpath)).json()
            if job["done"] is not False:
                break
            await asyncio.sleep(0.02)
        assert job["done"] == "failed"
        assert job["state"] == "failed"
        assert "connection refused" in job["error"]
        await _assert_ping(client)
    finally:
        await queue.close()
        await client.close()


@pytest.mark.parametrize(
    "body, code, words",
    [
        ({"port": 1, "dataset": "a/b"}, "MissingParameter", ["host"]),
        ({"host": "127.0.0.1", "dataset": "a/b"}, "MissingParameter", ["port"]),
        ({"host": "127.0.0.1", "port": 1}, "MissingParameter", ["dataset"]),
        ({}, "MissingParameter", ["host", "port", "dataset"]),
        ({**GOOD, "extra": 1}, "UnknownParameter", ["extra"]),
        ({**GOOD, "port": "10001"}, "InvalidArgument", ["port", "integer", "string"]),
        ({**GOOD, "port": 10001.5}, "InvalidArgument", ["port", "integer", "number"]),
        ({**GOOD, "port": True}, "InvalidArgument", ["port", "integer", "boolean"]),
        ({**GOOD, "port": None}, "InvalidArgument", ["port", "integer", "null"]),
        ({**GOOD, "port": 0}, "InvalidArgument", ["port", "1-65535", "0"]),
        ({**GOOD, "port": 65536}, "InvalidArgument", ["port", "1-65535", "65536"]),
        ({**GOOD, "port": -5}, "InvalidArgument", ["port", "1-65535"]),
        ({**GOOD, "host": 12}, "InvalidArgument", ["host", "string", "number"]),
        ({**GOOD, "host": ""}, "InvalidArgument", ["host", "empty"]),
        ({**GOOD, "host": "bad host!"}, "InvalidArgument", ["host", "hostname"]),
        ({**GOOD, "host": "-lead.example"}, "InvalidArgument", ["host", "label"]),
        ({**GOOD, "host": "a" * 300}, "InvalidArgument", ["host", "253"]),
        ({**GOOD, "host": "; rm -rf /"}, "InvalidArgument", ["host"]),
        ({**GOOD, "dataset": 5}, "InvalidArgument", ["dataset", "string"]),
        ({**GOOD, "dataset": ""}, "InvalidArgument", ["dataset", "empty"]),
        ({**GOOD, "dataset": "pool/ds@snap"}, "InvalidArgument", ["dataset", "snapshot"]),
        ({**GOOD, "dataset": "/pool/ds"}, "InvalidArgument", ["dataset", "'/'"]),
        ({**GOOD, "dataset": "pool//ds"}, "InvalidArgument", ["dataset", "empty component"]),
        ({**GOOD, "dataset": "pool/../etc"}, "InvalidArgument", ["dataset", "'..'"]),
        ({**GOOD, "dataset": "pool/d s"}, "InvalidArgument", ["dataset", "characters"]),
        ({**GOOD, "dataset": "pool/$(id)"}, "InvalidArgument", ["dataset", "characters"]),
        ({**GOOD, "dataset": "1pool/ds"}, "InvalidArgument", ["dataset", "start with a letter"]),
        ({**GOOD, "dataset": "p/" + "x" * 300}, "InvalidArgument", ["dataset", "255"]),
        ({**GOOD, "host": "node-x.example"}, "InvalidArgument", ["host", "resolve"]),
        ({k: v for k, v in GOOD.items() if k != "streamToken"}, "MissingParameter", ["streamToken"]),
        ({**GOOD, "streamToken": "AB" * 32}, "InvalidArgument", ["streamToken", "hex"]),
        ({**GOOD, "streamToken": "ab"}, "InvalidArgument", ["streamToken"]),
        ({**GOOD, "streamToken": 7}, "InvalidArgument", ["streamToken"]),
    ],
)
async def test_validation_rejects(api, body, code, words):
    r = await post_backup(api, body)
    assert r.status == 400
    err = await r.json()
    assert err["code"] == code
    for w in words:
        assert w in err["message"], (w, err["message"])
    await _assert_ping(api)


@pytest.mark.parametrize(
    "body",
    [
        {"host": "::1", "port": 1, "dataset": "p", "streamToken": TOKEN},
        {"host": "node-a.example", "port": 65535, "dataset": "zones/a-b_c.d:e", "streamToken": TOKEN},
        {"host": "127.0.0.1", "port": 10001, "dataset": "tank/manatee", "streamToken": "0f" * 32},
    ],
)
async def test_validation_accepts(api, body):
    r = await post_backup(api, body)
    assert r.status == 200, await r.text()


@pytest.mark.parametrize(
    "raw, code, word",
    [
        (b"{not json", "MalformedJson", "not valid JSON"),
        (b"", "MalformedJson", "not valid JSON"),
        (b"\xff\xfe\x00", "MalformedJson", "UTF-8"),
        (b"[1, 2]", "InvalidBody", "array"),
        (b'"host"', "InvalidBody", "string"),
        (b"null", "InvalidBody", "null"),
        (b"42", "InvalidBody", "number"),
    ],
)
async def test_malformed_bodies(api, raw, code, word):
    r = await post_backup(api, None, raw=raw)
    assert r.status == 400
    err = await r.json()
    assert err["code"] == code
    assert word in err["message"]
    await _assert_ping(api)


async def test_oversized_body_413(api):
    big = json.dumps({**GOOD, "pad": "x" * 20000}).encode()
    r = await post_backup(api, None, raw=big)
    assert r.status == 413
    err = await r.json()
    assert err["code"] == "PayloadTooLarge"
    assert "16384" in err["message"]
    await _assert_ping(api)


async def test_oversized_chunked_body_413(api):
    async def gen():
        for _ in range(40):
            yield b"x" * 1024

    r = await api.post("/backup", data=gen(), headers={"Content-Type": "application/json"})
    assert r.status == 413
    assert (await r.json())["code"] == "PayloadTooLarge"
    await _assert_ping(api)


async def test_wrong_content_type_415(api):
    r = await post_backup(api, GOOD, headers={"Content-Type": "text/plain"})
    assert r.status == 415
    err = await r.json()
    assert err["code"] == "UnsupportedMediaType"
    assert "text/plain" in err["message"]
    await _assert_ping(api)


@pytest.mark.parametrize(
    "path", ["/backup/" + str(uuid.uuid4()), "/backup/not-a-uuid", "/backup/..%2F..%2Fetc"]
)
async def test_unknown_job_404(api, path):
    r = await api.get(path)
    assert r.status == 404
    err = await r.json()
    assert err["code"] == "ResourceNotFound"
    assert "job" in err["message"] or "route" in err["message"]
    await _assert_ping(api)


async def test_unknown_route_and_method(api):
    r = await api.get("/nope")
    assert r.status == 404
    err = await r.json()
    assert err["code"] == "ResourceNotFound" and "/nope" in err["message"]
    r = await api.delete("/backup")
    assert r.status == 405
    assert (await r.json())["code"] == "MethodNotAllowed"
    await _assert_ping(api)


@pytest.mark.parametrize(
    "how, words",
    [
        (dict(secret=None), ["missing Authorization"]),
        (dict(secret=None, headers={"Authorization": "Bearer the-shard-secret-0123456789"}), ["Bearer", "upgraded"]),
        (dict(secret=ShardSecret.of("another-shards-secret-xyz")), ["bad signature"]),
        (dict(now=1_000_000_000), ["clock", "NTP"]),
        (dict(headers={"Authorization": "Manatee-HMAC-SHA256 ts=1, nonce=zz, sig=00"}), ["nonce"]),
        # the body is not what was signed (signed when the test runs: a timestamp taken at
        # collection would be stale by the time a long run reaches this test)
        (dict(raw=json.dumps({**GOOD, "port": 10002}).encode(),
              headers=lambda: {"Authorization": sign_request(SECRET, "POST", "/backup", json.dumps(GOOD).encode())
                               ["Authorization"]}), ["bad signature"]),
    ],
)
async def test_without_valid_proof_401_and_no_job(sender, how, words):
    client, queue = await api_client(sender)
    try:
        how = dict(how)
        if callable(how.get("headers")):
            how["headers"] = how["headers"]()
        raw = how.pop("raw", None)
        r = await post_backup(client, GOOD, raw=raw, **how)
        assert r.status == 401, await r.text()
        err = await r.json()
        assert err["code"] == "NotAuthorized" and r.headers["WWW-Authenticate"] == "Manatee-HMAC-SHA256"
        for w in words:
            assert w in err["message"], (w, err["message"])
        assert queue.jobs() == [] and sender.jobs == []
        await _assert_ping(client)
    finally:
        await queue.close()
        await client.close()


async def test_signed_request_works_once_and_previous_secret_is_accepted(sender):
    rotated = ShardSecret.of("the-new-shard-secret-0123", "the-shard-secret-0123456789")
    client, queue = await api_client(sender, verifier=RequestVerifier(rotated))
    try:
        data = json.dumps(GOOD).encode()
        signed = sign_request(SECRET, "POST", "/backup", data)  # the previous secret still signs
        r = await post_backup(client, None, raw=data, headers=signed)
        assert r.status == 200, await r.text()
        job = queue.get((await r.json())["jobid"])
        assert job.stream_token == TOKEN
        assert TOKEN not in json.dumps(job.to_json())  # the token is never shown
        r = await post_backup(client, None, raw=data, headers=signed)  # the same request again: a replay
        assert r.status == 401 and "replayed" in (await r.json())["message"]
        assert len(queue.jobs()) == 1
    finally:
        await queue.close()
        await client.close()


async def test_non_member_requester_403(sender):
    # The test client connects from 127.0.0.1, which is not in the shard.
    client, queue = await api_client(sender, membership=StaticMembership({"127.0.0.2", "127.0.0.3"}))
    try:
        r = await post_backup(client, {**GOOD, "host": "127.0.0.2"})
        assert r.status == 403
        err = await r.json()
        assert err["code"] == "Forbidden"
        assert "requester 127.0.0.1" in err["message"]
        assert queue.jobs() == []
        await _assert_ping(client)
    finally:
        await queue.close()
        await client.close()


async def test_non_member_host_403(sender):
    client, queue = await api_client(sender, membership=StaticMembership({"127.0.0.1", "127.0.0.2"}))
    try:
        r = await post_backup(client, {**GOOD, "host": "127.0.0.9"})
        assert r.status == 403
        err = await r.json()
        assert "host 127.0.0.9" in err["message"]
        # A hostname is checked by the address it resolves to.
        r = await post_backup(client, {**GOOD, "host": "node-b.example"})
        assert r.status == 403
        assert "127.0.0.9" in (await r.json())["message"]
        assert queue.jobs() == []
        # A member host is fine.
        r = await post_backup(client, {**GOOD, "host": "127.0.0.2"})
        assert r.status == 200
        await _assert_ping(client)
    finally:
        await queue.close()
        await client.close()


@pytest.mark.parametrize("membership", [None, StaticMembership(set())], ids=["not-configured", "no-election"])
async def test_unknown_shard_refuses(sender, membership):
    """Fail closed: no membership configured, or a shard without election node, admits nobody."""
    client, queue = await api_client(sender, membership=membership)
    try:
        r = await post_backup(client, {**GOOD, "host": "127.0.0.1"})
        assert r.status == 403, await r.text()
        assert queue.jobs() == []
    finally:
        await queue.close()
        await client.close()


async def test_membership_unreadable_503(sender):
    class Broken:
        async def is_member(self, ip):
            raise MembershipUnavailable("ZooKeeper connection lost")

    client, queue = await api_client(sender, membership=Broken())
    try:
        r = await post_backup(client, GOOD)
        assert r.status == 503
        assert "ZooKeeper connection lost" in (await r.json())["message"]
        await _assert_ping(client)
    finally:
        await queue.close()
        await client.close()


async def test_queue_full_503(sender):
    client, queue = await api_client(sender, max_concurrent=1, max_queued=1)
    try:
        r1 = await post_backup(client, GOOD)
        r2 = await post_backup(client, GOOD)
        assert r1.status == 200 and r2.status == 200
        await asyncio.sleep(0.05)
        j1 = await (await client.get((await r1.json())["jobPath"])).json()
        j2 = await (await client.get((await r2.json())["jobPath"])).json()
        assert j1["state"] == "sending"
        assert j2["state"] == "queued" and j2["done"] is False
        r3 = await post_backup(client, GOOD)
        assert r3.status == 503
        err = await r3.json()
        assert err["code"] == "ServiceUnavailable"
        assert "maxQueuedJobs=1" in err["message"]
        await _assert_ping(client)
        sender.release.set()
        for _ in range(100):
            if not queue.running and not queue.queued:
                break
            await asyncio.sleep(0.02)
        r4 = await post_backup(client, GOOD)
        assert r4.status == 200
    finally:
        await queue.close()
        await client.close()


async def test_server_survives_a_burst_of_garbage(api):
    bads = [b"{", b"[]", b"{}", b'{"host": 1}', b"\x00" * 100, b'{"port": 1e400}']
    results = await asyncio.gather(*[post_backup(api, None, raw=b) for b in bads * 5])
    assert {r.status for r in results} == {400}
    await _assert_ping(api)
