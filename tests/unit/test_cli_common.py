"""Shared CLI plumbing: ZooKeeper address parsing, shard names, registrar paths, and the
one-line-error promise of run_cli."""

import json
from pathlib import Path

import pytest

from manatee.cli.common import (
    ArgParser, CliError, UsageError, add_common_args, check_shard_name, parse_zk_hosts, run_cli,
)
from manatee.shard.layout import registrar_path
from manatee.sitter.config import SitterConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spec, want", [
    ("zk1", "zk1:2181"),
    ("10.0.0.5", "10.0.0.5:2181"),
    ("10.0.0.5:2182", "10.0.0.5:2182"),
    ("a,b:2999, c", "a:2181,b:2999,c:2181"),
    ("127.0.0.1:40000/t-1234abcd", "127.0.0.1:40000/t-1234abcd"),
    ("h1,h2/app/zk", "h1:2181,h2:2181/app/zk"),
    ("[::1]:2181", "[::1]:2181"),
    ("[::1]", "[::1]:2181"),
    ("zk1/", "zk1:2181"),
])
def test_parse_zk_hosts_accepts_hosts_ports_lists_and_chroot(spec, want):
    assert parse_zk_hosts(spec) == want


@pytest.mark.parametrize("spec, says", [
    ("", "empty"),
    ("zk1:", "missing port"),
    ("zk1:0", "bad port"),
    ("zk1:65536", "bad port"),
    ("zk1:abc", "bad port"),
    ("zk 1", "bad host"),
    ("a,,b", "bad host"),
    (":2181", "bad host"),
    ("zk1/a//b", "bad chroot"),
    ("[::1", "bad host"),
])
def test_parse_zk_hosts_rejects_with_a_usage_error_naming_the_part(spec, says):
    with pytest.raises(UsageError, match=says):
        parse_zk_hosts(spec)


def test_shard_names():
    assert check_shard_name("1") == "1"
    assert check_shard_name("1.moray.us-sw-1.joyent.com") == "1.moray.us-sw-1.joyent.com"
    for bad in ("", "a/b", "..", "a b", "/manatee/1"):
        with pytest.raises(UsageError, match="bad shard name"):
            check_shard_name(bad)


@pytest.mark.parametrize("shard", ["1", "1.moray.us-sw-1.joyent.com", "2.pg"])
def test_registrar_path_is_the_one_the_sitter_writes(shard):
    cfg = json.loads((ROOT / "etc" / "sitter.json").read_text())
    cfg["shardPath"] = f"/manatee/{shard}"
    cfg["registrarPath"] = None
    assert registrar_path(shard) == SitterConfig.model_validate(cfg).registrar_path


def test_registrar_path_of_the_guides_example():
    assert registrar_path("1.moray.us-sw-1.joyent.com") == "/com/joyent/us-sw-1/moray/1/pg"
    assert registrar_path("1") == "/1/pg"


def _parser():
    p = ArgParser(prog="t")
    add_common_args(p)
    p.add_argument("zk")
    return p


@pytest.mark.parametrize("exc, code, line", [
    (CliError("shard '9' not found"), 1, "t: shard '9' not found"),
    (UsageError("bad port"), 2, "t: bad port"),
    (RuntimeError("boom"), 1, "t: internal error: RuntimeError: boom"),
])
def test_run_cli_turns_failures_into_one_line_and_a_status(capsys, exc, code, line):
    def body(args, deadline):
        raise exc

    assert run_cli("t", _parser(), body, ["zk1"]) == code
    err = capsys.readouterr().err
    assert err.splitlines() == [line]


@pytest.mark.parametrize("argv, says", [
    ([], "required: zk"),
    (["zk1", "extra"], "unrecognized arguments: extra"),
    (["--timeout", "x", "zk1"], "invalid float value"),
    (["--timeout", "0", "zk1"], "--timeout 0"),
    (["--bogus", "zk1"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, says):
    assert run_cli("t", _parser(), lambda a, d: 0, argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("t: ") and says in err[0], err


def test_run_cli_passes_a_deadline_of_the_timeout(capsys):
    import time

    seen = {}

    def body(args, deadline):
        seen["left"] = deadline - time.monotonic()
        return 0

    assert run_cli("t", _parser(), body, ["-t", "4", "zk1"]) == 0
    assert 3.5 < seen["left"] <= 4.0
