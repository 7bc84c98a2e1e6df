"""The rebuild path chooser (manatee.shard.rebuildpath): rewind only on facts, every
combination of the facts tried; the cost rule at its edges."""

from __future__ import annotations

import itertools

import pytest

from manatee.shard import rebuildpath as rp

GOOD = rp.RewindFacts(enabled=True, cause=rp.CAUSE_DIVERGED, has_credentials=True, cluster_state="in production",
                      checksums=True, wal_log_hints=False)


def test_the_good_facts_allow_a_rewind():
    assert rp.why_not_rewind(GOOD) is None


@pytest.mark.parametrize("facts", [
    rp.RewindFacts(enabled, cause, creds, state, checksums, hints)
    for enabled, cause, creds, state, checksums, hints in itertools.product(
        (True, False), (rp.CAUSE_DIVERGED, rp.CAUSE_REQUESTED, None, "something else"), (True, False),
        (None, "shut down", "in production", "in archive recovery", "shut down in recovery", "in crash recovery",
         "starting up", "garbage"),
        (None, True, False), (None, True, False))])
def test_rewind_only_when_every_fact_is_known_and_good(facts):
    allowed = (facts.enabled and facts.cause == rp.CAUSE_DIVERGED and facts.has_credentials
               and facts.cluster_state in rp.REWINDABLE_STATES and (facts.checksums is True or facts.wal_log_hints is True))
    why = rp.why_not_rewind(facts)
    assert (why is None) == allowed, (facts, why)
    if why is not None:
        assert why.strip()


def test_each_no_says_why():
    assert "rebuildRewind" in rp.why_not_rewind(rp.RewindFacts(False, rp.CAUSE_DIVERGED, True, "shut down", True, True))
    assert "operator" in rp.why_not_rewind(rp.RewindFacts(True, rp.CAUSE_REQUESTED, True, "shut down", True, True))
    assert "unknown" in rp.why_not_rewind(rp.RewindFacts(True, None, True, "shut down", True, True))
    assert "secret" in rp.why_not_rewind(rp.RewindFacts(True, rp.CAUSE_DIVERGED, False, "shut down", True, True))
    assert "control file cannot be read" in rp.why_not_rewind(
        rp.RewindFacts(True, rp.CAUSE_DIVERGED, True, None, None, None))
    assert "'starting up'" in rp.why_not_rewind(rp.RewindFacts(True, rp.CAUSE_DIVERGED, True, "starting up", True, True))
    assert "neither" in rp.why_not_rewind(rp.RewindFacts(True, rp.CAUSE_DIVERGED, True, "shut down", False, False))
    assert "unknown" in rp.why_not_rewind(rp.RewindFacts(True, rp.CAUSE_DIVERGED, True, "shut down", None, False))


def test_facts_of_control():
    assert rp.facts_of_control(None) == (None, None, None)
    assert rp.facts_of_control({}) == (None, None, None)
    assert rp.facts_of_control({"Database cluster state": "shut down", "Data page checksum version": "1",
                                "wal_log_hints setting": "off"}) == ("shut down", True, False)
    assert rp.facts_of_control({"Database cluster state": "in production", "Data page checksum version": "0",
                                "wal_log_hints setting": "on"}) == ("in production", False, True)
    assert rp.facts_of_control({"Data page checksum version": "x", "wal_log_hints setting": "maybe"}) == (
        None, None, None)


@pytest.mark.parametrize("copy_mb, source_mb, needed, increment_mb, path", [
    (10, 2000, True, None, rp.REWIND),
    (200, 2000, True, None, rp.REWIND),         # exactly the share (10 %): still a rewind
    (201, 2000, True, None, rp.STREAM),         # more than the share of a full stream
    (10, 2000, True, 50, rp.REWIND),
    (10, 2000, True, 9, rp.STREAM),             # a known, smaller increment wins
    (None, 2000, True, None, rp.STREAM),        # the dry run said no size
    (10, None, True, None, rp.STREAM),
    (10, 0, True, None, rp.STREAM),
    (None, None, None, None, rp.STREAM),        # nothing known
    (10, 2000, None, None, rp.STREAM),
    (None, None, False, None, rp.STREAM),       # "no rewind required": yet PG said diverged
    (0, 2000, False, None, rp.STREAM),
])
def test_choose_by_cost(copy_mb, source_mb, needed, increment_mb, path):
    c = rp.choose_by_cost(copy_mb, source_mb, needed, increment_mb)
    assert c.path == path, c
    assert c.reason
    if path == rp.REWIND:
        assert f"{copy_mb} MB of {source_mb} MB" in c.reason


def test_the_share_is_a_setting():
    assert rp.choose_by_cost(1000, 2000, True, max_share=0.5).path == rp.REWIND
    assert rp.choose_by_cost(1001, 2000, True, max_share=0.5).path == rp.STREAM
    assert rp.choose_by_cost(1, 2000, True, max_share=0.0).path == rp.STREAM
    assert rp.choose_by_cost(0, 2000, True, max_share=0.0).path == rp.REWIND


@pytest.mark.parametrize("place,unready,known,refused", [
    ("sync", None, True, None),
    ("async", None, True, None),
    ("sync", "up: it has no running, healthy PostgreSQL", True,
     "this node would restore from up: it has no running, healthy PostgreSQL; this node is the sync, "
     "the one node that can take over. Nothing requested"),
    ("async", "up: it has no running, healthy PostgreSQL", True,
     "this node would restore from up: it has no running, healthy PostgreSQL. Nothing requested"),
    ("sync", "cannot ask up", False,
     "cannot ask up; this node is the sync, the one node that can take over. Nothing requested"),
    ("async", "cannot ask up", False, None),
    (None, "cannot ask up", False, None),
])
def test_rebuild_request_refusal_by_place_and_the_upstreams_answer(place, unready, known, refused):
    assert rp.rebuild_request_refusal(place, unready, known=known) == refused
