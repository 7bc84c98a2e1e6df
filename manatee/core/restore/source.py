"""Which member a rebuilding node takes its stream from.

The upstream is asked first; when it shares no snapshot with this node, the members
ahead of it in the chain (normally the primary) are asked too. Each is asked by a
signed `POST /snapshots/common` from our own address (the backupserver admits only
shard members, as for a backup request), offering our snapshots' guids; the answer is
the newest one it shares, and starts no send. The rule itself is pure
(manatee.core.incremental.choose_source). Every question has a deadline; a failed or
unparsable answer is *unknown*, never "shares nothing", and an unknown upstream is
asked for the stream as before (an old backupserver answers 404 here and still serves
a full stream, or an increment from the offer in the request itself) — unless it gave
no answer at all (a timeout, a refused connection) and a member ahead did: then that
member sends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import aiohttp

from manatee.core import incremental as inc
from manatee.core.auth import ShardSecret
from manatee.core.restore.job import brief, json_object, job_session, signed_post
from manatee.core.zfs import Snapshot, Zfs, ZfsError

ASK_TIMEOUT = 5.0  # one member's answer


@dataclass(frozen=True)
class Candidate:
    """A member that could send the stream: its name (for the reason) and backupserver URL."""

    name: str
    backup_url: str


@dataclass(frozen=True)
class Chosen:
    """The member to ask for the stream, and why it was chosen (None: the upstream, nothing asked)."""

    source: Candidate
    reason: Optional[str] = None


async def ask_common(http: aiohttp.ClientSession, who: Candidate, secret: Optional[ShardSecret],
                     offer: list[inc.SnapshotRef], timeout: float = ASK_TIMEOUT) -> inc.SourceOffer:
    """What `who` shares with our offer; unknown (known=False) on any failure."""
    url = f"{who.backup_url.rstrip('/')}/snapshots/common"
    try:
        status, text = await asyncio.wait_for(
            signed_post(http, url, secret, {"snapshots": [r.to_json() for r in offer]}), timeout)
        if status == 404:
            return inc.SourceOffer(who.name, known=False, why_unknown="its backupserver does not answer the question")
        if status != 200:
            return inc.SourceOffer(who.name, known=False, why_unknown=f"HTTP {status}: {brief(text, 200)}")
        return inc.SourceOffer(who.name, inc.common_from_json(json_object(text).get("common")))
    except ValueError as e:  # it answered, unreadably
        return inc.SourceOffer(who.name, known=False, why_unknown=f"{type(e).__name__}: {e}"[:300])
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:  # no answer at all
        return inc.SourceOffer(who.name, known=False, why_unknown=f"{type(e).__name__}: {e}"[:300], silent=True)


async def choose(zfs: Zfs, dataset: str, upstream: Candidate, others: Sequence[Candidate], *,
                 secret: Optional[ShardSecret], listen_host: str, ssl_context: Any = None,
                 log: Any = None) -> Chosen:
    """The member to take the stream from. Without `others` the upstream, unasked; with
    nothing of ours to offer, the upstream if it answers (the restore itself then says why
    the stream is full), else a member ahead that answers."""
    if not others:
        return Chosen(upstream)
    try:
        ours: list[tuple[Snapshot, str]] = await asyncio.wait_for(zfs.list_snapshot_guids(dataset), 30.0) \
            if await asyncio.wait_for(zfs.exists(dataset), 30.0) else []
    except (ZfsError, asyncio.TimeoutError) as e:
        if log is not None:
            log.warning("restore_source_listing_failed", error=str(e))
        return Chosen(upstream)
    offer = inc.offered(ours)
    async with job_session(listen_host, ssl_context) as http:
        # with nothing to offer the question only tells whether the upstream answers at all
        up = await ask_common(http, upstream, secret, offer)
        if not offer and not up.silent:
            return Chosen(upstream)
        rest = list(await asyncio.gather(*(ask_common(http, c, secret, offer) for c in others))) \
            if (up.known and up.common is None) or up.silent else []
    choice = inc.choose_source(up, rest)
    if log is not None:
        log.info("restore_source", source=choice.name, why=choice.reason,
                 asked=[(o.name, o.common.name if o.common else None, o.known) for o in (up, *rest)])
    if choice.name == upstream.name and choice.expects_incremental:
        return Chosen(upstream)  # the usual case: the restore's own reason says it all
    by_name = {c.name: c for c in (upstream, *others)}
    return Chosen(by_name[choice.name], choice.reason)
