"""One convention for every CLI: -z/-s/-c, the guide's positional forms, $MANATEE_ZK /
$MANATEE_SHARD, --version, --json, the node named --node everywhere, and verify's
severities (exit 0 ok / 1 warning / 2 critical)."""

from __future__ import annotations

import json

import pytest

from manatee import __version__
from manatee.cli import adm, clear, history, stat
from manatee.cli.adm_view import CRITICAL, OK, WARNING, assess, show_json, verdict
from manatee.cli.common import UsageError, pg_failure, resolve_target
from tests.observations import healthy


def _args(tool, argv):
    return tool.build_parser().parse_args(argv)


@pytest.mark.parametrize("argv, env, want", [
    (["1", "zk1"], {}, ("zk1:2181", "1", [])),                                  # the guide's form
    (["-z", "zk1", "-s", "1"], {}, ("zk1:2181", "1", [])),
    (["--zk", "zk1:2182", "--shard", "2"], {}, ("zk1:2182", "2", [])),
    (["-z", "zk1", "7"], {}, ("zk1:2181", "7", [])),                           # option + positional
    ([], {"MANATEE_ZK": "zk9", "MANATEE_SHARD": "3"}, ("zk9:2181", "3", [])),   # environment
    (["-s", "4"], {"MANATEE_ZK": "zk9", "MANATEE_SHARD": "3"}, ("zk9:2181", "4", [])),  # option wins
    (["5", "zk5"], {"MANATEE_ZK": "zk9", "MANATEE_SHARD": "3"}, ("zk5:2181", "5", [])),  # positional wins
    (["6"], {"MANATEE_ZK": "zk9"}, ("zk9:2181", "6", [])),                      # SHARD, ZK from env
])
def test_history_and_clear_take_the_shard_and_zk_every_way(argv, env, want):
    for tool in (history, clear):
        t = resolve_target(_args(tool, argv), env=env)
        assert (t.zk, t.shard, t.extra) == want


def test_a_sitter_config_gives_zk_and_shard_and_options_override_it(tmp_path):
    cfg = tmp_path / "sitter.json"
    cfg.write_text(json.dumps({"zkCfg": {"connStr": "10.0.0.1:2181,10.0.0.2:2181"},
                               "shardPath": "/manatee/1.moray"}))
    t = resolve_target(_args(history, ["-c", str(cfg)]), env={"MANATEE_ZK": "zk9"})
    assert (t.zk, t.shard) == ("10.0.0.1:2181,10.0.0.2:2181", "1.moray")
    t = resolve_target(_args(history, ["-c", str(cfg), "-s", "2"]), env={})
    assert (t.zk, t.shard) == ("10.0.0.1:2181,10.0.0.2:2181", "2")
    t = resolve_target(_args(history, []), env={"MANATEE_CONFIG": str(cfg)})
    assert t.shard == "1.moray"
    with pytest.raises(UsageError, match="--config .*nope.json"):
        resolve_target(_args(history, ["-c", str(tmp_path / "nope.json")]), env={})
    (tmp_path / "bad.json").write_text(json.dumps({"shardPath": "/elsewhere/1"}))
    with pytest.raises(UsageError, match="shardPath"):
        resolve_target(_args(history, ["-c", str(tmp_path / "bad.json")]), env={})


@pytest.mark.parametrize("argv, env, says", [
    ([], {}, "required: SHARD, ZK"),
    (["zk1"], {}, "required: ZK"),
    (["1", "zk1", "more"], {}, "unrecognized arguments: more"),
    (["-z", "zk1", "-s", "1", "x"], {}, "unrecognized arguments: x"),
    (["-s", "a/b", "-z", "zk1"], {}, "bad shard name"),
    (["-z", "zk:x", "-s", "1"], {}, "bad port"),
])
def test_bad_combinations_are_usage_errors(argv, env, says):
    with pytest.raises(UsageError, match=says):
        resolve_target(_args(history, argv), env=env)


def test_stat_takes_zk_positionally_and_the_shard_is_optional():
    t = resolve_target(_args(stat, ["zk1"]), order=("zk",), need_shard=False, env={})
    assert (t.zk, t.shard) == ("zk1:2181", None)
    t = resolve_target(_args(stat, ["-s", "1", "zk1"]), order=("zk",), need_shard=False, env={})
    assert (t.zk, t.shard) == ("zk1:2181", "1")
    t = resolve_target(_args(stat, ["-p"]), order=("zk",), need_shard=False, env={"MANATEE_ZK": "zk2"})
    assert t.zk == "zk2:2181"


@pytest.mark.parametrize("argv, want", [
    (["pg-status", "1", "zk1"], ("1", None)),
    (["pg-status", "1", "zk1", "5"], ("1", 5.0)),
    (["pg-status", "-z", "zk1", "-s", "1", "2"], ("1", 2.0)),
    (["pg-status", "1", "-t", "3", "zk1"], ("1", None)),      # options between positional words
])
def test_adm_pg_status_period_after_either_form(argv, want):
    args = adm.build_parser().parse_args(argv)
    assert adm._resolve(args) == "zk1:2181"
    assert (args.shard, args.period) == want


def test_adm_names_a_node_with_node_and_keeps_the_old_spellings():
    for argv in (["switchover", "1", "zk", "--node", "10.0.0.2"], ["switchover", "1", "zk", "--to", "10.0.0.2"]):
        args = adm.build_parser().parse_args(argv)
        adm._resolve(args)
        assert args.node == "10.0.0.2"
    for argv in (["set-primary", "1", "zk", "10.0.0.3"], ["set-primary", "-z", "zk", "-s", "1", "--node", "10.0.0.3"],
                 ["set-primary", "1", "zk", "--force", "10.0.0.3"]):
        args = adm.build_parser().parse_args(argv)
        adm._resolve(args)
        assert (args.shard, args.node) == ("1", "10.0.0.3"), argv
    args = adm.build_parser().parse_args(["set-primary", "1", "zk"])
    with pytest.raises(UsageError, match="--node"):
        adm._resolve(args)
    assert "--to" not in adm.build_parser()._subparsers._group_actions[0].choices["switchover"].format_help()


@pytest.mark.parametrize("tool", [stat, history, clear, adm])
def test_every_cli_prints_the_package_version(tool, capsys):
    with pytest.raises(SystemExit) as e:
        tool.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f"(manatee) {__version__}")


def test_verify_severities_and_exit_codes():
    v = healthy()
    assert assess(v) == [] and verdict(assess(v)) == OK and adm.VERIFY_EXIT[OK] == 0
    v.state["freeze"] = {"reason": "upgrade", "by": "op", "time": "t"}
    assert verdict(assess(v)) == WARNING and adm.VERIFY_EXIT[WARNING] == 1
    v.nodes[2].live = False  # the async is gone: still only a warning (writes go on)
    assert {s for s, _ in assess(v)} == {WARNING}
    v.nodes[1].pg = {"up": False, "error": "connection refused"}  # the sync's PG: an outage
    assert verdict(assess(v)) == CRITICAL and adm.VERIFY_EXIT[CRITICAL] == 2


def test_auth_failure_is_not_down():
    class E(Exception):
        pgcode = None

    f = pg_failure(E('connection to server at "127.0.0.1", port 5432 failed: fe_sendauth: no password supplied'))
    assert f["auth"] == "failed"
    assert "auth" not in pg_failure(E("connection refused\nIs the server running?"))
    v = healthy()
    v.nodes[1].pg = {"up": False, **f}
    from manatee.cli.adm_view import render_show

    assert "auth failed" in render_show(v) and " down " not in render_show(v)
    assert any("auth failed" in m for _, m in assess(v))


def test_show_json_is_the_table_as_data():
    doc = json.loads(json.dumps(show_json(healthy())))
    assert doc["status"] == "ok" and doc["problems"] == []
    assert [n["role"] for n in doc["nodes"]] == ["primary", "sync", "async"]
    assert doc["nodes"][1]["repl"] == "streaming" and doc["nodes"][1]["lagBytes"] == 0


def test_a_sandbox_dir_gives_zk_shard_and_the_pgpass(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from manatee_testbed.cli.sandbox import tool_commands, write_tool_files

    nodes = [SimpleNamespace(ip=f"127.0.0.{i}", pg_port=5432) for i in (2, 3)]
    sb = SimpleNamespace(dir=str(tmp_path), st=SimpleNamespace(nodes=nodes, repl_password="pw-1", shard="1",
                                                              zk_connect="127.0.0.1:2181"))
    pgpass, env = write_tool_files(sb)
    assert pgpass.read_text().splitlines()[:2] == ["127.0.0.2:5432:*:postgres:pw-1", "localhost:5432:*:postgres:pw-1"]
    assert oct(pgpass.stat().st_mode & 0o777) == "0o600" and oct(env.stat().st_mode & 0o777) == "0o600"
    monkeypatch.delenv("PGPASSFILE", raising=False)
    t = resolve_target(_args(history, []), env={"MANATEE_SANDBOX_DIR": str(tmp_path)})
    assert (t.zk, t.shard) == ("127.0.0.1:2181", "1")
    import os

    assert os.environ["PGPASSFILE"] == str(pgpass)
    cmds = dict(tool_commands("127.0.0.1:2181", "1", pgpass, env))
    assert cmds["health (exit 0/1/2)"].startswith(f"PGPASSFILE={pgpass} ")
    assert cmds["health (exit 0/1/2)"].endswith("manatee-adm verify -z 127.0.0.1:2181 -s 1")


def test_show_has_each_datasets_free_space():
    from manatee.cli.adm_view import render_show

    v = healthy()
    v.nodes[0].sitter = {"localRole": "primary", "dataset": {"available": 5 << 30, "used": 1, "quota": 0}}
    v.nodes[1].sitter = {"localRole": "standby", "dataset": {"available": 1 << 30, "used": 1, "quota": 8 << 30}}
    out = render_show(v)
    assert "DISK FREE" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.split() and ln.split()[0] in ("primary", "sync", "async")}
    assert lines["primary"].rstrip().endswith("5.0 GB")
    assert lines["sync"].rstrip().endswith("1.0 GB (quota 8.0 GB)")
    assert lines["async"].rstrip().endswith("-")
    assert show_json(v)["nodes"][0]["dataset"]["available"] == 5 << 30


def test_pg_status_json_is_one_document(monkeypatch, capsys):
    import argparse

    monkeypatch.setattr(adm, "gather", lambda zk, shard, timeout, **kw: healthy())
    args = argparse.Namespace(period=None, json=True, timeout=2.0, shard="1")
    assert adm.cmd_pg_status(args, type("Z", (), {"deadline": 0})()) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["shard"] == "1" and [n["role"] for n in doc["nodes"]] == ["primary", "sync", "async"]
    assert doc["nodes"][1]["repl"] == "streaming"
