"""Retention choice of the snapshotter: which snapshots a poll destroys."""

import itertools
import random

import pytest

from manatee.core.zfs import Snapshot
from manatee.snapshotter.snapshotter import (
    bases_beyond_retention,
    choose_snapshots_to_destroy,
    held_beyond_retention,
    is_managed,
)

DS = "zones/manatee/pg"


def snap(ms: int, name: str | None = None) -> Snapshot:
    return Snapshot(DS, name or str(ms), ms // 1000)


def managed(n: int, start: int = 1_700_000_000_000, step: int = 1500) -> list[Snapshot]:
    return [snap(start + i * step) for i in range(n)]


@pytest.mark.parametrize(
    "name,ok",
    [
        ("1700000000000", True),
        ("0000000000000", True),
        ("170000000000", False),  # 12 digits
        ("17000000000000", False),  # 14 digits
        ("1700000000000a", False),
        ("a1700000000000", False),
        ("before-upgrade", False),
        ("1700000000000\n", False),
        ("", False),
        ("١٧٠٠٠٠٠٠٠٠٠٠٠", False),  # ASCII digits only
    ],
)
def test_is_managed(name, ok):
    assert is_managed(name) is ok


def test_keeps_newest_and_destroys_oldest_first():
    snaps = managed(8)
    out = choose_snapshots_to_destroy(list(reversed(snaps)), 5, set())
    assert out == snaps[:3]


def test_nothing_to_do_at_or_below_keep():
    for n in range(0, 6):
        assert choose_snapshots_to_destroy(managed(n), 5, set()) == []


def test_operator_named_snapshots_never_chosen_nor_counted():
    snaps = managed(4) + [snap(1_600_000_000_000, "before-upgrade"), snap(1_800_000_000_000, "manual")]
    out = choose_snapshots_to_destroy(snaps, 2, set())
    assert out == managed(4)[:2]
    assert all(is_managed(s.name) for s in out)


def test_held_old_snapshots_are_skipped_and_reported():
    snaps = managed(6)
    held = {snaps[0].full, snaps[5].full}  # one old, one among the newest
    out = choose_snapshots_to_destroy(snaps, 3, held)
    assert out == [snaps[1], snaps[2]]
    assert held_beyond_retention(snaps, 3, held) == [snaps[0]]


def test_base_snapshots_are_kept_and_reported_apart_from_held_ones():
    snaps = managed(7)
    held, bases = {snaps[0].full}, {snaps[0].full, snaps[1].full, snaps[6].full}  # one base among the newest
    assert choose_snapshots_to_destroy(snaps, 3, held, bases) == [snaps[2], snaps[3]]
    assert held_beyond_retention(snaps, 3, held) == [snaps[0]]
    assert bases_beyond_retention(snaps, 3, held, bases) == [snaps[1]]  # held ones are reported as held
    assert choose_snapshots_to_destroy(snaps, 3, held) == [snaps[1], snaps[2], snaps[3]]  # no bases: as before


def test_held_snapshots_do_not_push_others_out():
    # a held snapshot among the newest still counts toward keep
    snaps = managed(4)
    out = choose_snapshots_to_destroy(snaps, 3, {snaps[3].full})
    assert out == [snaps[0]]


def test_order_by_creation_then_name_when_same_second():
    a, b, c = snap(1_700_000_000_100), snap(1_700_000_000_200), snap(1_700_000_000_900)
    assert a.creation == b.creation == c.creation
    assert choose_snapshots_to_destroy([c, a, b], 1, set()) == [a, b]


def test_creation_time_wins_over_name():
    # a clock stepped back: the snapshot created later but named smaller is newer
    newer = Snapshot(DS, "1600000000000", 2_000_000_000)
    older = Snapshot(DS, "1700000000000", 1_000_000_000)
    assert choose_snapshots_to_destroy([newer, older], 1, set()) == [older]


def test_keep_must_be_positive():
    with pytest.raises(ValueError):
        choose_snapshots_to_destroy(managed(3), 0, set())


def test_exhaustive_small_cases_match_reference_model():
    """Every subset of held snapshots, shuffled input, mixed names, keep 1..6."""
    rng = random.Random(7)
    base = managed(6) + [snap(1_650_000_000_000, "op-a"), snap(1_750_000_000_000, "op-b")]
    for keep in range(1, 7):
        for r in range(0, len(base) + 1):
            for held_set in itertools.combinations(base, r):
                held = {s.full for s in held_set}
                shuffled = base[:]
                rng.shuffle(shuffled)
                out = choose_snapshots_to_destroy(shuffled, keep, held)
                # reference: numeric ones by time, newest `keep` kept, held skipped
                numeric = sorted((s for s in base if s.name.isdigit()), key=lambda s: int(s.name))
                expect = [s for s in numeric[: max(0, len(numeric) - keep)] if s.full not in held]
                assert out == expect, (keep, held)
                kept = [s for s in numeric if s not in out]
                assert len(kept) >= min(keep, len(numeric))
                assert all(s.full not in held for s in out)
                assert not any(s.name.startswith("op-") for s in out)
