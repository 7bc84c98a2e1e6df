"""Role-change hooks: an operator's executable run on every change of this node's role
(a VIP, pgbouncer, DNS), as `HOOK ACTION ROLE SHARD` (also in the environment as
MANATEE_ACTION, MANATEE_ROLE, MANATEE_SHARD).

A hook can never block or delay failover: `fire()` only queues the call and returns; one
background worker runs the calls in order (so a VIP never sees them reordered), each in its
own process group, killed (SIGKILL to the group) after `timeout`. Its exit status, duration
and the tail of its output are logged; a failing hook is logged, nothing more. The queue is
bounded: when a hook keeps hanging, the oldest waiting calls are dropped (and logged), the
newest role is always delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

ACTION = "on_role_change"
MAX_QUEUED = 20
OUTPUT_TAIL = 500


class RoleHooks:
    def __init__(self, path: str | None, timeout_s: float, shard: str, log):
        self.path, self.timeout_s, self.shard, self.log = path, timeout_s, shard, log
        self.queue: asyncio.Queue[tuple[str, str]] | None = None
        self.worker: asyncio.Task | None = None
        self.last: tuple[str, str] | None = None
        self.runs = 0  # calls finished (any outcome), for /state and tests

    def fire(self, role: str, action: str = ACTION) -> None:
        """Queue a call for `role` (no-op without a hook, or when it is the role last queued)."""
        if self.path is None or self.last == (action, role):
            return
        self.last = (action, role)
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._work())
        while self.queue.qsize() >= MAX_QUEUED:
            dropped = self.queue.get_nowait()
            self.log.warning("hook_call_dropped", action=dropped[0], role=dropped[1], reason="queue full")
        self.queue.put_nowait((action, role))

    async def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker

    async def _work(self) -> None:
        assert self.queue is not None
        while True:
            action, role = await self.queue.get()
            try:
                await self.run(action, role)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a hook never takes the sitter down
                self.log.error("hook_failed", action=action, role=role, error=f"{type(e).__name__}: {e}")
            self.runs += 1

    async def run(self, action: str, role: str) -> int | None:
        """Run the hook once; its exit status (None: killed at the timeout)."""
        assert self.path is not None
        t0 = time.monotonic()
        env = {**os.environ, "MANATEE_ACTION": action, "MANATEE_ROLE": role, "MANATEE_SHARD": self.shard}
        proc = await asyncio.create_subprocess_exec(
            self.path, action, role, self.shard, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the hook and whatever it started
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
            self.log.error("hook_timed_out", hook=self.path, action=action, role=role,
                           timeout_s=self.timeout_s, hint="killed; failover never waits for a hook")
            return None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        tail = out.decode("utf-8", "replace")[-OUTPUT_TAIL:].strip() if out else ""
        (self.log.info if proc.returncode == 0 else self.log.error)(
            "hook_ran", hook=self.path, action=action, role=role, exit=proc.returncode,
            secs=round(time.monotonic() - t0, 3), output=tail or None)
        return proc.returncode
