"""A PgManager without its __init__ (no config, no PostgreSQL) for unit tests of its parts:
the attributes configure() and the log reading use, a log that records (level, event, kw),
and write_role_config (in its writer's thread) replaced by `write` (a callable taking anything)."""

from __future__ import annotations

from types import SimpleNamespace

from manatee.sitter import configwriter
from manatee.sitter.configwriter import ConfigWriter
from manatee.sitter.primaryfloors import PrimaryFloors
from manatee.sitter.pgmanager import PgManager


class RecordingLog:
    def __init__(self):
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((level, event, kw))


def bare_pg_manager(monkeypatch, write) -> PgManager:
    m = PgManager.__new__(PgManager)
    m.cfg, m.log, m.user, m.data_dir = SimpleNamespace(ip="127.0.0.1"), RecordingLog(), "postgres", "/nonexistent"
    m.proc, m.spec, m.config_error = None, None, None
    m._restart_pending = m._reload_pending = False
    m.parameters_gen = m._written_gen = m._applied_gen = 0
    m.not_superuser = False
    m.role_config = lambda spec: None
    m.writer, m.ops_timeout, m.floors = ConfigWriter(), 5.0, PrimaryFloors()
    m.started_once = True  # (its log is this sitter's)
    monkeypatch.setattr(configwriter, "write_role_config", write)
    return m
