"""manatee-sitter -f etc/sitter.json: the per-node daemon that runs PostgreSQL in its shard role."""

from __future__ import annotations

from manatee.core.daemon import daemon_main
from manatee.core.procs import become_subreaper
from manatee.sitter.config import SitterConfig


def build_sitter(config: SitterConfig, log, secret=None):
    """The sitter loop wired to the real ZooKeeper, PostgreSQL, ZFS dataset and clock."""
    from manatee.core import zk as zkmod
    from manatee.shard.shardstore import ShardStore
    from manatee.sitter.dataset import ZfsDataset
    from manatee.sitter.loop import Sitter
    from manatee.sitter.pgmanager import PgManager
    from manatee.sitter.ports import SystemClock

    z = config.zkCfg
    session = zkmod.ZKClient(z.connStr, z.session_timeout_s, connect_timeout=z.connect_timeout_s,
                             logger=log, **z.client_options())
    # verifies https:// peers against tls.caFile and presents our certificate (None: no TLS)
    tls = getattr(config, "tls", None)
    tls_client = tls.client_context() if tls else None
    return Sitter(config, log, secret=secret, tls_client=tls_client, session=session,
                  store=ShardStore(session, config.shardPath, config.registrar_path, log),
                  pg=PgManager(config, log, secret=secret), clock=SystemClock(),
                  dataset=ZfsDataset(config, log, secret=secret, ssl_context=tls_client))


async def run(config: SitterConfig, log, stop) -> int:
    from manatee.core.auth import daemon_secret
    from manatee.core.daemon import register_reload

    log = log.bind(node=config.zoneId)
    secret = daemon_secret(config.secretFile, config.insecure, log, "manatee-sitter")
    become_subreaper()
    sitter = build_sitter(config, log, secret=secret)
    # old copies a finished restore left when this sitter last died; once it listens (a sitter
    # that cannot, e.g. on a taken port, exits at once and leaves no zfs child behind)
    sitter.on_listening = sitter.dataset.sweep
    register_reload(sitter.reload_config)
    try:
        return await sitter.run(stop)
    finally:
        await sitter.dataset.close()


def main(argv: list[str] | None = None) -> int:
    return daemon_main("manatee-sitter", SitterConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
