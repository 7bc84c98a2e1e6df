"""What outlives one gray-fault command: DIR/grayfaults.json (helper pids, the saved state,
the rogue node's paths, the quotas set), and the detached helper processes (the storm's
connections, the crash loop, the latency proxy) that `python -m manatee_testbed.grayfaults`
runs. `manatee-sandbox` sub-commands and `down` find each fault here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from manatee.core.procs import pid_alive, terminate
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_state import SandboxError

FAULTS_FILE = "grayfaults.json"


def _path(sb: Sandbox) -> Path:
    return sb.dir / FAULTS_FILE


def load(sb: Sandbox) -> dict[str, Any]:
    try:
        return json.loads(_path(sb).read_text())
    except (OSError, ValueError):
        return {}


def _save(sb: Sandbox, rec: dict[str, Any]) -> None:
    p = _path(sb)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, p)


def update(sb: Sandbox, key: str, value: Any) -> None:
    rec = load(sb)
    if value is None:
        rec.pop(key, None)
    else:
        rec[key] = value
    _save(sb, rec)


def active(sb: Sandbox) -> dict[str, Any]:
    """The faults in force, as recorded (helpers that died on their own are left out)."""
    rec = load(sb)
    return {k: v for k, v in rec.items() if not (isinstance(v, dict) and v.get("pid") and not pid_alive(v["pid"]))}


def spawn_helper(sb: Sandbox, key: str, args: list[str]) -> int:
    """Start `python -m manatee_testbed.grayfaults ARGS` detached; recorded under `key`."""
    old = load(sb).get(key)
    if isinstance(old, dict) and old.get("pid") and pid_alive(old["pid"]):
        raise SandboxError(f"{key.replace(':', ' on node ')} is already in force (pid {old['pid']})")
    log = open(sb.dir / f"grayfault-{key.replace(':', '-')}.log", "ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "manatee_testbed.grayfaults", *args],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    finally:
        log.close()
    update(sb, key, {"pid": proc.pid, "args": args, "since": time.time()})
    from manatee_testbed.proctable import _CHILDREN  # reaped with the sandbox's own children

    _CHILDREN.append(proc)
    return proc.pid


def wait_ready(sb: Sandbox, key: str, pid: int, timeout: float) -> None:
    ready = ready_file(str(sb.dir), key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            ready.unlink(missing_ok=True)
            return
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    log = sb.dir / f"grayfault-{key.replace(':', '-')}.log"
    stop_helper(sb, key)
    tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
    raise SandboxError(f"{key}: the helper did not get ready within {timeout:.0f}s: {tail}")


def stop_helper(sb: Sandbox, key: str) -> bool:
    rec = load(sb).get(key)
    if not isinstance(rec, dict):
        return False
    pid = rec.get("pid")
    if pid and pid_alive(pid):
        terminate(pid, timeout=10, group=True)
    update(sb, key, None)
    return True


def ready_file(dir: str, key: str) -> Path:
    return Path(dir) / f"grayfault-{key.replace(':', '-')}.ready"

