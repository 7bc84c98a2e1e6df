import asyncio
import contextlib

import pytest

from manatee.sitter.heartbeat import Heartbeat, HeartbeatTable, parse_heartbeat

MEMBERS = {"127.0.0.12:5432:10002:5433"}


def member(pid):
    return pid in MEMBERS


def test_parse_ok():
    hb = parse_heartbeat({"id": "127.0.0.12:5432:10002:5433", "pgUrl": "tcp://postgres@127.0.0.12:5432/postgres",
                          "wal": "0/3000060", "streaming": True}, member, 5.0)
    assert hb.peer_id.startswith("127.0.0.12") and hb.streaming and hb.received == 5.0


@pytest.mark.parametrize("body, words", [
    ([], "JSON object"),
    ({"pgUrl": "x"}, "'id'"),
    ({"id": "127.0.0.12:5432:10002:5433"}, "'pgUrl'"),
    ({"id": "127.0.0.12:5432:10002:5433", "pgUrl": "x", "wal": 5}, "'wal'"),
    ({"id": "127.0.0.12:5432:10002:5433", "pgUrl": "x", "streaming": "yes"}, "'streaming'"),
    ({"id": "127.0.0.12:5432:10002:5433", "pgUrl": "x", "free": -1}, "'free'"),
    ({"id": "127.0.0.12:5432:10002:5433", "pgUrl": "x", "free": "1G"}, "'free'"),
    ({"id": "127.0.0.12:5432:10002:5433", "pgUrl": "x", "free": True}, "'free'"),
    ({"id": "127.0.0.12:5432:10002:5433", "pgUrl": "x", "free": 1.5}, "'free'"),
])
def test_parse_rejects(body, words):
    with pytest.raises(ValueError, match=words):
        parse_heartbeat(body, member, 0)


def test_a_standby_tells_the_room_on_its_dataset_and_it_counts_only_while_fresh():
    """The room lets a primary that cannot serve see that its sync's disk is full too. A
    heartbeat without the field (an older sitter) or with null says nothing: unknown."""
    from manatee.sitter.heartbeat import beat_status
    body = {"id": "127.0.0.12:5432:10002:5433", "pgUrl": "x", **beat_status(None, 1 << 20, 0x3000060)}
    assert body["free"] == 1 << 20 and body["wal"] == "0/3000060"
    assert beat_status(None) == {"wal": None, "streaming": False, "free": None, "sick": None}
    t = HeartbeatTable(expiration_s=10, started=0.0)
    t.record(parse_heartbeat(body, member, 1.0))
    t.record(parse_heartbeat({"id": "c", "pgUrl": "x"}, lambda _p: True, 1.0))
    assert t.room(["127.0.0.12:5432:10002:5433", "c", "d"], now=5.0) == {"127.0.0.12:5432:10002:5433": 1 << 20}
    assert t.room(["127.0.0.12:5432:10002:5433"], now=11.5) == {}  # old news: unknown
    seen = t.observed(["127.0.0.12:5432:10002:5433"], now=5.0)
    assert seen == {"heartbeats": {"127.0.0.12:5432:10002:5433": True}, "gave_way": {},
                    "standby_free": {"127.0.0.12:5432:10002:5433": 1 << 20},
                    "standby_wal": {"127.0.0.12:5432:10002:5433": 0x3000060}, "standby_sick": {}}
    t.record(Heartbeat("c", "x", "not an LSN", True, 6.0))
    assert t.received_wal(["c"], now=6.0) == {}  # unknown, not an error


def test_a_standby_says_its_postgresql_is_sick_and_it_counts_only_while_fresh():
    """A switchover waits for a sync whose sitter says its PostgreSQL is not healthy lately
    (sandbox trial 2026-12-05: a switchover to a sync whose PostgreSQL hung again and again
    made the hung node primary, a 24 s write outage). Null, absent or blank says nothing."""
    from manatee.sitter.heartbeat import beat_status
    b = "127.0.0.12:5432:10002:5433"
    t = HeartbeatTable(expiration_s=10, started=0.0)
    t.record(parse_heartbeat({"id": b, "pgUrl": "x", **beat_status(None, sick="it did not answer  ")}, member, 1.0))
    t.record(parse_heartbeat({"id": "c", "pgUrl": "x", "sick": "  "}, lambda _p: True, 1.0))
    t.record(parse_heartbeat({"id": "d", "pgUrl": "x", "sick": None}, lambda _p: True, 1.0))
    assert t.observed([b, "c", "d"], now=5.0)["standby_sick"] == {b: "it did not answer"}
    assert t.unwell([b], now=11.5) == {}  # old news: unknown
    t.record(parse_heartbeat({"id": b, "pgUrl": "x", **beat_status(None)}, member, 12.0))
    assert t.unwell([b], now=12.0) == {}  # healthy again
    with pytest.raises(ValueError, match="'sick' must be a string"):
        parse_heartbeat({"id": b, "pgUrl": "x", "sick": 3}, member, 0)


def test_forged_sender_refused():
    with pytest.raises(PermissionError, match="not registered"):
        parse_heartbeat({"id": "10.9.9.9:5432:10002:5433", "pgUrl": "x"}, member, 0)


def test_freshness_and_grace_period():
    t = HeartbeatTable(expiration_s=10, started=100.0)
    assert t.fresh("b", now=105)          # grace period after start
    assert not t.fresh("b", now=111)      # never heard, grace over
    t.record(Heartbeat("b", "u", None, False, 111))
    assert t.fresh("b", now=120)
    assert not t.fresh("b", now=121.5)
    assert t.freshness(["b", "c"], now=115) == {"b": True, "c": False}
    t.reset(now=200)
    assert t.fresh("b", now=205) and not t.fresh("b", now=211)


def test_source_address_must_match_claimed_peer():
    body = {"id": "127.0.0.12:5432:10002:5433", "pgUrl": "x"}
    assert parse_heartbeat(body, member, 0, remote="127.0.0.12").peer_id == body["id"]
    with pytest.raises(PermissionError, match="came from 127.0.0.99"):
        parse_heartbeat(body, member, 0, remote="127.0.0.99")


def test_a_new_downstream_gets_a_period_and_old_beats_do_not_count():
    """F8: the primary names b its sync; b's last heartbeat to it is from long ago (an
    earlier role) and b is still stuck on a request to its old, cut-off upstream. b must
    get one period from being named, not be judged by the old beat."""
    t = HeartbeatTable(expiration_s=10, started=0.0)
    t.record(Heartbeat("b", "u", None, False, 50.0))
    assert not t.fresh("b", now=100)      # stale: b is not my downstream, nothing expected
    t.expect("b", now=100)
    assert t.fresh("b", now=105)          # one period from being named
    assert not t.fresh("b", now=111)      # and no more, if it never comes
    t.record(Heartbeat("b", "u", None, False, 108))
    assert t.fresh("b", now=117) and not t.fresh("b", now=119)
    t.reset(now=200)
    assert t.expected == {}


def test_a_leaving_heartbeat_is_parsed_and_checked():
    body = {"id": "127.0.0.12:5432:10002:5433", "pgUrl": "x", "leaving": "  my PostgreSQL cannot serve: disk full  "}
    hb = parse_heartbeat(body, member, 3.0)
    assert hb.leaving == "my PostgreSQL cannot serve: disk full"
    assert parse_heartbeat({**body, "leaving": "x" * 1000}, member, 3.0).leaving == "x" * 300
    assert parse_heartbeat({**body, "leaving": None}, member, 3.0).leaving is None
    for bad in (5, "", "   ", ["why"]):
        with pytest.raises(ValueError, match="'leaving'"):
            parse_heartbeat({**body, "leaving": bad}, member, 0)


def test_a_standby_that_gives_way_is_gone_at_once_and_back_with_its_next_beat():
    t = HeartbeatTable(expiration_s=10, started=0.0)
    assert t.record(Heartbeat("b", "u", None, True, 20.0)) == "new"
    assert t.record(Heartbeat("b", "u", None, True, 21.0)) is None
    assert t.fresh("b", now=21.5) and t.gave_way(["b"], now=21.5) == {}
    assert t.record(Heartbeat("b", "u", None, False, 22.0, leaving="its disk is full")) == "leaving"
    assert not t.fresh("b", now=22.0)  # not after the expiry (32 s): now
    assert t.gave_way(["b", "c"], now=22.0) == {"b": "its disk is full"}
    assert t.gave_way(["b"], now=32.1) == {}  # news for one expiration period (it may heartbeat another now)
    assert t.record(Heartbeat("b", "u", None, False, 22.5, leaving="its disk is full")) is None  # no news
    assert t.record(Heartbeat("b", "u", None, True, 40.0)) is None
    assert t.fresh("b", now=41.0) and t.gave_way(["b"], now=41.0) == {}  # healthy again: a plain beat counts
    # the grace period of a new downstream does not make a leaving one fresh
    t.record(Heartbeat("c", "u", None, False, 50.0, leaving="down"))
    t.expect("c", now=49.0)
    assert not t.fresh("c", now=50.5)


def test_follow_starts_a_grace_once_per_new_downstream_and_forgets_on_a_new_role():
    """Named at the state write: a primary that names a new sync and then fails to configure
    its own PostgreSQL (a full disk) still gives it its grace period; deciding the same again
    does not extend it (2026-12-05 sandbox trial: the sync flapped 20 times a second)."""
    t = HeartbeatTable(expiration_s=6, started=0.0)
    t.follow("primary", "b", now=1.0)  # a first target: a new role, everyone gets a period
    t.record(Heartbeat("b", "u", None, True, 2.0))
    assert not t.fresh("c", now=8.0)
    t.follow("primary", "c", now=10.0)  # my new sync
    assert t.fresh("c", now=15.9)
    t.follow("primary", "c", now=15.0)  # decided again (the last cycle failed): no new period
    assert not t.fresh("c", now=16.5)
    t.follow("primary", None, now=17.0)  # no sync: nothing to expect
    t.follow("primary", "b", now=20.0)
    assert t.fresh("b", now=25.9) and not t.fresh("b", now=26.1)
    t.follow("standby", None, now=30.0)  # a new role: what I heard before is forgotten
    assert t.beats == {} and t.fresh("b", now=35.0)


async def _upstream_and_sender(handler, interval_s: float, records: list):
    """A real HTTP server on loopback taking POST /heartbeat with `handler`, and a real
    HeartbeatSender pointed at it: (the server's runner, its URL, the sender)."""
    from aiohttp import web

    from manatee.core.auth import ShardSecret
    from manatee.sitter.heartbeat import HeartbeatSender
    from tests.sim.clock import FakeClock, SimLog

    app = web.Application()
    app.add_routes([web.post("/heartbeat", handler)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    sender = HeartbeatSender(me_id="127.0.0.1:5432:10002:5433", pg_url="u", interval_s=interval_s, timeout_s=2.0,
                             status=lambda: {"wal": None, "streaming": True},
                             log=SimLog(FakeClock(), "me", records), secret=ShardSecret.of("k" * 32))
    return runner, url, sender


@contextlib.asynccontextmanager
async def _sending(handler, interval_s: float, records: list):
    """_upstream_and_sender with the sender running: (its upstream's URL, the sender)."""
    runner, url, sender = await _upstream_and_sender(handler, interval_s, records)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        yield url, sender
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await runner.cleanup()


async def test_the_sender_says_it_leaves_once_then_falls_silent():
    """A real HeartbeatSender against a real HTTP server on loopback: leave() sends one signed
    beat that says why at once (not after the interval), then nothing more."""
    from aiohttp import web

    from manatee.core.auth import SCHEME

    got: list[dict] = []

    async def heartbeat(req):
        got.append({**await req.json(), "signed": req.headers.get("Authorization", "").startswith(SCHEME)})
        return web.json_response({})

    records: list = []
    async with _sending(heartbeat, 30.0, records) as (url, sender):
        sender.upstream_url = url
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        assert len(got) == 1 and "leaving" not in got[0] and got[0]["signed"]
        sender.leave("my PostgreSQL cannot serve: it is not running")
        for _ in range(100):  # the interval is 30 s: only the wake-up can send it now
            if len(got) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(got) == 2 and got[1]["leaving"] == "my PostgreSQL cannot serve: it is not running"
        assert sender.upstream_url is None and "heartbeat_leaving_sent" in [r[3] for r in records]
        await asyncio.sleep(0.2)
        assert len(got) == 2


async def test_a_last_word_the_upstream_did_not_take_is_sent_again_at_the_next_intervals():
    """CI under load: the one leaving heartbeat failed, and the primary waited the whole
    expiration time for a sync that had given way. It is now tried again, LEAVING_TRIES in
    all, and never after the standby heartbeats again."""
    from aiohttp import web

    from manatee.sitter.heartbeat import LEAVING_TRIES

    got: list[dict] = []
    refuse = {"n": 2}

    async def heartbeat(req):
        body = await req.json()
        got.append(body)
        if body.get("leaving") and refuse["n"] > 0:
            refuse["n"] -= 1
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({})

    async with _sending(heartbeat, 0.05, []) as (url, sender):
        sender.upstream_url = url
        sender.leave("my PostgreSQL cannot serve: its disk is full")
        await asyncio.sleep(0.6)
        leaving = [b for b in got if b.get("leaving")]
        assert len(leaving) == 3  # refused twice, taken the third time, then silence
        got.clear()
        refuse["n"] = 100  # an upstream that never takes it: LEAVING_TRIES, no more
        sender.upstream_url = url
        sender.leave("my PostgreSQL cannot serve: it is not running")
        await asyncio.sleep(0.6)
        assert len([b for b in got if b.get("leaving")]) == LEAVING_TRIES
        got.clear()
        sender.upstream_url = url  # heartbeating again: a pending last word is dropped
        sender.leave("x")
        sender.upstream_url = url
        await asyncio.sleep(0.3)
        assert len([b for b in got if b.get("leaving")]) <= 1 and any(not b.get("leaving") for b in got)


def test_a_standby_heartbeats_the_upstream_it_decided_to_follow_at_once():
    """HeartbeatSender.follow: the loop points the sender before the transition's steps (a
    slow config write must not make the primary judge its new sync gone); a new upstream is
    heartbeaten at once, the same one is not woken again; nobody while it leads or withholds."""
    from manatee.shard.state import PRIMARY, STANDBY, Target
    from manatee.sitter.heartbeat import HeartbeatSender
    from tests.observations import A, B

    async def go():
        s = HeartbeatSender(me_id="me", pg_url="u", interval_s=1.0, timeout_s=1.0, status=dict, log=None)
        s.follow(Target(STANDBY, upstream=A), withheld=False)
        assert s.upstream_url == A.status_url and s._wake.is_set()
        s._wake.clear()
        s.follow(Target(STANDBY, upstream=A), withheld=False)
        assert s.upstream_url == A.status_url and not s._wake.is_set()
        s.follow(Target(STANDBY, upstream=B), withheld=False)
        assert s.upstream_url == B.status_url and s._wake.is_set()
        s.follow(Target(STANDBY, upstream=B), withheld=True)
        assert s.upstream_url is None
        s.follow(Target(PRIMARY), withheld=False)
        assert s.upstream_url is None

    asyncio.run(go())


async def test_a_refused_heartbeat_is_remembered_until_one_is_taken():
    """Sandbox trial 2026-12-05: a node started with another shard secret; its upstream
    refused every heartbeat (401) and `manatee-adm show` said "problems: none". The sender
    now keeps why (for /state `heartbeatRefused`) until a heartbeat is taken; a 503 (a busy
    upstream) is no refusal."""
    from aiohttp import web

    answer = {"status": 401}

    async def heartbeat(req):
        if answer["status"] != 200:
            return web.json_response({"code": "NotAuthorized", "message": "bad signature"}, status=answer["status"])
        return web.json_response({})

    async with _sending(heartbeat, 0.05, []) as (url, sender):
        sender.upstream_url = url
        for _ in range(100):
            if sender.refused:
                break
            await asyncio.sleep(0.02)
        assert sender.refused and sender.refused.startswith(f"{url}: HTTP 401") and "bad signature" in sender.refused
        answer["status"] = 200
        for _ in range(100):
            if sender.refused is None:
                break
            await asyncio.sleep(0.02)
        assert sender.refused is None
        answer["status"] = 503
        await asyncio.sleep(0.3)
        assert sender.refused is None


def test_adm_names_a_standby_whose_heartbeats_are_refused():
    from manatee.cli.adm_gray import heartbeat_problems

    sitter = {"heartbeatRefused": "http://127.0.0.13:5433: HTTP 401: bad signature"}
    (sev, line), = heartbeat_problems("async 127.0.0.12", "b", sitter, "127.0.0.13", {}, "warning")
    assert sev == "warning" and "its upstream 127.0.0.13 refuses its heartbeats" in line
    assert "shard secret" in line and "HTTP 401" in line
    assert heartbeat_problems("async 127.0.0.12", "b", {"heartbeatRefused": None}, "127.0.0.13", {}, "w") == []
