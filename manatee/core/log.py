"""Structured logging: JSON lines by default, readable key=value on a terminal.

Daemons call `configure()` once; modules call `get_logger(__name__)` and log short
snake_case events with key=value fields.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = [logging.INFO, logging.DEBUG]


def configure(verbosity: int = 0, *, json: bool | None = None, stream=None) -> None:
    """Set up structlog. verbosity 0 = INFO, ≥1 = DEBUG. json=None: JSON unless stream is a tty."""
    stream = stream or sys.stderr
    level = _LEVELS[min(max(verbosity, 0), len(_LEVELS) - 1)]
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (kazoo, aiohttp) log through stdlib logging: route WARNING+ to the same stream.
    logging.basicConfig(stream=stream, level=logging.WARNING if verbosity < 2 else logging.DEBUG,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def get_logger(name: str | None = None, **bind):
    log = structlog.get_logger(name) if name else structlog.get_logger()
    if name:
        bind.setdefault("component", name)
    return log.bind(**bind) if bind else log
