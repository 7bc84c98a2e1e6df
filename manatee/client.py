"""manatee.client: find a shard's primary from ZooKeeper, and hear when it changes.

What node-manatee gave Node.js applications, for Python ones. The shard's authoritative
topology is `/manatee/<shard>/state` (written by the sitters by compare-and-set; its
`primary.pgUrl` names the primary), so a watcher on that node knows the new primary as soon
as the sync has taken over. The API is synchronous and thread-based (kazoo's own threads
deliver the watch), so a plain threaded psycopg2 application can use it:

    with ShardWatcher("zk1:2181,zk2:2181", "1.moray.example.com", on_change=print) as w:
        url = w.wait_for_primary(timeout=30)          # 'tcp://postgres@10.0.0.1:5432/postgres'
        conn = psycopg2.connect(libpq_url(url))

`on_change(primary_url)` runs whenever the primary's URL changes: for the first primary
seen within the constructor, later on kazoo's event thread;
keep it short (set a flag, notify a queue). A newly named
primary may still be read-only for a moment (until its sync has caught up): applications
retry a failed write, as examples/psycopg2_failover.py does.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState

from manatee.core.log import get_logger
from manatee.core.zkresume import keep_resumable
from manatee.core.zksession import resuming_kazoo
from manatee.shard.layout import ShardLayout, shard_path
from manatee.shard.pgurl import PgUrl
from manatee.shard.state import ClusterState

__all__ = ["ShardWatcher", "Topology", "libpq_url", "parse_topology", "shard_path", "ShardWatcherError"]

log = get_logger("manatee.client")


class ShardWatcherError(RuntimeError):
    """ZooKeeper could not be reached, or the watcher was used after close()."""


@dataclass(frozen=True)
class Topology:
    """The shard as its state node says: PostgreSQL URLs (the sitters' `pgUrl`)."""

    generation: int
    primary: str
    sync: str | None = None
    asyncs: tuple[str, ...] = ()


def libpq_url(pg_url: str) -> str:
    """A sitter's pgUrl ('tcp://postgres@10.0.0.1:5432/postgres') as a URL libpq/psycopg2
    accepts ('postgresql://postgres@10.0.0.1:5432/postgres'). ValueError for a non-URL."""
    return PgUrl.parse(pg_url).libpq()


def parse_topology(raw: bytes | None) -> Topology | None:
    """The state node's data → Topology (None for an absent or empty node): the shard's own
    parser (ClusterState), viewed as pgUrls. Raises ValueError naming the field for malformed data."""
    if not raw:
        return None
    st = ClusterState.loads(raw)
    return Topology(generation=st.generation, primary=st.primary.pg_url,
                    sync=st.sync.pg_url if st.sync is not None else None,
                    asyncs=tuple(p.pg_url for p in st.async_))


class ShardWatcher:
    """Watches one shard's state node; `.primary_url` is always the latest known primary.

    zk_hosts: 'host:port,host:port' (or a list of them). shard: the shard's name under
    /manatee, or its full ZooKeeper path. on_change(primary_url) is called on each change of
    the primary (also for the first one seen). While ZooKeeper is unreachable the last known
    topology is kept (`.connected` says whether it is current); so it is when the state node
    vanishes once seen (ZooKeeper lost it: the sitters hold that state and its primary keeps
    serving until an operator restores it) or cannot be parsed. A ZooKeeper that comes back
    without its data never resumes the watcher's session: a new one is started
    (manatee.core.zkresume).
    """

    def __init__(self, zk_hosts: str | Sequence[str], shard: str,
                 on_change: Callable[[str | None], None] | None = None, *,
                 session_timeout: float = 10.0, connect_timeout: float = 10.0):
        hosts = zk_hosts if isinstance(zk_hosts, str) else ",".join(zk_hosts)
        self.path = ShardLayout.of(shard).state
        self.on_change = on_change
        self._cond = threading.Condition()
        self._topology: Topology | None = None
        self._primary: str | None = None
        self._seen = False
        self._closed = False
        # resumes its session after a ZooKeeper restart, as the sitters' client does
        self._zk = resuming_kazoo(hosts, session_timeout)
        self._zk.add_listener(self._on_state)
        try:
            self._zk.start(timeout=connect_timeout)
        except KazooTimeoutError:
            self._zk.stop()
            self._zk.close()
            raise ShardWatcherError(f"cannot reach ZooKeeper at {hosts} within {connect_timeout:g}s") from None
        self._zk.DataWatch(self.path, self._on_data)
        # a ZooKeeper that lost its data never resumes our session: start a new one then
        threading.Thread(target=keep_resumable, args=(self._zk, hosts, session_timeout, lambda: self._closed, log),
                         name="manatee-client-resume", daemon=True).start()

    # ------------------------------------------------------------------ watch callbacks

    def _on_state(self, state) -> None:
        if state != KazooState.CONNECTED and not self._closed:
            log.warning("client_zk_disconnected", state=str(state), path=self.path)
        with self._cond:
            self._cond.notify_all()

    def _on_data(self, data, _stat, _event=None):
        if self._closed:
            return False  # ends the watch
        try:
            top = parse_topology(data)
        except ValueError as e:
            log.warning("client_bad_state", path=self.path, error=str(e))
            return None  # keep what we knew
        if top is None and self._topology is not None:
            # the sitters hold a lost state (docs/design.md): the primary keeps serving
            log.warning("client_state_node_gone", path=self.path, keeping=self._primary)
            return None
        new = top.primary if top else None
        with self._cond:
            self._topology = top
            old, self._primary = self._primary, new
            first, self._seen = not self._seen, True
            self._cond.notify_all()
        if (old != new or (first and new)) and self.on_change is not None:
            try:
                self.on_change(new)
            except Exception as e:  # noqa: BLE001 - a callback's bug must not end the watch
                log.exception("client_on_change_failed", error=str(e))
        return None

    # ------------------------------------------------------------------ API

    @property
    def primary_url(self) -> str | None:
        """The primary's pgUrl as last seen (None before the shard has a state)."""
        return self._primary

    @property
    def topology(self) -> Topology | None:
        return self._topology

    @property
    def connected(self) -> bool:
        return self._zk.state == KazooState.CONNECTED

    def wait_for_primary(self, timeout: float | None = None) -> str:
        """The primary's URL; blocks until the shard names one. TimeoutError after `timeout` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._primary is not None or self._closed, timeout):
                raise TimeoutError(f"no primary named in {self.path} within {timeout:g}s")
            if self._closed:
                raise ShardWatcherError("watcher closed")
            return self._primary  # type: ignore[return-value]

    def wait_for_change(self, old: str | None, timeout: float | None = None) -> str | None:
        """Block until the primary's URL differs from `old`; returns the new one. TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._primary != old or self._closed, timeout):
                raise TimeoutError(f"primary still {old} after {timeout:g}s")
            return self._primary

    async def wait_for_primary_async(self, timeout: float | None = None) -> str:
        """wait_for_primary for asyncio code (waits in a worker thread)."""
        return await asyncio.to_thread(self.wait_for_primary, timeout)

    def close(self) -> None:
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        try:
            self._zk.stop()
        finally:
            self._zk.close()

    def __enter__(self) -> "ShardWatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
