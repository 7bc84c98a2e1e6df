"""Renders docs/configuration.md from the config models, so the documented keys cannot drift.

    python -m manatee.core.configdoc > docs/configuration.md

tests/unit/test_configdoc.py fails when the committed file differs from what this renders.
"""

from __future__ import annotations

import importlib
import json
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

DAEMONS = [
    ("manatee-sitter", "etc/sitter.json", "manatee.sitter.config", "SitterConfig"),
    ("manatee-snapshotter", "etc/snapshotter.json", "manatee.snapshotter.config", "SnapshotterConfig"),
    ("manatee-backupserver", "etc/backupserver.json", "manatee.backupserver.config", "BackupServerConfig"),
]


def _type_name(ann) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(ann))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(ann))
    if origin in (list, tuple):
        args = typing.get_args(ann)
        return f"list of {_type_name(args[0])}" if args else "list"
    if ann is type(None):
        return "null"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "object"
    return getattr(ann, "__name__", str(ann))


def _section(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows, nested = [], []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = f.annotation
        inner = [a for a in (typing.get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if f.is_required():
            default = "**required**"
        elif f.default is not PydanticUndefined:
            d = f.default
            default = "(see below)" if isinstance(d, BaseModel) else f"`{json.dumps(d)}`"
        else:
            default = "`[]`" if f.default_factory is list else "(see below)"
        constraints = []
        for m in f.metadata:
            for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
                v = getattr(m, attr, None)
                if v is not None:
                    constraints.append(f"{sym} {v}")
        desc = (f.description or "").replace("|", "\\|")
        if constraints:
            desc = (desc + "; " if desc else "") + ", ".join(constraints)
        rows.append(f"| `{key}` | {_type_name(ann)} | {default} | {desc} |")
        for sub in inner:
            nested.append((f"{key}.", sub))
    for pfx, sub in nested:
        rows.extend(_section(sub, pfx))
    return rows


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the config models by `python -m manatee.core.configdoc`; do not edit by hand.",
        "Each daemon reads `-f FILE` (JSON as the original, or YAML). Every key is validated at start:",
        "an unknown key, a wrong type, a value out of range or a missing required key stops the daemon",
        "with one line naming the file and the key, exit status 2. Times are milliseconds unless",
        "the description says otherwise.",
        "",
        "Every daemon's file may also carry a top-level `logLevel` (`debug`, `info`, `warning`,",
        "`error`; default: `info`, or `-v`): the only key applied again on SIGHUP without a restart",
        "(manatee/core/daemon.py, docs/observability.md).",
    ]
    for daemon, sample, mod, cls in DAEMONS:
        try:
            model = getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError):
            continue
        out += ["", f"## {daemon}", "", f"Sample: `{sample}`.", "",
                "| key | type | default | meaning |", "|---|---|---|---|"]
        out += _section(model)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
