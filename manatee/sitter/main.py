"""manatee-sitter -f etc/sitter.json: the per-node daemon that runs PostgreSQL in its shard role."""

from __future__ import annotations

from manatee.core.daemon import daemon_main
from manatee.core.procs import become_subreaper
from manatee.sitter.config import SitterConfig


async def run(config: SitterConfig, log, stop) -> int:
    from manatee.sitter.sitter import Sitter

    become_subreaper()
    log = log.bind(node=config.zoneId)
    return await Sitter(config, log).run(stop)


def main(argv: list[str] | None = None) -> int:
    return daemon_main("manatee-sitter", SitterConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
