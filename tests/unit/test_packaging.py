"""Units, manifests and launchers: systemd accepts the units (systemd-analyze verify), they are
Type=notify with reload and watchdog, nothing hard-codes an install path, and bin/ launchers
run the tools from any prefix (a copy of bin/ next to a virtualenv, or a link to them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.dom.minidom
from pathlib import Path

import pytest

from manatee import __version__

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "smf" / "systemd").glob("*.service"))
MANIFESTS = sorted((ROOT / "smf").glob("*.xml"))
DAEMONS = ("sitter", "snapshotter", "backupserver")
TOOLS = ("sitter", "snapshotter", "backupserver", "adm", "stat", "history", "clear", "sandbox", "nemesis")


def test_every_daemon_has_a_unit_and_a_manifest():
    assert [u.name for u in UNITS] == sorted(f"manatee-{d}.service" for d in DAEMONS)
    assert [m.name for m in MANIFESTS] == sorted(f"{d}.xml" for d in DAEMONS)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_passes_on_the_units(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, UNITS)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    bad = tmp_path / "manatee-bad.service"  # the check can fail: a unit with a mistake is refused
    bad.write_text(UNITS[0].read_text().replace("Type=notify", "Type=notifyy"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=60)
    assert "notifyy" in r.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_units_notify_reload_and_watch(unit):
    text = unit.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "RestartPreventExitStatus=2", "EnvironmentFile=-/etc/default/manatee"):
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+$", text, re.M)
    name = unit.stem
    assert f'exec "$MANATEE_PREFIX/bin/{name}" -f "$MANATEE_ETC/' in text


@pytest.mark.parametrize("f", [*UNITS, *MANIFESTS], ids=lambda f: f.name)
def test_no_hard_coded_install_path(f):
    assert "/opt/manatee" not in f.read_text()


@pytest.mark.parametrize("m", MANIFESTS, ids=lambda m: m.name)
def test_manifests_call_the_launchers_and_refresh_with_sighup(m):
    doc = xml.dom.minidom.parse(str(m))
    methods = {e.getAttribute("name"): e.getAttribute("exec") for e in doc.getElementsByTagName("exec_method")}
    assert methods["start"] == f"%{{config/prefix}}/bin/manatee-{m.stem} -f %{{config/etc}}/{m.stem}.json"
    assert methods["refresh"] == ":kill -HUP"


def _run(path: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(path), *args], capture_output=True, text=True, timeout=60, env=env)


def test_launchers_run_every_tool_from_an_installed_prefix(tmp_path):
    """A prefix as an installer lays it out: PREFIX/bin (the launchers) and PREFIX/venv."""
    prefix = tmp_path / "prefix"
    shutil.copytree(ROOT / "bin", prefix / "bin", symlinks=True)
    (prefix / "venv" / "bin").mkdir(parents=True)
    py = prefix / "venv" / "bin" / "python"  # stands for the prefix's virtualenv (this test's)
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "MANATEE_PYTHON"}
    for tool in TOOLS:
        if tool == "nemesis":  # the soak tool (not an operator's): --help is enough
            assert _run(prefix / "bin" / "manatee-nemesis", "--help", env=env).returncode == 0
            continue
        r = _run(prefix / "bin" / f"manatee-{tool}", "--version", env=env)
        assert r.returncode == 0 and r.stdout.strip() == f"manatee-{tool} (manatee) {__version__}", (tool, r)
    # a link from elsewhere (as /usr/local/bin/manatee-adm) still finds the prefix's python
    (tmp_path / "usrbin").mkdir()
    (tmp_path / "usrbin" / "manatee-adm").symlink_to(prefix / "bin" / "manatee-adm")
    r = _run(tmp_path / "usrbin" / "manatee-adm", "--version", env=env)
    assert r.returncode == 0 and __version__ in r.stdout
    r = _run(prefix / "bin" / "manatee-launch", env=env)
    assert r.returncode == 2 and "unknown tool" in r.stderr


def test_every_console_script_has_a_launcher():
    text = (ROOT / "pyproject.toml").read_text() + (ROOT / "testbed" / "pyproject.toml").read_text()
    scripts = re.findall(r'^(manatee-[a-z]+) = "', text, re.M)
    assert sorted(scripts) == sorted(f"manatee-{t}" for t in TOOLS)
    for s in scripts:
        assert os.readlink(ROOT / "bin" / s) == "manatee-launch"


def test_dependencies_have_upper_bounds_and_psycopg2_is_built():
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M).group(1)
    for d in re.findall(r'"([^"]+)"', deps):
        assert "<" in d, f"{d}: no upper bound"
    assert '"psycopg2>=' in deps and "psycopg2-binary" not in deps and "prometheus-client" in deps


def test_the_product_install_carries_no_fault_injection():
    """`pip install .` (no extras) is what a database host gets: the daemons and the operator
    CLIs; the test bed (sandbox, nemesis, partitions, hangs, the workload checker) is a separate
    distribution under testbed/. Checked with setuptools' own package discovery on the
    top-level pyproject (what a build would put in the wheel) and its console scripts."""
    import tomllib

    import setuptools

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = cfg["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = setuptools.find_packages(where=str(ROOT), include=include)
    assert {"manatee", "manatee.sitter", "manatee.shard", "manatee.cli", "manatee.core"} <= set(packages)
    assert [p for p in packages if not p.startswith("manatee.") and p != "manatee"] == []
    shipped = [f for p in packages for f in (ROOT / p.replace(".", "/")).glob("*.py")]
    leaked = [str(f) for f in shipped if f.name in ("nemesis.py", "sandbox.py", "grayfaults.py", "hang.py", "network.py")]
    assert leaked == []
    assert not any("testbed" in p or "harness" in p for p in packages)
    assert "manatee-sitter" in cfg["project"]["scripts"]
    assert not {"manatee-sandbox", "manatee-nemesis"} & set(cfg["project"]["scripts"])
    for f in shipped:  # nothing the product ships imports the test bed
        assert "manatee_testbed" not in f.read_text(), f
