"""BackupServerConfig: the original's keys, defaults, and errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manatee.backupserver.config import BackupServerConfig
from manatee.backupserver.membership import StaticMembership, ip_from_election_name
from manatee.core.config import ConfigError, load_config

ETC = Path(__file__).resolve().parents[2] / "etc" / "backupserver.json"


def _load(tmp_path, data) -> BackupServerConfig:
    p = tmp_path / "backupserver.json"
    p.write_text(json.dumps(data))
    return load_config(p, BackupServerConfig)


def test_shipped_config_is_valid():
    cfg = load_config(ETC, BackupServerConfig)
    assert cfg.backupServerCfg.port == 10002
    assert cfg.shardPath and cfg.zkCfg


def test_defaults(tmp_path):
    cfg = _load(tmp_path, {"backupSenderCfg": {"dataset": "zones/manatee/pg"}})
    assert cfg.backupSenderCfg.zfsPath == "/usr/sbin/zfs"
    s = cfg.backupServerCfg
    assert (s.port, s.host, s.secret) == (10002, "0.0.0.0", None)
    assert (s.maxConcurrentSends, s.maxQueuedJobs, s.maxBodyBytes) == (2, 8, 16384)
    assert cfg.zkCfg is None and cfg.shardPath is None


def test_zk_settings(tmp_path):
    cfg = _load(tmp_path, {"backupSenderCfg": {"dataset": "p/d"},
                           "zkCfg": {"connStr": "10.0.0.1:2181,10.0.0.2:2181/chroot"},
                           "shardPath": "/manatee/1"})
    assert cfg.zkCfg.sessionTimeout == 60000


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({}, "backupSenderCfg", "required"),
        ({"backupSenderCfg": {"dataset": ""}}, "backupSenderCfg.dataset", "empty"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "backupServerCfg": {"secret": "short"}},
         "backupServerCfg.secret", "at least 8"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "backupServerCfg": {"host": "bad host"}},
         "backupServerCfg.host", "listen address"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "backupServerCfg": {"maxBodyBytes": 10}},
         "backupServerCfg.maxBodyBytes", "greater than"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "shardPath": "/manatee/1"}, None, "zkCfg is missing"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "zkCfg": {"connStr": "h:1"}, "shardPath": "manatee"},
         "shardPath", "absolute"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "zkCfg": {"connStr": "h:99999"}, "shardPath": "/m"},
         "zkCfg.connStr", "host:port"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "extra": 1}, "extra", "not a known key"),
    ],
)
def test_errors_name_the_key(tmp_path, data, key, words):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, data)
    assert err.value.key == key
    assert words in str(err.value)


@pytest.mark.parametrize(
    "name, ip",
    [
        ("10.0.0.1:5432:10002:5433-0000000003", "10.0.0.1"),
        ("127.0.0.12:5432:10002:5433-0000000000", "127.0.0.12"),
        ("nocolon-0000000001", None),
        (":5432:1:2-0000000001", None),
    ],
)
def test_ip_from_election_name(name, ip):
    assert ip_from_election_name(name) == ip


async def test_static_membership_canonicalises_addresses():
    m = StaticMembership({"127.0.0.1", "::1"})
    assert await m.is_member("::ffff:127.0.0.1") is True
    assert await m.is_member("0:0:0:0:0:0:0:1") is True
    assert await m.is_member("127.0.0.2") is False
    assert await StaticMembership(None).is_member("1.2.3.4") is None
