"""One dataset-name rule for the sitter, snapshotter and backupserver configs and for the
backupserver's POST /backup: the same names pass, the same names fail with the same reason."""

from __future__ import annotations

import pytest

from manatee.backupserver.config import BackupServerConfig
from manatee.backupserver.validation import ValidationError, validate_backup_request
from manatee.core.config import ConfigError, validate
from manatee.core.zfsname import dataset_problem
from manatee.sitter.config import SitterConfig
from manatee.snapshotter.config import SnapshotterConfig

SITTER = {"ip": "127.0.0.1", "zoneId": "a", "insecure": True, "zkCfg": {"connStr": "127.0.0.1:2181"},
          "postgresMgrCfg": {"replicationAuth": {"password": "x"}, "zfsClientCfg": {"dataset": "p/a"}}}


def _sitter(ds):
    doc = {**SITTER, "postgresMgrCfg": {**SITTER["postgresMgrCfg"], "zfsClientCfg": {"dataset": ds}}}
    return validate(doc, SitterConfig, "sitter.json").postgresMgrCfg.zfsClientCfg.dataset


def _snapshotter(ds):
    return validate({"dataset": ds}, SnapshotterConfig, "snapshotter.json").dataset


def _backupserver(ds):
    return validate({"backupSenderCfg": {"dataset": ds}, "insecure": True}, BackupServerConfig,
                    "backupserver.json").backupSenderCfg.dataset


CONFIGS = {"sitter": (_sitter, "postgresMgrCfg.zfsClientCfg.dataset"), "snapshotter": (_snapshotter, "dataset"),
           "backupserver": (_backupserver, "backupSenderCfg.dataset")}
GOOD = ["zones/manatee/pg", "p", "tank/a.b/c_d/e-f/g:h", "Pool1/x"]
BAD = {"": "empty", "zones/pg@1": "snapshot", "/zones/pg": "'/'", "zones/pg/": "'/'", "zones//pg": "empty component",
       "zones/../x": "'..'", "zones/p g": "characters", "1zones/pg": "start with a letter", "a" * 256: "255"}


@pytest.mark.parametrize("which", CONFIGS)
@pytest.mark.parametrize("ds", GOOD)
def test_every_config_takes_the_same_good_names(which, ds):
    assert CONFIGS[which][0](ds) == ds


@pytest.mark.parametrize("which", CONFIGS)
@pytest.mark.parametrize("ds", BAD)
def test_every_config_refuses_the_same_names_for_the_same_reason(which, ds):
    load, key = CONFIGS[which]
    with pytest.raises(ConfigError) as ei:
        load(ds)
    assert ei.value.key == key
    assert BAD[ds] in str(ei.value) and dataset_problem(ds) in str(ei.value)


@pytest.mark.parametrize("ds", BAD)
def test_the_backup_api_refuses_them_with_the_same_reason(ds):
    with pytest.raises(ValidationError) as ei:
        validate_backup_request({"host": "127.0.0.1", "port": 1, "dataset": ds, "streamToken": "ab" * 32})
    assert dataset_problem(ds) in ei.value.message
