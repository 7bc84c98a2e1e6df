"""The snapshotter config: defaults, validation and the sample file."""

import json
from pathlib import Path

import pytest

from manatee.core.config import ConfigError, load_config, validate
from manatee.snapshotter.config import SnapshotterConfig

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_originals():
    c = validate({"dataset": "zones/manatee/pg"}, SnapshotterConfig)
    assert (c.pollInterval, c.snapshotNumber, c.zfsPath, c.healthUrl) == (3_600_000, 50, "/usr/sbin/zfs", None)


def test_sample_file_lists_every_key_with_its_default():
    data = json.loads((ROOT / "etc" / "snapshotter.json").read_text())
    assert set(data) == set(SnapshotterConfig.model_fields)
    cfg = load_config(ROOT / "etc" / "snapshotter.json", SnapshotterConfig)
    default = SnapshotterConfig(dataset=cfg.dataset)
    assert cfg == default


@pytest.mark.parametrize("ds", ["zones/manatee/pg", "p", "tank/a.b/c_d/e-f/g:h", "Pool1/x"])
def test_good_dataset_names(ds):
    assert validate({"dataset": ds}, SnapshotterConfig).dataset == ds


@pytest.mark.parametrize(
    "ds", ["", "zones/manatee/pg@1", "/zones/pg", "zones/pg/", "zones//pg", "1zones/pg", "zones/p g", "zones/../x",
           "a" * 256, 5]
)
def test_bad_dataset_names_name_the_key(ds):
    with pytest.raises(ConfigError) as ei:
        validate({"dataset": ds}, SnapshotterConfig, "snap.json")
    assert ei.value.key == "dataset"
    assert "snap.json" in str(ei.value)


@pytest.mark.parametrize(
    "extra,key",
    [
        ({"pollInterval": 999}, "pollInterval"),
        ({"pollInterval": "soon"}, "pollInterval"),
        ({"pollInterval": 10**12}, "pollInterval"),  # every duration has an upper bound
        ({"pollInterval": True}, "pollInterval"),  # a bool is not a number
        ({"snapshotNumber": True}, "snapshotNumber"),
        ({"snapshotNumber": 0}, "snapshotNumber"),
        ({"snapshotNumber": "abc"}, "snapshotNumber"),
        ({"zfsPath": ""}, "zfsPath"),
        ({"healthUrl": "localhost:5433/ping"}, "healthUrl"),
        ({"healthUrl": "ftp://h/ping"}, "healthUrl"),
        ({"snapShotNumber": 5}, "snapShotNumber"),
    ],
)
def test_bad_values_name_the_key(extra, key):
    with pytest.raises(ConfigError) as ei:
        validate({"dataset": "p/ds", **extra}, SnapshotterConfig, "snap.json")
    assert ei.value.key == key


def test_missing_dataset():
    with pytest.raises(ConfigError) as ei:
        validate({}, SnapshotterConfig, "snap.json")
    assert ei.value.key == "dataset" and "required" in ei.value.problem


def test_health_url_accepted():
    c = validate({"dataset": "p/ds", "healthUrl": "http://127.0.0.1:5433/ping"}, SnapshotterConfig)
    assert c.healthUrl == "http://127.0.0.1:5433/ping"
