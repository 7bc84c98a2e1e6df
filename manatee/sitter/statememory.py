"""What this node's data belongs to: the shard state it last acted on (its generation, its
primary and, when it fits, the whole state), kept with the data as the ZFS user property
`manatee:state-memory` of its dataset.

Why. The state znode is the shard's only record of who leads. If it vanishes (ZooKeeper
reinstalled with empty data, an operator's `delete`), "no state" used to mean a new shard:
the election's head declared generation 1 with itself as primary, even a lagging async,
and the others, ahead of it, were rebuilt from its older data. A sitter that remembers the
state (the last one it read, in memory) or whose dataset does (this property, after a
restart) holds instead (decide's state_lost rules), and says so in its election node
(`remembers`), so that a new node heading the election does not declare either.

Why a ZFS property: only root can set it (the data directory and the mountpoint belong to
the PostgreSQL user), it goes with the dataset (a destroyed dataset forgets, a restored
one starts blank: `zfs send` without -p carries no properties), and a state fits (values
up to 8 KB; a bigger one keeps only the generation and the primary). Every zfs call has a
deadline; a read that fails leaves the memory unknown, which counts as remembering
(unknown is not "this node holds no data of the shard"). Saving runs in the background
after a cycle's steps: it never delays a takeover or a switchover.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from manatee.core.zfs import ZfsError
from manatee.shard import latches
from manatee.shard.state import UNKNOWN_MEMORY, ClusterState, StateError

MEMORY_PROP = "manatee:state-memory"
MAX_VALUE = 8000  # bytes: ZFS user property values are limited to 8192
MEMORY_TIMEOUT_S = 2.0  # the zfs get (in the cycle, before the first election node)
SAVE_TIMEOUT_S = 10.0   # the zfs set (in the background)
RETRY_S = 60.0          # a failed read or save is tried again after this
_FAILED = (asyncio.TimeoutError, OSError, ValueError, ZfsError)


@dataclass(frozen=True)
class Memory:
    generation: int
    primary: str  # the primary's election id
    state: ClusterState | None = None  # the whole state (None: too big for a property, or an older record)
    # the upstream my PostgreSQL was seen streaming from in this generation (its election id)
    streamed: str | None = None

    def dumps(self) -> str:
        d: dict = {"generation": self.generation, "primary": self.primary}
        if self.streamed is not None:
            d["streamed"] = self.streamed
        if self.state is not None:
            full = json.dumps({**d, "state": self.state.to_json()}, separators=(",", ":"))
            if len(full.encode()) <= MAX_VALUE:
                return full
        return json.dumps(d, separators=(",", ":"))

    def describe(self) -> str:
        return f"generation {self.generation} (primary {self.primary.split(':', 1)[0]})"

    @classmethod
    def of(cls, st: ClusterState, streamed: str | None = None) -> Memory:
        return cls(st.generation, st.primary.id, st, streamed)

    @classmethod
    def parse(cls, value: str) -> Memory | None:
        """The property's value (`zfs get -H -o value`): '-' or empty is unset (None);
        anything but {"generation": int >= 1, "primary": str} raises ValueError."""
        value = value.strip()
        if value in ("", "-"):
            return None
        try:
            d = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{MEMORY_PROP} is not JSON: {e}") from None
        g, p = (d.get("generation"), d.get("primary")) if isinstance(d, dict) else (None, None)
        if isinstance(g, bool) or not isinstance(g, int) or g < 1 or not isinstance(p, str) or not p:
            raise ValueError(f"{MEMORY_PROP} is not {{generation, primary[, state]}}: {value[:200]!r}")
        streamed = d.get("streamed")
        if streamed is not None and (not isinstance(streamed, str) or not streamed):
            raise ValueError(f"{MEMORY_PROP}: streamed is not an election id: {streamed!r}")
        st = None
        if d.get("state") is not None:
            try:
                st = ClusterState.from_json(d["state"])
            except StateError as e:
                raise ValueError(f"{MEMORY_PROP}: its state cannot be parsed: {e}") from None
            if (st.generation, st.primary.id) != (g, p):
                raise ValueError(f"{MEMORY_PROP}: its state is generation {st.generation} (primary "
                                 f"{st.primary.id}), not {g} ({p})")
        return cls(g, p, st, streamed)


def not_following(state: ClusterState, mem: Memory) -> str | None:
    """Why the state znode as read does not follow from the newest state I remember, or None:
    an older generation (ZooKeeper restored from an old copy, an old state written back), or
    the same generation with another primary or sync, which no sitter writes (every change of
    either is a new generation): a state written by hand or pieced together, which could make
    a node that lacks acknowledged writes lead. The text names both and the likely cause."""
    def leaders(st: ClusterState | None, primary: str) -> str:
        ip = primary.split(":", 1)[0]
        if st is None:
            return f"primary {ip}"
        return f"primary {ip}, sync {st.sync.ip if st.sync else 'none'}"

    held = f"it holds generation {state.generation} ({leaders(state, state.primary.id)})"
    mine = f"I remember generation {mem.generation} ({leaders(mem.state, mem.primary)})"
    if state.generation < mem.generation:
        return (f"the shard state znode is older than I remember: {held}; {mine}: ZooKeeper was "
                f"restored from an older copy, or an old state written back")
    if state.generation > mem.generation:
        return None
    other_sync = mem.state is not None and (state.sync.id if state.sync else None) != (
        mem.state.sync.id if mem.state.sync else None)
    if state.primary.id != mem.primary or other_sync:
        return (f"the shard state znode names other leaders than I remember for its generation, "
                f"which no sitter writes: {held}; {mine}: the state was written by hand")
    return None


SAID = object()  # to_say: the election node says it already


def to_say(said: int | None | str, now: int | None | str) -> int | None | str | object:
    """What my election node should say I remember (`remembers`), given what it says and what
    I remember now: a newer generation, or anything known where it said UNKNOWN_MEMORY;
    never less than it says (a generation is not taken back, and unknown says nothing new).
    SAID: nothing to change."""
    if now == said or now == UNKNOWN_MEMORY:
        return SAID
    if said == UNKNOWN_MEMORY or (isinstance(now, int) and (said is None or now > said)):
        return now
    return SAID


class StateMemory:
    """The shell's side: read the dataset's memory, save a newer one in the background once
    a cycle's steps are done, and say what the node remembers (for decide and the election
    node). Each zfs call has a deadline (MEMORY_TIMEOUT_S, SAVE_TIMEOUT_S) and a failed one
    is not tried again for RETRY_S, so a hung zfs costs a cycle little."""

    def __init__(self, dataset, log, clock, *, flushed_acks: bool = True):
        self.dataset, self.log, self.clock = dataset, log, clock
        # the sync acknowledges a commit once it has flushed it (synchronous_commit on or
        # remote_apply): only then is every acknowledged write on its disk after a restart
        self.flushed_acks = flushed_acks
        self.saved: Memory | None = None  # what the dataset holds, as last read or written
        self.known = False                # `saved` was read (or written) successfully
        self.error: str | None = "not read yet"
        self.retry_at = 0.0
        self.tried = False
        self.task: asyncio.Task | None = None  # a save in the background
        self.datasets = 0  # restores so far: a save that ends after one was for the old dataset
        self.read_streamed: tuple[int, str] | None = None  # what the dataset said at start (once)
        self.not_used: str | None = None  # why it could not stand for streaming (streamed_before)
        self.answered = False  # streamed_before has answered (it does once)

    async def load(self) -> None:
        """Read the dataset's memory if it is not known yet (at most every RETRY_S); on
        failure it stays unknown. A dataset that does not exist holds no data: None."""
        if self.known or self.clock.monotonic() < self.retry_at:
            return
        self.tried = True
        try:
            value = await self.dataset.read_memory(MEMORY_TIMEOUT_S)
            self.saved, self.known, self.error = Memory.parse(value) if value is not None else None, True, None
            if self.saved is not None:
                self.log.info("state_memory_read", remembers=self.saved.describe(), streamed=self.saved.streamed)
                if self.saved.streamed is not None:
                    self.read_streamed = (self.saved.generation, self.saved.streamed)
        except _FAILED as e:
            self.error = str(e) or type(e).__name__
            self.retry_at = self.clock.monotonic() + RETRY_S
            self.log.warning("state_memory_unreadable", error=self.error,
                             note="until it is read, a missing state znode is not taken for a new shard")

    async def keep(self, st: ClusterState | None, *, has_data: bool, streaming_from: str | None = None) -> None:
        """Save `st` if my data belongs to it and the dataset does not hold it yet, with the
        upstream my PostgreSQL streams from now (`streaming_from`; else the one the dataset
        already names for this generation). In the background when an event loop runs: a ZFS
        property write waits for a transaction group to sync, and must not delay the cycle
        after a takeover or a switchover (the simulation, which drives the loop by hand, saves
        inline)."""
        if (st is None or not has_data or not self.known or self.busy
                or self.clock.monotonic() < self.retry_at):
            return
        if streaming_from is not None:
            self.not_used = None  # streaming again: nothing needs to stand for it
        kept = self.saved.streamed if self.saved is not None and self.saved.generation == st.generation else None
        new = Memory.of(st, streaming_from or kept)
        if self.saved == new or (self.saved is not None and self.saved.generation > new.generation):
            return  # never moved back (a state re-created older is for an operator to sort out)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            await self._save(new)
            return
        self.task = asyncio.ensure_future(self._save(new))

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    async def _save(self, new: Memory) -> None:
        dataset = self.datasets
        try:
            await self.dataset.write_memory(new.dumps(), SAVE_TIMEOUT_S)
            if dataset == self.datasets:
                self.saved, self.error = new, None
                self.log.info("state_memory_saved", remembers=new.describe(), streamed=new.streamed)
        except _FAILED as e:
            self.retry_at = self.clock.monotonic() + RETRY_S
            self.log.warning("state_memory_not_saved", error=str(e) or type(e).__name__, remembers=new.describe())

    def newest(self, state: ClusterState | None) -> Memory | None:
        """The newer of `state` (the last one read) and my dataset's memory."""
        mine = Memory.of(state) if state is not None else None
        if self.saved is not None and (mine is None or self.saved.generation > mine.generation):
            return self.saved
        return mine

    def remembered_state(self) -> ClusterState | None:
        """The whole state my dataset remembers (after a restart, with the znode missing)."""
        return self.saved.state if self.saved is not None else None

    def streamed_before(self, st: ClusterState | None) -> str | None:
        """Once, after a restart: the upstream my dataset says my PostgreSQL streamed from in
        the generation of `st`, the state read now (None: another generation, or none said).
        The WAL on disk then came from that upstream, which cannot have forked within the
        generation: a sync whose sitter restarted, its primary gone for good, can show that
        it holds every acknowledged write without streaming again (F12)."""
        if st is None or self.answered:
            return None
        seen, self.read_streamed, self.answered = self.read_streamed, None, True
        upstream, self.not_used = latches.streamed_record(seen, st.generation, self.flushed_acks)
        if upstream is not None:
            self.log.info("streamed_record_used", upstream=upstream, generation=st.generation,
                          note="my dataset says I streamed from it in this generation: my WAL on disk counts "
                               "as streamed from it (a takeover still needs it to reach initWal)")
        else:
            self.log.info("streamed_record_not_used", why=self.not_used)
        return upstream

    def dataset_replaced(self) -> None:
        """A restore put new data in place: it carries no memory until saved again."""
        self.saved, self.known, self.error, self.retry_at = None, True, None, 0.0
        self.read_streamed = None
        self.datasets += 1
    def remembers(self, state: ClusterState | None) -> int | None | str:
        """For my election node: the newest generation I know this shard had (the state
        I last read, or my dataset's memory), None if neither, UNKNOWN_MEMORY if my
        dataset's memory could not be read and I read no state."""
        gens = [g for g in (state.generation if state else None, self.saved.generation if self.saved else None)
                if g is not None]
        if gens:
            return max(gens)
        return None if self.known else UNKNOWN_MEMORY

    def lost(self, state: ClusterState | None) -> str | None:
        """With the state znode missing: what says this shard had one (None: nothing, a
        new shard). `state` is the last state the shell read (kept when the znode went)."""
        if state is not None:
            return f"I remember generation {state.generation} (primary {state.primary})"
        if self.saved is not None:
            return f"my dataset remembers {self.saved.describe()}"
        if not self.known:
            return f"I cannot tell whether my dataset holds data of this shard: {self.error}"
        return None

    def as_json(self, state: ClusterState | None) -> dict | None:
        """GET /state `remembers`: the newer of the state I last read and my dataset's memory."""
        m = self.newest(state)
        if m is None:
            return None
        return {"generation": m.generation, "primary": m.primary,
                **({"streamedNotUsed": self.not_used} if self.not_used else {})}
