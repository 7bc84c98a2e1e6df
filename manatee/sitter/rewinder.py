"""A rebuild by ``pg_rewind`` (the shell of manatee.shard.rebuildpath): gather the facts,
keep the data aside as a ZFS snapshot, measure with a dry run, rewind, and on any failure
roll the dataset back to the snapshot so that the ZFS restore that follows starts from the
data as it was. A half-rewound data directory is never left to be used: if even the
rollback fails, its control file is moved aside (PostgreSQL then sees no database, and the
sitter restores it whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from manatee.core.aio import finish_even_if_cancelled
from manatee.core.pg import rewind as pgrewind
from manatee.core.pg.client import PgClient
from manatee.core.pg.runas import PgError
from manatee.core.pgquote import render_conninfo
from manatee.core.restore.outcome import RestoreProgress
from manatee.core.zfs import Snapshot, Zfs, ZfsError
from manatee.shard import rebuildpath as rp
from manatee.shard.pgurl import PgUrl
from manatee.shard.state import Peer

ZFS_TIMEOUT_S = 30.0  # one zfs snapshot/rollback/destroy
CONTROL_TIMEOUT_S = 10.0  # pg_controldata
DRY_RUN_TRIES, DRY_RUN_PAUSE_S = 5, 1.0
SNAPSHOT_PREFIX = "manatee-rewind-"  # never a snapshotter's name (13 digits): it leaves it alone
MB = 1 << 20


@dataclass(frozen=True)
class RewindResult:
    """A rewind that ran to its end (the restore step reports it like a RestoreResult)."""

    bytes: int  # what pg_rewind said it copies (its MB, in bytes)
    seconds: float
    reason: str
    source: str
    path: str = rp.REWIND


class Rewinder:
    def __init__(self, cfg, log, zfs: Zfs, password: str | None):
        """cfg: SitterConfig; password: the rewind role's (None: no rewind possible)."""
        p = cfg.postgresMgrCfg
        self.log, self.zfs, self.password = log, zfs, password
        self.enabled, self.timeout, self.max_share = p.rebuildRewind, p.rewind_timeout_s, p.rewindMaxPercent / 100
        self.user, self.bindir, self.data_dir = p.dbUser, Path(p.pgBinDir), Path(p.dataDir)
        self.dataset = p.zfsClientCfg.dataset
        a = p.replicationAuth
        self.ssl = [(k, v) for k, v in (("sslmode", a.sslmode), ("sslrootcert", a.sslrootcert),
                                        ("sslcert", a.sslcert), ("sslkey", a.sslkey)) if v is not None]

    def source_conninfo(self, upstream: Peer) -> str:
        """pg_rewind's connection to the upstream (its password goes in the environment)."""
        return render_conninfo([("host", upstream.ip), ("port", PgUrl.parse(upstream.pg_url).port),
                                ("user", pgrewind.REWIND_ROLE), ("dbname", "postgres"),
                                ("connect_timeout", 5), ("application_name", "manatee-rewind"), *self.ssl])

    async def facts(self, cause: str | None) -> rp.RewindFacts:
        control = None
        if self.enabled and cause == rp.CAUSE_DIVERGED:  # else pg_controldata is not worth its run
            try:
                control = await pgrewind.controldata(self.data_dir, user=self.user, bindir=self.bindir,
                                                     timeout=CONTROL_TIMEOUT_S)
            except (PgError, OSError) as e:
                self.log.warning("rewind_control_unreadable", error=str(e))
        state, checksums, hints = rp.facts_of_control(control)
        return rp.RewindFacts(enabled=self.enabled, cause=cause, has_credentials=self.password is not None,
                              cluster_state=state, checksums=checksums, wal_log_hints=hints)

    async def run(self, upstream: Peer, cause: str | None, progress: Callable[[RestoreProgress], None],
                  ahead: Sequence[Peer] = ()) -> RewindResult | str:
        """Rewind my data to follow `upstream`; the result, or why it did not (the data is
        then as it was: the caller streams instead). `ahead`: the members ahead of the
        upstream, nearest first (they checkpoint before it, see _measure)."""
        facts = await self.facts(cause)
        why = rp.why_not_rewind(facts)
        if why is not None:
            return why
        try:
            snap = await asyncio.wait_for(
                self.zfs.snapshot(self.dataset, f"{SNAPSHOT_PREFIX}{int(time.time() * 1000)}"), ZFS_TIMEOUT_S)
        except (ZfsError, OSError, asyncio.TimeoutError) as e:
            return f"no snapshot to keep my data aside during pg_rewind ({e})"
        t0 = time.monotonic()
        src = self.source_conninfo(upstream)
        try:
            outcome = await self._rewind(upstream, ahead, src, facts.cluster_state, progress)
        except (PgError, OSError, asyncio.TimeoutError) as e:
            outcome = f"pg_rewind failed: {e}"
        except BaseException:  # cancelled: put the data back before going
            await finish_even_if_cancelled(self._put_back(snap))
            raise
        if isinstance(outcome, str):
            await self._put_back(snap)
            return outcome
        await self._drop(snap)
        copied_mb, reason = outcome
        return RewindResult(bytes=copied_mb * MB, seconds=time.monotonic() - t0, reason=reason, source=upstream.pg_url)

    async def _rewind(self, upstream: Peer, ahead: Sequence[Peer], src: str, state: str | None,
                      progress) -> tuple[int, str] | str:
        """The dry run, the choice, the real run: (MB copied, why rewound), or why not rewound.
        `state`: the cluster's state before (pg_controldata)."""
        for name in ("standby.signal", "recovery.signal"):  # single-user recovery refuses standby mode
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.data_dir / name)
        if state not in pgrewind.CLEAN_STATES:
            await pgrewind.finish_crash_recovery(self.data_dir, user=self.user, bindir=self.bindir,
                                                 timeout=self.timeout)
        kw = dict(user=self.user, bindir=self.bindir, password=self.password, timeout=self.timeout)
        dry = await self._measure(upstream, ahead, src, kw)
        choice = rp.choose_by_cost(dry.copy_mb, dry.source_mb, dry.needed, max_share=self.max_share)
        self.log.info("rewind_measured", copy_mb=dry.copy_mb, source_mb=dry.source_mb, diverged_at=dry.diverged_at,
                      path=choice.path, why=choice.reason)
        if choice.path != rp.REWIND:
            return choice.reason
        progress(RestoreProgress(phase="rewinding", size=dry.copy_mb * MB, path=rp.REWIND, reason=choice.reason,
                                 source=upstream.pg_url))
        real = await pgrewind.pg_rewind(self.data_dir, src, **kw)
        missing = await asyncio.wait_for(asyncio.to_thread(self._missing_start_wal), CONTROL_TIMEOUT_S)
        if missing is not None:  # rolled back by the caller: a stream instead
            return f"after pg_rewind the WAL recovery starts from is not there ({missing}): the source recycled it"
        return (real.copy_mb if real.copy_mb is not None else dry.copy_mb), choice.reason

    def _missing_start_wal(self) -> str | None:
        return pgrewind.missing_start_wal((self.data_dir / "backup_label").read_text(errors="replace"),
                                          os.listdir(self.data_dir / "pg_wal"))

    async def _measure(self, upstream: Peer, ahead: Sequence[Peer], src: str, kw: dict) -> pgrewind.RewindReport:
        """pg_rewind's dry run, after a checkpoint down the chain to my upstream: a source's
        control file names its new timeline only after one (on a standby, a restartpoint at
        a checkpoint record of its upstream's), and until then pg_rewind finds "no rewind
        required". A standby may not have replayed that record yet: a few tries."""
        dry = None
        for attempt in range(DRY_RUN_TRIES):
            if attempt:
                await asyncio.sleep(DRY_RUN_PAUSE_S)
            for peer in (*reversed(ahead), upstream):
                await self._checkpoint(peer)
            dry = await pgrewind.pg_rewind(self.data_dir, src, dry_run=True, **kw)
            if dry.needed:
                break
        assert dry is not None
        return dry

    async def _checkpoint(self, peer: Peer) -> None:
        """CHECKPOINT on `peer` as the rewind role, within rewindTimeout (it writes every dirty
        buffer: tens of seconds after a bulk load here); a failure is only logged (the dry run
        then says what it finds)."""
        client = PgClient(peer.ip, PgUrl.parse(peer.pg_url).port, user=pgrewind.REWIND_ROLE, password=self.password,
                          query_timeout=self.timeout, application_name="manatee-rewind", connect_timeout=5)
        try:
            await client.execute(pgrewind.CHECKPOINT_SQL)
        except PgError as e:
            self.log.warning("rewind_checkpoint_failed", peer=peer.id, error=str(e))

    async def _put_back(self, snap: Snapshot) -> None:
        """Roll my dataset back to the snapshot taken before pg_rewind, and drop it. If that
        fails, move the control file aside: a half-rewound directory must not start."""
        try:
            await asyncio.wait_for(self.zfs.rollback(snap.full), ZFS_TIMEOUT_S)
        except (ZfsError, OSError, asyncio.TimeoutError) as e:
            self.log.error("rewind_rollback_failed", snapshot=snap.full, error=str(e))
            control = self.data_dir / "global" / "pg_control"
            with contextlib.suppress(FileNotFoundError):
                os.rename(control, control.with_name("pg_control.rewind-incomplete"))
            return
        self.log.info("rewind_rolled_back", snapshot=snap.full)
        await self._drop(snap)

    async def _drop(self, snap: Snapshot) -> None:
        try:
            await asyncio.wait_for(self.zfs.destroy(snap.full), ZFS_TIMEOUT_S)
        except (ZfsError, OSError, asyncio.TimeoutError) as e:  # only space: the next rewind takes its own
            self.log.warning("rewind_snapshot_kept", snapshot=snap.full, error=str(e))
