#!/usr/bin/env bash
# After the test suite: fail if it left anything of its own behind — test zpools and their
# mounts, partition tables, postgres/zookeeper/zfs recv/manatee daemons. Started by
# scripts/test.sh; run it by hand after an interrupted run to see what to clean.
set -u
problems=()
if command -v zpool >/dev/null 2>&1 && zpool list -H -o name >/dev/null 2>&1; then
    pools=$(zpool list -H -o name 2>/dev/null | grep -E '^(mtest|msandbox|mbench)' || true)
    [ -n "$pools" ] && problems+=("zpools: $(echo $pools)")
fi
mounts=$(awk '$3 ~ /zfs/ && $1 ~ /^(mtest|msandbox|mbench)/ {print $2}' /proc/mounts)
[ -n "$mounts" ] && problems+=("zfs mounts: $(echo $mounts)")
if command -v nft >/dev/null 2>&1; then
    tables=$(nft list tables 2>/dev/null | awk '{print $3}' | grep -E '^manatee' || true)
    [ -n "$tables" ] && problems+=("nft tables: $(echo $tables)")
fi
# Zombies (state Z) are not running: they wait for PID 1, which reaps orphans lazily here.
procs=$(ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/' \
        | grep -E 'manatee-(sitter|snapshotter|backupserver)|org\.apache\.zookeeper|zfs recv|postgres -D /tmp/|postgres: ' \
        | grep -v -E 'grep|check-leftovers' || true)
[ -n "$procs" ] && problems+=("processes:
$procs")
if [ ${#problems[@]} -gt 0 ]; then
    echo "check-leftovers: the test run left these behind:" >&2
    printf '  %s\n' "${problems[@]}" >&2
    exit 1
fi
echo "check-leftovers: nothing left behind"
