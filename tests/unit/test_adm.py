"""manatee-adm's pure parts: the problem list (what verify exits on), the tables, and the
argument errors (one line, exit 2, no traceback)."""

from __future__ import annotations

import pytest

from manatee.cli import adm
from manatee.cli.adm_view import (
    ShardView, chain_nodes, fmt_bytes, problems, render_history, render_pg_status, render_show,
    render_table,
)
from manatee.shard.state import ClusterState, Freeze, Switchover
from tests.observations import ADM_LIVE as LIVE
from tests.observations import ADM_STATE as STATE
from tests.observations import A, B, C, D, healthy


def test_healthy_shard_has_no_problems_and_show_says_none():
    v = healthy()
    assert problems(v) == []
    out = render_show(v)
    assert "generation:  4" in out and "not frozen" in out and out.rstrip().endswith("none")
    for role, p in (("primary", A), ("sync", B), ("async", C)):
        line = next(ln for ln in out.splitlines() if ln.startswith(role))
        assert p.ip in line and p.pg_url in line
    assert "read-write" in out and "standby" in out


def test_chain_nodes_know_their_upstream_and_list_unknown_live_peers():
    nodes = chain_nodes(STATE.evolve(deposed=(D,), async_=()).to_json(), [A.id, B.id], [C.to_json()])
    assert [(n.role, n.ip, n.upstream) for n in nodes] == [
        ("primary", A.ip, None), ("sync", B.ip, A.id), ("deposed", D.ip, None), ("unknown", C.ip, None)]
    assert [n.live for n in nodes] == [True, True, False, True]


@pytest.mark.parametrize("mutate, needle", [
    (lambda v: v.state.update(freeze={"reason": "upgrade", "by": "op", "time": "t"}), "frozen: upgrade"),
    (lambda v: setattr(v, "error", {"reason": "sync diverged"}), "safe mode: sync diverged"),
    (lambda v: v.state.update(sync=None), "no sync"),
    (lambda v: setattr(v.nodes[2], "repl", None), f"async {C.ip} is not streaming from {B.ip}"),
    (lambda v: v.nodes[1].repl.update(state="catchup"), "(catchup)"),
    (lambda v: v.nodes[1].repl.update(sync_state="potential"), "not the synchronous standby"),
    (lambda v: setattr(v.nodes[1], "pg", {"up": False, "error": "connection refused"}), "connection refused"),
    (lambda v: setattr(v.nodes[2], "live", False), f"async {C.ip} is not in the election"),
    (lambda v: setattr(v.nodes[0], "sitter", None), "status server does not answer"),
    (lambda v: v.nodes[0].pg.update(readOnly=True), f"primary {A.ip} is read-only"),
    (lambda v: v.nodes[2].pg.update(recovery=False), "runs as a primary"),
    (lambda v: v.state.update(switchover={"to": B.id, "requested": "t"}), "switchover to"),
])
def test_each_problem_is_detected(mutate, needle):
    v = healthy()
    mutate(v)
    probs = problems(v)
    assert any(needle in p for p in probs), probs
    assert all(isinstance(p, str) and "\n" not in p for p in probs)


def test_deposed_and_unknown_nodes_are_problems():
    v = healthy(STATE.evolve(deposed=(D,)), live=[*LIVE, D.id])
    assert any(p.startswith(f"deposed {D.ip}") and "rejoin" in p for p in problems(v))
    st = ClusterState(generation=4, primary=A, sync=B, init_wal=0)
    v = healthy(st, live=[A.id, B.id, C.id], election=[C])
    assert any("not in the shard state" in p for p in problems(v))


def test_a_deposed_primary_whose_postgresql_runs_on_without_its_sitter_is_critical():
    """Sandbox trial, 2026-12-05: the primary's sitter restarted with a broken config (exit 2,
    the key named) left its PostgreSQL running read-write; the sync took over. show said "a
    former primary that is down" while that PostgreSQL answered reads with stale data and
    held every commit forever."""
    from manatee.cli.adm_view import assess
    v = healthy(STATE.evolve(deposed=(D,)))
    dep = next(n for n in v.nodes if n.role == "deposed")
    assert not dep.live and any("that is down" in p for p in problems(v))
    dep.pg = {"up": True, "recovery": False, "readOnly": False, "wal": "0/5000", "rows": []}
    found = [(sev, p) for sev, p in assess(v) if p.startswith(f"deposed {D.ip}")]
    assert len(found) == 1 and found[0][0] == "critical", found
    assert "still runs as a primary without its sitter" in found[0][1] and "stop that PostgreSQL" in found[0][1]
    dep.pg = {"up": True, "recovery": True, "readOnly": True, "wal": "0/5000", "rows": []}  # a standby: harmless
    assert any("that is down" in p for p in problems(v))
    dep.pg = {"up": False, "error": "connection refused"}
    assert any("that is down" in p for p in problems(v))


def test_no_state_and_unreadable_state():
    assert "not been set up" in problems(ShardView("1", None))[0]
    assert "cannot be read" in problems(ShardView("1", None, state_error="state.generation: missing"))[0]


def test_frozen_shard_show_names_the_freeze():
    v = healthy(STATE.evolve(freeze=Freeze(reason="upgrade", by="op@h", time="2024-01-01T00:00:00Z")))
    out = render_show(v)
    assert "freeze:      frozen: upgrade (by op@h at 2024-01-01T00:00:00Z)" in out
    assert "frozen: upgrade" in out.split("problems:")[1]


def test_switchover_shown_while_pending():
    v = healthy(STATE.evolve(switchover=Switchover(to=B.id, requested="t1", released=True)))
    assert "switchover:  to " + B.id + " requested t1 (released)" in render_show(v)


def test_pg_status_table_shows_lag_per_standby():
    v = healthy()
    v.nodes[2].repl.update(lag_bytes=3 * 1024 * 1024, lag_s=1.25)
    out = render_pg_status(v, "2024-01-01T00:00:00Z")
    lines = out.splitlines()
    assert lines[0].startswith("2024-01-01T00:00:00Z  shard 1 generation 4")
    assert lines[1].split()[:4] == ["ROLE", "ADDRESS", "PG", "MODE"]
    a_line = next(ln for ln in lines if ln.startswith("async"))
    assert "3.0 MB" in a_line and "1.250" in a_line and "streaming" in a_line
    p_line = next(ln for ln in lines if ln.startswith("primary"))
    assert "read-write" in p_line and p_line.rstrip().endswith("-")


def test_history_table_columns():
    recs = [{"time": "1", "date": "2024-01-01T00:00:00.000Z", "ip": A.ip, "action": "AssumeLeader",
             "role": "primary", "master": "", "slave": B.ip, "zkSeq": "0000000001", "generation": 3}]
    out = render_history(recs).splitlines()
    assert out[0].split() == ["TIME", "ACTION", "IP", "ROLE", "MASTER", "SLAVE", "GEN"]
    assert out[1].split() == ["2024-01-01T00:00:00.000Z", "AssumeLeader", A.ip, "primary", "-", B.ip, "3"]


def test_table_and_byte_formatting():
    assert render_table(["A", "BB"], [["x", None], ["yyy", 2]]).splitlines() == ["A    BB", "x    -", "yyy  2"]
    assert [fmt_bytes(x) for x in (None, 0, 2048, 5 << 20)] == ["-", "0 B", "2.0 kB", "5.0 MB"]


def test_find_peer_by_ip_or_id_and_unknown_node():
    assert adm.find_peer(STATE, B.ip) == B and adm.find_peer(STATE, C.id) == C
    with pytest.raises(adm.CliError, match="no node '10.9.9.9'.*members: 10.0.0.1 \\(primary\\)"):
        adm.find_peer(STATE, "10.9.9.9")


@pytest.mark.parametrize("argv, needle", [
    ([], "COMMAND"),
    (["show"], "SHARD, ZK"),
    (["bogus", "1", "zk"], "invalid choice"),
    (["freeze", "1", "localhost"], "--reason"),
    (["freeze", "1", "localhost", "-r", "  "], "must say why"),
    (["pg-status", "1", "localhost", "abc"], "PERIOD must be a number"),
    (["pg-status", "1", "localhost", "-5"], "PERIOD"),
    (["show", "a/b", "localhost"], "bad shard name"),
    (["show", "1", "host:notaport"], "bad port"),
    (["switchover", "1", "localhost", "--wait", "0"], "--wait"),
    (["rebuild", "1", "localhost"], "--node"),
    (["show", "1", "localhost", "-t", "0"], "--timeout"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, needle, capsys):
    assert adm.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("manatee-adm: ") and needle in err, err


def test_set_primary_refuses_while_sitters_run_or_outside_safe_mode():
    """Runbook step 3 rewrites the topology: never under a running sitter, and only in safe
    mode unless forced (checked before ZooKeeper is touched)."""
    from manatee.cli.adm import set_primary
    from manatee.cli.common import CliError

    with pytest.raises(CliError, match="stop every sitter first.*127.0.0.12"):
        set_primary(None, "1", "127.0.0.11", {"reason": "x"}, [{"ip": "127.0.0.12", "id": "b"}])
    with pytest.raises(CliError, match="not in safe mode"):
        set_primary(None, "1", "127.0.0.11", None, [])


@pytest.mark.parametrize("key, value, needle", [
    ("insecure", True, "runs insecure"),
    ("zkAuth", False, "without ZooKeeper auth"),
])
def test_verify_warns_about_an_insecure_sitter_and_show_marks_it(key, value, needle):
    from manatee.cli.adm_view import WARNING, assess, verdict

    v = healthy()
    for n in v.nodes:
        n.sitter.update(insecure=False, zkAuth=True)
    assert problems(v) == []
    v.nodes[1].sitter[key] = value
    found = assess(v)
    assert [(s, needle in m and B.ip in m) for s, m in found] == [(WARNING, True)]
    assert verdict(found) == WARNING  # a warning: verify exits 1, not 2
    sync_line = next(ln for ln in render_show(v).splitlines() if ln.startswith("sync"))
    assert "(insecure)" in sync_line


def test_show_reports_an_old_copy_an_interrupted_rebuild_left():
    """A node's sitter reports the old copies of an interrupted rebuild it keeps: a warning
    naming them (not critical: the node serves), and the JSON carries them."""
    from manatee.cli.adm_view import WARNING, assess, node_json, verdict

    v = healthy()
    for n in v.nodes:
        n.sitter.update(oldCopiesKept=[])
    assert problems(v) == []
    v.nodes[2].sitter["oldCopiesKept"] = ["zones/pg-restore-1796397776665"]
    found = assess(v)
    assert found == [(WARNING, f"async {v.nodes[2].ip}: an interrupted rebuild left its old copy "
                                "zones/pg-restore-1796397776665 aside (kept: it may hold the only copy of that "
                                "data; docs/operators-guide.md, 'Rebuilding a node')")]
    assert verdict(found) == WARNING
    assert node_json(v.nodes[2])["oldCopiesKept"] == ["zones/pg-restore-1796397776665"]
    v.nodes[2].sitter["bases"] = {"127.0.0.11": "1796397776000"}
    assert node_json(v.nodes[2])["bases"] == {"127.0.0.11": "1796397776000"}
    v.nodes[2].sitter["oldCopiesKept"] = None  # unknown (zfs did not answer): no problem claimed
    assert problems(v) == []


def test_rebuild_progress_line_never_claims_more_than_100_percent():
    """An increment's size is the sender's lower bound: once passed, bytes without a percentage."""
    from manatee.cli.adm import restore_progress_line

    src = "http://127.0.0.12:10002"
    assert restore_progress_line({"phase": "receiving", "completed": 40 << 10, "size": 80 << 10,
                                  "source": src}) == f"receiving 40.0 kB of 80.0 kB (50%) from {src}"
    assert restore_progress_line({"phase": "receiving", "completed": 643 << 10, "size": 80 << 10,
                                  "source": src}) == f"receiving 643.0 kB (more than the 80.0 kB estimated) from {src}"
    assert restore_progress_line({"phase": "requested"}) == "requested"


def _heard(v, node, age, expiration=6.0):
    """The upstream's /state record of `node`'s last heartbeat, `age` seconds old."""
    up = next(n for n in v.nodes if n.id == node.upstream)
    up.sitter["standbys"] = {"expirationS": expiration, "heard": {node.id: {"ageS": age, "streaming": True}}}


def test_a_standby_whose_upstream_no_longer_hears_it_is_a_problem_before_postgres_notices():
    """A link cut between the sync and the async: PostgreSQL still says "streaming" until
    wal_sender_timeout, but the upstream's sitter has not heard the async's heartbeat for
    longer than its expiration time (sandbox trial, stop 24: "problems: none" for ~60 s)."""
    from manatee.cli.adm_view import CRITICAL, WARNING, assess

    v = healthy()
    _heard(v, v.nodes[2], 0.4)
    _heard(v, v.nodes[1], 6.0)  # exactly the expiration time: still heard
    assert problems(v) == []
    _heard(v, v.nodes[2], 38.2)
    assert assess(v) == [(WARNING, f"async {C.ip}: its upstream {B.ip} has not heard its heartbeat for 38s "
                                   "(expiration 6s): the link between them is cut, or its sitter is stuck (its "
                                   "PostgreSQL may still be shown streaming until wal_sender_timeout)")]
    _heard(v, v.nodes[1], 7.0)  # the sync's: critical, writes wait for it
    assert (CRITICAL, f"sync {B.ip}: its upstream {A.ip} has not heard its heartbeat for 7s (expiration 6s): "
                      "the link between them is cut, or its sitter is stuck (its PostgreSQL may still be shown "
                      "streaming until wal_sender_timeout)") in assess(v)


def test_a_standby_that_withholds_its_heartbeats_says_why_and_a_down_one_is_reported_once():
    v = healthy()
    v.nodes[2].sitter.update(pg={"heartbeatsWithheld": True, "unhealthyWhy": f"it does not stream from {B.ip}"})
    _heard(v, v.nodes[2], 20)
    assert any(p.endswith(f"it withholds them to give way: it does not stream from {B.ip}") for p in problems(v))
    v.nodes[2].live = False  # its sitter is down: "not in the election" says it, not this
    assert not any("heard" in p for p in problems(v))


@pytest.mark.parametrize("standbys", [None, {}, {"expirationS": 6.0}, {"expirationS": "6", "heard": {}},
                                      {"expirationS": 6.0, "heard": {"x": {"ageS": 99}}}])
def test_no_heartbeat_record_is_no_problem(standbys):
    v = healthy()
    v.nodes[1].sitter["standbys"] = standbys
    assert problems(v) == []


def test_a_sync_that_does_not_take_over_from_a_primary_that_is_down_says_why():
    """F12 with the primary gone: the operator saw "primary ... not in the election" and not
    why the sync waited (it could not show it held every acknowledged write)."""
    from manatee.cli.adm_view import CRITICAL, assess

    v = healthy()
    why = ("the primary 10.0.0.1 is gone but I have not streamed any WAL from it since PostgreSQL started "
           "and cannot show that I hold every acknowledged write, so I may not take over")
    v.nodes[1].sitter.update(rule="sync.no_wal", reason=why)
    assert not any("does not take over" in p for p in problems(v))  # its primary is up: nothing to say
    v.nodes[0].live = False
    found = [(s, p) for s, p in assess(v) if "does not take over" in p]
    assert found == [(CRITICAL, f"sync {B.ip} does not take over from the primary that is down: {why}; bring the "
                                "primary back, or see 'After a site-wide outage' in docs/operators-guide.md")]
    v.nodes[1].sitter["remembers"] = {"generation": 4, "primary": A.id, "streamedNotUsed": "synchronousCommit is "
                                      "remote_write: a commit the sync acknowledged ... may not be on its disk"}
    found = [p for s, p in assess(v) if "does not take over" in p]
    assert found and "so I may not take over (synchronousCommit is remote_write: " in found[0], found
    v.nodes[1].sitter.update(rule="sync.detach", reason="taking over")
    assert not any("does not take over" in p for p in problems(v))
