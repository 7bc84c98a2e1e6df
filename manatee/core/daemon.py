"""Common start-up for the daemons: `-f FILE`, `-v`, config validation, signals, exit codes.

    main = lambda argv=None: daemon_main("manatee-snapshotter", SnapshotterConfig, run, argv)

`run(config, log, stop)` is a coroutine that works until `stop` (an asyncio.Event) is set by
SIGTERM or SIGINT and returns an exit status. A bad config never starts anything: one line on
stderr naming the file and the key, exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Awaitable, Callable, TypeVar

from manatee import __version__
from manatee.core import log as logmod
from manatee.core.config import ConfigError, ConfigModel, load_config

C = TypeVar("C", bound=ConfigModel)

EXIT_CONFIG = 2


def parse_args(name: str, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=name, description=f"{name}: part of manatee {__version__}")
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="config file (JSON, or YAML)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v debug, -vv library debug)")
    p.add_argument("--log-format", choices=["json", "text"], default=None,
                   help="log format (default: json, or text on a terminal)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


def daemon_main(
    name: str,
    model: type[C],
    run: Callable[[C, object, asyncio.Event], Awaitable[int | None]],
    argv: list[str] | None = None,
) -> int:
    args = parse_args(name, argv)
    try:
        config = load_config(args.file, model)
        _check_secret_file(config, args.file)
    except ConfigError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    logmod.configure(args.verbose, json=None if args.log_format is None else args.log_format == "json")
    log = logmod.get_logger(name)
    try:
        return asyncio.run(_run(name, config, run, log)) or 0
    except KeyboardInterrupt:
        return 130
    except ConfigError as e:  # raised by `run` for what only start-up can check (e.g. the secret file)
        print(f"{name}: {ConfigError(args.file, e.key, e.problem) if not e.file else e}", file=sys.stderr)
        return EXIT_CONFIG


def _check_secret_file(config: ConfigModel, file: str) -> None:
    """A daemon with a `secretFile` key refuses an unusable shard secret file before it starts."""
    path = getattr(config, "secretFile", None)
    if path:
        from manatee.core.auth import SecretError, load_secret_file

        try:
            load_secret_file(path)
        except SecretError as e:
            raise ConfigError(file, "secretFile", str(e)) from None


async def _run(name, config, run, log) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, log, sig, stop)
    log.info("starting", daemon=name, version=__version__)
    try:
        status = await run(config, log, stop)
    except ConfigError:
        raise
    except Exception:
        log.exception("fatal_error", daemon=name)
        return 1
    log.info("stopped", daemon=name, status=status or 0)
    return status or 0


def _on_signal(log, sig, stop: asyncio.Event) -> None:
    log.info("signal_received", signal=signal.Signals(sig).name)
    stop.set()
