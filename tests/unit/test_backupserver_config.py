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


SECURE = {"secretFile": "/etc/manatee/shard.secret", "zkCfg": {"connStr": "10.0.0.1:2181"}, "shardPath": "/manatee/1"}


def test_defaults(tmp_path):
    cfg = _load(tmp_path, {"backupSenderCfg": {"dataset": "zones/manatee/pg"}, **SECURE})
    assert cfg.backupSenderCfg.zfsPath == "/usr/sbin/zfs"
    s = cfg.backupServerCfg
    assert (s.port, s.host) == (10002, "0.0.0.0")
    assert (s.maxConcurrentSends, s.maxQueuedJobs, s.maxBodyBytes) == (2, 8, 16384)
    assert (s.maxConnections, s.idleTimeout) == (256, 10000)
    assert cfg.insecure is False


def test_insecure_mode_needs_neither_secret_nor_zookeeper(tmp_path):
    cfg = _load(tmp_path, {"backupSenderCfg": {"dataset": "p/d"}, "insecure": True})
    assert cfg.secretFile is None and cfg.zkCfg is None


def test_zk_settings(tmp_path):
    cfg = _load(tmp_path, {"backupSenderCfg": {"dataset": "p/d"}, "secretFile": "/s",
                           "zkCfg": {"connStr": "10.0.0.1:2181,10.0.0.2:2181/chroot"},
                           "shardPath": "/manatee/1"})
    assert cfg.zkCfg.sessionTimeout == 60000


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({}, "backupSenderCfg", "required"),
        ({"backupSenderCfg": {"dataset": ""}}, "backupSenderCfg.dataset", "empty"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "backupServerCfg": {"secret": "short-secret"}},
         "backupServerCfg", "replaced by the top-level secretFile"),
        ({"backupSenderCfg": {"dataset": "p/d"}}, None, "secretFile is required"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "secretFile": "/s"}, None, "zkCfg and shardPath are required"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "secretFile": "/s", "insecure": True}, None, "contradict"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "secretFile": "rel/path", "insecure": False}, "secretFile",
         "absolute"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "backupServerCfg": {"port": True}, **SECURE},
         "backupServerCfg.port", "not true/false"),
        ({"backupSenderCfg": {"dataset": "p/d", "stallTimeout": 1e9}, **SECURE},
         "backupSenderCfg.stallTimeout", "less than or equal"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "zkCfg": {"connStr": "h:1", "sessionTimeout": 10**9},
          "shardPath": "/m", "secretFile": "/s"}, "zkCfg.sessionTimeout", "less than or equal"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "backupServerCfg": {"host": "bad host"}},
         "backupServerCfg.host", "listen address"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "backupServerCfg": {"maxBodyBytes": 10}},
         "backupServerCfg.maxBodyBytes", "greater than"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "shardPath": "/manatee/1", "secretFile": "/s"}, None,
         "zkCfg is missing"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "zkCfg": {"connStr": "h:1"}, "shardPath": "manatee"},
         "shardPath", "absolute"),
        ({"backupSenderCfg": {"dataset": "p/d"}, "zkCfg": {"connStr": "h:99999"}, "shardPath": "/m"},
         "zkCfg.connStr", "host:port"),
        # one ZooKeeper model for every daemon: 1 s is the lowest session measured safe
        ({"backupSenderCfg": {"dataset": "p/d"}, "zkCfg": {"connStr": "h:1", "sessionTimeout": 900},
          "shardPath": "/m", "secretFile": "/s"}, "zkCfg.sessionTimeout", "greater than or equal to 1000"),
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
    assert await StaticMembership(set()).is_member("1.2.3.4") is False
