"""Daisy-chain heartbeats: a standby tells its upstream's sitter it is alive, over HTTP.

The upstream learns who follows it and whether that standby still reaches it: a sync whose
heartbeats stop is lost even when its ZooKeeper node lingers (a partition between peers only).
A heartbeat counts only when signed with the shard secret (manatee.core.auth) and from a node
registered in the shard's election: a forged one cannot make a stranger the sync that
acknowledges writes.

A standby that gives way (its PostgreSQL cannot serve: its disk is full, it will not start)
stops heartbeating, and first sends one last heartbeat that says so (`"leaving": why`; one
that fails is tried again at the next intervals, up to LEAVING_TRIES): its
upstream counts it as gone at once instead of after `expirationTime`, so a primary replaces
a sync that cannot acknowledge within a cycle, not after the whole expiry (writes wait for
the sync meanwhile). An upstream that does not know the field takes it as one more
heartbeat, then sees the silence as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp

from manatee.core.auth import sign_request
from manatee.core.lsn import Lsn
from manatee.shard.state import STANDBY

LEAVING_MAX = 300  # characters of a leaving heartbeat's reason kept
# A last word that fails is sent again at the next intervals, up to this many tries: lost,
# it costs the upstream the whole expiration time (CI, 2026-12-05: an 8.6 s outage instead
# of ~0.5 s under load).
LEAVING_TRIES = 4


@dataclass
class Heartbeat:
    peer_id: str
    pg_url: str
    wal: str | None
    streaming: bool
    received: float  # time.monotonic()
    leaving: str | None = None  # the standby gives way (why): gone at once, not after the expiry
    free: int | None = None  # bytes free on the standby's dataset as its sitter last saw (None: unknown)
    sick: str | None = None  # why the standby's PostgreSQL is not healthy (lately), as its sitter says


@dataclass
class HeartbeatTable:
    """What this node has heard from its standbys. Time is passed in so the logic is testable."""

    expiration_s: float
    beats: dict[str, Heartbeat] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    expected: dict[str, float] = field(default_factory=dict)  # peer → since when it is my downstream
    _role: str | None = None  # the role and downstream of my last decided target (follow)
    _downstream: str | None = None

    def record(self, hb: Heartbeat) -> str | None:
        """Keep `hb`; returns what is news: "leaving" (it gives way, first said so), "new" (a
        standby not heard from before), or None."""
        prev = self.beats.get(hb.peer_id)
        self.beats[hb.peer_id] = hb
        if hb.leaving is not None:
            return "leaving" if prev is None or prev.leaving != hb.leaving else None
        return "new" if prev is None else None

    def follow(self, role: str, downstream: str | None, now: float) -> None:
        """My decided target is `role` with `downstream`, its state written: called each
        cycle before the target is reached. A new role forgets everything (standbys get one
        expiration period to find me); a new downstream gets one period. Only a change counts:
        named at the write, so a cycle that then fails to reach its target (a full disk) does
        not leave the new sync without its grace, nor extend it by deciding the same again."""
        if role != self._role:
            self.reset(now)
        elif downstream is not None and downstream != self._downstream:
            self.expect(downstream, now)
        self._role, self._downstream = role, downstream

    def expect(self, peer_id: str, now: float | None = None) -> None:
        """`peer_id` has just become my downstream (e.g. my new sync): what I heard from it
        before does not count, and it gets one expiration period to find me (it may still
        be waiting on a request to its old upstream)."""
        self.expected[peer_id] = time.monotonic() if now is None else now

    def fresh(self, peer_id: str, now: float | None = None) -> bool:
        """True if heard within the expiration time. Right after start-up nobody has had the
        chance to heartbeat us yet, so every peer counts as fresh for one expiration period;
        so does a peer for one period after it became my downstream."""
        now = time.monotonic() if now is None else now
        since = max(self.started, self.expected.get(peer_id, self.started))
        hb = self.beats.get(peer_id)
        if hb is not None and hb.received >= since:
            return hb.leaving is None and now - hb.received <= self.expiration_s
        return now - since <= self.expiration_s

    def _recent(self, peer_ids, now: float | None) -> dict[str, Heartbeat]:
        """peer id -> its last heartbeat, for those heard within the expiration time (older
        news: one that moved behind another upstream heartbeats there)."""
        now = time.monotonic() if now is None else now
        return {p: hb for p in peer_ids if (hb := self.beats.get(p)) is not None
                and now - hb.received <= self.expiration_s}

    def gave_way(self, peer_ids, now: float | None = None) -> dict[str, str]:
        """peer id -> why, for those whose last recent heartbeat said they give way."""
        return {p: hb.leaving for p, hb in self._recent(peer_ids, now).items() if hb.leaving}

    def room(self, peer_ids, now: float | None = None) -> dict[str, int]:
        """peer id -> bytes free on its dataset, as its last recent heartbeat said (absent: it
        did not say, or not lately: unknown)."""
        return {p: hb.free for p, hb in self._recent(peer_ids, now).items() if hb.free is not None}

    def unwell(self, peer_ids, now: float | None = None) -> dict[str, str]:
        """peer id -> why its PostgreSQL is not healthy, as its last recent heartbeat said."""
        return {p: hb.sick for p, hb in self._recent(peer_ids, now).items() if hb.sick}

    def freshness(self, peer_ids, now: float | None = None) -> dict[str, bool]:
        return {p: self.fresh(p, now) for p in peer_ids}

    def received_wal(self, peer_ids, now: float | None = None) -> dict[str, int]:
        """peer id -> the WAL position its last recent heartbeat said it may claim (absent:
        none said, or not a WAL position: unknown)."""
        out = {}
        for p, hb in self._recent(peer_ids, now).items():
            if hb.wal:
                with contextlib.suppress(ValueError):
                    out[p] = Lsn.parse(hb.wal).value
        return out

    def observed(self, peer_ids, now: float) -> dict:
        """What the decision core sees of my standbys' heartbeats (Observation.heartbeats,
        gave_way, standby_free, standby_wal and standby_sick)."""
        return {"heartbeats": self.freshness(peer_ids, now), "gave_way": self.gave_way(peer_ids, now),
                "standby_free": self.room(peer_ids, now), "standby_wal": self.received_wal(peer_ids, now),
                "standby_sick": self.unwell(peer_ids, now)}

    def reset(self, now: float | None = None) -> None:
        """Forget everything (our role changed): standbys get one period to find us again."""
        self.beats.clear()
        self.expected.clear()
        self.started = time.monotonic() if now is None else now


def parse_heartbeat(body: object, is_member: Callable[[str], bool], now: float,
                    remote: str | None = None) -> Heartbeat:
    """Validate a POST /heartbeat body; raises ValueError with what is wrong, PermissionError
    when the sender is not a registered member or sends from another address than its own."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    peer_id, pg_url = body.get("id"), body.get("pgUrl")
    if not isinstance(peer_id, str) or not peer_id:
        raise ValueError("'id' (the sender's election id ip:pgPort:backupPort:statusPort) is required")
    if not isinstance(pg_url, str) or not pg_url:
        raise ValueError("'pgUrl' is required")
    wal = body.get("wal")
    if wal is not None and not isinstance(wal, str):
        raise ValueError("'wal' must be an LSN string or null")
    streaming = body.get("streaming", False)
    if not isinstance(streaming, bool):
        raise ValueError("'streaming' must be true or false")
    leaving = body.get("leaving")
    if leaving is not None and (not isinstance(leaving, str) or not leaving.strip()):
        raise ValueError("'leaving' must be a non-empty string (why the standby gives way) or null")
    free = body.get("free")
    if free is not None and (isinstance(free, bool) or not isinstance(free, int) or free < 0):
        raise ValueError("'free' must be a number of bytes (an integer >= 0) or null")
    sick = body.get("sick")
    if sick is not None and not isinstance(sick, str):
        raise ValueError("'sick' must be a string (why the standby's PostgreSQL is not healthy) or null")
    if not is_member(peer_id):
        raise PermissionError(f"{peer_id} is not registered in this shard's election")
    claimed_ip = peer_id.split(":", 1)[0]
    if remote is not None and remote != claimed_ip:
        raise PermissionError(f"heartbeat for {peer_id} came from {remote}, not from {claimed_ip}")
    return Heartbeat(peer_id, pg_url, wal, streaming, now, leaving=leaving.strip()[:LEAVING_MAX] if leaving else None,
                     free=free, sick=(sick.strip()[:LEAVING_MAX] or None) if sick else None)


def beat_status(st, free: int | None = None, wal: int | None = None, sick: str | None = None) -> dict:
    """What my heartbeats tell my upstream: whether I stream (my last PostgreSQL status, None:
    none yet), the WAL position I may claim (`wal`: streamed from my configured upstream since
    my PostgreSQL started, latches.standby_wal; None: none), and the room on my dataset (None:
    unknown), and why my PostgreSQL is not healthy lately (`sick`, None: it is). A primary that
    cannot serve steps down to me only if I hold its WAL up to initWal and my disk is not full
    too; a switchover to me waits while I say I am sick."""
    return {"wal": str(Lsn(wal)) if wal is not None else None, "streaming": bool(st and st.streaming), "free": free,
            "sick": sick}


class HeartbeatSender:
    """Posts a heartbeat to the current upstream every interval. Errors are logged, never fatal."""

    def __init__(self, *, me_id: str, pg_url: str, interval_s: float, timeout_s: float,
                 status: Callable[[], dict], log, source_ip: str | None = None, secret=None,
                 ssl_context=None):
        self.me_id, self.pg_url = me_id, pg_url
        self.secret = secret  # signs each heartbeat; None: insecure mode
        self.ssl_context = ssl_context  # verifies an https:// upstream, presents our certificate
        self.source_ip = source_ip  # bind to our own address: the upstream checks it
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.status = status  # -> {"wal": str|None, "streaming": bool}
        self.log = log
        self.upstream_url: str | None = None
        self.last_ok: float | None = None
        self._failures = 0
        # why my upstream refuses my heartbeats (HTTP 401/403: a shard secret that differs, a
        # source address it does not admit), until one is taken; for /state and manatee-adm
        self.refused: str | None = None
        self._leaving: tuple[str, str] | None = None  # (upstream url, why): the last word, not yet sent
        self._leaving_tries = 0
        self._wake = asyncio.Event()

    def leave(self, why: str) -> None:
        """Stop heartbeating my upstream now, and tell it once that I give way (why), so that
        it counts me gone at once. Without an upstream there is nobody to tell."""
        if self.upstream_url:
            self._leaving, self._leaving_tries = (self.upstream_url, why), 0
            self._wake.set()
        self.upstream_url = None

    def follow(self, target, withheld: bool) -> None:
        """Heartbeat the upstream a standby's target names (nobody while I lead, or withhold
        my heartbeats), a new one at once. The loop calls it as soon as it has decided, before
        the transition's steps: in a soak at T = 1 s (2026-12-05) a new sync's config write
        took 3.9 s on the loaded disk, its heartbeats went on to its old upstream meanwhile,
        and the primary judged it gone and named another: 3 generations in 6 s."""
        url = (target.upstream.status_url if target.role == STANDBY and target.upstream
               and not withheld else None)
        if url is not None and url != self.upstream_url:
            self._wake.set()
            self.refused = None
        self.upstream_url = url

    def take_leaving(self) -> tuple[str, str] | None:
        """The last word not yet sent, (upstream url, why), handed over once."""
        leaving, self._leaving = self._leaving, None
        return leaving

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        # A fresh connection per beat: the upstream's status server closes idle connections
        # (and, when flooded, the oldest idle ones first), so a kept-alive one may be gone.
        connector = aiohttp.TCPConnector(local_addr=(self.source_ip, 0) if self.source_ip else None,
                                         limit=1, force_close=True, ssl=self.ssl_context or True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while not stop.is_set():
                self._wake.clear()
                leaving = self.take_leaving()
                if leaving is not None and not await self._beat(session, leaving[0], leaving=leaving[1]):
                    self._leaving_tries += 1  # again at the next interval, unless I heartbeat again meanwhile
                    if self._leaving_tries < LEAVING_TRIES and self._leaving is None and not self.upstream_url:
                        self._leaving = leaving
                url = self.upstream_url
                if url:
                    await self._beat(session, url)
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
                try:
                    await asyncio.wait(waits, timeout=self.interval_s, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()

    async def _beat(self, session: aiohttp.ClientSession, url: str, leaving: str | None = None) -> bool:
        """One heartbeat; whether the upstream took it."""
        body = {"id": self.me_id, "pgUrl": self.pg_url, **self.status()}
        if leaving is not None:
            body["leaving"] = leaving[:LEAVING_MAX]
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **sign_request(self.secret, "POST", "/heartbeat", data)}
        try:
            async with session.post(f"{url}/heartbeat", data=data, headers=headers) as resp:
                if resp.status != 200:
                    text = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    if resp.status in (401, 403) and leaving is None:
                        self.refused = f"{url}: {text}"
                    raise RuntimeError(text)
            if leaving is not None:
                self.log.info("heartbeat_leaving_sent", upstream=url, why=leaving)
                return True
            self.last_ok = time.monotonic()
            self.refused = None
            if self._failures:
                self.log.info("heartbeat_restored", upstream=url, after_failures=self._failures)
            self._failures = 0
            return True
        except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as e:
            if leaving is not None:  # tried again (LEAVING_TRIES); the silence says the same, later
                self.log.warning("heartbeat_leaving_failed", upstream=url, why=leaving, error=str(e) or type(e).__name__,
                                 tries=self._leaving_tries + 1)
                return False
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 60 == 0:
                self.log.warning("heartbeat_failed", upstream=url, error=str(e) or type(e).__name__,
                                 failures=self._failures)
            return False
