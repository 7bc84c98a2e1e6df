#!/usr/bin/env bash
# Installs what manatee's tests and sandbox need on Debian 12, skipping what is already there.
#   system: zookeeper, zfs-fuse, postgresql-15, nftables, iproute2 (apt)
#   build:  libpq-dev, gcc, python3-dev: psycopg2 is built against the system libpq (not -binary)
#   python: a virtualenv at $MANATEE_VENV (default .venv) with manatee and its test extras
# Idempotent: a second run installs nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MANATEE_VENV:-$here/.venv}"

need=()
[ -x /usr/share/zookeeper/bin/zkServer.sh ] || need+=(zookeeper)
command -v zfs-fuse >/dev/null 2>&1 || need+=(zfs-fuse)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)  # the sample load-balancer config is tested
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# psycopg2 from source, linked to the system's libpq: pg_config, a C compiler, Python's headers
command -v pg_config >/dev/null 2>&1 || need+=(libpq-dev)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    >/dev/null 2>&1 || need+=(python3-dev)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # the units are checked with it
if [ ${#need[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d 101: packages must not start their own services (a Debian
    # postgresql cluster or zfs-fuse daemon would collide with ours).
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql --shell /bin/bash postgres

if [ ! -x "$venv/bin/python" ]; then
    echo "install-deps: creating virtualenv $venv" >&2
    python3 -m venv "$venv"
fi
stamp="$venv/.manatee-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ] || [ "$here/testbed/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/pip" install -q --upgrade pip >/dev/null
    # an older venv has psycopg2-binary: both install the same module, keep only the built one
    if "$venv/bin/pip" show -q psycopg2-binary >/dev/null 2>&1; then
        "$venv/bin/pip" uninstall -q -y psycopg2-binary >/dev/null
    fi
    "$venv/bin/pip" install -q --no-binary psycopg2 -e "$here[test]"
    # the test bed (sandbox, fault injection, workload checks): not part of a database host's install
    "$venv/bin/pip" install -q --no-deps -e "$here/testbed"
    touch "$stamp"
fi
