"""A plain PostgreSQL node for tests and the sandbox.

In the product the sitter owns PostgreSQL; a :class:`PgNode` is for tests that need a
real instance on its own 127.0.0.x address without a sitter. Its directories:
``data_dir`` (the cluster; may be a ZFS mountpoint) and ``work_dir`` (socket dir
``s/`` and ``postgres.log``). Both parents must be traversable by the postgres user.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from manatee.core import pgconfig, pgquote
from manatee.core.pg import DEFAULT_BINDIR, PgClient, PgError, PostgresProcess, ensure_private_dir, initdb, run_as
from manatee.core.lsn import Lsn
from manatee.core.pgconfig import ConfigChange, RoleConfig
from manatee.core.slotname import slot_name
from manatee.shard.pgurl import PgUrl

#: The operator-editable base configuration shipped with manatee.
BASE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "postgresql.conf"


def pg_url(ip: str, port: int) -> str:
    """The original's node identity, also used as application_name."""
    return str(PgUrl.for_node(ip, port, "postgres"))


class PgNode:
    def __init__(
        self,
        name: str,
        ip: str,
        port: int,
        data_dir: Path,
        work_dir: Path,
        *,
        user: str = "postgres",
        bindir: Path = DEFAULT_BINDIR,
        members: tuple[str, ...] = ("127.0.0.1",),
    ):
        self.name = name
        self.ip = ip
        self.port = int(port)
        self.data_dir = Path(data_dir)
        self.work_dir = Path(work_dir)
        self.user = user
        self.bindir = Path(bindir)
        #: Addresses replication connections come from. On loopback every
        #: connection's source is 127.0.0.1 (whatever the destination address).
        self.members = tuple(members)
        self.socket_dir = self.work_dir / "s"
        self.log_file = self.work_dir / "postgres.log"
        self.proc = PostgresProcess(
            self.data_dir,
            user=user,
            bindir=bindir,
            log_file=self.log_file,
            socket_dir=self.socket_dir,
            host=ip,
            port=self.port,
        )

    def __repr__(self) -> str:
        return f"PgNode({self.name} {self.ip}:{self.port} {self.data_dir})"

    @property
    def url(self) -> str:
        return pg_url(self.ip, self.port)

    @property
    def client(self) -> PgClient:
        """Over the private unix socket."""
        return self.proc.client()

    def tcp_client(self, **kw: Any) -> PgClient:
        return PgClient(self.ip, self.port, user=self.user, **kw)

    @property
    def running(self) -> bool:
        return self.proc.running

    # -- configuration

    def role_config(self, role: str = "primary", **overrides: Any) -> RoleConfig:
        """This node's RoleConfig; defaults: read-write primary, application_name = url."""
        base = dict(
            role=role,
            listen_address=self.ip,
            port=self.port,
            socket_dir=str(self.socket_dir),
            application_name=self.url,
            read_only=False,
            members=self.members,
            cluster_name=self.name,
            # Test instances on loopback only: no passwords, and the superuser over TCP
            # (tests connect as it) from 127.0.0.1, which every loopback connection comes from.
            auth_method="trust",
            admin_user=self.user,
            admin_cidrs=("127.0.0.1/32",),
            admin_method="trust",
        )
        base.update(overrides)
        return RoleConfig(**base)

    def configure(self, rc: RoleConfig) -> ConfigChange:
        return pgconfig.write_role_config(self.data_dir, rc, user=self.user)

    async def apply(self, rc: RoleConfig) -> ConfigChange:
        """Write `rc` and make it take effect (restart or reload) if running."""
        change = self.configure(rc)
        if self.running and change.restart_needed:
            await self.stop()
            await self.start()
        elif self.running and change.reload_needed:
            await reload(self.client)
        return change

    # -- lifecycle

    def _prepare_dirs(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work_dir, 0o755)

    async def init(self, *, sync: bool = False, **role_overrides: Any) -> None:
        """initdb, the base postgresql.conf, and a read-write primary configuration."""
        self._prepare_dirs()
        await initdb(self.data_dir, user=self.user, bindir=self.bindir, sync=sync)
        pgconfig.install_base_config(self.data_dir, BASE_CONFIG, user=self.user)
        self.configure(self.role_config("primary", **role_overrides))

    async def clone_from(self, upstream: PgNode, **role_overrides: Any) -> None:
        """Test-only bootstrap by pg_basebackup (the product bootstraps with zfs send/recv),
        then a standby configuration streaming from `upstream`."""
        self._prepare_dirs()
        ensure_private_dir(self.data_dir, self.user)
        await run_as(
            [
                self.bindir / "pg_basebackup",
                "-d", upstream.tcp_client().dsn(),
                "-D", self.data_dir,
                "-X", "stream",
                "-c", "fast",
                "--no-sync",
            ],
            user=self.user,
            timeout=120,
        )
        rc = self.role_config("standby", upstream=(upstream.ip, upstream.port), **role_overrides)
        self.configure(rc)
        # The standby streams through the slot its upstream keeps for it (the sitter's upstream
        # creates it; here the test bed does): without it the walreceiver is refused.
        await upstream.execute(
            "select pg_create_physical_replication_slot(%s, true) where not exists "
            "(select 1 from pg_replication_slots where slot_name = %s)",
            (slot_name(rc.application_name), slot_name(rc.application_name)))

    async def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        await self.proc.start()
        if wait:
            await self.proc.wait_ready(timeout)

    async def stop(self, mode: str = "fast", timeout: float = 10.0) -> None:
        await self.proc.stop(mode=mode, timeout=timeout)  # type: ignore[arg-type]

    async def kill(self) -> None:
        await self.proc.kill()

    # -- queries

    async def psql(self, sql: str, params: Any = None, **kw: Any) -> list[dict[str, Any]]:
        """Rows of `sql` over the socket (named after the tool; it does not run psql)."""
        return await self.client.query(sql, params, **kw)

    async def execute(self, sql: str, params: Any = None, **kw: Any) -> None:
        await self.client.execute(sql, params, **kw)

    def connect_dsn(self, *, tcp: bool = False, **extra: Any) -> str:
        """A libpq DSN for psycopg2.connect (unix socket unless tcp)."""
        c = self.tcp_client() if tcp else self.client
        dsn = c.dsn()
        for k, v in extra.items():
            dsn += f" {k}={pgquote.conninfo_quote(str(v))}"
        return dsn


# --------------------------------------------------------------------------- probes tests use


async def health(client: PgClient, timeout: float | None = None) -> bool:
    """SELECT 1 answered within the timeout. Never raises."""
    try:
        await client.query("select 1", timeout=timeout if timeout is not None else client.connect_timeout + 1)
        return True
    except Exception:  # noqa: BLE001 - health is a yes/no answer
        return False


async def wal_position(client: PgClient) -> Lsn:
    """Primary: pg_current_wal_lsn(). Standby: the greater of received and replayed LSN."""
    row = (
        await client.query(
            "select pg_is_in_recovery() as rec,"
            " case when pg_is_in_recovery() then null else pg_current_wal_lsn() end as cur,"
            " pg_last_wal_receive_lsn() as recv, pg_last_wal_replay_lsn() as replay"
        )
    )[0]
    if not row["rec"]:
        return Lsn.parse(row["cur"])
    known = [Lsn.parse(v) for v in (row["recv"], row["replay"]) if v is not None]
    if not known:
        raise PgError(f"standby at {client.where} reports neither a received nor a replayed WAL position")
    return max(known)


async def replication_rows(client: PgClient) -> list[dict[str, Any]]:
    """pg_stat_replication, PostgreSQL's column names (``*_lsn`` as text)."""
    return await client.query("select * from pg_stat_replication order by application_name, pid")


async def wal_receiver(client: PgClient) -> dict[str, Any] | None:
    rows = await client.query("select * from pg_stat_wal_receiver")
    return rows[0] if rows else None


async def timeline(client: PgClient) -> int:
    """Current timeline: a primary's from its current WAL file name; a standby's from
    the WAL receiver (last received timeline), else the last restartpoint."""
    row = (
        await client.query(
            "select case when pg_is_in_recovery() then null"
            " else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end as primary_tli,"
            " (select received_tli from pg_stat_wal_receiver) as recv_tli,"
            " (select timeline_id from pg_control_checkpoint()) as ckpt_tli"
        )
    )[0]
    for key in ("primary_tli", "recv_tli", "ckpt_tli"):
        if row[key]:
            return int(row[key])
    raise PgError(f"cannot tell the timeline of {client.where}: {row}")


async def setting(client: PgClient, name: str) -> str:
    return (await client.query("select current_setting(%s) as v", (name,)))[0]["v"]


async def reload(client: PgClient) -> None:
    """pg_reload_conf(): the postmaster re-reads its files (asynchronously)."""
    await client.query("select pg_reload_conf()")


def signal_all(proc: PostgresProcess, sig: int) -> list[int]:
    """Send `sig` to the postmaster and every backend (e.g. SIGSTOP/SIGCONT to simulate a hang)."""
    pids = set(proc.processes())
    if proc.running and proc.pid is not None:
        pids.add(proc.pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return sorted(pids)


async def controldata(data_dir: Path, *, user: str = "postgres", bindir: Path = DEFAULT_BINDIR) -> dict[str, str]:
    """`pg_controldata` of a (preferably stopped) data dir as {"Latest checkpoint location": "0/16B3748", ...}."""
    out = await run_as([Path(bindir) / "pg_controldata", "-D", data_dir], user=user, timeout=30)
    result: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            result[key.strip()] = value.strip()
    if "Database cluster state" not in result:
        raise PgError(f"pg_controldata -D {data_dir}: unexpected output: {out[:200]!r}")
    return result


def controldata_timeline(cd: dict[str, str]) -> int:
    """Timeline of the latest checkpoint (minimum recovery timeline if that is later)."""
    tli = int(cd["Latest checkpoint's TimeLineID"])
    min_tli = int(cd.get("Min recovery ending loc's timeline", "0") or 0)
    return max(tli, min_tli)


def controldata_checkpoint(cd: dict[str, str]) -> Lsn:
    return Lsn.parse(cd["Latest checkpoint location"])


__all__ = ["PgNode", "PgError", "pg_url", "BASE_CONFIG"]
