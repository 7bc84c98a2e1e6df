"""docs/grafana-dashboard.json is built on metric names the sitter really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from manatee.sitter.metrics import MetricsView, ReplicationRow, render_view

ROOT = Path(__file__).resolve().parents[2]


def test_every_metric_the_dashboard_uses_is_exported():
    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:manatee|process)_[a-z_]+)\b", e)}
    v = MetricsView(peer_id="p", zone_id="z", shard="/manatee/1", role="async", local_role="standby",
                    generation=1, standby_lag_bytes=1, standby_lag_seconds=0.0,
                    replication=(ReplicationRow("x", "async", 1, 0.1),), last_snapshot_ms=1,
                    restore={"phase": "done", "completed": 1, "size": 1},
                    dataset_space={"available": 1, "used": 1, "quota": 0})
    text = render_view(v, 2, process=True)
    exported = set(re.findall(r"^([a-z_]+)(?:\{| )", text, re.M))
    assert used and not used - exported, f"not exported: {used - exported}"
    assert all('shard="$shard"' in e for e in exprs if "manatee_" in e or "process_" in e)
