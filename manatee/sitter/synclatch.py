"""What the primary's sitter remembers of its sync between cycles (the shell's side of
latches.sync_caught_up): whether the sync has caught up, and whether it has ever flushed my
WAL up to initWal in this generation."""

from __future__ import annotations

from dataclasses import dataclass

from manatee.shard import latches


@dataclass
class SyncLatch:
    """Keyed by (generation, sync id), so a new generation or a new sync starts afresh.

    caught_up_for: the sync has flushed my WAL and initWal once; cleared when it disconnects
      (the read-only rule: a primary takes writes only with its sync connected and caught up).
    held_for: the sync has flushed my WAL up to initWal at least once; kept while my
      PostgreSQL is stopped and when the sync disconnects (its WAL does not go back), so a
      primary that cannot serve knows its sync could take over (the step-down rule)."""

    caught_up_for: tuple[int, str] | None = None
    held_for: tuple[int, str] | None = None

    def observe(self, pgs, st, i_am_primary: bool, log) -> tuple[bool, bool]:
        """(my sync has caught up, it holds my WAL up to initWal) for this cycle's status."""
        sync = st.sync if st else None
        key = (st.generation, sync.id) if i_am_primary and sync else None
        caught_up = False
        if key is not None and not pgs.known:  # unknown: the latch holds as it was
            caught_up = self.caught_up_for == key
        elif key is not None and pgs.running and pgs.in_recovery is False:
            was = self.caught_up_for
            caught_up, self.caught_up_for = latches.sync_caught_up(
                was, key, pgs.sync_flush.value if pgs.sync_flush else None, pgs.wal.value if pgs.wal else None,
                st.init_wal)
            if caught_up and was != self.caught_up_for:
                log.info("sync_caught_up", sync=key[1], flush=str(pgs.sync_flush))
        if caught_up:
            self.held_for = key
        return caught_up, key is not None and self.held_for == key
