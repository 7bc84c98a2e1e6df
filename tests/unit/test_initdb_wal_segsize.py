"""A new shard's cluster is created with small WAL segments (a takeover copies and re-streams
the last one: docs/benchmarks.md), and initdb is asked for them only when they are set."""

from __future__ import annotations

import asyncio
import os

from manatee.core.pg import tools as pgtools
from manatee.sitter import pgmanager


def _initdb_cmd(monkeypatch, tmp_path, **kw) -> list[str]:
    seen: list[list[str]] = []

    async def fake_run_as(cmd, **_kw):
        seen.append([str(c) for c in cmd])
        return ""

    monkeypatch.setattr(pgtools, "run_as", fake_run_as)
    monkeypatch.setattr(pgtools, "ensure_private_dir", lambda *a, **k: None)
    asyncio.run(pgtools.initdb(tmp_path / "data", user=os.environ.get("USER", "root"), **kw))
    return seen[0]


def test_initdb_passes_the_wal_segment_size_when_given(monkeypatch, tmp_path):
    cmd = _initdb_cmd(monkeypatch, tmp_path, wal_segsize_mb=1)
    assert cmd[cmd.index("--wal-segsize") + 1] == "1"


def test_initdb_keeps_postgresqls_default_when_not_given(monkeypatch, tmp_path):
    assert "--wal-segsize" not in _initdb_cmd(monkeypatch, tmp_path)


def test_the_sitter_creates_shards_with_1_mb_wal_segments():
    assert pgmanager.WAL_SEGMENT_MB == 1
