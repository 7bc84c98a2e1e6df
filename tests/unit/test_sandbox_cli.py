"""manatee-sandbox's command line: usage errors exit 2, operational errors exit 1 with one
clear line on stderr, and no command touches anything when there is no sandbox."""

from __future__ import annotations

import pytest

from manatee_testbed.cli import sandbox as cli
from manatee_testbed import sandbox as sbx
from manatee_testbed import sandbox_state
from tests.factories import make_state


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [[], ["bogus"], ["kill"], ["up", "--nodes", "x"], ["status", "--jsn"],
                                  ["up", "--auth", "none"], ["status", "--", "-c", "select 1"]])
def test_usage_errors_exit_2(capsys, tmp_path, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(["--dir", str(tmp_path), *argv])
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["status"], ["status", "--json"], ["kill", "a"], ["stop", "b"], ["start", "a"],
                                 ["partition", "a"], ["heal", "a"], ["hang", "a"], ["resume", "a"], ["psql"]])
def test_no_sandbox_is_one_clear_line(capsys, tmp_path, cmd):
    code, out, err = run(capsys, *cmd, "--dir", str(tmp_path / "none"))
    assert code == 1
    assert err.strip().splitlines() == [f"manatee-sandbox: no sandbox in {tmp_path / 'none'} "
                                        "(no sandbox.json; start one with `up`)"]
    assert not (tmp_path / "none").exists()


def test_down_without_sandbox_is_fine(capsys, tmp_path):
    code, out, _ = run(capsys, "down", "--dir", str(tmp_path))
    assert code == 0 and "nothing to do" in out


def test_dir_before_or_after_the_command(capsys, tmp_path):
    code, _, err = run(capsys, "--dir", str(tmp_path / "x"), "status")
    assert code == 1 and str(tmp_path / "x") in err
    code, _, err = run(capsys, "status", "--dir", str(tmp_path / "y"))
    assert code == 1 and str(tmp_path / "y") in err


def test_unknown_node(capsys, tmp_path):
    sandbox_state.save_state(make_state(tmp_path))
    for cmd in ("kill", "stop", "start", "partition", "heal", "hang", "resume"):
        code, _, err = run(capsys, cmd, "zz", "--dir", str(tmp_path))
        assert code == 1
        assert err.strip() == "manatee-sandbox: no node named 'zz' in this sandbox (nodes: a, b, c)"


def test_up_refuses_bad_values_before_starting_anything(capsys, tmp_path):
    for argv, msg in [(["--nodes", "0"], "--nodes"), (["--session-timeout", "500"], "--session-timeout"),
                      (["--first-ip", "10.1.2.3"], "--first-ip"), (["--shard", "a/b"], "--shard")]:
        code, _, err = run(capsys, "up", "--dir", str(tmp_path / "u"), *argv)
        assert code == 1 and msg in err, err
        assert not (tmp_path / "u").exists()


def test_up_refuses_an_existing_sandbox(capsys, tmp_path, monkeypatch):
    sandbox_state.save_state(make_state(tmp_path))
    monkeypatch.setattr(sbx, "daemon_available", lambda d: True)
    monkeypatch.setattr(sbx.os, "geteuid", lambda: 0)
    code, _, err = run(capsys, "up", "--dir", str(tmp_path))
    assert code == 1 and "already exists" in err


def test_psql_argv_targets_the_named_node(tmp_path):
    sandbox_state.save_state(make_state(tmp_path))
    sb = sbx.Sandbox(tmp_path)
    argv = sb.psql_argv("b", ["-c", "select 1"])
    assert argv[1:] == ["-h", "/run/manatee/127.0.0.12-5432", "-p", "5432", "-U", "postgres", "-d", "postgres",
                        "-c", "select 1"]
