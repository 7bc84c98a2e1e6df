"""Common start-up for the daemons: `-f FILE`, `-v`, config validation, signals, exit codes,
systemd notification.

    main = lambda argv=None: daemon_main("manatee-snapshotter", SnapshotterConfig, run, argv)

`run(config, log, stop)` is a coroutine that works until `stop` (an asyncio.Event) is set by
SIGTERM or SIGINT and returns an exit status. A bad config never starts anything: one line on
stderr naming the file and the key, exit status 2. A failure while starting or running (a
taken port, say) is one line too (`fatal_error`, with the traceback only under -v), exit 1.

Signals:
  SIGTERM, SIGINT  orderly stop (exit 0)
  SIGHUP           reload: re-read and validate the config file, apply what can change at run
                   time — the log level (`logLevel`) — and log `reloaded` with the keys that
                   changed and `reload_needs_restart` naming those that only a restart applies.
                   A file that no longer validates is logged (`reload_failed`) and ignored: the
                   daemon keeps running on the config it has. SIGHUP never stops a daemon.

A daemon applies more of its config at run time with `register_reload(handler)`: on every
reload `handler(new_config)` is called with the newly validated config and returns the dotted
config keys it applied (a key covers the keys under it); those are not reported as needing a
restart. `request_reload()` reloads as SIGHUP does (the sitter's POST /reload).

`logLevel` (debug | info | warning | error) is a top-level key every daemon's config may
carry; it is taken out before the daemon's own model validates the rest. -v on the command
line sets the level only while the file does not.

systemd (Type=notify, see smf/systemd/): READY=1 once `run` has been up for
READY_AFTER_S without failing (start-up errors such as a taken port happen before that),
RELOADING=1 then READY=1 around a SIGHUP reload, STOPPING=1 on stop, and WATCHDOG=1 every
half WatchdogSec from the event loop itself, so a blocked loop is restarted by systemd.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any, Awaitable, Callable, TypeVar

from manatee import __version__
from manatee.core import log as logmod
from manatee.core import sdnotify
from manatee.core.config import ConfigError, ConfigModel, read_config_data, validate

C = TypeVar("C", bound=ConfigModel)

EXIT_CONFIG = 2
READY_AFTER_S = 1.0
LOG_LEVEL_KEY = "logLevel"


_current: "_Daemon | None" = None  # the daemon running in this process (for the reload hooks)


def register_reload(handler: Callable[[Any], Any]) -> None:
    """Call `handler(new_config)` on every successful reload; it returns the config keys it
    applied. Outside a daemon (tests) this does nothing."""
    if _current is not None:
        _current.reload_handlers.append(handler)


def request_reload() -> dict | None:
    """Reload now, as SIGHUP does; what happened ({ok, error | changed, applied, needsRestart}).
    None outside a daemon."""
    if _current is None:
        return None
    return _current._on_hup()


def parse_args(name: str, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=name, description=f"{name}: part of manatee {__version__}")
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="config file (JSON, or YAML)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v debug, -vv library debug)")
    p.add_argument("--log-format", choices=["json", "text"], default=None,
                   help="log format (default: json, or text on a terminal)")
    p.add_argument("--version", action="version", version=f"%(prog)s (manatee) {__version__}")
    return p.parse_args(argv)


def load(path: str, model: type[C]) -> tuple[C, str | None]:
    """(the validated config, its logLevel or None). ConfigError on any problem."""
    file = str(path)
    data = read_config_data(file)
    level = None
    if isinstance(data, dict) and LOG_LEVEL_KEY in data:
        data = dict(data)
        level = data.pop(LOG_LEVEL_KEY)
        if level not in logmod.LEVEL_NAMES:
            raise ConfigError(file, LOG_LEVEL_KEY, f"must be one of {', '.join(logmod.LEVEL_NAMES)} "
                                                   f"(got {level!r})")
    return validate(data, model, file), level


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (pydantic models or dicts)."""
    a = old.model_dump() if hasattr(old, "model_dump") else old
    b = new.model_dump() if hasattr(new, "model_dump") else new
    if not isinstance(a, dict) or not isinstance(b, dict):
        return [prefix.rstrip(".")] if a != b else []
    out: list[str] = []
    for k in sorted(set(a) | set(b), key=str):
        out += changed_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    return out


def daemon_main(
    name: str,
    model: type[C],
    run: Callable[[C, object, asyncio.Event], Awaitable[int | None]],
    argv: list[str] | None = None,
) -> int:
    args = parse_args(name, argv)
    try:
        config, level = load(args.file, model)
        _check_secret_file(config, args.file)
    except ConfigError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    logmod.configure(args.verbose, json=None if args.log_format is None else args.log_format == "json",
                     level=level)
    log = logmod.get_logger(name)
    d = _Daemon(name, model, args, config, level, log)
    try:
        return asyncio.run(d.main(run)) or 0
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


class _Daemon:
    def __init__(self, name, model, args, config, level, log):
        self.name, self.model, self.args = name, model, args
        self.config, self.level, self.log = config, level, log
        self.stop = asyncio.Event()
        self.reload_handlers: list[Callable[[Any], Any]] = []

    async def main(self, run) -> int:
        global _current
        _current = self
        try:
            return await self._main(run)
        finally:
            _current = None

    async def _main(self, run) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        log = self.log
        log.info("starting", daemon=self.name, version=__version__, pid=_pid(), log_level=logmod.set_level(
            self.args.verbose, self.level)[0])
        task = asyncio.create_task(run(self.config, log, self.stop))
        helpers = [asyncio.create_task(self._ready_when_up(task)), asyncio.create_task(self._watchdog())]
        try:
            status = await task
        except ConfigError:
            raise  # what only start-up can check (e.g. the secret file): exit 2 naming the key
        except Exception as e:  # one line; the traceback only when asked for (-v)
            log.error("fatal_error", daemon=self.name, error=f"{type(e).__name__}: {e}",
                      exc_info=self.args.verbose > 0)
            return 1
        finally:
            sdnotify.stopping()
            for h in helpers:
                h.cancel()
            for h in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await h
        log.info("stopped", daemon=self.name, status=status or 0)
        return status or 0

    async def _ready_when_up(self, task: asyncio.Task) -> None:
        done, _ = await asyncio.wait({task}, timeout=READY_AFTER_S)
        if done:
            return  # finished (or failed) within the grace: never ready
        sdnotify.ready(f"{self.name} running")
        self.log.debug("ready_notified")

    async def _watchdog(self) -> None:
        every = sdnotify.watchdog_interval()
        if every is None:
            return
        while True:
            sdnotify.watchdog()
            await asyncio.sleep(every)

    def _on_stop_signal(self, sig) -> None:
        self.log.info("signal_received", signal=signal.Signals(sig).name)
        self.stop.set()

    def _on_hup(self) -> dict:
        """Reload: never raises, never stops the daemon."""
        sdnotify.reloading()
        try:
            return self.reload()
        except Exception as e:  # noqa: BLE001 - a reload must not take the daemon down
            self.log.error("reload_failed", file=self.args.file, error=f"{type(e).__name__}: {e}")
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        finally:
            sdnotify.ready(f"{self.name} running")

    def reload(self) -> dict:
        log = self.log
        log.info("signal_received", signal="SIGHUP", action="reload", file=self.args.file)
        try:
            new, level = load(self.args.file, self.model)
        except ConfigError as e:
            log.error("reload_failed", error=str(e), keeping="the running config")
            return {"ok": False, "error": str(e)}
        ours, libs = logmod.set_level(self.args.verbose, level)
        changed = changed_keys(self.config, new)
        applied: list[str] = []
        for handler in self.reload_handlers:
            try:
                applied += list(handler(new) or ())
            except Exception as e:  # noqa: BLE001 - one failing hook must not stop the reload
                log.error("reload_hook_failed", error=f"{type(e).__name__}: {e}")
        rest = [k for k in changed if not any(k == a or k.startswith(a + ".") for a in applied)]
        log.info("reloaded", file=self.args.file, log_level=ours, library_log_level=libs,
                 changed=changed or None, applied=[k for k in changed if k not in rest] or None)
        if rest:
            log.warning("reload_needs_restart", keys=rest,
                        hint="these change only when the daemon restarts")
        self.level = level
        return {"ok": True, "changed": changed, "applied": [k for k in changed if k not in rest], "needsRestart": rest}


def _pid() -> int:
    import os

    return os.getpid()
