"""The sitter's PostgreSQL: one child process, configured for the role the decision core chose.

It knows nothing of ZooKeeper or topology: it is told "be a primary (read-only or not) with this
sync" or "be a standby of that upstream", and it reports what PostgreSQL is doing (WAL position,
streaming or not, diverged from its upstream, sync caught up) for the next decision.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from manatee.core import nofollow
from manatee.core import pg as pgmod
from manatee.core.lsn import Lsn
from manatee.core.pg import rewind
from manatee.core.pg.walpos import STANDBY_WAL_SQL
from manatee.core.pgconfig import (
    RoleConfig, install_base_config, parameter_settings, role_settings,
)
from manatee.sitter import promotion
from manatee.sitter.configwriter import ConfigWriter
from manatee.sitter.overrides import ACCESS_SQL, OverrideGuard
from manatee.sitter.pglog import CROWDED, LogFacts, disk_full_in, diverged_in, primary_values_in, wal_gone_in
from manatee.sitter.primaryfloors import PrimaryFloors

ORPHAN_SCAN_TIMEOUT_S = 5.0  # the /proc scan for a PostgreSQL left by a sitter that died
PROMOTE_POLL_S = 0.01  # a promoting node is asked this often whether it has left recovery
# WAL segment size of a new shard (initdb --wal-segsize). A promotion copies the whole last
# segment to the new timeline and fsyncs it, and the standbys that follow the new timeline
# stream that segment again from its start: both scale with the segment size (16 MB: 0.2-0.4 s
# of a takeover on a loaded 2-core host with ZFS; see docs/benchmarks.md).
WAL_SEGMENT_MB = 1

LOG_READ_MAX = 4 << 20  # the newest part of PostgreSQL's log read each cycle (bytes)


#: The WAL segment archive_command last failed for, and when, while it has not succeeded since
#: (pg_stat_archiver; NULL when archiving is off or works): PostgreSQL keeps every segment
#: not archived, so a failing archive fills the disk.
ARCHIVE_FAILING_SQL = ("(select case when last_failed_time > coalesce(last_archived_time, '-infinity')"
                       " then last_failed_wal || ' at ' || last_failed_time::text end from pg_stat_archiver)")


@dataclass(frozen=True)
class PgStatus:
    running: bool
    healthy: bool
    in_recovery: bool | None
    wal: Lsn | None          # primary: current WAL; standby: the greater of received and replayed
    streaming: bool
    diverged: bool
    sync_flush: Lsn | None   # primary: its sync's flush position (None: sync not streaming from me)
    timeline: int | None
    read_only: bool | None = None            # default_transaction_read_only as PG reports it
    sender: tuple[str, int] | None = None    # standby: whom the walreceiver streams from
    error: str | None = None                 # running but the status query failed: why (unknown)
    timed_out: bool = False                  # ...and it failed because PG did not answer in time
    crowded: bool = False                    # ...or because clients hold every connection slot
    pending_restart: tuple[str, ...] = ()    # settings changed that only a restart applies (pg_settings)
    parameters_gen: int = 0                  # PgManager.parameters_gen PG had been reloaded with
    sync_flush_failed: bool = False          # primary: the sync's flush position could not be read (unknown)
    disk_full: str | None = None             # the newest PANIC for lack of space since the sitter started it
    wal_gone: str | None = None              # standby, not streaming: the segment my upstream removed (wal_gone_in)
    replay_paused: bool | None = None        # standby: pg_wal_replay_pause() asked (replaypause.py); None: unknown
    not_superuser: bool = False              # my role lost SUPERUSER (ALTER ROLE ... NOSUPERUSER): promote, reload fail
    archive_failing: str | None = None       # archive_command failed since its last success: "<wal> at <time>"
    below_primary: bool = False              # standby: its log says a setting is below the primary's (primaryfloors.py)

    @property
    def known(self) -> bool:
        """Not running, or running and it answered: what it says is a fact."""
        return not self.running or self.healthy


@dataclass(frozen=True)
class RoleSpec:
    """What the sitter wants PostgreSQL to be."""

    role: str                       # "primary" | "standby"
    read_only: bool = True
    sync_app_name: str | None = None
    upstream: tuple[str, int] | None = None


class PgConfigError(RuntimeError):
    """PostgreSQL's config files could not be written (e.g. ENOSPC/EDQUOT): an observation
    ("I cannot configure my PostgreSQL"), not a crash."""


ORPHAN_WHY = ("a PostgreSQL of my data directory ran that this sitter did not start (its previous process "
              "died): I start it again myself")
# sandbox trial 2026-12-06: an operator's `pg_ctl restart` on the primary; every start of the
# sitter failed on the PostgreSQL it left ("already running") until the primary stepped down
# after primaryStartTimeout (13.6 s without writes, a failover)
FOREIGN_WHY = ("a PostgreSQL of my data directory ran that this sitter did not start (by hand, e.g. pg_ctl?): "
               "I start it again myself, in my role (use manatee-adm restart, not pg_ctl)")


class PgManager:
    def __init__(self, cfg, log, secret=None):
        """cfg: SitterConfig; secret: the shard secret (the rewind role's password derives from it)."""
        p = cfg.postgresMgrCfg
        self.cfg, self.log = cfg, log
        self.rewind_password = rewind.rewind_password(secret, p.rebuildRewind)
        self.user = p.dbUser
        self.bindir = Path(p.pgBinDir)
        self.data_dir = Path(p.dataDir)
        # Default: private (0700, dbUser) under root's /run/manatee, not a guessable /tmp name.
        self.socket_dir = Path(p.socketDir or f"/run/manatee/{cfg.ip}-{cfg.postgresPort}")
        self.log_file = self.data_dir.parent / "postgresql.log"
        self.app_name = cfg.pg_url
        self.ops_timeout = p.ops_timeout_s
        # Every status query has this deadline; PostgreSQL not answering for healthChkTimeout
        # is hung (the shell kills and restarts it).
        self.health_timeout = p.health_timeout_s
        self.status_timeout = max(0.5, min(self.health_timeout / 2, 2.0))
        self.proc: pgmod.PostgresProcess | None = None
        # The sitter's way into its own PostgreSQL: one persistent connection over the local
        # socket, opened at start, shared (serialized) by status, reload, promote and metrics.
        self.client = pgmod.PgClient(str(self.socket_dir), cfg.postgresPort, user=p.dbUser,
                                     connect_timeout=max(1, int(p.health_timeout_s)),
                                     query_timeout=self.health_timeout, persistent=True,
                                     application_name="manatee-sitter")
        self.config_error: str | None = None  # the last config write failed: why
        self.writer = ConfigWriter()  # the files' fsyncs in a thread, never on the event loop
        self.floors = PrimaryFloors()  # settings raised to the primary's values (primaryfloors.py)
        self.spec: RoleSpec | None = None
        self.members: tuple[str, ...] = ()
        self._started_at: float | None = None
        self._log_offset, self.started_once = 0, False
        # where in PostgreSQL's log the lines about my current upstream start (wal_gone_in):
        # None until the next read after primary_conninfo changed, which sets it to the log's end
        self._upstream_log_from: int | None = 0
        self._restart_pending = False
        self._reload_pending = False
        self._roles_ok = False
        # postgresMgrCfg.parameters: replaced at run time by set_parameters() (SIGHUP / POST /reload)
        self.parameters: dict[str, str] = dict(p.parameters)
        # Generations of the parameters: set (set_parameters), written (configure), applied
        # (apply_pending reloaded PG with them); a PgStatus carries the applied one it saw.
        self.parameters_gen = self._written_gen = self._applied_gen = 0
        self._reload_unseen: tuple[str, int] | None = None  # (load time before, gen before) a reload
        self.not_superuser = False  # my role lost SUPERUSER, as the last status query said
        self.overrides = OverrideGuard(log)  # ALTER SYSTEM must not undo manatee.conf (overrides.py)
        if p.replicationAuth.user == p.dbUser:
            log.warning("pg_replication_as_superuser", user=p.dbUser,
                        hint="its password opens every database: see docs/security.md")

    # ------------------------------------------------------------------ data directory

    def has_data(self) -> bool:
        """A usable data directory: initdb finished (pg_control is written last)."""
        return (self.data_dir / "PG_VERSION").exists() and (self.data_dir / "global" / "pg_control").exists()

    async def check_data(self, timeout: float) -> bool:
        """has_data() off the event loop, within `timeout` (asyncio.TimeoutError: hung storage)."""
        return await asyncio.wait_for(asyncio.to_thread(self.has_data), timeout)

    def has_standby_signal(self) -> bool:
        return (self.data_dir / "standby.signal").exists()

    async def initdb(self) -> None:
        self.log.info("pg_initdb", data_dir=str(self.data_dir))
        await pgmod.initdb(self.data_dir, user=self.user, bindir=self.bindir, password=self._superuser_password(),
                           wal_segsize_mb=WAL_SEGMENT_MB)
        tmpl = self.cfg.postgresMgrCfg.postgresConf
        if tmpl and Path(tmpl).exists():
            install_base_config(self.data_dir, Path(tmpl), user=self.user)

    def _superuser_password(self) -> str | None:
        """The superuser's password set at initdb: the admin password if the admin role is
        the superuser; the replication password if the superuser still replicates (an old
        config); else none (the superuser is reachable by the local socket only)."""
        p = self.cfg.postgresMgrCfg
        if p.admin_user == p.dbUser:
            return p.adminAuth.password
        if p.replicationAuth.user == p.dbUser:
            return p.replicationAuth.password
        return None

    async def ensure_roles(self) -> None:
        """On a running primary: create the replication role (and a separate admin role, and
        the rewind role with its grants) if missing. Never fatal: a failure is logged and tried again at the next configure."""
        p = self.cfg.postgresMgrCfg
        if self._roles_ok or not self.running:
            return
        wanted = []
        if p.replicationAuth.user != p.dbUser:
            wanted.append((p.replicationAuth.user, p.replicationAuth.password, True, False))
        if p.admin_user not in (None, p.dbUser):
            wanted.append((p.admin_user, p.adminAuth.password, False, True))
        try:
            if (wanted or self.rewind_password is not None) and await self.client.in_recovery():
                return
            for name, password, replication, superuser in wanted:
                await pgmod.ensure_role(self.client, name, password, replication=replication, superuser=superuser)
            if self.rewind_password is not None:  # and its grants (idempotent)
                await pgmod.ensure_role(self.client, rewind.REWIND_ROLE, self.rewind_password)
                await self.client.execute(f"begin read write; set local synchronous_commit = local; "
                                          f"{'; '.join(rewind.GRANTS)}; commit")
            self._roles_ok = True
        except pgmod.PgError as e:
            self.log.warning("pg_ensure_roles_failed", error=str(e))

    # ------------------------------------------------------------------ role

    def role_config(self, spec: RoleSpec) -> RoleConfig:
        p = self.cfg.postgresMgrCfg
        auth, admin = p.replicationAuth, p.adminAuth
        ssl = {"sslmode": auth.sslmode, "sslrootcert": auth.sslrootcert, "sslcert": auth.sslcert, "sslkey": auth.sslkey}
        return RoleConfig(
            role=spec.role,
            listen_address=self.cfg.ip,
            port=self.cfg.postgresPort,
            socket_dir=str(self.socket_dir),
            application_name=self.app_name,
            sync_standby=spec.sync_app_name if spec.role == "primary" or spec.upstream is None else None,
            read_only=spec.read_only,
            upstream=spec.upstream if spec.role == "standby" else None,
            replication_user=auth.user,
            replication_password=auth.password,
            extra_replication_users=tuple(auth.migrationUsers),
            replication_ssl=tuple((k, v) for k, v in ssl.items() if v is not None),
            replication_tcp_user_timeout_ms=p.replicationTcpUserTimeout,
            # bare addresses: one host each, /32 for IPv4 and /128 for IPv6
            members=tuple([*self.members, *auth.replicationCidrs]),
            client_cidrs=(tuple(["127.0.0.1/32", *self.members, *auth.clientCidrs])),
            auth_method=auth.method,
            superuser=p.dbUser,
            admin_user=p.admin_user,
            admin_cidrs=tuple(admin.cidrs) if admin else (),
            admin_method=admin.method if admin else "scram-sha-256",
            rewind_user=rewind.REWIND_ROLE if self.rewind_password is not None else None,
            synchronous_commit=p.synchronousCommit,
            max_slot_wal_keep_size=p.maxSlotWalKeepSize,
            cluster_name=self.cfg.zoneId[:40],
            parameters=tuple(self.floors.over(self.parameters).items()),
        )

    def set_parameters(self, parameters: dict[str, str]) -> bool:
        """New operator parameters (a reload); True if they differ. The sitter's next cycle
        writes them (configure) and reloads PostgreSQL (apply_pending): never a restart."""
        if dict(parameters) == self.parameters:
            return False
        self.log.info("pg_parameters_changed", old=self.parameters, new=dict(parameters))
        self.parameters = dict(parameters)
        self.parameters_gen += 1
        return True

    @property
    def raised_to_primary(self) -> dict[str, int]:
        return self.floors.above(self.parameters)

    @property
    def parameters_dirty(self) -> bool:
        """Parameters set but not yet written into manatee.conf."""
        return self._written_gen != self.parameters_gen

    async def configure(self, spec: RoleSpec, members: tuple[str, ...]) -> None:
        """Write PG's files for `spec`; what it takes to apply them waits for apply_pending()
        (or the next start, which reads them anyway)."""
        self.members = tuple(sorted(set(members) | {self.cfg.ip}))
        gen = self.parameters_gen  # (a reload may set newer ones while the files are written)
        try:
            change = await self.writer.write(self.data_dir, self.role_config(spec), user=self.user,
                                             timeout=self.ops_timeout)
        except OSError as e:  # TimeoutError too: the disk stalls
            first = self.config_error != str(e)
            self.config_error = str(e)
            if first:  # logged once per change, not every cycle
                self.log.error("pg_config_write_failed", role=spec.role, error=str(e))
            raise PgConfigError(f"cannot write PostgreSQL's config for the {spec.role} role: {e}") from e
        if self.config_error is not None:
            self.log.info("pg_config_write_restored", role=spec.role)
            self.config_error = None
        if self.spec is None or (self.spec.role, self.spec.upstream) != (spec.role, spec.upstream):
            self._upstream_log_from = None
        self.spec = spec
        self._written_gen = gen
        floors_new = self.floors.written()  # (a stopped PostgreSQL reads them at its start)
        if self.running:
            self._restart_pending |= change.restart_needed or floors_new
            self._reload_pending |= change.reload_needed
        if spec.role == "primary" and self.running:
            await self.ensure_roles()  # (a stopped PostgreSQL gets its roles at start)
        if change.changed:
            self.log.info("pg_configured", role=spec.role, read_only=spec.read_only,
                          sync=spec.sync_app_name, upstream=spec.upstream, changed=list(change.changed))

    async def apply_pending(self) -> str:
        """Make written settings take effect: restart if they need it, else reload."""
        before = self._applied_gen
        self._applied_gen = self._written_gen  # PG reads them at its next start in any case
        if not self.running:
            self._restart_pending = self._reload_pending = False
            return "not running"
        if self._restart_pending:
            await self.stop(mode="fast")
            await self.start()
            return "restarted"
        if self._reload_pending:
            self._reload_pending = False
            # the backend answering our status queries reads the files at its next command
            # after the SIGHUP reaches it: until its load time moves, a status is of the old
            # settings (pending_restart not yet known), so it reports the generation before
            rows = await self.client.query("select pg_conf_load_time()::text as t, pg_reload_conf()",
                                           timeout=self.health_timeout)
            t = rows[0].get("t") if rows else None
            self._reload_unseen = (t, before) if t is not None else None
            return "reloaded"
        return "unchanged"

    async def promote(self) -> None:
        """Standby → primary, in place (no restart: the promoted node keeps its connections);
        asked every PROMOTE_POLL_S whether it is done, within opsTimeout. Queries on this node
        that hold back the replay the promotion needs are ended (promotion.py)."""
        await promotion.promote(self.client, self.log, deadline_s=self.ops_timeout, poll_s=PROMOTE_POLL_S,
                                query_timeout=self.health_timeout)

    # ------------------------------------------------------------------ process

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    async def start(self, ready_timeout: float | None = None) -> None:
        """Start PostgreSQL and wait until it accepts connections: at most `ready_timeout`
        seconds (default opsTimeout), after which PgError is raised and the process is left to
        the next cycle's health check (a primary's step-down budget bounds this wait)."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        await self.kill_orphan(why=FOREIGN_WHY)  # else this start fails on it ("already running")
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._upstream_log_from, self.started_once = 0, True  # (the log is read from here on)
        self.proc = self._new_process()
        self.client.close()
        await self.proc.start()
        self._restart_pending = self._reload_pending = False
        self._started_at = time.monotonic()
        await self.proc.wait_ready(self.ops_timeout if ready_timeout is None else ready_timeout)
        try:  # at once, before clients can take every connection slot
            await self.client.connect(timeout=self.health_timeout)
        except pgmod.PgError as e:
            self.log.warning("pg_monitoring_connection_failed", error=str(e))
        self.log.info("pg_started", pid=self.proc.pid, role=self.spec.role if self.spec else None)
        self._roles_ok = False
        if self.spec is not None and self.spec.role == "primary":
            await self.ensure_roles()

    def _new_process(self) -> pgmod.PostgresProcess:
        return pgmod.PostgresProcess(self.data_dir, user=self.user, bindir=self.bindir,
                                     log_file=self.log_file, socket_dir=self.socket_dir,
                                     host=self.cfg.ip, port=self.cfg.postgresPort)

    async def stop(self, mode: str = "fast") -> None:
        self.client.close()
        if self.proc is not None:
            await self.proc.stop(mode=mode, timeout=min(self.ops_timeout, 10))
            self.log.info("pg_stopped", mode=mode)
        self.proc = None
        self._started_at = None

    async def kill_orphan(self, timeout: float = ORPHAN_SCAN_TIMEOUT_S, why: str = ORPHAN_WHY) -> list[int]:
        """Kill a PostgreSQL of my data directory that this sitter did not start (the pids; []
        if none): its previous process died and left it running, or (at each start) someone
        started it by hand. It is not my child, so I could neither watch nor stop it, and
        every start would fail on it ("already running"); its role may be stale. SIGKILL, as
        for a fenced primary: no shutdown checkpoint (a primary's would fork its WAL). The
        caller starts it again in its role."""
        if self.running:
            return []
        try:
            pids = await asyncio.wait_for(asyncio.to_thread(self._new_process().processes), timeout)
            if pids:
                self.log.warning("pg_orphan_killed", pids=pids, why=why)
                await self._new_process().kill()
        except (asyncio.TimeoutError, pgmod.PgError) as e:  # the cycle's own kill paths remain
            self.log.error("pg_orphan_check_failed", error=str(e) or type(e).__name__)
            return []
        return pids

    async def kill(self) -> None:
        """Stop at once with no shutdown checkpoint: a fenced primary must not write anything more.
        SIGKILL, to the postmaster and every process of the data directory: it works on a
        hung (SIGSTOPped) PostgreSQL too."""
        self.client.close()
        if self.proc is not None:
            await self.proc.kill()
            self.log.warning("pg_killed")
        else:  # not my child (e.g. left by a sitter that died): every process of the data dir
            await self._new_process().kill()
        self.proc = None
        self._started_at = None

    # ------------------------------------------------------------------ observation

    async def status(self, sync_app_name: str | None = None) -> PgStatus:
        if not self.running:
            facts = await self._log_facts()
            return PgStatus(False, False, None, None, False, facts.diverged, None, None, disk_full=facts.disk_full)
        gen = self._applied_gen
        try:
            rows = await self.client.query(
                "select pg_conf_load_time()::text as conf_t, pg_is_in_recovery() as rec,"
                " case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end as cur,"
                f" {STANDBY_WAL_SQL}::text as recv,"
                " (select status from pg_stat_wal_receiver limit 1) as wr_status,"
                " (select sender_host from pg_stat_wal_receiver limit 1) as wr_host,"
                " (select sender_port from pg_stat_wal_receiver limit 1) as wr_port,"
                " current_setting('default_transaction_read_only') = 'on' as ro,"
                " (select timeline_id from pg_control_checkpoint()) as tli,"
                " (select string_agg(name, ',' order by name) from pg_settings where pending_restart) as pending,"
                " case when pg_is_in_recovery() then pg_is_wal_replay_paused() end as paused,"
                f" {ARCHIVE_FAILING_SQL} as archive_failing,"
                f"{ACCESS_SQL}", timeout=self.status_timeout)
        except pgmod.PgError as e:
            return await self._unknown(e)
        r = rows[0]
        if self._reload_unseen is not None:
            if r.get("conf_t") == self._reload_unseen[0]:
                gen = self._reload_unseen[1]
            else:
                self._reload_unseen = None
        in_rec = bool(r["rec"])
        streaming = in_rec and r["wr_status"] == "streaming"
        wal_text = r["recv"] if in_rec else r["cur"]
        wal = Lsn.parse(wal_text) if wal_text else None
        sync_flush, flush_failed = None, False
        if not in_rec and sync_app_name:
            try:
                rep = await self.client.query(
                    "select flush_lsn::text as flush from pg_stat_replication"
                    " where application_name = %s and state = 'streaming'", (sync_app_name,),
                    timeout=self.status_timeout)
                if rep and rep[0]["flush"]:
                    sync_flush = Lsn.parse(rep[0]["flush"])
            except pgmod.PgError as e:
                if e.timed_out:  # it stopped answering within this check: hung, not "flush unknown"
                    return await self._unknown(e)
                flush_failed = True
        sender = (r["wr_host"], int(r["wr_port"])) if streaming and r["wr_host"] else None
        if self.spec is not None:  # ALTER SYSTEM must not undo what manatee.conf says (overrides.py)
            rc = self.role_config(self.spec)
            try:
                await self.overrides.drop(self.client, {*role_settings(rc), *parameter_settings(rc)},
                                          self.status_timeout)
                if not in_rec and not r["ro"]:  # a read-write primary can commit the fix
                    await self.overrides.keep_access(self.client, r, self.status_timeout)
            except pgmod.PgError as e:  # timed out (others are logged there): as above
                return await self._unknown(e)
        if (r.get("is_super") is False) != self.not_superuser:  # said once per change: nothing undoes it
            self.not_superuser = not self.not_superuser
            (self.log.error if self.not_superuser else self.log.info)(
                "pg_role_not_superuser" if self.not_superuser else "pg_role_superuser_again",
                note="the sitter's role must be a superuser to promote, reload and reset settings")
        facts = await self._log_facts()
        return PgStatus(True, True, in_rec, wal, streaming, in_rec and facts.diverged,
                        sync_flush, r["tli"], bool(r["ro"]), sender,
                        pending_restart=tuple(r["pending"].split(",")) if r.get("pending") else (),
                        parameters_gen=gen, sync_flush_failed=flush_failed, disk_full=facts.disk_full,
                        wal_gone=facts.wal_gone if in_rec and not streaming else None,
                        replay_paused=bool(r.get("paused")) if in_rec else False,
                        not_superuser=r.get("is_super") is False, archive_failing=r.get("archive_failing"),
                        below_primary=in_rec and bool(facts.primary_values))

    async def _unknown(self, e: pgmod.PgError) -> PgStatus:
        """A check whose query failed: unknown, not "running as a primary" (in_recovery, wal,
        read_only stay None). A query that timed out after the status query had answered counts
        the same: a PostgreSQL that hangs mid-check starts the hung clock at this check, not at
        the next one (sandbox walk-through 2026-12-06: the override check, the write probe and a
        reload timed out first, and the clock started 9 s after the hang; 15.9 s without writes)."""
        self.log.debug("pg_status_failed", error=str(e), timed_out=e.timed_out)
        facts = await self._log_facts()
        return PgStatus(True, False, None, None, False, facts.diverged, None, None, error=str(e),
                        timed_out=e.timed_out, crowded=bool(CROWDED.search(str(e))), disk_full=facts.disk_full)

    async def _log_facts(self) -> LogFacts:
        """What PostgreSQL's log says since it was last started: it cannot follow its
        upstream, its newest PANIC for lack of space, the segment its upstream removed (since
        that upstream was set), a setting below the primary's. A disk-full line counts only while
        PostgreSQL runs as this sitter started it, a setting once this sitter has started it at
        all (before that the log is an earlier run's: a sandbox walk-through kept the primary's
        old max_connections after it was lowered)."""
        # File reads go to a thread: if storage hangs, the event loop (and with it the status
        # server, which then reports unhealthy) keeps running, and the cycle waits at most
        # the status deadline: a log that cannot be read is no evidence of either.
        try:
            read = await asyncio.wait_for(asyncio.to_thread(self._log_since_start), self.status_timeout)
        except asyncio.TimeoutError:
            self.log.warning("pg_log_read_timed_out", path=str(self.log_file))
            return LogFacts()
        if read is None:
            return LogFacts()
        start, data = read
        if self._upstream_log_from is None:  # primary_conninfo changed: count from here on
            self._upstream_log_from = start + len(data)
        text = data.decode("utf-8", "replace")
        facts = LogFacts(diverged_in(text), disk_full_in(text) if self._started_at is not None else None,
                         wal_gone_in(data[max(0, self._upstream_log_from - start):].decode("utf-8", "replace")),
                         primary_values_in(text) if self.started_once else ())
        if self.floors.note(facts.primary_values, self.log):
            self.parameters_gen += 1  # the next cycle writes them (parameters_dirty) and restarts it
        return facts

    def _log_since_start(self) -> tuple[int, bytes] | None:
        """PostgreSQL's log since it was last started (its newest 4 MB) and the offset it
        starts at, or None if unreadable."""
        try:
            with os.fdopen(nofollow.open_read(self.log_file), "rb") as f:  # a link: not followed
                start = max(self._log_offset, os.fstat(f.fileno()).st_size - LOG_READ_MAX)
                f.seek(start)
                return start, f.read(LOG_READ_MAX)
        except OSError:
            return None
