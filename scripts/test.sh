#!/usr/bin/env bash
# The README's test command: install whatever is missing, then run the test suite.
#   scripts/test.sh                  # everything (unit + integration + slow fault tests)
#   scripts/test.sh -m 'not slow'    # the fast set
# Extra arguments go to pytest. Needs root (zfs-fuse, PostgreSQL as user postgres, nftables).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/install-deps.sh"
cd "$here"
exec "${MANATEE_VENV:-$here/.venv}/bin/python" -m pytest "$@"
