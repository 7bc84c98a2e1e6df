import asyncio
import os
import signal

from pydantic import Field

from manatee.core.config import ConfigModel
from manatee.core.daemon import EXIT_CONFIG, daemon_main


class Cfg(ConfigModel):
    n: int = Field(ge=1)


def test_bad_config_exits_2_naming_key(tmp_path, capsys):
    p = tmp_path / "c.json"
    p.write_text('{"n": 0}')
    ran = []

    async def run(config, log, stop):
        ran.append(config)
        return 0

    assert daemon_main("manatee-x", Cfg, run, ["-f", str(p)]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"manatee-x: config {p}: key 'n':")
    assert ran == []


def test_runs_until_sigterm(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"n": 3}')
    seen = {}

    async def run(config, log, stop):
        seen["n"] = config.n
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        return 0

    assert daemon_main("manatee-x", Cfg, run, ["-f", str(p), "--log-format", "json"]) == 0
    assert seen["n"] == 3


def test_crash_in_run_is_status_1(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"n": 3}')

    async def run(config, log, stop):
        raise RuntimeError("boom")

    assert daemon_main("manatee-x", Cfg, run, ["-f", str(p)]) == 1
