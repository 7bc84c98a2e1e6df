"""The fault soak's operator rounds without a shard: the manatee-adm command each runs (with
the sandbox's credentials) and how a rebuild command's end is judged."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from manatee_testbed import nemesis_adm
from manatee_testbed.nemesis_plan import FAULT_KINDS, TARGETED, schedule


@pytest.mark.parametrize("rc, said, outcome, problem", [
    (0, "rebuild of 127.0.0.13 done in 1.0s: it streams from its upstream", "done", False),
    (1, "manatee-adm: the rebuild of 127.0.0.13 was withdrawn: I was named the sync before ...", "withdrawn", False),
    (1, "manatee-adm: 127.0.0.13 refused the rebuild: 127.0.0.13 is the sync: ...", "refused", False),
    (1, "manatee-adm: 127.0.0.13 would restore from 127.0.0.12 (sync), but it has no running, healthy "
        "PostgreSQL ... Nothing requested", "refused", False),
    (1, "manatee-adm: the rebuild of 127.0.0.13 did not finish within 120s (last: requested)", "failed", True),
    (None, "[  60.0s] requested; sitter: rebuild", "still waiting at the bound", True),
    (2, "manatee-adm: something else", "failed", False),
])
def test_a_rebuild_ends_done_withdrawn_or_refused_never_waiting(rc, said, outcome, problem):
    assert nemesis_adm.rebuild_outcome(rc, said) == (outcome, problem)


def test_the_command_is_manatee_adm_with_the_sandboxs_shard_zookeeper_and_secret(tmp_path):
    st = SimpleNamespace(shard="1", zk_connect="127.0.0.10:2181", secret_file=str(tmp_path / "shard.secret"),
                         zk_auth="", tls=False)
    nem = SimpleNamespace(sb=SimpleNamespace(st=st), view=SimpleNamespace(passfile=tmp_path / "client.pgpass"))
    argv, env = nemesis_adm.adm_command(nem, "rebuild", "--node", "127.0.0.13")
    assert argv[1:] == ["-m", "manatee.cli.adm", "rebuild", "1", "127.0.0.10:2181", "--node", "127.0.0.13"]
    assert env["MANATEE_SECRET_FILE"] == st.secret_file and env["PGPASSFILE"] == str(tmp_path / "client.pgpass")


def test_the_operator_rounds_are_soak_kinds_aimed_at_no_single_role():
    assert set(nemesis_adm.ADM_KINDS) <= set(FAULT_KINDS) and not set(nemesis_adm.ADM_KINDS) & set(TARGETED)
    plan = schedule(len(FAULT_KINDS), FAULT_KINDS, random.Random(7))
    assert {p.kind for p in plan} == set(FAULT_KINDS)
    assert all(p.role is None for p in plan if p.kind in nemesis_adm.ADM_KINDS)


@pytest.mark.parametrize("text, last", [("a\nb\n\n", "b"), ("", "(no output)"), ("  x  ", "x")])
def test_last_line(text, last):
    assert nemesis_adm.last_line(text) == last
