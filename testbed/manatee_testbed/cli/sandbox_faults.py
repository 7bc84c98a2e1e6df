"""`manatee-sandbox`'s gray-failure sub-commands (testbed/manatee_testbed/grayfaults/): each fault
and the command that undoes it; `down` undoes them all.

    pg-hang|pg-resume NODE           PostgreSQL only stopped (SIGSTOP) / continued
    disk-full NODE [--fill-mb MB]    dataset quota 4 MB above its use, then MB (default 12) written
                                     through the primary fill it (0: the quota alone)
    disk-lift NODE                   no quota
    storm NODE [--for S]             every connection slot of NODE's PostgreSQL held
    storm-release NODE
    crash-loop NODE [--for S] [--every S] [--signal KILL|STOP]   NODE's postmaster killed every
                                     second (STOP: a sticky hang)
    crash-stop NODE
    rogue-election [--ip IP]         a malformed election node; rogue-remove removes it
    bad-state                        the state znode made unparsable; bad-state-undo restores it
    flaky NODE [--loss PCT] [--delay-ms MS] [--for S]   packet loss and latency; steady NODE
    sitter-crash NODE [--restart-after S]   the sitter alone SIGKILLed, a new one started S
                                     (default 0.5) seconds later; PostgreSQL left running meanwhile
    faults                           the gray faults in force
"""

from __future__ import annotations

import argparse
import json

from manatee_testbed import grayfaults as gf
from manatee_testbed.sandbox import Sandbox

COMMANDS = ("pg-hang", "pg-resume", "disk-full", "disk-lift", "storm", "storm-release", "crash-loop",
            "crash-stop", "rogue-election", "rogue-remove", "bad-state", "bad-state-undo", "flaky", "steady",
            "sitter-crash", "faults")


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    def node_cmd(name: str, helptext: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, parents=[common], help=helptext)
        c.add_argument("node", help="node name (a, b, c, ...)")
        return c

    node_cmd("pg-hang", "SIGSTOP the node's PostgreSQL only (postmaster and children; the sitter runs on)")
    node_cmd("pg-resume", "undo `pg-hang` (SIGCONT)")
    c = node_cmd("disk-full", "set the node's dataset quota just above its use, then fill it through the primary")
    c.add_argument("--fill-mb", type=int, default=12, metavar="MB",
                   help="MB written through the primary to fill it now (default 12; 0: the quota alone)")
    node_cmd("disk-lift", "undo `disk-full` (quota=none)")
    c = node_cmd("storm", "open and hold every connection slot of the node's PostgreSQL (superuser ones too)")
    c.add_argument("--for", dest="for_s", type=float, default=300.0, metavar="S",
                   help="release them by themselves after S seconds (default 300)")
    node_cmd("storm-release", "undo `storm`")
    c = node_cmd("crash-loop", "SIGKILL the node's postmaster every second for a while")
    c.add_argument("--for", dest="for_s", type=float, default=60.0, metavar="S", help="how long (default 60)")
    c.add_argument("--every", type=float, default=1.0, metavar="S", help="seconds between kills (default 1)")
    c.add_argument("--signal", choices=["KILL", "STOP"], default="KILL",
                   help="KILL (default): a crash loop; STOP: a sticky hang (every new postgres process stopped too)")
    node_cmd("crash-stop", "undo `crash-loop`")
    c = sub.add_parser("rogue-election", parents=[common],
                       help=f"create a malformed election node IP:5432:10002:5433-<seq> (data only {{\"ip\"}})")
    c.add_argument("--ip", default=gf.ROGUE_IP, help=f"its address (default {gf.ROGUE_IP})")
    sub.add_parser("rogue-remove", parents=[common], help="undo `rogue-election`")
    sub.add_parser("bad-state", parents=[common], help="overwrite the shard's state znode with unparsable bytes")
    sub.add_parser("bad-state-undo", parents=[common],
                   help="put the saved state back (unless a sitter wrote a new one meanwhile)")
    c = node_cmd("flaky", "drop a share of the node's packets to/from ZooKeeper and its peers, and delay them")
    c.add_argument("--loss", type=int, default=30, metavar="PCT", help="packets dropped, percent (default 30)")
    c.add_argument("--delay-ms", type=int, default=200, metavar="MS",
                   help="latency added to new connections to ZooKeeper and from the peers (default 200; 0: none)")
    c.add_argument("--for", dest="for_s", type=float, default=300.0, metavar="S",
                   help="after S seconds the latency proxy ends and removes the loss and its redirects "
                        "(default 300; with --delay-ms 0 only `steady` ends the loss)")
    node_cmd("steady", "undo `flaky`")
    c = node_cmd("sitter-crash", "SIGKILL the node's sitter alone (PostgreSQL runs on) and start a new one, as "
                                 "a supervisor would")
    c.add_argument("--restart-after", type=float, default=0.5, metavar="S",
                   help="seconds between the kill and the new sitter (default 0.5)")
    sub.add_parser("faults", parents=[common], help="the gray faults in force (JSON)")


def run(sb: Sandbox, args) -> None:
    """Carry out one of COMMANDS (SandboxError when it cannot be done)."""
    cmd, node = args.cmd, getattr(args, "node", None)
    if cmd == "pg-hang":
        print(f"node {node}: stopped {len(gf.pg_hang(sb, node))} PostgreSQL process(es) (SIGSTOP)")
    elif cmd == "pg-resume":
        print(f"node {node}: continued {len(gf.pg_resume(sb, node))} PostgreSQL process(es) (SIGCONT)")
    elif cmd == "disk-full":
        quota = gf.disk_full(sb, node, fill_mb=args.fill_mb)
        print(f"node {node}: quota {quota} bytes on {sb.st.node(node).dataset}")
    elif cmd == "disk-lift":
        print(f"node {node}: {'quota lifted' if gf.disk_lift(sb, node) else 'had no quota from disk-full'}")
    elif cmd == "storm":
        pid = gf.storm(sb, node, hold_s=args.for_s)
        print(f"node {node}: connection storm held by pid {pid} for up to {args.for_s:.0f}s")
    elif cmd == "storm-release":
        print(f"node {node}: {'released' if gf.storm_release(sb, node) else 'no storm'}")
    elif cmd == "crash-loop":
        pid = gf.crash_loop(sb, node, for_s=args.for_s, every_s=args.every, sig=args.signal)
        what = "killed" if args.signal == "KILL" else "stopped (SIGSTOP, new processes too)"
        print(f"node {node}: PostgreSQL {what} every {args.every}s for {args.for_s:.0f}s (pid {pid})")
    elif cmd == "crash-stop":
        print(f"node {node}: {'crash loop stopped' if gf.crash_stop(sb, node) else 'no crash loop'}")
        gf.pg_resume(sb, node)  # what a sticky hang left stopped
    elif cmd == "rogue-election":
        print(f"created {gf.rogue_election_node(sb, args.ip)}")
    elif cmd == "rogue-remove":
        print(f"removed {', '.join(gf.remove_rogue_election_node(sb)) or 'nothing'}")
    elif cmd == "bad-state":
        print(f"{gf.corrupt_state(sb)['path']}: now unparsable (the good state is saved)")
    elif cmd == "bad-state-undo":
        print(gf.restore_state(sb))
    elif cmd == "flaky":
        info = gf.flaky(sb, node, loss_pct=args.loss, delay_ms=args.delay_ms, for_s=args.for_s)
        print(f"node {node}: {info['lossPct']}% packet loss, {info['delayMs']} ms latency")
    elif cmd == "steady":
        print(f"node {node}: {'network steady again' if gf.unflaky(sb, node) else 'was not flaky'}")
    elif cmd == "sitter-crash":
        old, new = sb.crash_sitter(node, args.restart_after)
        print(f"node {node}: sitter pid {old} killed, pid {new} started {args.restart_after}s later")
    elif cmd == "faults":
        print(json.dumps(gf.active(sb), indent=2))
