"""docs/haproxy.cfg is a configuration HAProxy accepts (skipped where haproxy is absent)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CFG = Path(__file__).resolve().parents[2] / "docs" / "haproxy.cfg"


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_sample_haproxy_config_is_valid():
    r = subprocess.run(["haproxy", "-c", "-f", str(CFG)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"haproxy -c -f {CFG}: exit {r.returncode}\n{r.stdout}{r.stderr}"


def test_sample_haproxy_config_checks_the_sitters_health_endpoints():
    text = CFG.read_text()
    assert "http-check send meth GET uri /primary" in text
    assert "http-check send meth GET uri /replica?lag=1MB" in text  # reads never go to a far-behind standby
    assert "on-marked-down shutdown-sessions" in text
