"""Physical replication slots an upstream keeps for its downstream (issue 11).

Each node streams through a slot named from its application_name (``slotname.slot_name``):
the standby names it in ``primary_slot_name``, its upstream (the primary for the sync, the
sync for the async) creates it, so a lagging or stopped downstream keeps its WAL up to
``max_slot_wal_keep_size``.

`plan()` is the pure decision, `reconcile()` the shell that asks PostgreSQL (over the sitter's
monitoring connection, with a deadline) and applies it. A failure is logged and tried again
the next cycle: slots never block or fail a cycle.

What is dropped (only slots named with SLOT_PREFIX, never an active one):
* the slot of a node the shard's state places behind another upstream (in the chain, but not
  right behind me), of a deposed node (it is rebuilt before it streams again), and my own
  (copied in by a rebuild from my upstream's dataset);
* a slot PostgreSQL has already given up on (wal_status 'lost': past the cap).
* the slot of a node that has left the shard (not in the chain) and that an operator reaped
  (`manatee-adm reap`: history.reaped_addresses), told by the address in its name.
The slot of the node right behind me in the chain is kept even while it is down (it is not my
live downstream then), and so is that of a node that has left the shard altogether (its sitter
stopped, so the primary dropped it from the chain) until it is reaped: that is the async
stopped for a while, whose WAL the slot exists to keep; the cap bounds what it holds, and once
past it the slot is lost and dropped. The reaped addresses are read from the history only
while such a slot exists, at most every REAPED_EVERY_S; a failed read drops nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Collection, Iterable, Sequence

from manatee.core.pg.walpos import NODE_WAL_SQL
from manatee.core.slotname import SLOT_PREFIX, mangled, slot_name

SLOTS_TIMEOUT_S = 2.0
REAPED_EVERY_S = 10.0

# '_' is a LIKE wildcard: escaped, so only names that really start with the prefix match.
LIST_SQL = (
    "select slot_name, active, coalesce(wal_status, '') as wal_status,"
    f" pg_wal_lsn_diff({NODE_WAL_SQL}, restart_lsn)::bigint as retained_bytes"
    " from pg_replication_slots where slot_type = 'physical' and slot_name like %s order by slot_name")
CREATE_SQL = "select pg_create_physical_replication_slot(%s, true)"
# dropped only if still inactive at the moment of the drop (a standby may just have connected)
DROP_SQL = ("select pg_drop_replication_slot(slot_name) from pg_replication_slots"
            " where slot_name = %s and not active")


@dataclass(frozen=True)
class Slot:
    name: str
    active: bool
    wal_status: str = ""
    retained_bytes: int | None = None   # WAL held back for it (None: it reserves none yet)


def names_address(slot: str, ip: str) -> bool:
    """Whether `slot` is named (slot_name) from a pg_url whose host is `ip`: the address,
    mangled as slot_name mangles it, stands between two separators in the name."""
    address = mangled(ip)
    return bool(address) and f"_{address}_" in f"{slot}_"


def plan(existing: Iterable[Slot], downstream_app: str | None, me_app: str,
         chain_apps: Sequence[str] = (), deposed_apps: Iterable[str] = (),
         reaped_ips: Collection[str] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(slots to create, slots to drop). Nodes by application_name: `downstream_app` my live
    downstream (None: none), `me_app` me, `chain_apps` the state's chain in replication order
    (primary, sync, asyncs; empty: no state), `deposed_apps` its deposed nodes; `reaped_ips`
    the addresses an operator reaped."""
    have = {s.name: s for s in existing if s.name.startswith(SLOT_PREFIX)}
    want = slot_name(downstream_app) if downstream_app else None
    chain = list(chain_apps)
    elsewhere = {slot_name(x) for i, x in enumerate(chain) if i == 0 or chain[i - 1] != me_app}
    elsewhere |= {slot_name(x) for x in deposed_apps} | {slot_name(me_app)}
    elsewhere |= {n for n in have if any(names_address(n, ip) for ip in reaped_ips)} - {slot_name(x) for x in chain}
    elsewhere.discard(want)
    create = (want,) if want and want not in have else ()
    drop = tuple(sorted(n for n, s in have.items()
                        if n != want and not s.active and (n in elsewhere or s.wal_status == "lost")))
    return create, drop


async def list_slots(client) -> tuple[Slot, ...]:
    rows = await client.query(LIST_SQL, (SLOT_PREFIX.replace("_", "\\_") + "%",), timeout=SLOTS_TIMEOUT_S)
    return tuple(Slot(str(r["slot_name"]), bool(r["active"]), str(r["wal_status"]),
                      None if r["retained_bytes"] is None else max(0, int(r["retained_bytes"])))
                 for r in rows)


def strays(existing: Iterable[Slot], downstream_app: str | None, chain_apps: Sequence[str],
           drop: Collection[str]) -> bool:
    """Whether an inactive slot of a node outside the chain is kept (plan() without the
    reaped addresses): only then are they worth reading."""
    keep = {slot_name(x) for x in (*chain_apps, *([downstream_app] if downstream_app else []))}
    return any(s.name.startswith(SLOT_PREFIX) and not s.active and s.name not in keep and s.name not in drop
               for s in existing)


class ReapedAddresses:
    """history.reaped_addresses as `read` (ShardStore.reaped) gives it, read at most every
    REAPED_EVERY_S; a failed read is logged once per error and counts as none reaped."""

    def __init__(self, read: Callable[[], Awaitable[Collection[str]]], clock) -> None:
        self.read, self.clock = read, clock
        self.value: Collection[str] = ()
        self.at: float | None = None
        self.error: str | None = None

    async def get(self, log) -> Collection[str]:
        now = self.clock.monotonic()
        if self.at is None or now - self.at >= REAPED_EVERY_S:
            self.at = now
            try:
                self.value, self.error = await self.read(), None
            except Exception as e:  # noqa: BLE001 - unknown: drop nothing on its account
                self.value = ()
                if str(e) != self.error:
                    self.error = str(e)
                    log.warning("reaped_addresses_unread", error=str(e) or type(e).__name__)
        return self.value


async def reconcile(client, downstream_app: str | None, me_app: str, chain_apps: Sequence[str],
                    deposed_apps: Iterable[str], log, reaped: ReapedAddresses | None = None) -> tuple[Slot, ...] | None:
    """Create my downstream's slot, drop stale ones; the slots as observed (None: unknown).
    Never raises: an error is logged, and the next cycle tries again."""
    try:
        slots = await list_slots(client)
        create, drop = plan(slots, downstream_app, me_app, chain_apps, deposed_apps)
        if reaped is not None and strays(slots, downstream_app, chain_apps, drop):
            create, drop = plan(slots, downstream_app, me_app, chain_apps, deposed_apps, await reaped.get(log))
        for name in create:
            await client.query(CREATE_SQL, (name,), timeout=SLOTS_TIMEOUT_S)
            log.info("replication_slot_created", slot=name)
        for name in drop:
            await client.query(DROP_SQL, (name,), timeout=SLOTS_TIMEOUT_S)
            log.info("replication_slot_dropped", slot=name)
        return await list_slots(client) if create or drop else slots
    except Exception as e:  # noqa: BLE001 - slots never fail a cycle: retried next cycle
        log.warning("replication_slots_failed", error=str(e) or type(e).__name__)
        return None
