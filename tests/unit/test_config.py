import json

import pytest
from pydantic import Field

from manatee.core.config import ConfigError, ConfigModel, load_config


class Inner(ConfigModel):
    port: int = Field(10002, ge=1, le=65535)


class Sample(ConfigModel):
    dataset: str
    pollInterval: int = Field(1000, ge=1000)
    inner: Inner = Inner()


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_valid_json_fills_defaults(tmp_path):
    c = load_config(write(tmp_path, "a.json", '{"dataset": "p/d"}'), Sample)
    assert c.dataset == "p/d" and c.pollInterval == 1000 and c.inner.port == 10002


def test_yaml_accepted(tmp_path):
    c = load_config(write(tmp_path, "a.yaml", "dataset: p/d\ninner:\n  port: 7\n"), Sample)
    assert c.inner.port == 7


@pytest.mark.parametrize(
    "body, key, words",
    [
        ({}, "dataset", "required"),
        ({"dataset": "x", "pollIntervall": 5}, "pollIntervall", "not a known key"),
        ({"dataset": "x", "pollInterval": "abc"}, "pollInterval", "integer"),
        ({"dataset": "x", "pollInterval": 5}, "pollInterval", "greater than or equal to 1000"),
        ({"dataset": "x", "inner": {"port": 70000}}, "inner.port", "less than or equal to 65535"),
    ],
)
def test_bad_key_named(tmp_path, body, key, words):
    p = write(tmp_path, "c.json", json.dumps(body))
    with pytest.raises(ConfigError) as e:
        load_config(p, Sample)
    assert e.value.key == key
    assert words in str(e.value)
    assert str(p) in str(e.value)


def test_malformed_json_names_line(tmp_path):
    p = write(tmp_path, "c.json", '{"dataset": "x",\n  oops}')
    with pytest.raises(ConfigError, match="not valid JSON: .* line 2"):
        load_config(p, Sample)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.json", Sample)


def test_top_level_must_be_object(tmp_path):
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(write(tmp_path, "c.json", "[1, 2]"), Sample)


def test_frozen(tmp_path):
    c = load_config(write(tmp_path, "a.json", '{"dataset": "p/d"}'), Sample)
    with pytest.raises(Exception):
        c.dataset = "other"


# ---------------------------------------------------------------- strictness shared by every daemon

def _sitter(**over):
    from manatee.sitter.config import SitterConfig
    from manatee.core.config import validate

    cfg = json.loads(open("etc/sitter.json").read())
    for k, v in over.items():
        d, *path = k.split(".")
        tgt = cfg
        for p in [d, *path][:-1]:
            tgt = tgt[p]
        tgt[[d, *path][-1]] = v
    return validate(cfg, SitterConfig, "sitter.json")


@pytest.mark.parametrize("key", ["postgresPort", "statusPort", "ttl", "heartbeatCfg.heartbeatInterval",
                                 "postgresMgrCfg.zfsClientCfg.zfsPort", "statusServerCfg.maxConnections"])
def test_a_bool_is_never_a_number(key):
    with pytest.raises(ConfigError) as e:
        _sitter(**{key: True})
    assert e.value.key == key and "not true/false" in str(e.value)


def test_bool_fields_still_take_bools():
    assert _sitter(**{"postgresMgrCfg.oneNodeWriteMode": True}).postgresMgrCfg.oneNodeWriteMode is True


@pytest.mark.parametrize("key, value", [
    ("postgresMgrCfg.replicationAuth.password", 12345678901),
    ("postgresMgrCfg.replicationAuth.password", ["hunter2-hunter2"]),
])
def test_secrets_are_never_echoed(key, value):
    with pytest.raises(ConfigError) as e:
        _sitter(**{key: value})
    assert "12345678901" not in str(e.value) and "hunter2" not in str(e.value)
    assert "not shown" in str(e.value)


def test_sitter_needs_the_shard_secret_or_insecure():
    with pytest.raises(ConfigError, match="secretFile is required"):
        _sitter(secretFile=None)
    assert _sitter(secretFile=None, insecure=True).insecure is True
    with pytest.raises(ConfigError, match="backupSecret was replaced by secretFile"):
        _sitter(backupSecret="x" * 20)


def test_primary_start_timeout_defaults_to_twice_t_but_never_below_the_hang_verdict():
    """A primary whose PostgreSQL does not answer is not judged unable to serve before it is
    judged hung: the default is 2 x T and at least healthChkTimeout, as an explicit value must
    be (loaded soak at T = 1 s, 2026-12-05: 2 s against a 5 s healthChkTimeout, and the
    primary stepped down in a storage stall)."""
    assert _sitter(**{"zkCfg.sessionTimeout": 1000,
                      "postgresMgrCfg.healthChkTimeout": 5000}).primary_start_timeout_s == 5.0
    assert _sitter(**{"zkCfg.sessionTimeout": 4000,
                      "postgresMgrCfg.healthChkTimeout": 5000}).primary_start_timeout_s == 8.0
    assert _sitter(**{"zkCfg.sessionTimeout": 1000, "postgresMgrCfg.healthChkTimeout": 5000,
                      "primaryStartTimeout": 6000}).primary_start_timeout_s == 6.0
    with pytest.raises(ConfigError) as e:
        _sitter(**{"postgresMgrCfg.healthChkTimeout": 5000, "primaryStartTimeout": 2000})
    assert "must be at least postgresMgrCfg.healthChkTimeout" in str(e.value)
