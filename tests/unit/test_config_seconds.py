"""Durations: config files give milliseconds (the original's keys); each model offers a
seconds view of every millisecond key, computed in one place (core.config.seconds)."""

from __future__ import annotations

import re

import pytest

from manatee.backupserver.config import BackupSenderCfg, BackupServerCfg
from manatee.core.config import HttpServerCfg
from manatee.sitter.config import HeartbeatCfg, HooksCfg, PostgresMgrCfg, ZfsClientCfg
from manatee.snapshotter.config import SnapshotterConfig

MODELS = [HttpServerCfg, BackupServerCfg, BackupSenderCfg, HeartbeatCfg, HooksCfg, PostgresMgrCfg, ZfsClientCfg, SnapshotterConfig]
REQUIRED = {BackupSenderCfg: {"dataset": "p/a"}, HooksCfg: {"onRoleChange": "/bin/true"}, PostgresMgrCfg: {"replicationAuth": {"password": "x"}, "zfsClientCfg": {"dataset": "p/a"}},
            ZfsClientCfg: {"dataset": "p/a"}, SnapshotterConfig: {"dataset": "p/a"}}


def _ms_keys(model) -> list[str]:
    return [k for k, f in model.model_fields.items()
            if f.annotation is int and re.search(r"\(ms[);]|milliseconds", f.description or "")]


def _views(model) -> dict[str, str]:
    """seconds view name -> the millisecond key it reads."""
    return {name: v.__doc__.removesuffix(", in seconds") for name, v in vars(model).items()
            if isinstance(v, property) and (v.__doc__ or "").endswith(", in seconds")}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_millisecond_key_has_a_seconds_view(model):
    assert _ms_keys(model), "the model has millisecond keys"
    assert sorted(_views(model).values()) == sorted(_ms_keys(model))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_the_views_are_the_keys_in_seconds(model):
    keys = _ms_keys(model)
    doc = {**REQUIRED.get(model, {}), **{k: 1000 * (i + 2) + 500 for i, k in enumerate(keys)}}
    cfg = model.model_validate(doc)
    for view, key in _views(model).items():
        assert getattr(cfg, view) == getattr(cfg, key) / 1000 == (1000 * (keys.index(key) + 2) + 500) / 1000
