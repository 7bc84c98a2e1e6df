"""The fault soak's pure parts: fault parsing, round scheduling, per-round outage, the
summary line and its verdict."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from manatee_testbed.cli.nemesis import build_parser, main
from manatee_testbed.nemesis_plan import (
    FAULT_KINDS,
    GRAY,
    TARGETED,
    Planned,
    RoundResult,
    Summary,
    format_faults,
    format_summary,
    gray_reaction,
    parse_faults,
    round_outage,
    schedule,
    topo_line,
)
from manatee_testbed.writer_record import Outage


# ------------------------------------------------------------------ parse_faults
def test_parse_faults_default_is_every_kind():
    assert parse_faults(None) == FAULT_KINDS
    assert parse_faults("") == FAULT_KINDS


def test_parse_faults_keeps_order_drops_duplicates_accepts_dashes():
    assert parse_faults("partition, kill,zk-restart,kill") == ("partition", "kill", "zk_restart")


@pytest.mark.parametrize("text", ["kill,bogus", ",", "KILL"])
def test_parse_faults_refuses_unknown_or_empty(text):
    with pytest.raises(ValueError) as e:
        parse_faults(text)
    assert "known:" in str(e.value)


# ------------------------------------------------------------------ schedule
def test_schedule_is_deterministic_for_a_seed():
    a = schedule(30, FAULT_KINDS, random.Random(123))
    b = schedule(30, FAULT_KINDS, random.Random(123))
    c = schedule(30, FAULT_KINDS, random.Random(124))
    assert a == b
    assert a != c


def test_schedule_covers_every_kind_in_each_block():
    kinds = ("kill", "partition", "zk_restart")
    plan = schedule(3, kinds, random.Random(7))
    assert sorted(p.kind for p in plan) == sorted(kinds)
    n = len(FAULT_KINDS)
    plan = schedule(5 * n, FAULT_KINDS, random.Random(1))
    assert len(plan) == 5 * n
    counts = Counter(p.kind for p in plan)
    assert set(counts) == set(FAULT_KINDS)
    assert all(counts[k] == 5 for k in FAULT_KINDS)  # 5 full blocks of every kind
    for k in range(0, 5 * n, n):
        assert {p.kind for p in plan[k:k + n]} == set(FAULT_KINDS)


def test_the_gray_failures_are_fault_kinds_and_targeted_but_bad_znode():
    assert set(GRAY) <= set(FAULT_KINDS) and set(GRAY) <= set(TARGETED)
    assert "bad_znode" in FAULT_KINDS and "bad_znode" not in TARGETED
    assert parse_faults("pg-hang,disk-full,storm,bad-znode,flaky-net") == (
        "pg_hang", "disk_full", "storm", "bad_znode", "flaky_net")


def test_schedule_roles_only_for_targeted_faults():
    plan = schedule(60, FAULT_KINDS, random.Random(5))
    for p in plan:
        if p.kind in TARGETED:
            assert p.role in ("primary", "sync", "async")
        else:
            assert p.role is None
    roles = Counter(p.role for p in plan if p.role)
    assert set(roles) == {"primary", "sync", "async"}


def test_schedule_partial_block_and_bad_input():
    plan = schedule(4, FAULT_KINDS, random.Random(3))
    assert len(plan) == 4 and len({p.kind for p in plan}) == 4
    assert schedule(0, FAULT_KINDS, random.Random(3)) == []
    with pytest.raises(ValueError):
        schedule(-1, FAULT_KINDS, random.Random(3))
    with pytest.raises(ValueError):
        schedule(3, (), random.Random(3))


# ------------------------------------------------------------------ round_outage
def test_round_outage_clips_to_the_round_and_counts_open_ones():
    outs = [Outage(1.0, 3.0, 0.9, 2), Outage(10.0, 14.5, 9.9, 5), Outage(20.0, None, 19.9, 1)]
    assert round_outage(outs, 0.0, 5.0) == pytest.approx(2.0)
    assert round_outage(outs, 12.0, 16.0) == pytest.approx(2.5)  # started before the round
    assert round_outage(outs, 5.0, 9.0) == 0.0
    assert round_outage(outs, 19.0, 25.0) == pytest.approx(5.0)  # still open at the round's end
    assert round_outage([], 0.0, 100.0) == 0.0


# ------------------------------------------------------------------ summary
def _summary(**kw) -> Summary:
    base = dict(rounds=30, seed=123, session_timeout_ms=5000, faults={"stop": 5, "kill": 6, "zk_restart": 4},
                rounds_run=30, acked=41234, lost=0, forks=0, history_ok=True, longest_outage_s=9.84,
                operator_rounds=0)
    base.update(kw)
    return Summary(**base)


def test_format_faults_in_kind_order_skipping_zero():
    assert format_faults({"stop": 5, "kill": 6, "hang": 0}) == "{kill:6,stop:5}"
    assert format_faults({}) == "{}"


def test_summary_line_pass():
    s = _summary()
    assert s.passed and s.result == "PASS"
    assert format_summary(s) == (
        "nemesis: rounds=30 seed=123 session_timeout_ms=5000 faults={kill:6,stop:5,zk_restart:4} "
        "acked=41234 lost=0 forks=0 history=ok problems=0 longest_outage_s=9.8 operator_rounds=0 result=PASS")


@pytest.mark.parametrize("kw, needle", [
    ({"lost": 3}, "lost=3"),
    ({"forks": 1}, "forks=1"),
    ({"history_ok": False}, "history=BAD"),
    ({"operator_rounds": 1}, "operator_rounds=1"),
    ({"problems": ["S1: overlapping writers"]}, "problems=1"),
    ({"rounds_run": 12}, "rounds=12/30"),
    ({"error": "aborted: safe mode\nmore"}, 'error="aborted: safe mode"'),
])
def test_summary_line_fail_names_what_failed(kw, needle):
    s = _summary(**kw)
    assert not s.passed
    line = format_summary(s)
    assert needle in line and line.endswith("result=FAIL")
    assert s.to_json()["result"] == "FAIL"


def test_safe_mode_rounds_shown_only_when_any():
    assert "safe_mode_rounds" not in format_summary(_summary())
    assert "safe_mode_rounds=1" in format_summary(_summary(safe_mode_rounds=1, operator_rounds=1))


def test_round_line_and_topology_line():
    t = {"primary": "a", "sync": "b", "async": ["c"], "generation": 4}
    assert topo_line(t) == "p=a s=b as=c g=4"
    assert topo_line({}) == "p=- s=- as=- g=None"
    r = RoundResult(index=2, kind="kill", target="a(primary)", before="p=a s=b as=c g=4",
                    after="p=b s=c as=a g=5", heal_s=21.34, outage_s=7.26, notes=["x"])
    line = r.line(30)
    assert line.startswith("round 2/30 fault=kill target=a(primary)")
    assert "heal_s=21.3 outage_s=7.3" in line and "notes: x" in line and "OPERATOR" not in line
    r.operator, r.safe_mode = "3 primaries", {"reason": "diverged"}
    assert "OPERATOR(3 primaries)" in r.line(30) and "SAFE_MODE(diverged)" in r.line(30)


# ------------------------------------------------------------------ CLI
def test_cli_defaults():
    a = build_parser().parse_args([])
    assert (a.rounds, a.seed, a.session_timeout, a.faults, a.keep, a.json) == (5, None, 5000, None, False, None)


@pytest.mark.parametrize("argv", [["--faults", "kill,nope"], ["--rounds", "0"], ["--session-timeout", "100"]])
def test_cli_bad_usage_exits_2_before_touching_anything(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("manatee-nemesis: ") and len(err.strip().splitlines()) == 1


def test_planned_is_hashable_value():
    assert Planned("kill", "sync") == Planned("kill", "sync")


def test_longest_gap_is_the_client_visible_outage_within_the_round():
    from manatee_testbed.nemesis_plan import longest_gap

    times = [0.5, 1.0, 1.1, 4.0, 4.1, 9.0]
    assert longest_gap(times, 0.0, 5.0) == pytest.approx(2.9)   # 1.1 → 4.0
    assert longest_gap(times, 2.0, 3.0) == pytest.approx(1.0)   # no commit at all in the round
    assert longest_gap(times, 4.05, 10.0) == pytest.approx(4.9)  # 4.1 → 9.0
    assert longest_gap(times, 8.0, 12.0) == pytest.approx(3.0)  # 9.0 → end of the round
    assert longest_gap([], 0.0, 2.0) == pytest.approx(2.0)


# ------------------------------------------------------------------ faults that could not be applied
def test_a_round_whose_fault_was_not_applied_is_not_counted_as_one_of_that_fault():
    s = _summary(faults={})
    applied = RoundResult(index=1, kind="disk_full")
    missed = RoundResult(index=2, kind="disk_full", not_applied="disk_full on c: no quota could be set")
    for r in (applied, missed, RoundResult(index=3, kind="kill")):
        s.count(r)
    assert s.faults == {"disk_full": 1, "kill": 1}
    assert s.not_applied == {"disk_full": 1}
    assert not s.passed and s.result == "INCOMPLETE" and s.to_json()["result"] == "INCOMPLETE"
    line = format_summary(s)
    assert "faults={kill:1,disk_full:1} not_applied={disk_full:1}" in line and line.endswith("result=INCOMPLETE")
    assert "NOT_APPLIED(disk_full on c: no quota could be set)" in missed.line(3)
    assert "NOT_APPLIED" not in applied.line(3) and "not_applied" not in format_summary(_summary())


def test_a_failed_check_is_a_fail_whatever_was_applied():
    s = _summary(lost=1, not_applied={"storm": 1})
    assert s.result == "FAIL" and not s.passed


def test_inflict_turns_any_failure_to_break_a_node_into_fault_not_applied():
    from manatee_testbed.grayfaults.diskfull import FaultNotApplied
    from manatee_testbed.nemesis import inflict

    def boom(name):
        raise OSError(f"no such process for {name}")

    assert inflict("kill a", lambda name: f"killed {name}", "a") == "killed a"
    with pytest.raises(FaultNotApplied, match=r"could not kill a: OSError: no such process for a"):
        inflict("kill a", boom, "a")
    with pytest.raises(FaultNotApplied, match="^as it was$"):
        inflict("x", lambda: (_ for _ in ()).throw(FaultNotApplied("as it was")))


@pytest.mark.parametrize("t, gone, expect", [
    ({"generation": 3, "primary": "a"}, False, None),  # still the primary, PostgreSQL not killed
    ({"generation": 3, "primary": "a"}, True, "a's hung PostgreSQL was killed, to start in place"),
    ({"generation": 4, "primary": "b"}, False, "b took over (generation 4)"),
    ({"generation": 4, "primary": "b"}, True, "b took over (generation 4)"),  # the takeover is the answer
    ({"generation": None, "primary": None}, False, None),  # no state known: not an answer
    ({}, False, None),
    ({"generation": 4, "primary": None}, False, None),
])
def test_gray_reaction_is_a_takeover_or_the_hung_postmaster_killed(t, gone, expect):
    assert gray_reaction(t, "a", gone) == expect
