"""Structured logging: JSON lines by default, readable key=value on a terminal.

Daemons call `configure()` once; modules call `get_logger(__name__)` and log short
snake_case events with key=value fields.

One stream, one format: the libraries' stdlib loggers (kazoo, aiohttp, asyncio, py.warnings)
go through structlog's ProcessorFormatter, so their records come out as the same JSON lines
(or key=value lines) as ours, with `component` set to the stdlib logger's name.

The level can change at run time (`set_level`, called on SIGHUP by manatee/core/daemon.py):
it is read by a processor on every event rather than baked into the bound loggers, which the
daemons create once at start.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = [logging.INFO, logging.DEBUG]
LEVEL_NAMES = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
               "error": logging.ERROR}
_NAME_TO_NO = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
               "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
               "critical": logging.CRITICAL, "fatal": logging.CRITICAL, "msg": logging.INFO}

_level = logging.INFO          # our events below this are dropped
_lib_level = logging.WARNING   # the libraries' records below this are dropped


def _filter_level(_logger, method_name: str, event_dict):
    if _NAME_TO_NO.get(method_name, logging.INFO) < _level:
        raise structlog.DropEvent
    return event_dict


def _stdlib_component(_logger, _method, event_dict):
    rec = event_dict.get("_record")
    if rec is not None:
        event_dict.setdefault("component", rec.name)
    return event_dict


def levels_for(verbosity: int = 0, level: str | None = None) -> tuple[int, int]:
    """(manatee's level, the libraries' level): -v debug; -vv the libraries' debug too; a named
    level (a config's logLevel) overrides -v for manatee's own events."""
    ours = _LEVELS[min(max(verbosity, 0), len(_LEVELS) - 1)] if level is None else LEVEL_NAMES[level]
    libs = logging.DEBUG if verbosity >= 2 else max(logging.WARNING, ours)
    return ours, libs


def set_level(verbosity: int = 0, level: str | None = None) -> tuple[str, str]:
    """Change the levels now (every existing logger follows). Returns their names."""
    global _level, _lib_level
    _level, _lib_level = levels_for(verbosity, level)
    logging.getLogger().setLevel(_lib_level)
    return logging.getLevelName(_level).lower(), logging.getLevelName(_lib_level).lower()


def configure(verbosity: int = 0, *, json: bool | None = None, stream=None, level: str | None = None) -> None:
    """Set up structlog and route stdlib logging through it. verbosity 0 = INFO, ≥1 = DEBUG,
    ≥2 = the libraries' DEBUG too. json=None: JSON unless stream is a tty."""
    stream = stream or sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            _filter_level,
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, *shared, _stdlib_component,
                           structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    logging.captureWarnings(True)
    set_level(verbosity, level)


def get_logger(name: str | None = None, **bind):
    log = structlog.get_logger(name) if name else structlog.get_logger()
    if name:
        bind.setdefault("component", name)
    return log.bind(**bind) if bind else log
