"""A lost state znode, the operator's side: `show`/`verify` name it (critical) from what the
sitters remember, and `manatee-adm state-restore` re-creates it from the live sitters' /state,
refusing whenever the state shown might not be the shard's newest. ZooKeeper is a dict
(tests/zk_fakes.py), each sitter's /state a canned answer; nothing runs."""

from __future__ import annotations

import json

import pytest

from manatee.cli import adm, adm_probe, adm_staterestore
from manatee.cli.adm_view import CRITICAL, assess, render_show, show_json, verdict
from manatee.cli.common import CliError, ZkReader, one_line_failures
from manatee.core.zkauth import ZKAuth, shard_acl
from manatee.shard.history import STATE_RESTORED, parse_record
from manatee.shard.state import ClusterState, parse_state
from manatee.shard.syncstore import NodeExists
from tests.observations import A, B, C, D
from tests.zk_fakes import DictZk

STATE = ClusterState(generation=3, primary=A, sync=B, async_=(C,), init_wal=0x5000)
OLDER = ClusterState(generation=2, primary=B, sync=A, async_=(C,))
PATH = "/manatee/1/state"


def lost(st: ClusterState | None = STATE, remembers: int | None = 3, primary=A) -> dict:
    """A sitter's /state while the znode is gone: it shows `st` and remembers `remembers`."""
    rem = None if remembers is None else {"generation": remembers, "primary": primary.id}
    return {"localRole": "standby", "generation": st.generation if st else None,
            "state": st.to_json() if st else None, "remembers": rem,
            "stateLost": None if rem is None else f"the shard state znode is gone; I remember generation {remembers}"}


def shard_zk(peers=(A, B, C), state: ClusterState | None = None, remembers=None) -> DictZk:
    """Shard 1 with `peers` in the election (each node's data may say what it remembers)."""
    nodes = {"/manatee/1": b"", "/manatee/1/election": b"", "/manatee/1/history": b""}
    for i, p in enumerate(peers):
        data = {k: v for k, v in p.to_json().items() if k != "id"}
        if remembers is not None:
            data["remembers"] = remembers.get(p.ip)
        nodes[f"/manatee/1/election/{p.id}-{i:010d}"] = json.dumps(data).encode()
    if state is not None:
        nodes[PATH] = state.dumps()
    return DictZk(nodes)


@pytest.fixture
def sitters(monkeypatch):
    """{ip: /state body, or None for no answer}; patched into both adm modules' HTTP call."""
    answers: dict[str, object] = {}

    def http_json(url, body=None, *, timeout, headers=None):
        ip = url.split("//")[1].split(":")[0]
        got = answers.get(ip)
        return (0, "connection refused") if got is None else (200, got)

    monkeypatch.setattr(adm_staterestore, "http_json", http_json)
    monkeypatch.setattr(adm_probe, "http_json", http_json)
    probed: list[str] = []  # PostgreSQL is never reached from here: the URLs are recorded

    def probe_pg(url, timeout):
        probed.append(url)
        return {"up": False, "error": "not probed in unit tests"}

    monkeypatch.setattr(adm_probe, "probe_pg", probe_pg)
    answers["_probed"] = probed
    return answers


def restore(zk, *flags: str) -> int:
    args = adm.build_parser().parse_args(["state-restore", "-s", "1", "-z", "zk1", *flags])
    args.shard = "1"
    return one_line_failures("manatee-adm", lambda: adm_staterestore.cmd_state_restore(args, zk))


def history(zk) -> list[dict]:
    pre = "/manatee/1/history/"
    return [parse_record(p[len(pre):], d) for p, (d, _v) in zk.nodes.items() if p.startswith(pre)]


# --------------------------------------------------------------------------- state-restore

def test_a_present_state_is_refused(sitters, capsys):
    zk = shard_zk(state=STATE)
    assert restore(zk, "--yes") == 1
    assert ("the shard has a state (generation 3); state-restore only re-creates a missing state or replaces an "
            "unreadable one") in capsys.readouterr().err
    assert zk.nodes[PATH] == (STATE.dumps(), 0)


GARBAGE = b"{not json: written by hand"


def unreadable_zk(**kw) -> DictZk:
    """Shard 1 whose state znode holds garbage at version 7."""
    zk = shard_zk(**kw)
    zk.nodes[PATH] = (GARBAGE, 7)
    return zk


def test_an_unreadable_state_is_replaced_by_compare_and_set_and_recorded(sitters, capsys):
    """A state znode that cannot be parsed (the sitters hold, nobody can fail over) is replaced
    by the state the sitters show, at the version read (F21)."""
    sitters.update({A.ip: lost(STATE), B.ip: lost(STATE), C.ip: lost(OLDER, remembers=2, primary=B)})
    zk = unreadable_zk()
    assert restore(zk, "--yes") == 0
    assert zk.nodes[PATH] == (STATE.dumps(), 8)
    out = capsys.readouterr().out
    assert f"{PATH} cannot be read (state: not JSON" in out and "generation 3" in out
    [rec] = history(zk)
    assert rec["action"] == STATE_RESTORED and rec["generation"] == 3
    assert "replacing an unreadable state" in rec["detail"] and f"as shown by {A.ip}, {B.ip}" in rec["detail"]


def test_an_unreadable_state_written_meanwhile_is_not_overwritten(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(), C.ip: lost()})
    zk = unreadable_zk()
    zk.races = 1  # someone writes the znode between our read and our write
    assert restore(zk, "--yes") == 1
    assert "was written meanwhile" in capsys.readouterr().err
    assert zk.nodes[PATH][0] == GARBAGE and history(zk) == []


@pytest.mark.parametrize("answers, why", [
    ({A.ip: lost(), B.ip: lost()}, f"cannot tell what {C.ip} remembers"),
    ({A.ip: lost(), B.ip: lost(), C.ip: lost(None, remembers=4)}, "remembers generation 4, newer"),
    ({A.ip: lost(), B.ip: lost(STATE.evolve(async_=(D,))), C.ip: lost()}, "disagree about generation 3"),
])
def test_an_unreadable_state_is_left_alone_when_the_newest_is_uncertain(sitters, capsys, answers, why):
    sitters.update(answers)
    zk = unreadable_zk()
    assert restore(zk, "--yes") == 1
    assert why in capsys.readouterr().err
    assert zk.nodes[PATH] == (GARBAGE, 7) and history(zk) == []


def test_verify_points_at_state_restore_for_an_unreadable_state(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(), C.ip: lost()})
    code, out = _show(unreadable_zk(), capsys, "verify")
    assert code == 2
    assert "critical: the shard state cannot be read: state: not JSON" in out
    assert "'manatee-adm state-restore' writes back the state the sitters remember" in out


def test_the_highest_generation_is_restored_as_shown_and_recorded(sitters, capsys):
    sitters.update({A.ip: lost(STATE), B.ip: lost(STATE), C.ip: lost(OLDER, remembers=2, primary=B)})
    zk = shard_zk()
    assert restore(zk, "--yes") == 0
    assert parse_state(zk.nodes[PATH][0]) == STATE and zk.nodes[PATH][0] == STATE.dumps()
    out = capsys.readouterr().out
    assert "generation 3" in out and f"shown by: {A.ip}, {B.ip}" in out and "within 5 s" in out
    [rec] = history(zk)
    assert rec["action"] == STATE_RESTORED and rec["generation"] == 3 and rec["ip"] == A.ip
    assert f"as shown by {A.ip}, {B.ip}" in rec["detail"]


def test_members_not_in_the_election_are_warned_about(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost()})
    assert restore(shard_zk(peers=(A, B)), "--yes") == 0
    assert f"warning: the async {C.ip} is not in the election" in capsys.readouterr().out


def test_sitters_that_differ_at_the_highest_generation_are_refused(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(STATE.evolve(async_=(D,))), C.ip: lost()})
    zk = shard_zk()
    assert restore(zk, "--yes") == 1
    err = capsys.readouterr().err
    assert "disagree about generation 3" in err and A.ip in err and B.ip in err and PATH not in zk.nodes


def test_a_sitter_remembering_another_primary_at_that_generation_is_a_conflict(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(None, remembers=3, primary=C), C.ip: lost()})
    assert restore(shard_zk(), "--yes") == 1
    assert "disagree about generation 3" in capsys.readouterr().err


def test_an_unreachable_sitter_is_refused_unless_ignored(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost()})  # C does not answer
    zk = shard_zk()
    assert restore(zk, "--yes") == 1
    err = capsys.readouterr().err
    assert f"cannot tell what {C.ip} remembers" in err and "--ignore-unreachable" in err and PATH not in zk.nodes
    assert restore(zk, "--yes", "--ignore-unreachable") == 0
    assert parse_state(zk.nodes[PATH][0]) == STATE


@pytest.mark.parametrize("body", [{"localRole": "standby", "state": None},  # an older sitter: says nothing
                                  {"remembers": {"generation": "three"}, "state": None},
                                  {"remembers": None, "state": {"generation": 4}}])
def test_an_answer_that_cannot_be_read_is_unknown(sitters, body, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(), C.ip: body})
    assert restore(shard_zk(), "--yes") == 1
    assert f"cannot tell what {C.ip} remembers" in capsys.readouterr().err


def test_a_sitter_remembering_a_newer_generation_is_refused_without_override(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(None, remembers=4, primary=B), C.ip: lost()})
    zk = shard_zk()
    assert restore(zk, "--yes", "--ignore-unreachable") == 1
    err = capsys.readouterr().err
    assert f"{B.ip} remembers generation 4, newer than any state a sitter shows (3)" in err
    assert "Restart nothing" in err and PATH not in zk.nodes


def test_an_unreachable_sitters_election_node_remembering_newer_is_refused(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost()})
    zk = shard_zk(remembers={A.ip: 3, B.ip: 3, C.ip: 5})
    assert restore(zk, "--yes", "--ignore-unreachable") == 1
    assert f"{C.ip} remembers generation 5" in capsys.readouterr().err


def test_no_sitter_showing_a_state_is_refused(sitters, capsys):
    sitters.update({A.ip: lost(None, remembers=3), B.ip: lost(None, remembers=None)})
    assert restore(shard_zk(peers=(A, B)), "--yes") == 1
    err = capsys.readouterr().err
    assert "no live sitter shows a state" in err and f"{A.ip} generation 3" in err


def test_a_state_created_meanwhile_is_not_overwritten(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(), C.ip: lost()})
    zk = shard_zk()
    theirs = STATE.evolve(generation=4).dumps()

    def someone_first(path):
        if path == PATH:
            zk.nodes[PATH] = (theirs, 0)
    zk.before_create = someone_first
    assert restore(zk, "--yes") == 1
    assert "was created meanwhile" in capsys.readouterr().err
    assert zk.nodes[PATH][0] == theirs and history(zk) == []


def test_dry_run_writes_nothing(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(), C.ip: lost()})
    zk = shard_zk()
    before = dict(zk.nodes)
    assert restore(zk, "--dry-run") == 0
    assert zk.nodes == before and "dry run: nothing written" in capsys.readouterr().out


def test_without_yes_it_asks_on_a_terminal_and_refuses_otherwise(sitters, monkeypatch, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(), C.ip: lost()})
    zk = shard_zk()
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert restore(zk) == 1 and "pass --yes" in capsys.readouterr().err and PATH not in zk.nodes
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert restore(zk) == 1 and "not confirmed" in capsys.readouterr().err and PATH not in zk.nodes
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    assert restore(zk) == 0 and parse_state(zk.nodes[PATH][0]) == STATE


def test_a_failed_history_write_is_only_a_warning(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(), C.ip: lost()})
    zk = shard_zk()

    def no_history(path):
        if "/history/" in path:
            raise CliError("ZooKeeper at zk1: creating the history node: NoAuthError")
    zk.before_create = no_history
    assert restore(zk, "--yes") == 0
    assert parse_state(zk.nodes[PATH][0]) == STATE
    assert "warning: the history record could not be written" in capsys.readouterr().err


def test_the_cli_creates_with_the_shards_acl_and_reports_an_existing_node():
    from kazoo.exceptions import NodeExistsError

    class Result:
        def __init__(self, value=None, exc=None):
            self.value, self.exc = value, exc

        def get(self, timeout):
            if self.exc:
                raise self.exc
            return self.value

    calls = []

    class Kz:
        def create_async(self, path, data, **kw):
            calls.append((path, kw))
            return Result(exc=NodeExistsError()) if path == "/exists" else Result(path)

    zk = ZkReader("zk1:2181", 0.0)
    zk._kz, zk._acl = Kz(), shard_acl(ZKAuth("manatee:pw"))
    assert zk.create(PATH, b"{}") == PATH
    assert calls[0][1]["acl"] == zk._acl and calls[0][1]["sequence"] is False
    with pytest.raises(NodeExists):
        zk.create("/exists", b"{}")


# --------------------------------------------------------------------------- show / verify

def _show(zk, capsys, cmd="show", *flags):
    args = adm.build_parser().parse_args([cmd, "-s", "1", "-z", "zk1", *flags])
    args.shard, args.timeout = "1", 2.0
    code = adm.COMMANDS[cmd](args, zk)
    return code, capsys.readouterr().out


def test_show_and_verify_name_a_lost_state_the_sitters_remember(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(), C.ip: None})
    zk = shard_zk()
    code, out = _show(zk, capsys)
    assert code == 0
    want = (f"the shard state znode {PATH} is missing: no failover can happen and no new member can join. "
            f"The sitters remember generation 3 (primary {A.ip}): restore it with 'manatee-adm state-restore'")
    assert want in out and f"unknown what {C.ip} remembers" in out
    assert f"{B.ip}: remembers generation 3 (primary {A.ip})" in out
    assert f"{C.ip}: what it remembers is unknown: its sitter does not answer" in out
    code, out = _show(zk, capsys, "verify")
    assert code == adm.VERIFY_EXIT[CRITICAL] == 2 and f"critical: {want}" in out
    code, out = _show(zk, capsys, "show", "--json")
    doc = json.loads(out)
    assert doc["status"] == CRITICAL and doc["nodes"][0]["remembers"] == {"generation": 3, "primary": A.id}


def test_show_draws_the_chain_the_sitters_hold_while_the_znode_is_missing(sitters, capsys):
    sitters.update({A.ip: lost(), B.ip: lost(), C.ip: lost()})
    code, out = _show(shard_zk(), capsys)
    assert "generation:  3 (as the sitters remember it: the state znode is missing)" in out
    rows = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.split()[:1] in (["primary"], ["sync"], ["async"])}
    assert rows == {"primary": A.ip, "sync": B.ip, "async": C.ip}, out
    assert sorted(sitters["_probed"]) == sorted(p.pg_url for p in (A, B, C))  # each PostgreSQL asked once
    other = ClusterState(generation=3, primary=A, sync=C, async_=(B,), init_wal=0x5000)
    sitters.update({B.ip: lost(other)})  # they disagree about generation 3: no chain drawn
    sitters["_probed"].clear()
    code, out = _show(shard_zk(), capsys)
    assert "generation:  3 (as the sitters" not in out and sitters["_probed"] == []


def test_a_new_shard_nobody_remembers_is_not_a_lost_state(sitters, capsys):
    sitters.update({A.ip: lost(None, remembers=None), B.ip: lost(None, remembers=None), C.ip: None})
    code, out = _show(shard_zk(), capsys)
    assert code == 0 and "not been set up" in out and "missing" not in out and "remembers" not in out


def test_assess_without_state_or_sitters_keeps_todays_line():
    from manatee.cli.adm_view import ShardView

    v = ShardView("1", None)
    assert [m for _s, m in assess(v)] == ["no shard state in ZooKeeper yet: the shard has not been set up"]
    assert verdict(assess(v)) == CRITICAL and "not been set up" in render_show(v)
    assert show_json(v)["status"] == CRITICAL
