#!/usr/bin/env bash
# The README's main command: install what is missing (Debian 12, as root), then run
# manatee-sandbox with the given arguments.
#   scripts/sandbox.sh up            # ZooKeeper + ZFS pool + 3 nodes on 127.0.0.11-13
#   scripts/sandbox.sh status
#   scripts/sandbox.sh kill a        # host death of node a: watch the sync take over
#   scripts/sandbox.sh down          # everything stopped and removed
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MANATEE_VENV:-$here/.venv}"
"$here/scripts/install-deps.sh"
if [ -x "$venv/bin/manatee-sandbox" ]; then
    exec "$venv/bin/manatee-sandbox" "$@"
fi
exec "$venv/bin/python" -m manatee_testbed.cli.sandbox "$@"
