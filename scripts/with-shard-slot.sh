#!/bin/sh
# Run a command holding one of two machine-wide "shard slots", so that developers (or
# helpers) running real-shard tests at the same time never have more than two 3-node
# shards competing for the CPUs. Usage: scripts/with-shard-slot.sh CMD [ARGS...]
set -eu
slots="/tmp/manatee-shard.slot1 /tmp/manatee-shard.slot2"
while :; do
  for s in $slots; do
    if flock -n -E 99 "$s" -c 'exit 0' 2>/dev/null; then
      exec flock -n "$s" "$@"
    fi
  done
  sleep 2
done
