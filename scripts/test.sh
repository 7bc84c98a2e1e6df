#!/usr/bin/env bash
# The README's test command: install whatever is missing, then run the test suite, then
# check that the tests left no process, pool, mount or firewall table behind.
#   scripts/test.sh                  # everything (unit + integration + slow fault tests)
#   scripts/test.sh -m 'not slow'    # the fast set
# Extra arguments go to pytest. Needs root (zfs-fuse, PostgreSQL as user postgres, nftables).
# With no arguments the unit tests (CPU-bound, no service) run beside the integration tests
# (which mostly wait on real services) at a low CPU priority, so that they use the cycles
# the integration tests leave idle; MANATEE_TEST_SERIAL=1 runs everything in one pytest.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/install-deps.sh" || exit $?
cd "$here"
# What an earlier, killed run left is not this run's fault: note it, fail only on what is new.
before=$(mktemp)
trap 'rm -f "$before"' EXIT
"$here/scripts/check-leftovers.sh" --save "$before"
py="${MANATEE_VENV:-$here/.venv}/bin/python"
if [ $# -eq 0 ] && [ "${MANATEE_TEST_SERIAL:-}" != 1 ]; then
    unit_dir=$(mktemp -d)
    trap 'rm -f "$before"; rm -rf "$unit_dir"' EXIT
    # its own temporary directory; a generous per-test timeout, as it may wait for the CPU
    nice -n 10 "$py" -m pytest tests/unit -p no:cacheprovider --basetemp "$unit_dir/tmp" \
        -o timeout=900 > "$unit_dir/log" 2>&1 &
    unit_pid=$!
    "$py" -m pytest tests/integration
    status=$?
    wait "$unit_pid"
    unit_status=$?
    echo "==================== tests/unit (run beside the integration tests) ===================="
    cat "$unit_dir/log"
    [ $status -eq 0 ] && status=$unit_status
else
    "$py" -m pytest "$@"
    status=$?
fi
sleep 1  # let killed processes be reaped before looking
"$here/scripts/check-leftovers.sh" --since "$before" || { [ $status -eq 0 ] && status=1; }
exit $status
