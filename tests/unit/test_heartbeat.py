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
])
def test_parse_rejects(body, words):
    with pytest.raises(ValueError, match=words):
        parse_heartbeat(body, member, 0)


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
