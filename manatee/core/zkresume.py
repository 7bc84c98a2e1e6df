"""A ZooKeeper session that will never be resumed.

A client that has seen transaction zxid Z is refused by any server whose own last zxid is
below Z ("Refusing session request ... client must try another server"). For a lagging
follower that is right, and brief. For a ZooKeeper that lost its data (reinstalled, its
data directory wiped, a new ensemble at the old address) it is forever: kazoo retries,
SUSPENDED, and never hears that its session is gone. Sandbox trial, 2026-12-05: after
ZooKeeper was restarted with an empty data directory every sitter stayed suspended; the
primary served on (its sync heartbeated, as in F10), but no failover could ever happen,
no sitter joined the new ZooKeeper, and `manatee-adm` found no shard to show or restore.

So while our client has been disconnected for PROBE_AFTER session timeouts, a probe opens
a new session (a fresh client has seen nothing, so it is never refused for that). If the
server accepts it and ours has still not come back GRACE session timeouts later, ours will
not: it is abandoned — reported LOST, exactly as an expiry is — and a new one started.
- ZooKeeper down (F10): the probe fails, nothing changes, the session is kept.
- ZooKeeper back with its data: ours resumes within a second or two (reconnect attempts
  are at most a third of the session timeout apart), long before the grace ends.
`should_abandon` is the pure rule; `watch` the loop each ZKClient runs once started.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from manatee.core.zksession import connect_reply_timeout, resuming_kazoo

PROBE_AFTER = 2.0  # session timeouts disconnected before the first probe
GRACE = 1.0        # session timeouts our client gets to resume after a probe was accepted


def should_probe(now: float, disconnected_since: float | None, session_timeout: float) -> bool:
    return disconnected_since is not None and now - disconnected_since >= PROBE_AFTER * session_timeout


def should_abandon(now: float, disconnected_since: float | None, probe_ok_since: float | None,
                   session_timeout: float) -> bool:
    """Ours is still disconnected, and a new session has been accepted for GRACE session
    timeouts (the probes since all accepted): ZooKeeper is up and will not resume ours."""
    return (should_probe(now, disconnected_since, session_timeout) and probe_ok_since is not None
            and now - probe_ok_since >= GRACE * session_timeout)


def probe_sync(hosts: str, session_timeout: float, kazoo_kw: dict[str, Any]) -> bool:
    """Whether ZooKeeper accepts a new session within connect_reply_timeout (blocking; the
    probe's session is closed at once and no kazoo thread is left behind)."""
    kz = resuming_kazoo(hosts, session_timeout, **kazoo_kw)
    try:
        kz.start(timeout=connect_reply_timeout(session_timeout))
        return True
    except Exception:  # noqa: BLE001 - any failure to connect is "not accepted"
        return False
    finally:
        with contextlib.suppress(Exception):
            kz.stop()
        with contextlib.suppress(Exception):
            kz.close()


def accepted(since: float | None, ok: bool) -> float | None:
    """Since when the probes have all been accepted, after one more probe."""
    return (since or time.monotonic()) if ok else None


async def watch(client) -> None:
    """Probe while `client` (a manatee.core.zk.ZKClient) is disconnected, and abandon its
    session when should_abandon says so. Runs until the client closes (it is cancelled)."""
    accepted_since: float | None = None
    t = client.session_timeout
    while True:
        await asyncio.sleep(t / 2)
        since = client.disconnected_since
        if not should_probe(time.monotonic(), since, t):
            accepted_since = None
            continue
        accepted_since = accepted(accepted_since, await asyncio.to_thread(probe_sync, client.hosts, t, client._kazoo_kw))
        if should_abandon(time.monotonic(), client.disconnected_since, accepted_since, t):
            await client._abandon_session(f"ZooKeeper accepts new sessions but has not resumed ours for "
                                          f"{time.monotonic() - since:.1f}s: it lost its data or was replaced")
            accepted_since = None


def keep_resumable(kz, hosts: str, session_timeout: float, closed, log, kazoo_kw: dict[str, Any] | None = None) -> None:
    """`watch` for a plain kazoo client used from threads (manatee.client.ShardWatcher): run
    in a daemon thread until `closed()`; abandoning is kazoo's restart() (a new session)."""
    t, since, accepted_since = session_timeout, None, None
    while not closed():
        time.sleep(t / 2)
        now = time.monotonic()
        if str(kz.state) == "CONNECTED":
            since = accepted_since = None
            continue
        since = since or now
        if not should_probe(now, since, t):
            continue
        accepted_since = accepted(accepted_since, probe_sync(hosts, t, kazoo_kw or {}))
        if should_abandon(time.monotonic(), since, accepted_since, t) and not closed():
            log.warning("zk_session_abandoned", hosts=hosts, disconnected_s=round(time.monotonic() - since, 1),
                        why="ZooKeeper accepts new sessions but has not resumed ours: it lost its data or was replaced")
            with contextlib.suppress(Exception):
                kz.restart()
            since = accepted_since = None
