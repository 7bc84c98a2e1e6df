"""The backupserver's check for stale base marks (manatee.core.bases, "Stale marks").

Every `baseCheckInterval` (the first one interval after the start): read this dataset's
`manatee:bases` marks; for each mark naming a current member, offer that member exactly
the marked snapshot (its guid) by `POST /snapshots/common` on its backupserver (signed,
from our own address, as a rebuilding sitter asks: manatee.core.restore.source); then,
holding the sender's mark lock so that no mark is written meanwhile, read the marks again
and release those the pure rule (`stale_marks`) says are stale — a peer that said "I do
not hold it" at this check and at the previous one. One `base_released` line per release,
one `base_check` summary per check. Every zfs call and every question has a deadline; a
failed check is logged (`base_check_failed`), forgets what the previous check saw (the
count starts again) and the next check tries again: the daemon never stops for it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Awaitable, Callable, Collection, Mapping, Optional

from manatee.core.auth import ShardSecret
from manatee.core.bases import BASES_PROP, MARK_TIMEOUT_S, Held, Mark, StaleCheck, held, is_marked, questions, stale_marks
from manatee.core.incremental import SnapshotRef, SourceOffer
from manatee.core.restore.job import job_session
from manatee.core.restore.source import ASK_TIMEOUT, Candidate, ask_common
from manatee.core.zfs import ZfsError

ZFS_TIMEOUT_S = 60.0  # each zfs call of a check (the daemon's own zfs deadline, for a zfs given without one)
MEMBERS_TIMEOUT_S = 30.0  # reading the election from ZooKeeper
MAX_QUESTIONS = 64  # marks asked about per check (oldest snapshots first); more is not a real dataset
PARALLEL_QUESTIONS = 4

# (address, its backupserver URL, the one snapshot offered) -> its answer (known=False: unknown)
Ask = Callable[[str, str, SnapshotRef], Awaitable[SourceOffer]]
# the members' addresses -> their backupserver URLs (raises when the membership cannot be read)
PeerUrls = Callable[[], Awaitable[Mapping[str, str]]]
Reaped = Callable[[], Awaitable[Collection[str]]]  # the addresses an operator reaped (ShardMembership.reaped)


def http_asker(listen_host: str, secret: Optional[ShardSecret], ssl_context: Any = None,
               timeout: float = ASK_TIMEOUT) -> Ask:
    """Ask a member's backupserver, signed and from our own address (it admits members only)."""
    async def ask(address: str, url: str, ref: SnapshotRef) -> SourceOffer:
        async with job_session(listen_host, ssl_context) as http:
            return await ask_common(http, Candidate(address, url), secret, [ref], timeout=timeout)
    return ask


class BaseMarkCheck:
    """Releases the marks peers say are stale; `absent` is what the previous check saw."""

    def __init__(self, zfs: Any, dataset: str, *, peer_urls: PeerUrls, ask: Ask, lock: asyncio.Lock,
                 log: Any, zfs_timeout: float = ZFS_TIMEOUT_S, ask_timeout: float = ASK_TIMEOUT,
                 write_timeout: float = MARK_TIMEOUT_S, reaped: Optional[Reaped] = None) -> None:
        self.zfs = zfs
        self.dataset = dataset
        self.peer_urls = peer_urls
        self.reaped = reaped
        self.ask = ask
        self.lock = lock
        self.log = log
        self.zfs_timeout = zfs_timeout
        self.ask_timeout = ask_timeout
        self.write_timeout = write_timeout
        self.absent: frozenset[Mark] = frozenset()

    async def run(self, interval: float) -> None:
        """Check every `interval` seconds until cancelled; a failed check is logged, never raised."""
        while True:
            await asyncio.sleep(interval)
            await self.check_logged()

    async def check_logged(self) -> Optional[StaleCheck]:
        try:
            return await self.check()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the next check tries again; marks only stay
            self.absent = frozenset()
            self.log.warning("base_check_failed", dataset=self.dataset, error=f"{type(e).__name__}: {e}"[:500])
            return None

    async def check(self) -> Optional[StaleCheck]:
        """One check (raises on a zfs or membership failure: nothing was released then).
        None when the dataset carries no mark or does not exist (nobody is asked)."""
        try:
            marks = await self._zfs(self.zfs.snapshot_bases(self.dataset))
        except ZfsError as e:
            if not e.not_found:
                raise
            marks = {}  # no dataset (yet, or set aside by a restore): no marks, no warning
        if not any(is_marked(v) for v in marks.values()):
            self.absent = frozenset()
            self.log.debug("base_check", dataset=self.dataset, marks=0)
            return None
        urls = dict(await asyncio.wait_for(self.peer_urls(), MEMBERS_TIMEOUT_S))
        reaped = set(await asyncio.wait_for(self.reaped(), MEMBERS_TIMEOUT_S)) if self.reaped else set()
        asked = questions(marks, urls)[:MAX_QUESTIONS]
        answers = await self._answers(asked, urls) if asked else {}
        async with asyncio.timeout(self.write_timeout), self.lock:
            fresh = await self.zfs.snapshot_bases(self.dataset)
            result = stale_marks(fresh, urls, answers, self.absent, reaped)
            await self._write(result)
        self.absent = result.absent
        kept = Counter(result.kept.values())
        (self.log.info if result.released else self.log.debug)(
            "base_check", dataset=self.dataset, asked=len(asked), released=len(result.released),
            **{f"kept_{why}": n for why, n in sorted(kept.items())})
        return result

    async def _answers(self, asked: list[Mark], urls: Mapping[str, str]) -> dict[Mark, Held]:
        guids = {s.full: g for s, g in await self._zfs(self.zfs.list_snapshot_guids(self.dataset))}
        gate = asyncio.Semaphore(PARALLEL_QUESTIONS)

        async def one(mark: Mark) -> Held:
            snap, peer = mark
            guid = guids.get(snap)
            if not guid:
                return Held.UNKNOWN  # destroyed since the marks were read, or no guid to offer
            async with gate:
                try:
                    answer = await asyncio.wait_for(
                        self.ask(peer, urls[peer], SnapshotRef(snap.partition("@")[2], guid)), self.ask_timeout + 1)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - a question that fails is unknown, as a timeout
                    self.log.debug("base_check_unanswered", snapshot=snap, peer=peer, error=repr(e)[:300])
                    return Held.UNKNOWN
            return held(answer, guid)

        return dict(zip(asked, await asyncio.gather(*(one(m) for m in asked))))

    async def _write(self, result: StaleCheck) -> None:
        why = {(snap, peer): reason for snap, peer, reason in result.released}
        for snap, value in sorted(result.writes.items()):
            if value is None:
                await self.zfs.inherit(snap, BASES_PROP)
            else:
                await self.zfs.set(snap, BASES_PROP, value)
            for (s, peer), reason in sorted(why.items()):
                if s == snap:
                    self.log.info("base_released", snapshot=snap, peer=peer, why=reason, remaining=value or "")

    async def _zfs(self, call: Awaitable[Any]) -> Any:
        return await asyncio.wait_for(call, self.zfs_timeout)
