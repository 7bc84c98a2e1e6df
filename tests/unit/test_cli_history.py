"""manatee-history's lines: the guide's records, sorted by zkSeq, compact JSON."""

import json

from manatee.cli.common import dump_json
from manatee.cli.history import records
from manatee.shard.history import FIELDS, HistoryEvent, record_data, znode_prefix

# The first three lines of the guide's example (v1 records: name only, no data).
GUIDE_NAMES = {
    "1394597418025-172.27.3.8-AssumeLeader-Leader---0000000000": None,
    "1394597438430-172.27.4.13-NewLeader-Standby-172.27.3.8--0000000001": None,
    "1394597451091-172.27.3.8-NewStandby-Leader--5432-0000000002": None,
}
GUIDE_LINES = [
    '{"time":"1394597418025","date":"2014-03-12T04:10:18.025Z","ip":"172.27.3.8","action":"AssumeLeader","role":"Leader","master":"","slave":"","zkSeq":"0000000000"}',
    '{"time":"1394597438430","date":"2014-03-12T04:10:38.430Z","ip":"172.27.4.13","action":"NewLeader","role":"Standby","master":"172.27.3.8","slave":"","zkSeq":"0000000001"}',
    '{"time":"1394597451091","date":"2014-03-12T04:10:51.091Z","ip":"172.27.3.8","action":"NewStandby","role":"Leader","master":"","slave":"5432","zkSeq":"0000000002"}',
]


def test_guide_records_print_exactly_as_the_guide():
    recs, bad = records(dict(reversed(list(GUIDE_NAMES.items()))))
    assert bad == []
    assert [dump_json(r, compact=True) for r in recs] == GUIDE_LINES


def test_sorted_by_zkseq_even_when_times_interleave():
    # the guide's zkSeq 3 and 4: times out of order, zkSeq order wins
    names = {
        "1394597473513-172.27.4.13-NewStandby-Standby-172.27.3.8-5432-0000000004": None,
        "1394597477394-172.27.5.9-NewLeader-Standby-172.27.4.13--0000000003": None,
        "1394597418025-172.27.3.8-AssumeLeader-Leader---0000000010": None,
    }
    recs, _ = records(names)
    assert [r["zkSeq"] for r in recs] == ["0000000003", "0000000004", "0000000010"]


def test_records_written_by_the_sitter_carry_generation():
    ev = HistoryEvent(time=1700000000123, ip="10.0.0.1", action="AssumeLeader", role="Leader", generation=5)
    recs, bad = records({znode_prefix(ev) + "0000000042": record_data(ev)})
    assert bad == []
    (r,) = recs
    assert list(r) == [*FIELDS, "generation"]
    assert r["generation"] == 5 and r["zkSeq"] == "0000000042" and r["date"] == "2023-11-14T22:13:20.123Z"
    assert json.loads(dump_json(r, compact=True)) == r


def test_unparseable_nodes_are_reported_not_fatal():
    recs, bad = records({"junk": b"", "1394597418025-172.27.3.8-AssumeLeader-Leader---0000000000": b"{}"})
    assert len(recs) == 1 and len(bad) == 1 and "junk" in bad[0]
