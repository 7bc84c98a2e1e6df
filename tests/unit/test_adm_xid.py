"""manatee-adm show/verify on transaction-ID (and MultiXact) wraparound ahead (adm_xid): the
thresholds and the line, from the primary probe's `xidAge`, by a table; and how the line
reaches show, verify's verdict and show --json."""

from __future__ import annotations

import pytest

from manatee.cli.adm_view import assess, node_json, render_show, show_json, verdict
from manatee.cli.adm_xid import CRIT_AGE, STOP_AGE, WARN_AGE, fmt_count, parse_row, xid_problems
from tests.observations import healthy

B_ = 1_000_000_000
PREPARED = {"kind": "prepared", "name": "x", "pid": None, "user": "app", "state": None,
            "since": "2026-12-01T10:00:00Z", "age": int(1.2 * B_)}
BACKEND = {"kind": "backend", "name": None, "pid": 4711, "user": "etl", "state": "idle in transaction",
           "since": "2026-12-01T10:00:00Z", "age": int(1.5 * B_)}
SLOT = {"kind": "slot", "name": "manatee_10_0_0_2", "pid": None, "user": None, "state": "inactive",
        "since": None, "age": 300_000_000}
YOUNG = dict(PREPARED, age=99_999_999)  # below HOLDER_AGE: not named as the cause


def xid(age, holder=None, mxid_age=1000, db="app"):
    return {"db": db, "age": age, "mxidDb": "postgres", "mxidAge": mxid_age, "holder": holder}


@pytest.mark.parametrize("probe, want", [
    (None, []),                                             # not asked or the query failed: no line
    (xid(None), []),
    (xid(200_000_000), []),                                 # autovacuum's normal range
    (xid(WARN_AGE - 1, PREPARED), []),
    (xid(int(1.2 * B_), PREPARED), [("warning", "XID age 1.20 billion in database app: PostgreSQL refuses "
                                                "writes in 0.94 billion more transactions; the oldest xmin is held "
                                                "by prepared transaction 'x' (age 1.20 billion): commit or roll it "
                                                "back (COMMIT PREPARED / ROLLBACK PREPARED), then VACUUM (FREEZE)")]),
    (xid(WARN_AGE), [("warning", "XID age 1.00 billion in database app: PostgreSQL refuses writes in 1.14 billion "
                                 "more transactions; nothing holds the oldest xmin back: run VACUUM (FREEZE) there")]),
    (xid(WARN_AGE, YOUNG), [("warning", "nothing holds the oldest xmin back")]),
    (xid(CRIT_AGE - 1, BACKEND), [("warning", "held by backend pid 4711 (user etl, idle in transaction, transaction "
                                              "open since 2026-12-01T10:00:00Z; age 1.50 billion): end that "
                                              "transaction (pg_terminate_backend(4711)), then VACUUM (FREEZE)")]),
    (xid(CRIT_AGE, SLOT), [("critical", "XID age 2.00 billion in database app: PostgreSQL refuses writes in 0.14 "
                                        "billion more transactions; the oldest xmin is held by replication slot "
                                        "'manatee_10_0_0_2' (age 0.30 billion, inactive): fix or drop its consumer")]),
    (xid(STOP_AGE - 2_500_000), [("critical", "refuses writes in 2.5 million more transactions")]),
    (xid(STOP_AGE - 7), [("critical", "refuses writes in 7 more transactions")]),
    (xid(STOP_AGE), [("critical", "XID age 2.14 billion in database app: PostgreSQL refuses writes now (it "
                                  "stops 3.0 million short of wraparound)")]),
    (xid(STOP_AGE + 1000), [("critical", "refuses writes now")]),  # floored at 0, never negative
    (xid(1000, mxid_age=int(1.2 * B_)), [("warning", "MultiXact age 1.20 billion in database postgres: PostgreSQL "
                                                     "refuses writes in 0.94 billion more transactions")]),
    (xid(CRIT_AGE, PREPARED, mxid_age=CRIT_AGE), [("critical", "XID age 2.00 billion in database app"),
                                                  ("critical", "MultiXact age 2.00 billion in database postgres")]),
])
def test_the_wraparound_line_by_age_and_holder(probe, want):
    got = xid_problems("primary 10.0.0.1", probe)
    assert [s for s, _ in got] == [s for s, _ in want], got
    for (_, line), (_, words) in zip(got, want):
        assert line.startswith("primary 10.0.0.1: ") and words in line, (line, words)


@pytest.mark.parametrize("n, text", [(1_200_000_000, "1.20 billion"), (944_483_647, "0.94 billion"),
                                     (100_000_000, "0.10 billion"), (99_999_999, "100.0 million"),
                                     (2_500_000, "2.5 million"), (999_999, "999,999"), (0, "0")])
def test_counts_read_as_the_operator_reads_them(n, text):
    assert fmt_count(n) == text


def test_the_probe_row_becomes_xid_age():
    row = {"db": "app", "age": 5, "mxid_db": "postgres", "mxid_age": 3, "kind": "prepared", "name": "old",
           "pid": None, "usename": "postgres", "state": None, "since": "2026-12-01T10:00:00Z", "holder_age": 5}
    assert parse_row(row) == {"db": "app", "age": 5, "mxidDb": "postgres", "mxidAge": 3,
                              "holder": {"kind": "prepared", "name": "old", "pid": None, "user": "postgres",
                                         "state": None, "since": "2026-12-01T10:00:00Z", "age": 5}}
    assert parse_row({**row, "kind": None, "holder_age": None})["holder"] is None  # nothing holds an xmin
    assert parse_row(None) is None


def test_show_and_verify_carry_the_line_with_its_severity():
    v = healthy()
    p = v.nodes[0]
    p.pg = {**p.pg, "xidAge": xid(int(2.1 * B_), dict(PREPARED, name="old", age=int(2.1 * B_)))}
    found = assess(v)
    assert verdict(found) == "critical"  # verify exits 2
    line = next(m for s, m in found if "XID age" in m)
    assert line.startswith(f"primary {p.ip}: XID age 2.10 billion in database app") and "'old'" in line
    assert f"  - {line}" in render_show(v)
    assert node_json(p)["xidAge"]["age"] == int(2.1 * B_)
    assert {"severity": "critical", "message": line} in show_json(v)["problems"]
    p.pg["xidAge"] = xid(int(1.1 * B_))
    assert verdict(assess(v)) == "warning"  # verify exits 1


def test_an_unknown_age_is_no_line_and_a_standbys_is_not_read():
    v = healthy()
    v.nodes[0].pg = {**v.nodes[0].pg, "xidAge": None}
    v.nodes[1].pg = {**v.nodes[1].pg, "xidAge": xid(CRIT_AGE)}  # only the primary's is asked for
    assert assess(v) == []


def test_a_failed_query_leaves_the_age_unknown_and_the_probe_standing():
    import psycopg2

    from manatee.cli import adm_probe

    class Cursor:
        def execute(self, sql):
            assert sql == adm_probe.XID_AGE_SQL
            raise psycopg2.errors.QueryCanceled("canceling statement due to statement timeout")

    assert adm_probe._xid_age(Cursor()) is None
