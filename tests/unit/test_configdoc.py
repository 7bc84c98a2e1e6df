from pathlib import Path

from manatee.core.config import load_config
from manatee.core.configdoc import DAEMONS, render

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_doc_is_current():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == render(), "docs/configuration.md is stale: run python -m manatee.core.configdoc > docs/configuration.md"


def test_every_sample_config_validates():
    import importlib
    for _daemon, sample, mod, cls in DAEMONS:
        model = getattr(importlib.import_module(mod), cls)
        load_config(ROOT / sample, model)
