#!/usr/bin/env bash
# After the test suite: fail if it left anything of its own behind — test zpools and their
# mounts, partition tables, postgres/zookeeper/zfs recv/manatee daemons, PostgreSQL socket
# dirs under /run/manatee that no live PostgreSQL holds (manatee_testbed.sockdirs). Started by
# scripts/test.sh; run it by hand after an interrupted run to see what to clean.
#   scripts/check-leftovers.sh                 # everything of ours that is there now
#   scripts/check-leftovers.sh --save FILE     # write what is there now to FILE (before a run)
#   scripts/check-leftovers.sh --since FILE    # fail only on what is there now and not in FILE
# With --since, what an earlier (killed) run left is reported as a note, not blamed on this run.
set -u
mode=all
file=
case "${1:-}" in
    --save) mode=save; file=${2:?--save needs a file} ;;
    --since) mode=since; file=${2:?--since needs a file} ;;
    "") ;;
    *) echo "usage: $0 [--save FILE | --since FILE]" >&2; exit 2 ;;
esac

# One line per thing of ours: "<kind>: <name>".
current() {
    if command -v zpool >/dev/null 2>&1 && zpool list -H -o name >/dev/null 2>&1; then
        zpool list -H -o name 2>/dev/null | grep -E '^(mtest|msandbox|mbench|mbyhand)' | sed 's/^/zpool: /'
    else  # no daemon: the pools its next start imports (a killed run's come back then)
        for cache in /var/lib/zfs/zpool.cache /etc/zfs/zpool.cache; do
            [ -r "$cache" ] && grep -aoE '(mtest|msandbox|mbench|mbyhand)[0-9A-Za-z_]+' "$cache"
        done | sort -u | sed 's/^/zpool: /'
    fi
    awk '$3 ~ /zfs/ && $1 ~ /^(mtest|msandbox|mbench|mbyhand)/ {print "zfs mount: " $2}' /proc/mounts
    if command -v nft >/dev/null 2>&1; then
        nft list tables 2>/dev/null | awk '$3 ~ /^manatee/ {print "nft table: " $2 " " $3}'
    fi
    # Zombies (state Z) are not running: they wait for PID 1, which reaps orphans lazily here.
    ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/' \
        | grep -E 'manatee-(sitter|snapshotter|backupserver)|org\.apache\.zookeeper|zfs recv|postgres -D /tmp/|postgres: ' \
        | grep -v -E 'grep|check-leftovers' | awk '{pid=$1; $1=""; $2=""; sub(/^ +/, ""); print "process: " pid " " $0}'
    # A node's dir whose PostgreSQL is gone (killed: stale socket and lock; stopped: empty).
    # A dir a live PostgreSQL holds is not one (nor one whose lock is being written).
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    PYTHONPATH="$repo:$repo/testbed" python3 -m manatee_testbed.sockdirs | sed 's/^/socket dir: /'
    return 0
}

now=$(current | sort -u)
if [ "$mode" = save ]; then
    printf '%s\n' "$now" > "$file"
    exit 0
fi
before=
if [ "$mode" = since ] && [ -r "$file" ]; then
    before=$(sort -u "$file")
fi
new=$(comm -23 <(printf '%s\n' "$now") <(printf '%s\n' "$before") | sed '/^$/d')
old=$(comm -12 <(printf '%s\n' "$now") <(printf '%s\n' "$before") | sed '/^$/d')
if [ -n "$old" ]; then
    echo "check-leftovers: note: these were already there before the run (an earlier run's; clean them by hand):" >&2
    printf '%s\n' "$old" | sed 's/^/  /' >&2
fi
if [ -n "$new" ]; then
    echo "check-leftovers: the test run left these behind:" >&2
    printf '%s\n' "$new" | sed 's/^/  /' >&2
    exit 1
fi
echo "check-leftovers: nothing left behind"
