"""manatee-sitter -f etc/sitter.json: the per-node daemon that runs PostgreSQL in its shard role."""

from __future__ import annotations

from manatee.core.daemon import daemon_main
from manatee.core.procs import become_subreaper
from manatee.sitter.config import SitterConfig


async def run(config: SitterConfig, log, stop) -> int:
    from manatee.core.auth import daemon_secret
    from manatee.core.daemon import register_reload
    from manatee.sitter.sitter import Sitter

    log = log.bind(node=config.zoneId)
    secret = daemon_secret(config.secretFile, config.insecure, log, "manatee-sitter")
    become_subreaper()
    sitter = Sitter(config, log, secret=secret)
    register_reload(sitter.reload_config)
    return await sitter.run(stop)


def main(argv: list[str] | None = None) -> int:
    return daemon_main("manatee-sitter", SitterConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
