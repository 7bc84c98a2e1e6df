"""Stale base marks (manatee.core.bases.stale_marks): a peer's mark is released only when the
peer itself said "I do not hold this snapshot" at two consecutive checks; nothing else
releases one."""

import pytest

from manatee.core.bases import Held, held, questions, stale_marks, strict_peers
from manatee.core.incremental import CommonSnapshot, SourceOffer

DS = "zones/pg"
S1, S2, S3 = f"{DS}@1700000000001", f"{DS}@1700000000002", f"{DS}@1700000000003"
B, C, GONE = "127.0.0.12", "127.0.0.13", "127.0.0.99"
MEMBERS = {B, C}
YES, NO, UNKNOWN = Held.YES, Held.NO, Held.UNKNOWN


def run(marks, answers_per_check, members=MEMBERS):
    """Successive checks on unchanged marks (releases applied between checks); the last result
    and the marks after it."""
    marks, absent, result = dict(marks), frozenset(), None
    for answers in answers_per_check:
        result = stale_marks(marks, members, answers, absent)
        absent = result.absent
        for snap, value in result.writes.items():
            marks[snap] = "-" if value is None else value
    return result, marks


# ------------------------------------------------------------------ the rule

def test_two_consecutive_known_absent_answers_release_the_mark():
    result, marks = run({S1: B}, [{(S1, B): NO}, {(S1, B): NO}])
    assert marks == {S1: "-"}
    assert result.writes == {S1: None}
    assert [(s, p) for s, p, _why in result.released] == [(S1, B)]
    assert "two consecutive checks" in result.released[0][2]
    assert result.absent == frozenset()


def test_one_known_absent_answer_only_remembers_it():
    result, marks = run({S1: B}, [{(S1, B): NO}])
    assert marks == {S1: B} and result.writes == {} and result.released == ()
    assert result.absent == {(S1, B)}
    assert result.kept == {(S1, B): "absent_once"}


def test_present_keeps_and_resets_the_count():
    result, marks = run({S1: B}, [{(S1, B): NO}, {(S1, B): YES}, {(S1, B): NO}])
    assert marks == {S1: B} and result.absent == {(S1, B)}
    result, marks = run({S1: B}, [{(S1, B): NO}, {(S1, B): YES}, {(S1, B): NO}, {(S1, B): NO}])
    assert marks == {S1: "-"}


def test_unknown_in_between_keeps_the_mark_and_starts_the_count_again():
    result, marks = run({S1: B}, [{(S1, B): NO}, {(S1, B): UNKNOWN}])
    assert marks == {S1: B} and result.kept == {(S1, B): "unknown"} and result.absent == frozenset()
    _, marks = run({S1: B}, [{(S1, B): NO}, {(S1, B): UNKNOWN}, {(S1, B): NO}])
    assert marks == {S1: B}
    _, marks = run({S1: B}, [{(S1, B): NO}, {}, {(S1, B): NO}])  # a member not asked: unknown too
    assert marks == {S1: B}
    _, marks = run({S1: B}, [{(S1, B): NO}, {(S1, B): UNKNOWN}, {(S1, B): NO}, {(S1, B): NO}])
    assert marks == {S1: "-"}


def test_only_unknown_answers_never_release():
    _, marks = run({S1: B}, [{(S1, B): UNKNOWN}] * 5)
    assert marks == {S1: B}


def test_a_non_member_is_kept_whatever_was_seen_before():
    result, marks = run({S1: GONE}, [{(S1, GONE): NO}, {(S1, GONE): NO}, {(S1, GONE): NO}])
    assert marks == {S1: GONE} and result.kept == {(S1, GONE): "not_member"} and result.absent == frozenset()
    # absent as a member once, then no longer a member: kept, and the count is lost
    marks = {S1: B}
    first = stale_marks(marks, MEMBERS, {(S1, B): NO}, frozenset())
    second = stale_marks(marks, {C}, {(S1, B): NO}, first.absent)
    assert second.writes == {} and second.kept == {(S1, B): "not_member"}
    third = stale_marks(marks, MEMBERS, {(S1, B): NO}, second.absent)
    assert third.writes == {}


@pytest.mark.parametrize("value", ["junk", "127.0.0.12,junk", "127.0.0.12,", "node-b"])
def test_a_value_that_is_not_a_list_of_addresses_is_never_released(value):
    answers = {(S1, B): NO, (S1, value): NO}
    result, marks = run({S1: value}, [answers, answers, answers])
    assert marks == {S1: value} and result.writes == {} and result.released == ()
    assert result.kept == {(S1, value): "unreadable"}


def test_a_snapshot_marked_for_two_peers_releases_only_the_stale_one():
    result, marks = run({S1: f"{B},{C}"}, [{(S1, B): NO, (S1, C): YES}] * 2)
    assert marks == {S1: C} and result.writes == {S1: C}
    assert [(s, p) for s, p, _ in result.released] == [(S1, B)]
    assert result.kept == {(S1, C): "holds"}
    # a non-member beside a stale member stays too
    _, marks = run({S1: f"{B},{GONE}"}, [{(S1, B): NO}] * 2)
    assert marks == {S1: GONE}


def test_both_peers_stale_clears_the_value():
    _, marks = run({S1: f"{B},{C}"}, [{(S1, B): NO, (S1, C): NO}] * 2)
    assert marks == {S1: "-"}


def test_each_snapshot_is_judged_on_its_own():
    marks = {S1: B, S2: B, S3: "-"}
    answers = {(S1, B): NO, (S2, B): YES}  # B dropped an increment's old base, holds the newer
    result, after = run(marks, [answers, answers])
    assert after == {S1: "-", S2: B, S3: "-"}
    assert result.kept == {(S2, B): "holds"}


def test_an_absent_seen_on_another_snapshot_does_not_count():
    first = stale_marks({S1: B, S2: B}, MEMBERS, {(S1, B): NO, (S2, B): YES}, frozenset())
    second = stale_marks({S1: B, S2: B}, MEMBERS, {(S1, B): YES, (S2, B): NO}, first.absent)
    assert second.writes == {} and second.absent == {(S2, B)}


def test_a_mark_written_meanwhile_is_judged_on_the_fresh_value():
    """The marks are read again under the lock: a peer added to the value since the
    questions (a send completed) is unknown, and survives the release of another."""
    first = stale_marks({S1: B}, MEMBERS, {(S1, B): NO}, frozenset())
    second = stale_marks({S1: f"{B},{C}"}, MEMBERS, {(S1, B): NO}, first.absent)
    assert second.writes == {S1: C} and second.kept == {(S1, C): "unknown"}
    # and a mark cleared meanwhile (a newer exchange moved it) is not written again
    third = stale_marks({S1: "-", S2: B}, MEMBERS, {(S1, B): NO}, first.absent)
    assert third.writes == {} and third.released == ()


def test_canonical_addresses_match():
    _, marks = run({S1: "0:0:0:0:0:0:0:1"}, [{(S1, "::1"): NO}] * 2, members={"::1"})
    assert marks == {S1: "-"}


# ------------------------------------------------------------------ questions and answers

def test_questions_ask_each_askable_peer_of_each_marked_snapshot_oldest_first():
    marks = {S3: B, S1: f"{C},{B}", S2: "-", f"{DS}@x": "junk,127.0.0.12"}
    assert questions(marks, {B, C}) == [(S1, B), (S1, C), (S3, B)]
    assert questions(marks, {C}) == [(S1, C)]
    assert questions(marks, set()) == []


def test_strict_peers():
    assert strict_peers("-") == frozenset() and strict_peers("") == frozenset()
    assert strict_peers(f"{B}, {C}") == {B, C}
    assert strict_peers(f"{B},junk") is None and strict_peers(f"{B},") is None


G = "1234567890"


@pytest.mark.parametrize("answer,expected", [
    (SourceOffer(B, None), NO),
    (SourceOffer(B, CommonSnapshot("1700000000001", G, 1700000000)), YES),
    (SourceOffer(B, CommonSnapshot("renamed", G, 1700000000)), YES),  # the guid decides, not the name
    (SourceOffer(B, CommonSnapshot("1700000000001", "999", 1700000000)), UNKNOWN),  # not our question's answer
    (SourceOffer(B, known=False, why_unknown="HTTP 503"), UNKNOWN),
    (SourceOffer(B, known=False, why_unknown="its backupserver does not answer the question"), UNKNOWN),
])
def test_held_from_an_answer(answer, expected):
    assert held(answer, G) is expected


def test_a_reaped_address_that_is_not_a_member_is_released_at_once_and_only_its_part():
    """An operator's `manatee-adm reap` (history.reaped_addresses) is the one word that releases
    a non-member's mark; a member (it came back) keeps its mark whatever the history says."""
    marks = {S1: f"{GONE},{C}", S2: GONE, S3: B}
    result = stale_marks(marks, MEMBERS, {(S1, C): YES, (S3, B): YES}, frozenset(), reaped={GONE, B})
    assert sorted((s, p) for s, p, _ in result.released) == [(S1, GONE), (S2, GONE)]
    assert all("reaped" in why for _s, _p, why in result.released)
    assert result.writes == {S1: C, S2: None}
    assert result.kept == {(S1, C): "holds", (S3, B): "holds"}
    unreaped = stale_marks(marks, MEMBERS, {}, frozenset())
    assert unreaped.released == () and unreaped.kept[(S2, GONE)] == "not_member"
