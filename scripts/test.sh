#!/usr/bin/env bash
# The README's test command: install whatever is missing, then run the test suite, then
# check that the tests left no process, pool, mount or firewall table behind.
#   scripts/test.sh                  # everything (unit + integration + slow fault tests)
#   scripts/test.sh -m 'not slow'    # the fast set
# Extra arguments go to pytest. Needs root (zfs-fuse, PostgreSQL as user postgres, nftables).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/install-deps.sh" || exit $?
cd "$here"
# What an earlier, killed run left is not this run's fault: note it, fail only on what is new.
before=$(mktemp)
trap 'rm -f "$before"' EXIT
"$here/scripts/check-leftovers.sh" --save "$before"
"${MANATEE_VENV:-$here/.venv}/bin/python" -m pytest "$@"
status=$?
sleep 1  # let killed processes be reaped before looking
"$here/scripts/check-leftovers.sh" --since "$before" || { [ $status -eq 0 ] && status=1; }
exit $status
