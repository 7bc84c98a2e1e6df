"""postgresMgrCfg.parameters: validation, rendering into manatee.conf, and what a change
takes (a reload, never a restart: PostgreSQL marks restart-only ones pending_restart)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manatee.core.config import ConfigError, validate
from manatee.core.pgconfig import RoleConfig, render_manatee_conf, write_role_config
from manatee.core.pgparams import (
    OWNED_SETTINGS,
    PARAMETERS_MARKER,
    parameter_names,
    parameter_problem,
    parse_settings,
)
from manatee.sitter.config import SitterConfig

BASE = {"ip": "127.0.0.1", "zoneId": "a", "insecure": True, "zkCfg": {"connStr": "127.0.0.1:2181"},
        "postgresMgrCfg": {"replicationAuth": {"password": "x"}, "zfsClientCfg": {"dataset": "p/a"}}}


def cfg(params) -> SitterConfig:
    d = json.loads(json.dumps(BASE))
    d["postgresMgrCfg"]["parameters"] = params
    return validate(d, SitterConfig, "sitter.json")


def rc(**kw) -> RoleConfig:
    base = dict(role="primary", listen_address="10.0.0.1", port=5432, socket_dir="/run/m",
                application_name="tcp://postgres@10.0.0.1:5432/postgres", members=("10.0.0.2",))
    base.update(kw)
    return RoleConfig(**base)


def test_parameters_are_validated_and_normalised_to_text():
    c = cfg({"work_mem": "64MB", "log_connections": True, "max_wal_senders": 20,
             "pg_stat_statements.max": 1000, "checkpoint_completion_target": 0.9})
    assert c.postgresMgrCfg.parameters == {"work_mem": "64MB", "log_connections": "on", "max_wal_senders": "20",
                                           "pg_stat_statements.max": "1000", "checkpoint_completion_target": "0.9"}
    assert cfg({"log_connections": False}).postgresMgrCfg.parameters == {"log_connections": "off"}
    assert BASE["postgresMgrCfg"].get("parameters") is None and validate(
        json.loads(json.dumps(BASE)), SitterConfig).postgresMgrCfg.parameters == {}


@pytest.mark.parametrize("params,words", [
    ({"port": 5433}, ["key 'postgresMgrCfg.parameters'", "port is set by manatee", "postgresPort"]),
    ({"synchronous_standby_names": "*"}, ["synchronous_standby_names is set by manatee"]),
    ({"primary_conninfo": "host=x"}, ["primary_conninfo is set by manatee"]),
    ({"default_transaction_read_only": "off"}, ["default_transaction_read_only"]),
    ({"hot_standby": "off"}, ["hot_standby is set by manatee"]),
    ({"listen_addresses": "*"}, ["listen_addresses"]),
    ({"synchronous_commit": "off"}, ["synchronousCommit"]),
    ({"Work_Mem": "1MB"}, ["'Work_Mem' is not a PostgreSQL parameter name"]),
    ({"work mem": "1MB"}, ["'work mem' is not a PostgreSQL parameter name"]),
    ({"a.b.c": "1"}, ["'a.b.c' is not"]),
    ({"work_mem": ["1MB"]}, ["work_mem: the value must be a string, a number or a boolean (got list)"]),
    ({"work_mem": None}, ["got NoneType"]),
    ({"work_mem": {"a": 1}}, ["got dict"]),
    ({"work_mem": "1MB'\ninclude '/etc/x"}, ["work_mem: the value must be printable text on one line"]),
])
def test_bad_parameters_are_refused_naming_the_key(params, words):
    with pytest.raises(ConfigError) as e:
        cfg(params)
    for w in words:
        assert w in str(e.value)


def test_every_owned_setting_is_refused_and_rendered_by_manatee_or_never_set():
    for name in OWNED_SETTINGS:
        assert parameter_problem(name, "x") is not None
    assert parameter_problem("work_mem", "1MB") is None
    with pytest.raises(ValueError, match="RoleConfig.parameters: port is set by manatee"):
        rc(parameters={"port": "1"})


def test_parameters_render_after_manatee_settings_and_override_its_defaults():
    text = render_manatee_conf(rc(parameters={"wal_keep_size": "64MB", "work_mem": "8MB",
                                              "search_path": "a, b", "log_line_prefix": "%m [%p] it's"}))
    lines = text.splitlines()
    i = lines.index(PARAMETERS_MARKER)
    assert lines[i + 1:] == ["wal_keep_size = '64MB'", "work_mem = '8MB'", "search_path = 'a, b'",
                             "log_line_prefix = '%m [%p] it''s'"]
    assert sum(ln.startswith("wal_keep_size") for ln in lines) == 1  # manatee's default is replaced
    s = parse_settings(text)
    assert s["wal_keep_size"] == "'64MB'" and s["synchronous_commit"] == "on"
    assert parameter_names(text) == ["wal_keep_size", "work_mem", "search_path", "log_line_prefix"]
    assert PARAMETERS_MARKER not in render_manatee_conf(rc()) and parameter_names(render_manatee_conf(rc())) == []
    # without the override, manatee's default stays
    assert parse_settings(render_manatee_conf(rc()))["wal_keep_size"] == "'1GB'"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "postgresql.conf").write_text("shared_buffers = 64MB\n")
    write_role_config(d, rc(), user=None)
    return d


def test_a_restart_only_parameter_change_is_only_a_reload(data_dir: Path):
    ch = write_role_config(data_dir, rc(parameters={"shared_buffers": "256MB", "max_connections": "200"}),
                           user=None)
    assert ch.reload_needed and not ch.restart_needed  # PostgreSQL reports them pending_restart
    assert set(ch.changed) == {"shared_buffers", "max_connections"}
    # removing one again (back to manatee's / PostgreSQL's default): still a reload
    ch = write_role_config(data_dir, rc(parameters={"shared_buffers": "256MB"}), user=None)
    assert ch.reload_needed and not ch.restart_needed and ch.changed == ("max_connections",)
    # overriding a restart-only default manatee sets (max_wal_senders) and dropping it: reloads
    ch = write_role_config(data_dir, rc(parameters={"max_wal_senders": "20"}), user=None)
    assert ch.reload_needed and not ch.restart_needed and set(ch.changed) == {"max_wal_senders", "shared_buffers"}
    ch = write_role_config(data_dir, rc(), user=None)
    assert ch.reload_needed and not ch.restart_needed and ch.changed == ("max_wal_senders",)
    assert write_role_config(data_dir, rc(), user=None).any is False


def test_manatee_owned_restart_settings_still_restart(data_dir: Path):
    ch = write_role_config(data_dir, rc(port=5433, parameters={"work_mem": "8MB"}), user=None)
    assert ch.restart_needed and {"port", "work_mem"} <= set(ch.changed)
