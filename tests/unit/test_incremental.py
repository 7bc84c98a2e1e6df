"""Incremental rebuilds, pure parts: the common snapshot, the stream header, the request field."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from manatee.backupserver.validation import ValidationError, validate_backup_request
from manatee.core import incremental as inc
from manatee.core.incremental import SnapshotRef
from manatee.core.zfs import Snapshot, parse_snapshot_guids

GOOD = {"host": "127.0.0.1", "port": 10001, "dataset": "zones/manatee/data", "streamToken": "ab" * 32}


def _s(name: str, creation: int, guid: str, ds: str = "p/a") -> tuple[Snapshot, str]:
    return Snapshot(ds, name, creation), guid


# ------------------------------------------------------------------ common snapshot


def test_newest_common_matches_by_guid_and_takes_the_newest():
    ours = [_s("300", 300, "33"), _s("200", 200, "22"), _s("100", 100, "11")]
    theirs = [SnapshotRef("100", "11"), SnapshotRef("200", "22"), SnapshotRef("999", "99")]
    assert inc.newest_common(ours, theirs) == _s("200", 200, "22")
    # order of either list does not matter
    assert inc.newest_common(list(reversed(ours)), list(reversed(theirs))) == _s("200", 200, "22")


def test_newest_common_ignores_names():
    # Same name, different data (each node's snapshotter named one "500"): not common.
    assert inc.newest_common([_s("500", 500, "1")], [SnapshotRef("500", "2")]) is None
    # Different name, same guid (renamed): common.
    assert inc.newest_common([_s("x", 5, "7")], [SnapshotRef("y", "7")]) == _s("x", 5, "7")


def test_newest_common_none_and_unknown_guids():
    assert inc.newest_common([], [SnapshotRef("1", "1")]) is None
    assert inc.newest_common([_s("1", 1, "1")], []) is None
    assert inc.newest_common([_s("1", 1, "")], [SnapshotRef("1", "")]) is None  # no guid: never common


def test_newest_common_tie_on_creation_breaks_by_name():
    ours = [_s("1700000000001", 10, "a1"), _s("1700000000002", 10, "a2")]
    got = inc.newest_common(ours, [SnapshotRef("x", "a1"), SnapshotRef("y", "a2")])
    assert got == _s("1700000000002", 10, "a2")


def test_find_guid():
    snaps = [_s("1", 1, "18069517464992340327"), _s("2", 2, "5")]
    assert inc.find_guid(snaps, 18069517464992340327) == snaps[0][0]
    assert inc.find_guid(snaps, 6) is None


def test_offered_is_newest_first_capped_and_skips_missing_guids():
    snaps = [_s(str(i), i, str(i) if i % 2 else "") for i in range(10, 0, -1)]
    refs = inc.offered(snaps, limit=6)
    assert refs == [SnapshotRef("9", "9"), SnapshotRef("7", "7"), SnapshotRef("5", "5")]
    assert json.loads(json.dumps([r.to_json() for r in refs]))[0] == {"name": "9", "guid": "9"}


def test_describe_path():
    assert inc.describe_path(None) == "full"
    assert inc.describe_path("p/b@17") == "incremental from p/b@17"


def test_parse_snapshot_guids_only_the_datasets_own_newest_first():
    text = (
        "p/a\tcreation\t100\np/a\tguid\t1\n"
        "p/a@old\tcreation\t100\np/a@old\tguid\t11\n"
        "p/a@new\tcreation\t200\np/a@new\tguid\t22\n"
        "p/a@odd\tcreation\t-\np/a@odd\tguid\t-\n"
        "p/ab@x\tcreation\t300\np/ab@x\tguid\t33\n"
    )
    got = parse_snapshot_guids(text, "p/a")
    assert got == [_s("new", 200, "22"), _s("old", 100, "11"), _s("odd", 0, "")]


# ------------------------------------------------------------------ stream header

# The first 64 bytes of two real zfs-fuse streams (x86, little-endian): a full one of
# @1 (guid 18069517464992340327) and an increment from @1.
REAL_FULL = bytes.fromhex(
    "0000000000000000accbbaf50200000001000000000000003067116b00000000"
    "020000000000000067d995e365d2c3fa00000000000000006d74657374633638"
)
REAL_INCR = bytes.fromhex(
    "0000000000000000accbbaf50200000001000000000000003067116b00000000"
    "020000000000000000c02e402e65cbcb67d995e365d2c3fa6d74657374633638"
)


def test_real_headers():
    full = inc.parse_stream_header(REAL_FULL)
    assert not full.incremental and full.fromguid == 0 and full.toguid == 18069517464992340327
    incr = inc.parse_stream_header(REAL_INCR)
    assert incr.incremental and incr.fromguid == 18069517464992340327
    assert incr.toname.startswith("mtestc68")


@pytest.mark.parametrize("order", ["<", ">"])
def test_header_either_byte_order(order):
    data = struct.pack(order + "IIQQQIIQQ", 0, 0, inc.DMU_BACKUP_MAGIC, 1, 123, 2, 0, 77, 55) + b"pool/a@1\0junk"
    h = inc.parse_stream_header(data)
    assert (h.toguid, h.fromguid, h.toname, h.incremental) == (77, 55, "pool/a@1", True)


@pytest.mark.parametrize(
    "data, words",
    [
        (REAL_FULL[:40], "needs 56 bytes"),
        (b"\0" * 8 + b"\x01" * 56, "no zfs send stream magic"),
        (struct.pack("<IIQ", 1, 0, inc.DMU_BACKUP_MAGIC) + b"\0" * 48, "not BEGIN"),
        (b"HTTP/1.1 200 OK\r\n" + b"x" * 60, "no zfs send stream magic"),
    ],
)
def test_header_rejects_what_is_not_a_stream(data, words):
    with pytest.raises(inc.NotAStream, match=words):
        inc.parse_stream_header(data)


# ------------------------------------------------------------------ the request field


def test_request_without_snapshots_is_an_old_style_full_request():
    assert validate_backup_request(dict(GOOD)).snapshots == ()


def test_request_with_snapshots():
    req = validate_backup_request(
        {**GOOD, "snapshots": [{"name": "1700000000000", "guid": "18069517464992340327"}, {"name": "a.b:c-d_e", "guid": "0"}]}
    )
    assert req.snapshots == (SnapshotRef("1700000000000", "18069517464992340327"), SnapshotRef("a.b:c-d_e", "0"))
    assert validate_backup_request({**GOOD, "snapshots": []}).snapshots == ()


@pytest.mark.parametrize(
    "snapshots, code, words",
    [
        ("1,2", "InvalidArgument", ["snapshots must be an array", "string"]),
        ({"name": "1"}, "InvalidArgument", ["snapshots must be an array", "object"]),
        ([{"name": "1", "guid": "1"}] * (inc.MAX_ACCEPTED + 1), "InvalidArgument", ["1001 entries", "1000"]),
        (["1"], "InvalidArgument", ["snapshots[0] must be an object"]),
        ([{"name": "1", "guid": "1"}, {"guid": "2"}], "InvalidArgument", ["snapshots[1].name"]),
        ([{"name": "pool/a@1", "guid": "2"}], "InvalidArgument", ["snapshots[0].name", "without the dataset"]),
        ([{"name": "$(id)", "guid": "2"}], "InvalidArgument", ["snapshots[0].name"]),
        ([{"name": "", "guid": "2"}], "InvalidArgument", ["snapshots[0].name"]),
        ([{"name": "1"}], "InvalidArgument", ["snapshots[0].guid", "decimal string"]),
        ([{"name": "1", "guid": 5}], "InvalidArgument", ["snapshots[0].guid"]),
        ([{"name": "1", "guid": "-5"}], "InvalidArgument", ["snapshots[0].guid"]),
        ([{"name": "1", "guid": "0x10"}], "InvalidArgument", ["snapshots[0].guid"]),
        ([{"name": "1", "guid": str(2**64)}], "InvalidArgument", ["snapshots[0].guid", "64-bit"]),
        ([{"name": "1", "guid": "1", "size": 3}], "UnknownParameter", ["snapshots[0]", "size"]),
    ],
)
def test_request_snapshots_rejected_naming_the_key(snapshots, code, words):
    with pytest.raises(ValidationError) as err:
        validate_backup_request({**GOOD, "snapshots": snapshots})
    assert err.value.code == code
    for w in words:
        assert w in err.value.message, (w, err.value.message)


def test_unknown_field_lists_the_optional_one():
    with pytest.raises(ValidationError, match="allowed: host, port, dataset, streamToken, snapshots"):
        validate_backup_request({**GOOD, "extra": 1})


async def test_api_passes_the_offer_to_the_sender_and_reports_the_path():
    from tests.backupserver_fakes import FakeSender, api_client, post_backup

    sender = FakeSender()
    client, queue = await api_client(sender)
    try:
        offer = [{"name": "1700000000000", "guid": "42"}]
        r = await post_backup(client, {**GOOD, "snapshots": offer})
        assert r.status == 200, await r.text()
        path = (await r.json())["jobPath"]
        r = await post_backup(client, dict(GOOD))  # an old requester
        assert r.status == 200
        old_path = (await r.json())["jobPath"]
        for _ in range(50):
            if len(sender.jobs) == 2:
                break
            await asyncio.sleep(0.01)
        by_path = {f"/backup/{j.jobid}": j for j in sender.jobs}
        assert by_path[path].offered == (SnapshotRef("1700000000000", "42"),)
        assert by_path[old_path].offered == ()
        by_path[path].incremental = {"from": "pool/ds@1700000000000", "guid": "42"}
        by_path[path].path_reason = "newest common snapshot 1700000000000"
        job = await (await client.get(path)).json()
        assert job["incremental"] == {"from": "pool/ds@1700000000000", "guid": "42"}
        assert job["pathReason"] == "newest common snapshot 1700000000000"
        old = await (await client.get(old_path)).json()
        assert old["incremental"] is None
    finally:
        sender.release.set()
        await queue.close()
        await client.close()


# ------------------------------------------------------------------ backward compatibility


async def _request_against(handler, ours):
    """Run the restore client's request step against a local aiohttp app (no ZFS involved)."""
    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from manatee.core.restore.driver import _Restore

    app = web.Application()
    app.router.add_post("/backup", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        import structlog

        job = _Restore(None, dataset="p/b", mountpoint="/nonexistent", backup_url=str(server.make_url("")).rstrip("/"),
                       listen_host="127.0.0.1", listen_port=1, owner=None, secret=None, poll_interval=0.1,
                       timeout=5, stall_timeout=5, progress=None, logger=structlog.get_logger("test"))
        job.ours = ours
        async with aiohttp.ClientSession() as http:
            return job, await job._request_backup(http)
    finally:
        await server.close()


async def test_old_backupserver_that_refuses_the_field_is_asked_again_without_it():
    from aiohttp import web

    bodies = []

    async def old_server(request):  # the pre-incremental validation: unknown fields are a 400
        body = await request.json()
        bodies.append(body)
        if "snapshots" in body:
            return web.json_response({"code": "UnknownParameter", "message": "unknown field(s) snapshots; "
                                      "allowed: host, port, dataset"}, status=400)
        return web.json_response({"jobid": "j1", "jobPath": "/backup/j1"})

    job, path = await _request_against(old_server, [_s("1", 1, "11")])
    assert path == "/backup/j1"
    assert bodies[0]["snapshots"] == [{"name": "1", "guid": "11"}]
    assert "snapshots" not in bodies[1] and len(bodies) == 2
    assert job.why_full == "the backupserver does not know incremental requests"


async def test_new_backupserver_gets_the_offer_once_and_other_400s_are_errors():
    from aiohttp import web

    from manatee.core.restore import RestoreError

    bodies = []

    async def new_server(request):
        bodies.append(await request.json())
        return web.json_response({"jobid": "j2", "jobPath": "/backup/j2"})

    job, path = await _request_against(new_server, [_s("2", 2, "22"), _s("1", 1, "")])
    assert path == "/backup/j2" and len(bodies) == 1
    assert bodies[0]["snapshots"] == [{"name": "2", "guid": "22"}] and job.why_full is None

    async def refusing(request):
        return web.json_response({"code": "InvalidArgument", "message": "snapshots[0].guid bad"}, status=400)

    with pytest.raises(RestoreError, match="HTTP 400"):
        await _request_against(refusing, [_s("2", 2, "22")])

    bodies.clear()
    job, _ = await _request_against(new_server, [])  # nothing to offer: an old-style body
    assert "snapshots" not in bodies[0]
