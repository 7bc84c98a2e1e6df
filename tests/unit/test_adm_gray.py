"""manatee-adm show/verify with what the sitters' /state adds (issue 8): the gray-failure
latches, and a node the CLI cannot connect to (a connection storm) shown as its sitter sees
it instead of "down"."""

from __future__ import annotations

import pytest

from manatee.cli.adm_gray import SITTER_PG_FRESH_S, pg_via_sitter, repl_via_sitter
from manatee.cli.adm_view import node_json, problems, render_pg_status, render_show, show_json
from tests.observations import A, B, C, healthy

STORM = {"up": False, "error": "FATAL:  sorry, too many clients already"}


def sitter_state(role="primary", *, ago=0.4, running=True, healthy_=True, streaming=False, **kw):
    """A sitter's GET /state, as much of it as manatee-adm reads."""
    return {"localRole": role, "readOnly": False, "pgObservedAgo": ago,
            "pg": {"running": running, "healthy": healthy_, "known": True, "inRecovery": role != "primary",
                   "wal": "0/A000", "streaming": streaming},
            "writeProbe": {"failures": 0, "limit": 2, "lastError": None},
            "syncFlushStall": {"seconds": 0.0, "bound": 8.0},
            "startBackoff": {"failures": 0, "nextTryIn": 0.0}, **kw}


# ---------------------------------------------------------------------------- PG as the sitter sees it

def test_a_storm_loaded_primary_shows_as_its_sitter_sees_it_not_down():
    v = healthy()
    p = v.nodes[0]
    p.sitter = sitter_state()
    p.pg = pg_via_sitter(STORM, p.sitter)
    assert p.pg["up"] and p.pg["via"] == "sitter" and p.pg["readOnly"] is False
    out = render_show(v)
    row = next(ln for ln in out.splitlines() if ln.startswith("primary"))
    assert " up* " in row and "read-write" in row and "down" not in row
    assert f"{A.ip}: manatee-adm could not connect to its PostgreSQL (FATAL:  sorry, too many clients" in out
    probs = problems(v)
    assert not any("does not answer" in x for x in probs), probs
    assert any("could not connect" in x and "its sitter observes it running" in x for x in probs), probs
    assert node_json(p)["pg"] == "up*" and node_json(p)["pgVia"] == "sitter"
    assert show_json(v)["status"] == "warning"
    assert " up* " in render_pg_status(v)


@pytest.mark.parametrize("pg, sitter", [
    (STORM, None),                                                      # no sitter answer
    (STORM, sitter_state(ago=SITTER_PG_FRESH_S + 1)),                   # its observation is old
    (STORM, sitter_state(running=False, healthy_=False)),               # the sitter sees it down too
    (STORM, sitter_state(healthy_=False)),
    ({"up": False, "error": "password authentication failed", "auth": "failed"}, sitter_state()),
    ({"up": True, "recovery": False, "readOnly": False, "wal": "0/1"}, sitter_state()),  # the CLI's own
    (None, sitter_state()),
    # PostgreSQL is not serving now, whatever the sitter saw a moment ago (a crash loop)
    ({"up": False, "error": 'connection to server at "10.0.0.1", port 5432 failed: Connection refused'},
     sitter_state()),
    ({"up": False, "error": "FATAL:  the database system is not yet accepting connections"}, sitter_state()),
    ({"up": False, "error": "FATAL:  the database system is starting up"}, sitter_state()),
    ({"up": False, "error": "FATAL:  the database system is shutting down"}, sitter_state()),
])
def test_the_cli_probe_stands_when_the_sitter_cannot_vouch_or_it_answered(pg, sitter):
    assert pg_via_sitter(pg, sitter) is pg


def test_a_storm_on_the_primary_does_not_make_its_sync_look_disconnected():
    """The primary's pg_stat_replication could not be read: the sync's own sitter says whether it streams."""
    assert repl_via_sitter(sitter_state("standby", streaming=True)) == {"state": "streaming", "via": "sitter"}
    assert repl_via_sitter(sitter_state("standby", streaming=False))["state"] is None
    assert repl_via_sitter(None) is None
    v = healthy()
    v.nodes[0].sitter = sitter_state()
    v.nodes[0].pg = pg_via_sitter(STORM, v.nodes[0].sitter)
    v.nodes[1].repl = repl_via_sitter(sitter_state("standby", streaming=True))
    assert not any("not streaming" in x for x in problems(v)), problems(v)
    v.nodes[1].repl = repl_via_sitter(sitter_state("standby", streaming=False))
    assert any(f"sync {B.ip} is not streaming" in x for x in problems(v)), problems(v)


# ---------------------------------------------------------------------------- the latches

def test_a_healthy_sitters_latches_add_no_line_and_no_problem():
    v = healthy()
    for n in v.nodes:
        n.sitter = sitter_state(n.role)
    assert problems(v) == []
    assert "nodes:" not in render_show(v)
    assert show_json(v)["nodes"][0]["writeProbe"] == {"failures": 0, "limit": 2, "lastError": None}


def test_show_and_verify_name_the_latches_and_the_decision():
    v = healthy()
    v.nodes[0].sitter = sitter_state(
        writeProbe={"failures": 2, "limit": 2, "lastError": "could not extend file: No space left on device"},
        syncFlushStall={"seconds": 6.0, "bound": 8.0}, rule="primary.step_down",
        reason="my PostgreSQL cannot serve: it cannot commit")
    v.nodes[1].sitter = sitter_state("standby", startBackoff={"failures": 4, "nextTryIn": 3.2})
    out = render_show(v)
    assert f"{A.ip}: write probe failed 2 time(s) in a row (limit 2; last: could not extend file" in out
    assert f"{A.ip}: its sync's flush has not advanced for 6.0s while WAL waits (the sync is replaced after 8s)" in out
    assert f"{A.ip}: decided primary.step_down: my PostgreSQL cannot serve: it cannot commit" in out
    assert f"{B.ip}: PostgreSQL failed to start 4 time(s) in a row; next try in 3.2s" in out
    found = show_json(v)
    sev = {m: s for s, m in ((p["severity"], p["message"]) for p in found["problems"])}
    assert any("write probe failed 2" in m and s == "critical" for m, s in sev.items()), sev
    assert any("flush has not advanced for 6.0s" in m and s == "warning" for m, s in sev.items()), sev
    assert any(f"sync {B.ip}: PostgreSQL failed to start 4" in m and s == "critical" for m, s in sev.items()), sev
    assert found["nodes"][0]["decision"] == {"rule": "primary.step_down",
                                             "reason": "my PostgreSQL cannot serve: it cannot commit"}


@pytest.mark.parametrize("i, severity", [(1, "critical"), (2, "warning")])
def test_a_config_its_sitter_cannot_write_is_named(i, severity):
    """Sandbox trial 2026-12-06: the dataset read-only under a standby; show said only that its
    PostgreSQL does not answer. The sitter's /state has pg.configError: now it is a problem."""
    v = healthy()
    n = v.nodes[i]
    n.sitter = sitter_state("standby", running=False, healthy_=False)
    n.sitter["pg"]["configError"] = "[Errno 30] Read-only file system: '.manatee.conf.tmp'\nmore"
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    line = (f"{n.role} {n.ip}: its sitter cannot write PostgreSQL's config ([Errno 30] Read-only file system: "
            f"'.manatee.conf.tmp'): is its dataset full, read-only or not mounted?")
    assert found.get(line) == severity, found
    n.sitter["pg"]["configError"] = None
    assert not any("cannot write" in m for m in (p["message"] for p in show_json(v)["problems"]))


@pytest.mark.parametrize("i, severity", [(1, "critical"), (2, "warning")])
def test_a_replay_paused_by_hand_is_named(i, severity):
    """Sandbox trial 2026-12-06: the sync's replay paused for 20 s, and `verify` said "ok"."""
    v = healthy()
    n = v.nodes[i]
    n.sitter = sitter_state("standby", streaming=True)
    n.sitter["pg"]["replayPausedFor"] = 20.4
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    line = next((m for m in found if "its WAL replay is paused" in m), None)
    assert line is not None and found[line] == severity, found
    assert line.startswith(f"{n.role} {n.ip}: its WAL replay is paused (pg_wal_replay_pause()) for 20s")
    assert "select pg_wal_replay_resume()" in line
    n.sitter["pg"]["replayPausedFor"] = None
    assert not any("replay is paused" in m for m in (p["message"] for p in show_json(v)["problems"]))


def test_a_primary_refusing_new_xids_for_wraparound_is_critical_and_says_no_failover_follows():
    v = healthy()
    v.nodes[0].sitter = sitter_state(writeProbe={
        "failures": 0, "limit": 2, "lastError": None, "wraparoundFor": 31.6,
        "wraparoundError": 'query failed: ERROR:  database is not accepting commands to avoid wraparound data '
                           'loss in database "app"\nHINT:  Stop the postmaster'})
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    line = next((m for m in found if "refuses new transaction IDs" in m), None)
    assert line is not None and found[line] == "critical", found
    assert line.startswith(f"primary {A.ip}: PostgreSQL refuses new transaction IDs to avoid wraparound for 32s "
                           f"(query failed: ERROR:  database is not accepting commands")
    assert "HINT" not in line and "a failover would not help" in line and "VACUUM (FREEZE)" in line
    assert (f"{A.ip}: PostgreSQL refuses new transaction IDs to avoid wraparound for 32s (query failed: ERROR:"
            in render_show(v))
    v.nodes[0].sitter["writeProbe"]["wraparoundFor"] = None  # over: the kept error alone is no problem
    assert not any("wraparound" in p["message"] for p in show_json(v)["problems"])
    assert "wraparound" not in render_show(v)


def test_a_role_or_database_whose_commits_do_not_wait_for_the_sync_is_named():
    v = healthy()
    v.nodes[0].pg = {"up": True, "recovery": False, "readOnly": False, "wal": "0/A000", "rows": [],
                     "weakCommit": [{"role": "app", "db": "", "setting": "synchronous_commit=off"},
                                    {"role": "", "db": "orders", "setting": "synchronous_commit=local"},
                                    {"role": "etl", "db": "orders", "setting": "synchronous_commit=local"}]}
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    for scope in ("role app", "database orders", "role etl in database orders"):
        line = next((m for m in found if f"is set for {scope} (ALTER ROLE/DATABASE)" in m), None)
        assert line is not None and found[line] == "warning", (scope, found)
        assert line.startswith(f"primary {v.nodes[0].ip}: synchronous_commit=") and "a failover loses" in line
    v.nodes[0].pg["weakCommit"] = []
    assert not any("ALTER ROLE/DATABASE" in m for m in (p["message"] for p in show_json(v)["problems"]))


def test_a_short_stall_is_shown_but_is_no_problem():
    v = healthy()
    v.nodes[0].sitter = sitter_state(syncFlushStall={"seconds": 1.0, "bound": 8.0})
    assert problems(v) == []
    assert "flush has not advanced for 1.0s" in render_show(v)


# ---------------------------------------------------------------------------- the dataset's space

GB = 1 << 30


@pytest.mark.parametrize("i, space, severity, words", [
    (0, {"available": 1 << 20, "used": 4 * GB, "quota": 4 * GB}, "critical", "its dataset is full (1.0 MB free of a 4.0 GB quota)"),
    (1, {"available": 0, "used": GB, "quota": 0}, "critical", "its dataset is full (0 B free)"),
    (2, {"available": 4 << 20, "used": GB, "quota": None}, "warning", "its dataset is full (4.0 MB free)"),
    (2, {"available": 300 << 20, "used": 4 * GB, "quota": None}, "warning", "nearly full (300.0 MB free, 7 % of its space)"),
    (0, {"available": 300 << 20, "used": 4 * GB, "quota": 5 * GB}, "warning", "nearly full (300.0 MB free of a 5.0 GB quota"),
])
def test_a_full_or_nearly_full_dataset_is_named_with_its_free_space(i, space, severity, words):
    """Full: less than a WAL segment free (critical on the primary and the sync, whose PostgreSQL
    must write WAL to serve; a warning on an async). Nearly full: under 10 % free."""
    v = healthy()
    for n in v.nodes:
        n.sitter = sitter_state(n.role)
    v.nodes[i].sitter = sitter_state(v.nodes[i].role, dataset=space)
    found = [(p["severity"], p["message"]) for p in show_json(v)["problems"]]
    assert len(found) == 1 and found[0][0] == severity and words in found[0][1], found
    assert found[0][1].startswith(f"{v.nodes[i].role} {v.nodes[i].ip}: ")
    assert show_json(v)["status"] == severity


@pytest.mark.parametrize("space", [
    None, {}, {"available": None, "used": 10}, {"available": "12"},     # not known: nothing said
    {"available": 2 * GB, "used": 2 * GB, "quota": 0},                 # half free
    {"available": 64 << 20, "used": 100 << 20, "quota": 164 << 20},    # small but 39 % free
])
def test_a_dataset_with_room_or_unknown_space_is_no_problem(space):
    v = healthy()
    for n in v.nodes:
        n.sitter = sitter_state(n.role, dataset=space)
    assert problems(v) == []


def test_show_and_verify_name_rebuilds_that_keep_failing():
    v = healthy()
    err = "RestoreError: zfs recv into z/c/pg failed after 24484223 bytes: cannot receive: out of space"
    v.nodes[2].sitter = sitter_state("standby", restoreBackoff={"failures": 3, "nextTryIn": 3.5, "lastError": err})
    out = render_show(v)
    assert f"{C.ip}: its last 3 rebuild(s) failed in a row (last: {err}); next try in 3.5s" in out
    sev = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    assert any("its last 3 rebuilds failed in a row" in m and "out of space" in m and s == "warning"
               for m, s in sev.items()), sev
    assert show_json(v)["nodes"][2]["restoreBackoff"]["failures"] == 3
    v.nodes[2].sitter = sitter_state("standby", restoreBackoff={"failures": 1, "nextTryIn": 0.0, "lastError": err})
    assert not any("rebuilds failed" in p["message"] for p in show_json(v)["problems"])  # retried at once


@pytest.mark.parametrize("error, words", [
    ('connection to server at "127.0.0.11", port 5432 failed: FATAL:  role "postgres" is not permitted to log in',
     "the role may not log in (ALTER ROLE ... NOLOGIN)"),
    ('connection to server at "127.0.0.11", port 5432 failed: FATAL:  database "postgres" is not currently '
     'accepting connections', "the database takes no connections (ALTER DATABASE ... ALLOW_CONNECTIONS false)"),
])
def test_a_login_refused_by_the_catalog_says_what_to_undo_not_to_set_a_password(error, words):
    """Sandbox trial 2026-12-06: `ALTER ROLE postgres NOLOGIN` showed "auth failed ... set
    PGPASSFILE or PGPASSWORD" on every node, which sends the operator after a password."""
    v = healthy()
    v.nodes[0].pg = {"up": False, "error": error, "auth": "failed"}
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    line = next(m for m in found if m.startswith(f"primary {A.ip}: PostgreSQL refuses the login"))
    assert found[line] == "critical" and words in line and "PGPASSFILE" not in line
    assert "pg_access_restored" in line and "pg_hba.conf" in line
    v.nodes[0].pg = {"up": False, "error": "password authentication failed for user \"postgres\"", "auth": "failed"}
    assert any("set PGPASSFILE or PGPASSWORD" in p["message"] for p in show_json(v)["problems"])


@pytest.mark.parametrize("i, severity", [(0, "critical"), (1, "critical"), (2, "warning")])
def test_a_sitter_whose_cycles_keep_failing_is_named(i, severity):
    """Sandbox trial 2026-12-06: the state znode's ACL changed by hand, then the primary
    killed: the sync could not write the state (NoAuth), every cycle failed, and `show` named
    nothing but the dead primary."""
    v = healthy()
    n = v.nodes[i]
    n.sitter = sitter_state("primary" if i == 0 else "standby",
                            cycles={"failedInARow": 12, "lastError": "ZooKeeper set /manatee/1/state: refused by "
                                                                     "its ACL (NoAuth)\nmore"})
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    line = f"{n.role} {n.ip}: its sitter's last 12 cycles failed (ZooKeeper set /manatee/1/state: refused by its ACL"
    got = [m for m in found if m.startswith(line)]
    assert len(got) == 1 and found[got[0]] == severity and "more" not in got[0], found
    assert f"{n.ip}: its last 12 cycles failed (last: ZooKeeper set /manatee/1/state" in render_show(v)
    n.sitter["cycles"] = {"failedInARow": 2, "lastError": "ConnectionLoss"}  # a blip: not named
    assert not any("cycles failed" in p["message"] for p in show_json(v)["problems"])
    assert "cycles failed" not in render_show(v)


@pytest.mark.parametrize("i, severity", [(0, "critical"), (1, "critical"), (2, "warning")])
def test_data_checksum_failures_are_named_on_any_node(i, severity):
    v = healthy()
    n = v.nodes[i]
    n.pg = {**(n.pg or {}), "up": True,
            "checksums": {"failures": 2, "last": "2026-12-06 08:00:01+00", "databases": "app"}}
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    line = next((m for m in found if "data checksum failure" in m), None)
    assert line == (f"{n.role} {n.ip}: 2 data checksum failure(s) (database app, the last at 2026-12-06 "
                    f"08:00:01+00): its storage returned pages that are not what PostgreSQL wrote. Find them in "
                    f"its log ('invalid page in block'); rebuild this node from a healthy one (the primary: switch "
                    f"over first), then `select pg_stat_reset()` in that database") and found[line] == severity, found
    for none in ({"failures": 0, "last": None, "databases": None}, None):  # none, or not known
        n.pg["checksums"] = none
        assert not any("checksum" in p["message"] for p in show_json(v)["problems"])


@pytest.mark.parametrize("i, severity", [(0, "critical"), (1, "critical"), (2, "warning")])
def test_fsync_off_is_named(i, severity):
    """fsync = off in a node's postgresMgrCfg.parameters: its WAL is not durable, and as the
    sync it acknowledges commits with flushes that are not."""
    v = healthy()
    n = v.nodes[i]
    n.pg = {**(n.pg or {}), "up": True, "noFsync": True}
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    line = next((m for m in found if "fsync is off" in m), None)
    assert line is not None and line.startswith(f"{n.role} {n.ip}: fsync is off") and found[line] == severity
    n.pg["noFsync"] = False
    assert not any("fsync" in p["message"] for p in show_json(v)["problems"])


@pytest.mark.parametrize("i, severity", [(0, "critical"), (1, "critical"), (2, "warning")])
def test_a_sitter_role_that_is_no_longer_a_superuser_is_named(i, severity):
    v = healthy()
    n = v.nodes[i]
    n.sitter = sitter_state("primary" if i == 0 else "standby", streaming=i > 0)
    n.sitter["pg"]["notSuperuser"] = True
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    line = next((m for m in found if "no longer a superuser" in m), None)
    assert line is not None and found[line] == severity and "ALTER ROLE ... SUPERUSER" in line, found
    n.sitter["pg"]["notSuperuser"] = False
    assert not any("superuser" in p["message"] for p in show_json(v)["problems"])


@pytest.mark.parametrize("rule", ["primary.no_data", "primary.no_data_unknown"])
def test_a_primary_holding_without_data_is_critical_with_its_sitters_reason(rule):
    """Its PostgreSQL is down on purpose: the sitter's reason says what it waits for (2026-12-06)."""
    why = ("the state of generation 4 names me primary but my data directory is empty, so I do not start an "
           "empty primary over the writes my standbys hold, and I cannot step down in favour of my sync yet: "
           "my sync 10.0.0.2 is not heartbeating me")
    v = healthy()
    v.nodes[0].sitter = sitter_state(running=False, healthy_=False, rule=rule, reason=why)
    probs = problems(v)
    line = next(x for x in probs if "its data directory is empty" in x)
    assert line.endswith(f"(no empty database is created): {why}"), line
    v.nodes[0].sitter = sitter_state(rule="primary.steady", reason="I take writes")
    assert not any("data directory is empty" in x for x in problems(v))


@pytest.mark.parametrize("i", [0, 1, 2])
def test_a_failing_wal_archive_is_a_warning_that_says_the_disk_fills(i):
    """archive_command failing since its last success (pg_stat_archiver, the sitter's
    pg.archiveFailing): nothing breaks yet, but every segment not archived stays in pg_wal."""
    v = healthy()
    n = v.nodes[i]
    n.sitter = sitter_state("primary" if i == 0 else "standby", streaming=i > 0)
    n.sitter["pg"]["archiveFailing"] = "00000001000000000000000A at 2026-12-07 02:35:00+00"
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    line = next((m for m in found if "archiving WAL fails" in m), None)
    assert line is not None and found[line] == "warning", found
    assert "00000001000000000000000A" in line and "disk fills" in line
    n.sitter["pg"]["archiveFailing"] = None
    assert not any("archiving" in p["message"] for p in show_json(v)["problems"])
