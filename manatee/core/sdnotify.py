"""systemd's service notification protocol (sd_notify(3)), the few lines of it a daemon needs.

Why not a library: the protocol is one datagram of `KEY=VALUE` lines to the unix socket named by
$NOTIFY_SOCKET (a path, or `@name` in the abstract namespace). Without that variable (not
started by systemd, or Type=simple) every call is a no-op, so the daemons call it
unconditionally. Sending never raises and never blocks: a notification that cannot be
delivered is dropped (systemd then acts on its own timeouts, which is what it is for).
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "ready", "reloading", "stopping", "watchdog", "watchdog_interval", "status"]


def _address(env: str) -> str | bytes | None:
    if not env:
        return None
    if env.startswith("@"):
        return b"\0" + env[1:].encode()
    if env.startswith("/"):
        return env
    return None  # vsock addresses and the like: not used by manatee's units


def notify(*fields: str, env: dict | None = None) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=...") to systemd. True if a datagram was sent."""
    addr = _address((env if env is not None else os.environ).get("NOTIFY_SOCKET", ""))
    if addr is None or not fields:
        return False
    msg = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.setblocking(False)
            s.sendto(msg, addr)
        return True
    except OSError:
        return False


def ready(status_text: str | None = None) -> bool:
    return notify("READY=1", *((f"STATUS={status_text}",) if status_text else ()))


def reloading() -> bool:
    # MONOTONIC_USEC lets systemd ≥ 253 (Type=notify-reload) match the reload; older ones ignore it
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval(env: dict | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec, as sd_watchdog_enabled(3) advises);
    None when systemd does not watch this process."""
    env = env if env is not None else os.environ
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (e.g. our parent's)
    return int(usec) / 1e6 / 2
