"""What the sitter reads in PostgreSQL's own log and errors: that this node cannot follow
its upstream (its history forked), that its upstream no longer keeps the WAL it needs, that
it crashed for lack of space, that clients hold every connection slot. Pure text rules; the
reading is PgManager's (manatee.sitter.pgmanager)."""

from __future__ import annotations

import re
from typing import NamedTuple

# What PostgreSQL's walreceiver or startup process says when this node cannot follow its
# upstream because their histories forked (S4: such a node must be rebuilt, never used).
DIVERGENCE_PATTERNS = re.compile(
    r"is not in this server's history"
    r"|is not a child of this server's timeline"
    # the startup process of an old primary whose last checkpoint lies past the fork
    # (PostgreSQL 15: "requested timeline 2 is not a child of this server's history")
    r"|is not a child of this server's history"
    r"|forked off current database system timeline"
    r"|is ahead of the WAL flush position of this server"
    r"|highest timeline \d+ of the primary is behind recovery timeline"
    r"|requested timeline \d+ does not contain minimum recovery point"
    # ...or cannot start at all because the checkpoint its pg_control names is not in its
    # WAL (seen on an old primary rejoining after a safe-mode recovery). Either way the data
    # is of no use to a standby; the core rebuilds it from its upstream, never a primary.
    r"|invalid primary checkpoint record"
    r"|could not locate a valid checkpoint record"
    # ...or its pg_wal holds a segment of the new timeline cut short: an old primary that
    # joined as a standby while its disk was still full, whose walreceiver PANICked writing
    # that segment ("could not write to log segment 00000004...0A at offset 262144: Disk quota
    # exceeded"). Every start after fails on it, the disk freed or not (nemesis 2026-12-06,
    # seed 20261209: 23 failed starts in 4 minutes until an operator's rebuild).
    r"|but previous recovered WAL file came from timeline"
)
# Two of those are a walsender's words ("requested starting point ..."): this node logs them
# itself when it refuses one of ITS standbys (an old primary rejoining below it with a torn
# or forked WAL), and that says nothing of its own WAL. They count only as quoted by my own
# walreceiver ("could not start WAL streaming: ERROR: ...", "could not receive data from WAL
# stream: ..."): read as mine, a sync rebuilt itself when the old primary rejoined (F19).
WALSENDER_REFUSAL = re.compile(r"requested starting point")
MY_WALRECEIVER = re.compile(r"WAL stream")

# My upstream's walsender refused my walreceiver because the segment it asked for is no longer
# in the upstream's pg_wal (no slot held it, or its slot passed max_slot_wal_keep_size). It
# never comes back there: this standby can follow that upstream again only after a rebuild.
# Counted only as quoted by my own walreceiver (the same line from my walsender is about one
# of MY standbys), and only when it failed so WAL_GONE_MIN_LINES times since my upstream was
# last set: a walreceiver of the previous upstream may log one more line after the change.
WAL_GONE = re.compile(r"requested WAL segment (\S+) has already been removed")
WAL_GONE_MIN_LINES = 3


# PostgreSQL crashed because it could not write (WAL or a data file) for lack of space: a
# dataset quota reached (EDQUOT) or a full pool (ENOSPC). It PANICs (the postmaster then
# restarts it, and a restart that frees a little space makes it look healthy until the next
# WAL segment), so the primary's sitter gives way to its sync (F19).
#: a PANIC because the disk takes no writes: full, or read-only (sandbox trial 2026-12-06: the
#: primary's dataset set readonly=on; it PANICked at each restart and the primary gave way only
#: after primaryStartTimeout, 12.5 s; a restart cures neither)
DISK_FULL_PANIC = re.compile(r"PANIC:.*(?:No space left on device|Disk quota exceeded|Read-only file system)")
#: a standby's walreceiver that cannot write the WAL it receives (it exits FATAL and is started
#: again each second, the standby never crashing): the same fact for a standby. Sandbox trial
#: 2026-12-06: the sync's dataset read-only; its sitter heartbeated on and the primary waited
#: for its flush 12 s (the stall bound) before it named the async its sync
WAL_WRITE_REFUSED = re.compile(
    r"FATAL:.*\"pg_wal/[^\"]*\".*(?:No space left on device|Disk quota exceeded|Read-only file system)")


def disk_full_in(text: str) -> str | None:
    """The last line of PostgreSQL's log `text` that says it crashed, or its walreceiver could
    not write WAL, because its disk takes no writes (no space, or read-only), or None."""
    last = max((m for rx in (DISK_FULL_PANIC, WAL_WRITE_REFUSED) for m in rx.finditer(text)),
               key=lambda m: m.start(), default=None)
    if last is None:
        return None
    end = text.find("\n", last.end())
    return text[text.rfind("\n", 0, last.start()) + 1:end if end >= 0 else len(text)].strip()


def diverged_in(text: str) -> bool:
    """Whether PostgreSQL's log `text` says that this node cannot follow its upstream."""
    for m in DIVERGENCE_PATTERNS.finditer(text):
        end = text.find("\n", m.end())
        line = text[text.rfind("\n", 0, m.start()) + 1:end if end >= 0 else len(text)]
        if not WALSENDER_REFUSAL.search(line) or MY_WALRECEIVER.search(line):
            return True
    return False


def wal_gone_in(text: str) -> str | None:
    """The WAL segment my upstream no longer has, if PostgreSQL's log `text` says at least
    WAL_GONE_MIN_LINES times that my walreceiver asked for it and was refused; else None."""
    seen, last = 0, None
    for m in WAL_GONE.finditer(text):
        end = text.find("\n", m.end())
        if MY_WALRECEIVER.search(text[text.rfind("\n", 0, m.start()) + 1:end if end >= 0 else len(text)]):
            seen, last = seen + 1, m.group(1)
    return last if seen >= WAL_GONE_MIN_LINES else None


# PostgreSQL refused a connection because clients hold every slot (F20): it is busy, not sick.
CROWDED = re.compile(r"too many clients already|remaining connection slots are reserved")

# PostgreSQL's wraparound protection: the oldest unfrozen transaction ID (or MultiXact) of some
# database is within 3 million of wrapping, so it refuses every statement that needs a new one
# (SQLSTATE 54000; PG 15: "database is not accepting commands to avoid wraparound data loss in
# database ..."; PG 16 adds "that assign new transaction IDs", and MultiXacts say "that generate
# new MultiXactIds"). Every standby replays the same counters and catalogs, so a failover would
# hand the refusal to the next primary: the shard's condition, not this node's sickness.
WRAPAROUND = re.compile(r"not accepting commands.*to avoid wraparound data loss", re.S)


def wraparound_refusal(pgcode: str | None, message: str) -> bool:
    """Whether an error is PostgreSQL's wraparound protection refusing a new transaction ID."""
    return pgcode == "54000" and WRAPAROUND.search(message) is not None


# A standby's setting below the value its primary had when that primary last started (the
# WAL's parameter-change record): PostgreSQL 15 pauses its replay ("hot standby is not
# possible because of insufficient parameter settings"), cannot promote, and shuts down if
# resumed; a start fails the same way until the setting is raised (checked by hand on
# PostgreSQL 15, 2026-12-07). The names: pgparams.HOT_STANDBY_SETTINGS.
LOWER_THAN_PRIMARY = re.compile(r"(\w+) = (\d+) is a lower setting than on the primary server, where its value was (\d+)")


def primary_values_in(text: str) -> tuple[tuple[str, int], ...]:
    """The primary's values of the settings PostgreSQL's log `text` says this standby has too
    little of (the highest per name, sorted by name)."""
    need: dict[str, int] = {}
    for m in LOWER_THAN_PRIMARY.finditer(text):
        need[m.group(1)] = max(need.get(m.group(1), 0), int(m.group(3)))
    return tuple(sorted(need.items()))


class LogFacts(NamedTuple):
    """What PostgreSQL's log says (PgManager._log_facts); the defaults: nothing known."""

    diverged: bool = False
    disk_full: str | None = None
    wal_gone: str | None = None
    primary_values: tuple[tuple[str, int], ...] = ()  # primary_values_in
