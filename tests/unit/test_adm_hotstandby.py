"""manatee-adm show/verify name a standby whose hot-standby settings are below the primary's
(its replay would pause on "insufficient parameter settings")."""

from __future__ import annotations

import pytest

from manatee.cli.adm_hotstandby import HOT_STANDBY_SETTINGS, HOT_STANDBY_SQL, below_primary
from manatee.cli.adm_view import show_json
from tests.observations import healthy

SAME = {"max_connections": 100, "max_prepared_transactions": 0, "max_locks_per_transaction": 64,
        "max_wal_senders": 10, "max_worker_processes": 8}


def test_the_query_asks_for_exactly_the_five_settings():
    assert set(HOT_STANDBY_SETTINGS) == set(SAME)
    for name in HOT_STANDBY_SETTINGS:
        assert f"'{name}'" in HOT_STANDBY_SQL


def test_below_primary_names_each_lower_setting_with_both_values():
    assert below_primary(SAME, SAME, "127.0.0.11") is None
    assert below_primary({**SAME, "max_connections": 200}, SAME, "127.0.0.11") is None  # higher is fine
    line = below_primary({**SAME, "max_connections": 50, "max_worker_processes": 4}, SAME, "127.0.0.11")
    assert line.startswith("max_connections 50 (the primary 127.0.0.11: 100), max_worker_processes 4 "
                           "(the primary 127.0.0.11: 8): a standby needs at least the primary's value")
    assert "insufficient parameter settings" in line and "restart --pending" in line


@pytest.mark.parametrize("standby, primary", [(None, SAME), (SAME, None), ({}, SAME),
                                              ({"max_connections": "50"}, SAME), ("x", SAME)])
def test_not_known_says_nothing(standby, primary):
    assert below_primary(standby, primary, "127.0.0.11") is None


@pytest.mark.parametrize("i, severity", [(1, "critical"), (2, "warning")])
def test_verify_names_a_standby_below_the_primary(i, severity):
    v = healthy()
    for n in v.nodes:
        n.pg = {**(n.pg or {}), "hotStandby": dict(SAME)}
    n, primary = v.nodes[i], v.nodes[0]
    assert primary.role == "primary"
    assert not any("a standby needs" in p["message"] for p in show_json(v)["problems"])
    n.pg["hotStandby"]["max_locks_per_transaction"] = 32
    found = {p["message"]: p["severity"] for p in show_json(v)["problems"]}
    line = next(m for m in found if "a standby needs" in m)
    assert line.startswith(f"{n.role} {n.ip}: max_locks_per_transaction 32 (the primary {primary.ip}: 64)")
    assert found[line] == severity
    # the primary's own values are never compared with themselves, and a primary not probed says nothing
    primary.pg = None
    assert not any("a standby needs" in p["message"] for p in show_json(v)["problems"])
