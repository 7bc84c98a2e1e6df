"""Gray failures on a sandbox node: the node is alive, keeps its ZooKeeper session, and is sick.

One module per fault family; this package names them all and `undo_all` undoes them all
(`Sandbox.down` calls it). Each fault has a matching undo and is bounded:

- `pgfaults`: `pg_hang` / `pg_resume`: SIGSTOP PostgreSQL only (the postmaster and every
  child; the sitter runs on) / SIGCONT. `storm` / `storm_release`: a helper process opens
  connections to the node's PostgreSQL as the superuser until the server refuses more (so
  the superuser-reserved slots are taken too) and holds them for at most `hold_s`.
  `crash_loop` / `crash_stop`: a helper process SIGKILLs the node's postmaster every
  `every_s` seconds for at most `for_s` (or SIGSTOPs every new postgres process).
- `diskfull`: `disk_full` / `disk_lift`: the node's dataset made full (see that module for
  how, and why that way: zfs-fuse is shared by every pool on the machine) / undone.
- `znodes`: `rogue_election_node` / `remove_rogue_election_node`: a persistent election
  node `<ip>:5432:10002:5433-<seq>` whose data lacks most keys (`{"ip": "127.0.0.99"}`).
  `corrupt_state` / `restore_state`: the shard's `state` znode set to bytes that are not
  JSON; the restore writes the saved state back only if the znode still holds the garbage.
- `flakynet`: `flaky` / `unflaky`: 30 % of the node's packets to and from ZooKeeper and its
  peers dropped and `delay_ms` added to its connections (nftables; a delaying proxy).

What outlives one command (helper pids, the saved state, the rogue node's path) is kept
in DIR/grayfaults.json (`record`), so `manatee-sandbox` sub-commands and `down` find it.
The helper processes are `python -m manatee_testbed.grayfaults` (`__main__`).
"""

from __future__ import annotations

import contextlib

from manatee_testbed.grayfaults.diskfull import disk_full, disk_lift
from manatee_testbed.grayfaults.flakynet import flaky, unflaky
from manatee_testbed.grayfaults.pgfaults import (crash_loop, crash_stop, pg_hang, pg_pids, pg_resume, storm,
                                                 storm_release)
from manatee_testbed.grayfaults.record import active, load
from manatee_testbed.grayfaults.znodes import (ROGUE_IP, corrupt_state, remove_rogue_election_node, restore_state,
                                               rogue_election_node)
from manatee_testbed.sandbox import Sandbox

__all__ = ["ROGUE_IP", "active", "corrupt_state", "crash_loop", "crash_stop", "disk_full", "disk_lift", "flaky",
           "load", "pg_hang", "pg_pids", "pg_resume", "remove_rogue_election_node", "restore_state",
           "rogue_election_node", "storm", "storm_release", "undo_all", "unflaky"]


def undo_all(sb: Sandbox, zk: bool = True) -> list[str]:
    """Undo every gray fault recorded for the sandbox (for `down` and the tests' heal);
    zk=False leaves ZooKeeper's data alone (`down` removes it anyway). Returns what was undone."""
    done: list[str] = []
    if not sb.exists():
        return done
    rec = load(sb)
    for n in sb.st.nodes:
        with contextlib.suppress(Exception):
            if pg_pids(n):
                pg_resume(sb, n.name)
        if f"quota:{n.name}" in rec:
            disk_lift(sb, n.name)
            done.append(f"quota of {n.name} lifted")
        with contextlib.suppress(Exception):
            if unflaky(sb, n.name):
                done.append(f"network of {n.name} steady")
        if storm_release(sb, n.name):
            done.append(f"connections to {n.name} released")
        if crash_stop(sb, n.name):
            done.append(f"crash loop of {n.name} stopped")
    if not zk:
        return done
    if rec.get("rogue"):
        with contextlib.suppress(Exception):
            done.append(f"removed {len(remove_rogue_election_node(sb))} rogue election node(s)")
    if rec.get("bad_state"):
        with contextlib.suppress(Exception):
            done.append(f"state znode: {restore_state(sb)}")
    return done


