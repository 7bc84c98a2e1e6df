#!/bin/sh
# Run a command holding one of two machine-wide "shard slots", so that developers (or
# helpers) running real-shard tests at the same time never have more than two 3-node
# shards competing for the CPUs. Usage: scripts/with-shard-slot.sh CMD [ARGS...]
# (flock -E 75 says "slot busy"; a command that itself exits 75 is taken as busy too.)
set -u
while :; do
  for s in /tmp/manatee-shard.slot1 /tmp/manatee-shard.slot2; do
    flock -n -E 75 "$s" "$@"
    rc=$?
    [ "$rc" -ne 75 ] && exit "$rc"
  done
  sleep 2
done
