"""The data checkers must pass on healthy data and report every kind of violation."""

from datetime import datetime, timedelta, timezone

from manatee_testbed.checks import (
    MAX_LINES,
    Row,
    _ranges,
    history_one_primary_per_generation,
    merge_rows,
    missing_acked,
    not_a_prefix,
    promoted_from,
    summarise,
    two_writers,
    unconfirmed_commits,
)
from manatee_testbed.writer import node_host

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def rows(spec):
    """spec: list of (node, first_id, last_id); one row per id, written 10 ms apart in id order."""
    out = []
    for node, a, b in spec:
        for i in range(a, b + 1):
            out.append(Row(i, f"p{i}", node, T0 + timedelta(milliseconds=10 * i)))
    return out


# ------------------------------------------------------------------ helpers


def test_ranges_compress_runs():
    assert _ranges([7, 1, 2, 3, 9, 10]) == ["1-3", "7", "9-10"]
    assert _ranges([]) == []


def test_node_host():
    assert node_host("127.0.0.12:5432") == "127.0.0.12"
    assert node_host("127.0.0.12") == "127.0.0.12"
    assert node_host(None) is None


# ------------------------------------------------------------------ S2


def test_missing_acked_ok_when_all_present_and_extra_rows_allowed():
    # failed (unknown-outcome) ids may be present on the primary: not a problem
    assert missing_acked({1, 2, 3}, [1, 2, 3, 4, 5], "127.0.0.12") == []


def test_missing_acked_reports_single_id_with_primary_name():
    problems = missing_acked({1, 2, 1234}, [1, 2], "127.0.0.12")
    assert problems == ["S2: acked id 1234 missing on the primary 127.0.0.12"]


def test_missing_acked_reports_ranges_and_total():
    problems = missing_acked(set(range(1, 11)), [1, 2, 3, 7], "p")
    assert problems[0] == "S2: 6 acknowledged writes missing on the primary p"
    assert "S2: acked ids 4-6 missing on the primary p" in problems
    assert "S2: acked ids 8-10 missing on the primary p" in problems


def test_missing_acked_caps_output():
    acked = set(range(0, 1000, 2))  # 500 isolated ids
    problems = missing_acked(acked, [], "p")
    assert len(problems) == MAX_LINES + 1
    assert problems[-1].startswith("... and ")
    assert "500 acknowledged writes missing" in problems[0]


def test_unconfirmed_commits():
    assert unconfirmed_commits(set()) == []
    (p,) = unconfirmed_commits({5, 6, 9}, "127.0.0.12")
    assert p.startswith("S5: 3 commit(s) on 127.0.0.12") and "5-6, 9" in p


# ------------------------------------------------------------------ S4


def test_lagging_standby_is_not_a_fork():
    primary = [(i, f"p{i}") for i in range(1, 101)]
    standby = [(i, f"p{i}") for i in range(1, 90)]
    assert not_a_prefix(primary, standby, "sync") == []
    assert not_a_prefix(primary, primary, "sync") == []
    assert not_a_prefix(primary, [], "async") == []


def test_standby_row_missing_on_primary_is_a_fork():
    primary = [(i, f"p{i}") for i in range(1, 11)]
    standby = [(i, f"p{i}") for i in range(1, 14)]
    problems = not_a_prefix(primary, standby, "127.0.0.13", "127.0.0.12")
    assert problems == ["S4: fork: 127.0.0.13 has 3 row(s) the primary 127.0.0.12 lacks: ids 11-13"]


def test_same_id_with_different_payload_is_a_fork_even_with_equal_counts():
    primary = [(1, "a"), (2, "b"), (3, "c")]
    standby = [(1, "a"), (2, "X"), (3, "c")]
    problems = not_a_prefix(primary, standby, "sync")
    assert len(problems) == 1
    assert "id 2 differs" in problems[0] and "'X'" in problems[0] and "'b'" in problems[0]


def test_not_a_prefix_accepts_rows_dicts_and_mappings():
    primary = {1: "a", 2: "b"}
    assert not_a_prefix(primary, [Row(1, "a", "n", None)], "s") == []
    assert not_a_prefix(primary, [{"id": 1, "payload": "a"}], "s") == []
    assert not_a_prefix(primary, [{"id": 3, "payload": "z"}], "s") != []


# ------------------------------------------------------------------ S1


def test_one_failover_is_not_two_writers():
    data = rows([("127.0.0.12:5432", 1, 50), ("127.0.0.13:5432", 51, 100)])
    assert two_writers(data) == []
    assert two_writers(rows([("a", 1, 10)])) == []
    assert two_writers([]) == []


def test_interleaved_writers_are_reported():
    data = rows([("A", 1, 10), ("B", 11, 20), ("A", 21, 25)])
    (p,) = two_writers(data)
    assert p.startswith("S1: interleaved writers")
    assert "A wrote ids 1-10" in p and "B wrote ids 11-20" in p and "A wrote ids 21-25 again" in p


def test_write_by_old_primary_between_new_primary_writes_is_reported():
    # the old primary A kept acknowledging one write (id 15) after B took over
    data = rows([("A", 1, 10), ("B", 11, 14), ("A", 15, 15), ("B", 16, 20)])
    problems = two_writers(data)
    assert len(problems) == 2  # A returns, and B returns
    assert any("A wrote id 15 again" in p for p in problems)


def test_acked_filter_ignores_unknown_outcome_rows():
    # id 15 landed on A, but its commit was abandoned (not acked): not an S1 violation
    data = rows([("A", 1, 10), ("B", 11, 14), ("A", 15, 15), ("B", 16, 20)])
    acked = set(range(1, 21)) - {15}
    assert two_writers(data, acked=acked) == []
    assert two_writers(data, acked=set(range(1, 21))) != []


def test_primaries_in_order_allow_a_node_to_return_in_a_later_tenure():
    data = rows([("127.0.0.12:5432", 1, 10), ("127.0.0.13:5432", 11, 20), ("127.0.0.12:5432", 21, 30)])
    # history: 12 led, then 13, then 14 (no writes seen), then 12 again
    ok = two_writers(data, primaries=["127.0.0.12", "127.0.0.13", "127.0.0.14", "127.0.0.12"])
    assert ok == []
    bad = two_writers(data, primaries=["127.0.0.12", "127.0.0.13"])
    assert len(bad) == 1 and "127.0.0.12:5432 wrote ids 21-30 outside any tenure" in bad[0]


def test_primaries_out_of_order_is_reported():
    data = rows([("B", 1, 10), ("A", 11, 20)])
    problems = two_writers(data, primaries=["A", "B"])
    assert len(problems) == 1 and "A wrote ids 11-20 outside" in problems[0]


def test_overlapping_write_periods_are_reported_even_without_interleaved_ids():
    # two writers on separate id ranges, at the same time, on different nodes
    a = [Row(i, "x", "A", T0 + timedelta(seconds=i)) for i in range(1, 11)]
    b = [Row(1000 + i, "y", "B", T0 + timedelta(seconds=i, milliseconds=500)) for i in range(1, 11)]
    problems = two_writers(a + b)
    assert len(problems) == 1 and problems[0].startswith("S1: overlapping writers")


def test_two_writers_accepts_tuples_and_dicts():
    assert two_writers([(1, "A"), (2, "B"), (3, "A")]) != []
    assert two_writers([{"id": 1, "node": "A"}, {"id": 2, "node": "B"}]) == []


def test_merge_rows_unions_by_id():
    p = rows([("A", 1, 5)])
    old = rows([("A", 1, 3), ("B", 6, 7)])
    merged = merge_rows(p, old)
    assert [r.id for r in merged] == [1, 2, 3, 4, 5, 6, 7]
    assert two_writers(merged) == []


# ------------------------------------------------------------------ S3


TOPO = {
    "generation": 3,
    "primary": {"id": "127.0.0.12:5432:12345", "ip": "127.0.0.12"},
    "sync": {"id": "127.0.0.13:5432:12345", "ip": "127.0.0.13"},
    "async": [{"id": "127.0.0.14:5432:12345", "ip": "127.0.0.14"}],
    "deposed": [{"id": "127.0.0.11:5432:12345", "ip": "127.0.0.11"}],
}


def test_promoting_primary_or_sync_is_fine():
    assert promoted_from(TOPO, "127.0.0.13") == []
    assert promoted_from(TOPO, {"id": "127.0.0.12:5432:12345"}) == []
    assert promoted_from({"primary": "a", "sync": "b"}, "b") == []


def test_promoting_an_async_is_reported():
    (p,) = promoted_from(TOPO, "127.0.0.14")
    assert p.startswith("S3: 127.0.0.14 became primary but was an async")
    assert "primary 127.0.0.12:5432:12345" in p


def test_promoting_deposed_or_stranger_is_reported():
    assert "was deposed" in promoted_from(TOPO, {"ip": "127.0.0.11"})[0]
    assert "was not a member" in promoted_from(TOPO, "10.1.1.1")[0]


def test_promoted_from_without_previous_leaders_or_new_primary():
    assert promoted_from({"primary": None, "sync": None}, "a")[0].startswith("S3: previous topology names neither")
    assert promoted_from(TOPO, None) == ["S3: no new primary given"]


# ------------------------------------------------------------------ S7


def rec(seq, action, ip, gen):
    return {"zkSeq": f"{seq:010d}", "action": action, "ip": ip, "generation": gen}


def test_history_ok():
    h = [
        rec(0, "AssumeLeader", "a", 1),
        rec(1, "NewStandby", "a", 1),
        rec(2, "AssumeLeader", "a", 1),  # the same leader re-asserting its generation
        rec(3, "AssumeLeader", "b", "2"),
        rec(4, "NewLeader", "c", 2),
        rec(5, "AssumeLeader", "a", 5),
    ]
    assert history_one_primary_per_generation(h) == []
    assert history_one_primary_per_generation([]) == []


def test_history_two_leaders_in_one_generation():
    h = [rec(0, "AssumeLeader", "a", 1), rec(1, "AssumeLeader", "b", 1)]
    (p,) = history_one_primary_per_generation(h)
    assert p == "S7: two primaries in generation 1: a (zkSeq 0000000000) and b (zkSeq 0000000001)"


def test_history_generation_going_back():
    h = [rec(0, "AssumeLeader", "a", 2), rec(1, "AssumeLeader", "b", 3), rec(2, "AssumeLeader", "c", 1)]
    (p,) = history_one_primary_per_generation(h)
    assert p.startswith("S7: generation went back from 3") and "to 1" in p


def test_history_is_ordered_by_zkseq_not_list_order():
    h = [rec(1, "AssumeLeader", "b", 2), rec(0, "AssumeLeader", "a", 1)]
    assert history_one_primary_per_generation(h) == []
    # without zkSeq, list order counts
    h2 = [{"action": "AssumeLeader", "ip": "b", "generation": 2}, {"action": "AssumeLeader", "ip": "a", "generation": 1}]
    assert len(history_one_primary_per_generation(h2)) == 1


def test_history_record_without_generation_is_reported():
    (p,) = history_one_primary_per_generation([{"action": "AssumeLeader", "ip": "a"}])
    assert "has no generation" in p


# ------------------------------------------------------------------ summary


def test_summarise():
    assert summarise([]) == "all checks passed"
    s = summarise(["S2: x", "S4: y"])
    assert s.startswith("2 problem(s):") and "  - S2: x" in s and "  - S4: y" in s
