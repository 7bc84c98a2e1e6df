"""History records: which flips a target change records, and the guide's manatee-history format."""

import json

import pytest

from manatee.shard.history import (
    HistoryEvent, events_for, parse_record, reaped_addresses, record_data, record_json, sort_records,
    znode_prefix,
)
from manatee.shard.state import DEPOSED, FENCED, PRIMARY, REBUILD, SAFE_MODE, STANDBY, UNASSIGNED, Peer, Target
from tests import factories


def peer(n: int) -> Peer:
    return factories.peer(f"172.27.3.{n}", f"z{n}", status=False)


ME, A, B, C = peer(8), peer(1), peer(2), peer(3)
T0 = 1394597418025


def kinds(evs):
    return [(e.action, e.role, e.master, e.slave) for e in evs]


def test_becoming_primary_records_assume_leader_then_new_standby():
    evs = events_for(ME, None, Target(PRIMARY, sync=A, downstream=A), 3, T0)
    assert kinds(evs) == [("AssumeLeader", "Leader", "", ""), ("NewStandby", "Leader", "", A.ip)]
    assert all(e.generation == 3 and e.time == T0 and e.ip == ME.ip for e in evs)


def test_standby_promoted_records_assume_leader():
    old = Target(STANDBY, upstream=A, downstream=B)
    evs = events_for(ME, old, Target(PRIMARY, sync=B, downstream=B), 4, T0)
    assert [e.action for e in evs] == ["AssumeLeader", "NewStandby"]


def test_primary_changing_sync_expires_the_old_and_names_the_new():
    old = Target(PRIMARY, sync=A, downstream=A, read_only=False)
    evs = events_for(ME, old, Target(PRIMARY, sync=B, downstream=B), 5, T0)
    assert kinds(evs) == [("ExpiredStandby", "Leader", "", A.ip), ("NewStandby", "Leader", "", B.ip)]


def test_primary_dropping_its_sync_records_expired_standby():
    old = Target(PRIMARY, sync=A, downstream=A, read_only=False)
    assert kinds(events_for(ME, old, Target(PRIMARY), 5, T0)) == [("ExpiredStandby", "Leader", "", A.ip)]


def test_read_only_change_alone_records_nothing():
    old = Target(PRIMARY, sync=A, downstream=A, read_only=True)
    assert events_for(ME, old, Target(PRIMARY, sync=A, downstream=A, read_only=False), 5, T0) == []


def test_standby_new_leader_and_new_standby():
    evs = events_for(ME, None, Target(STANDBY, upstream=A, downstream=B), 2, T0)
    assert kinds(evs) == [("NewLeader", "Standby", A.ip, ""), ("NewStandby", "Standby", A.ip, B.ip)]
    evs = events_for(ME, Target(STANDBY, upstream=A, downstream=B), Target(STANDBY, upstream=C, downstream=B), 2, T0)
    assert kinds(evs) == [("NewLeader", "Standby", C.ip, "")]
    evs = events_for(ME, Target(STANDBY, upstream=A, downstream=B), Target(STANDBY, upstream=A), 2, T0)
    assert kinds(evs) == [("ExpiredStandby", "Standby", A.ip, B.ip)]


def test_no_flip_no_record():
    t = Target(STANDBY, upstream=A, downstream=B)
    assert events_for(ME, t, t, 2, T0) == []
    assert events_for(ME, t, Target(REBUILD, upstream=A, downstream=B), 2, T0) == []
    assert events_for(ME, t, Target(STANDBY, upstream=None, downstream=B), 2, T0) == []  # detaching


@pytest.mark.parametrize("role", [UNASSIGNED, DEPOSED, FENCED, SAFE_MODE])
def test_roles_without_replication_record_nothing(role):
    assert events_for(ME, Target(PRIMARY, sync=A), Target(role), 2, T0) == []


def test_record_json_matches_the_guides_first_line():
    ev = HistoryEvent(time=T0, ip="172.27.3.8", action="AssumeLeader", role="Leader")
    assert json.dumps(record_json(ev, 0), separators=(",", ":")) == (
        '{"time":"1394597418025","date":"2014-03-12T04:10:18.025Z","ip":"172.27.3.8","action":"AssumeLeader",'
        '"role":"Leader","master":"","slave":"","zkSeq":"0000000000"}')


def test_znode_name_and_parse_round_trip():
    ev = HistoryEvent(time=1395449938742, ip="172.27.5.9", action="NewStandby", role="Standby",
                      master="172.27.3.8", slave="172.27.4.13", generation=9)
    assert znode_prefix(ev) == "1395449938742-172.27.5.9-NewStandby-Standby-172.27.3.8-172.27.4.13-"
    name = znode_prefix(ev) + "0000000008"
    rec = parse_record(name, record_data(ev))
    assert rec == record_json(ev, 8)
    assert list(rec)[:8] == ["time", "date", "ip", "action", "role", "master", "slave", "zkSeq"]
    assert rec["generation"] == 9


def test_parse_record_from_a_v1_name_without_data():
    rec = parse_record("1394597418025-172.27.3.8-AssumeLeader-Leader---0000000000")
    assert rec == {"time": "1394597418025", "date": "2014-03-12T04:10:18.025Z", "ip": "172.27.3.8",
                   "action": "AssumeLeader", "role": "Leader", "master": "", "slave": "", "zkSeq": "0000000000"}
    assert parse_record("1394597418025-172.27.3.8-AssumeLeader-Leader---0000000000", b"not json") == rec


@pytest.mark.parametrize("name", ["nothing", "1-2-3-0000000001", "abc-1.2.3.4-A-Leader---0000000001",
                                  "1394597418025-ip-AssumeLeader-Leader---x"])
def test_parse_record_rejects_malformed_names(name):
    with pytest.raises(ValueError, match="history node"):
        parse_record(name)


def test_sort_records_by_zkseq_not_time():
    recs = [{"zkSeq": "0000000004", "time": "1"}, {"zkSeq": "0000000003", "time": "9"}]
    assert [r["zkSeq"] for r in sort_records(recs)] == ["0000000003", "0000000004"]


def test_event_validation():
    with pytest.raises(ValueError, match="action"):
        HistoryEvent(time=1, ip="1.2.3.4", action="Promote", role="Leader")
    with pytest.raises(ValueError, match="role"):
        HistoryEvent(time=1, ip="1.2.3.4", action="NewLeader", role="Primary")
    with pytest.raises(ValueError, match="may not contain"):
        HistoryEvent(time=1, ip="fe80-1", action="NewLeader", role="Standby")


def test_reaped_addresses_are_those_whose_newest_mention_is_their_reaped_record():
    """A node reaped and never named since is gone; one that came back (its own flips, or
    its upstream naming it) is not; the primary named as master of a Reaped record is not."""
    names = [
        "1000-10.0.0.1-AssumeLeader-Leader---0000000001",
        "1001-10.0.0.2-NewStandby-Leader--10.0.0.3-0000000002",
        "1002-10.0.0.2-AssumeLeader-Leader---0000000003",
        "1003-10.0.0.1-Reaped-Standby-10.0.0.2--0000000004",
        "1004-10.0.0.3-Reaped-Standby-10.0.0.2--0000000005",
        "1005-10.0.0.3-NewLeader-Standby-10.0.0.2--0000000006",  # 10.0.0.3 came back
        "1006-10.0.0.4-Reaped-Standby-10.0.0.2--0000000007",
        "1007-10.0.0.2-NewStandby-Leader--10.0.0.4-0000000008",  # its upstream names 10.0.0.4 again
        "not-a-history-node",
    ]
    assert reaped_addresses(names) == {"10.0.0.1"}
    assert reaped_addresses(reversed(names)) == {"10.0.0.1"}  # by zkSeq, not listing order
    assert reaped_addresses([]) == frozenset()
