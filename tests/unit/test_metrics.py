"""Rendering of the sitter's /metrics, checked with Prometheus' own text parser."""

from __future__ import annotations


import time
from dataclasses import replace

import pytest

from manatee.sitter.metrics import (
    ROLE_LABELS,
    MetricsCollector,
    MetricsView,
    ReplicationRow,
    newest_epoch_ms,
    render_view,
    streaming_replica,
    writable_primary,
)
from manatee.sitter.pgmanager import PgStatus
from manatee.sitter.snapshot import SitterSnapshot
from manatee.shard.state import PRIMARY, ROLES, STANDBY, Target
from tests.metrics_fakes import FakeClient, parse, parser, sitter, value


NOW_MS = 1_700_000_100_000


def primary_view(**kw) -> MetricsView:
    base = dict(
        peer_id="10.0.0.1:5432:10002:5433", zone_id="zone-a", shard="/manatee/1", role="primary",
        local_role="primary", generation=7, pg_up=True, zk_connected=True, writable=True,
        replication=(ReplicationRow("tcp://postgres@10.0.0.2:5432/postgres", "sync", 1024, 0.25),
                     ReplicationRow("tcp://postgres@10.0.0.3:5432/postgres", "async", None, 1.5)),
        last_snapshot_ms=NOW_MS - 42_000,
        transitions={"AssumeLeader": 1, "NewStandby": 2},
        uptime_s=12.5,
    )
    base.update(kw)
    return MetricsView(**base)


def test_primary_metrics_parse_and_carry_the_values():
    fams = parse(render_view(primary_view(), NOW_MS))
    assert value(fams, "manatee_role", role="primary") == 1
    assert sum(v for (_n, _l, v) in fams["manatee_role"]) == 1
    assert {lab["role"] for (_n, lab, _v) in fams["manatee_role"]} == set(ROLE_LABELS)
    assert value(fams, "manatee_local_role", role="primary") == 1
    assert {lab["role"] for (_n, lab, _v) in fams["manatee_local_role"]} == set(ROLES)
    assert value(fams, "manatee_generation") == 7
    assert value(fams, "manatee_pg_up") == 1
    assert value(fams, "manatee_zk_connected") == 1
    assert value(fams, "manatee_writable") == 1
    assert value(fams, "manatee_replica_streaming") == 0
    assert value(fams, "manatee_replication_lag_bytes",
                 application_name="tcp://postgres@10.0.0.2:5432/postgres", sync_state="sync") == 1024
    # a row whose replay_lsn is unknown has no bytes sample, but its seconds
    assert len(fams["manatee_replication_lag_bytes"]) == 1
    assert value(fams, "manatee_replication_lag_seconds",
                 application_name="tcp://postgres@10.0.0.3:5432/postgres") == 1.5
    assert "manatee_standby_lag_bytes" not in fams
    assert value(fams, "manatee_last_snapshot_age_seconds") == 42.0
    assert value(fams, "manatee_last_snapshot_timestamp_seconds") == (NOW_MS - 42_000) / 1000
    assert value(fams, "manatee_restore_in_progress") == 0
    assert "manatee_restore_received_bytes" not in fams
    # counter: family name without _total, samples with it, every action present
    tr = {lab["action"]: v for (n, lab, v) in fams["manatee_transitions"] if n == "manatee_transitions_total"}
    assert tr == {"AssumeLeader": 1, "NewLeader": 0, "NewStandby": 2, "ExpiredStandby": 0, "StepDown": 0}
    assert value(fams, "manatee_sitter_info", node="zone-a", shard="1") == 1
    assert "manatee_pg_xid_age" not in fams and "manatee_pg_multixact_age" not in fams  # not known: absent


def test_wraparound_ages_are_shown_as_read():
    fams = parse(render_view(primary_view(pg_xid_age=2_145_000_000, pg_multixact_age=0), NOW_MS))
    assert value(fams, "manatee_pg_xid_age") == 2_145_000_000
    assert value(fams, "manatee_pg_multixact_age") == 0  # a known 0 is shown, not dropped


async def test_wraparound_ages_come_from_the_one_query_and_only_while_postgres_answers():
    s = sitter()
    c = MetricsCollector(s, cache_s=0.0)
    v = await c.observe()
    assert (v.pg_xid_age, v.pg_multixact_age) == (1234, 56) and s.pg.client.calls == 1
    assert v.pg_checksum_failures == 0  # known: shown as 0
    s.pg.client = FakeClient(checksum_failures=3)
    v = await c.observe()
    assert v.pg_checksum_failures == 3
    assert value(parse(render_view(v, NOW_MS)), "manatee_pg_checksum_failures") == 3
    s.pg.client = FakeClient(xid_age=None, multixact_age=None)  # e.g. an older query's row: absent
    v = await c.observe()
    assert (v.pg_xid_age, v.pg_multixact_age) == (None, None)

    class Failing(FakeClient):
        async def query(self, sql, params=None, *, timeout=None):
            raise TimeoutError("statement timeout")
    s.pg.client = FakeClient()
    assert (await c.observe()).pg_xid_age == 1234
    s.pg.client = Failing()
    v = await c.observe()
    assert (v.pg_xid_age, v.pg_multixact_age) == (None, None), "no answer: absent, not the last value or 0"
    assert v.pg_checksum_failures is None
    s.pg.client = FakeClient()
    await c.observe()
    s.snapshot = replace(s.snapshot, last_pg=PgStatus(False, False, None, None, False, False, None, 1))
    fams = parse(render_view(await c.observe(), NOW_MS))
    assert "manatee_pg_xid_age" not in fams and "manatee_pg_multixact_age" not in fams  # PostgreSQL down


def test_no_series_is_rendered_twice():
    """A duplicate series is invalid exposition (Prometheus rejects the scrape)."""
    v = primary_view(restore={"phase": "receiving", "completed": 1, "size": 2}, standby_lag_bytes=1,
                     standby_lag_seconds=0.0)
    seen = set()
    for fam in parser.text_string_to_metric_families(render_view(v, NOW_MS)):
        for smp in fam.samples:
            key = (smp.name, tuple(sorted(smp.labels.items())))
            assert key not in seen, f"series rendered twice: {key}"
            seen.add(key)
    assert len(ROLE_LABELS) == len(set(ROLE_LABELS))


def test_standby_metrics_with_restore_in_progress():
    v = primary_view(role="async", local_role="rebuild", writable=False, replica_streaming=False,
                     replication=(), standby_lag_bytes=4096, standby_lag_seconds=3.5,
                     last_snapshot_ms=None, restore={"phase": "receiving", "completed": 500, "size": 2000},
                     transitions={})
    fams = parse(render_view(v, NOW_MS))
    assert value(fams, "manatee_role", role="async") == 1
    assert value(fams, "manatee_local_role", role="rebuild") == 1
    assert value(fams, "manatee_standby_lag_bytes") == 4096
    assert value(fams, "manatee_standby_lag_seconds") == 3.5
    assert "manatee_replication_lag_bytes" not in fams
    assert "manatee_last_snapshot_age_seconds" not in fams
    assert value(fams, "manatee_restore_in_progress") == 1
    assert value(fams, "manatee_restore_received_bytes") == 500
    assert value(fams, "manatee_restore_size_bytes") == 2000


@pytest.mark.parametrize("phase,expected", [("done", 0), ("failed", 0), ("mounting", 1)])
def test_restore_in_progress_only_until_done_or_failed(phase, expected):
    v = primary_view(restore={"phase": phase, "completed": 10, "size": None})
    fams = parse(render_view(v, NOW_MS))
    assert value(fams, "manatee_restore_in_progress") == expected
    assert "manatee_restore_size_bytes" not in fams


def test_no_generation_before_the_shard_has_a_state():
    fams = parse(render_view(primary_view(generation=None, role="unassigned", local_role="unassigned"), NOW_MS))
    assert "manatee_generation" not in fams
    assert value(fams, "manatee_role", role="unassigned") == 1


def test_label_values_are_escaped():
    nasty = 'a"b\\c\nd'
    v = primary_view(replication=(ReplicationRow(nasty, "sync", 1, 0.5),))
    fams = parse(render_view(v, NOW_MS))
    assert value(fams, "manatee_replication_lag_bytes", application_name=nasty) == 1


def test_newest_epoch_ms_ignores_other_snapshot_names():
    assert newest_epoch_ms(["1700000000000", "1700000005000", "manual", "20240101", "1699999999999"]) == 1700000005000
    assert newest_epoch_ms(["manual", "rebuild-x"]) is None
    assert newest_epoch_ms([]) is None


def _snap(**kw) -> SitterSnapshot:
    """What the loop publishes (only the fields the predicates read matter)."""
    from tests.observations import A

    return SitterSnapshot(me=A, **{"last_pg_at": time.monotonic(), "session_timeout": 60.0, **kw})


def _pg(**kw) -> PgStatus:
    base = dict(running=True, healthy=True, in_recovery=False, wal=None, streaming=False, diverged=False,
                sync_flush=None, timeline=1, read_only=False)
    base.update(kw)
    return PgStatus(**base)


@pytest.mark.parametrize("target,pg,ok", [
    (Target(PRIMARY, read_only=False), _pg(), True),
    (Target(PRIMARY, read_only=True), _pg(read_only=True), False),          # waiting for its sync
    (Target(PRIMARY, read_only=False), _pg(read_only=True), False),         # reload not applied yet
    (Target(PRIMARY, read_only=False), _pg(in_recovery=True), False),       # not promoted yet
    (Target(PRIMARY, read_only=False), _pg(in_recovery=None, healthy=False), False),
    (Target(PRIMARY, read_only=False), _pg(running=False, healthy=False, in_recovery=None), False),
    (Target(STANDBY), _pg(in_recovery=True, streaming=True, read_only=True), False),
    (None, None, False),
])
def test_writable_primary(target, pg, ok):
    assert writable_primary(_snap(target=target, last_pg=pg)) is ok


@pytest.mark.parametrize("target,pg,ok", [
    (Target(STANDBY), _pg(in_recovery=True, streaming=True, read_only=True), True),
    (Target(STANDBY), _pg(in_recovery=True, streaming=False, read_only=True), False),
    (Target(STANDBY), _pg(running=False, healthy=False, in_recovery=None), False),
    (Target(PRIMARY, read_only=False), _pg(), False),
    (Target("rebuild"), _pg(in_recovery=True, streaming=True), False),
])
def test_streaming_replica(target, pg, ok):
    assert streaming_replica(_snap(target=target, last_pg=pg)) is ok


def test_an_observation_older_than_the_session_timeout_is_not_trusted():
    """A sitter resumed after a hang answers from its pre-hang view until its next cycle:
    /primary and /replica must not say 200 from it (F6)."""
    now = time.monotonic()
    fresh = dict(last_pg_at=now - 1.0, session_timeout=5.0)
    stale = dict(last_pg_at=now - 9.0, session_timeout=5.0)
    prim = dict(target=Target(PRIMARY, read_only=False), last_pg=_pg())
    repl = dict(target=Target(STANDBY), last_pg=_pg(in_recovery=True, streaming=True, read_only=True))
    assert writable_primary(_snap(**prim, **fresh)) is True
    assert writable_primary(_snap(**prim, **stale)) is False
    assert streaming_replica(_snap(**repl, **fresh)) is True
    assert streaming_replica(_snap(**repl, **stale)) is False


def test_an_observation_of_a_postgres_killed_since_is_not_trusted():
    """A rebuild kills PostgreSQL at its start and observes nothing until its end (minutes on a
    large dataset): /replica, /primary and /ping must not answer from the look before the kill."""
    prim = dict(target=Target(PRIMARY, read_only=False), last_pg=_pg())
    repl = dict(target=Target(STANDBY), last_pg=_pg(in_recovery=True, streaming=True, read_only=True))
    assert writable_primary(_snap(**prim, pg_running=True)) is True
    assert writable_primary(_snap(**prim, pg_running=False)) is False
    assert streaming_replica(_snap(**repl, pg_running=True)) is True
    assert streaming_replica(_snap(**repl, pg_running=False)) is False
    assert _snap(**repl, pg_running=True).pg_serving is True
    assert _snap(**repl, pg_running=False).pg_serving is False


def test_a_failing_archive_is_a_gauge_only_while_postgres_answers():
    assert "manatee_pg_archive_failing" not in parse(render_view(primary_view(), NOW_MS))  # unknown: absent
    assert value(parse(render_view(primary_view(pg_archive_failing=0), NOW_MS)), "manatee_pg_archive_failing") == 0
    assert value(parse(render_view(primary_view(pg_archive_failing=1), NOW_MS)), "manatee_pg_archive_failing") == 1
