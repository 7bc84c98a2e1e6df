"""`manatee-sandbox`: bring up a real local shard and drive faults on it.

    manatee-sandbox up [--nodes 3] [--session-timeout 6000] [--dir .sandbox] [--shard 1] [--zk-servers 1|3]
    manatee-sandbox status [--json]
    manatee-sandbox kill|stop|start|partition|heal|hang|resume NODE
    manatee-sandbox zk-stop|zk-start
    manatee-sandbox psql [NODE] [-- PSQL-ARGS...]
    manatee-sandbox pg-hang|disk-full|storm|crash-loop|flaky NODE ... (gray faults; see `--help`)
    manatee-sandbox down [--keep]

Exit status: 0 done, 1 the command failed (one line says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from manatee_testbed.sandbox import (
    DEFAULT_FIRST_IP,
    DEFAULT_SESSION_TIMEOUT_MS,
    Sandbox,
)
from manatee_testbed.sandbox_state import SandboxError
from manatee_testbed.cli import sandbox_faults

PROG = "manatee-sandbox"
EXIT_FAIL = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    dir_help = "sandbox directory (default: ./.sandbox, or $MANATEE_SANDBOX_DIR)"
    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("--dir", default=os.environ.get("MANATEE_SANDBOX_DIR", ".sandbox"), help=dir_help)
    # after the command too; SUPPRESS so that a sub-command does not reset a --dir given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=argparse.SUPPRESS, help=dir_help)
    p = argparse.ArgumentParser(
        prog=PROG,
        description="A real local manatee shard (ZooKeeper, a file-backed ZFS pool, N nodes each with "
                    "sitter, snapshotter and backupserver on its own 127.0.0.x address) and faults to drive on it.",
        parents=[top],
        epilog="Example: manatee-sandbox up; manatee-sandbox status; manatee-sandbox kill a; manatee-sandbox down",
    )
    from manatee import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s (manatee) {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    up = sub.add_parser("up", parents=[common], help="start a shard and wait until it is healthy and writable")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    up.add_argument("--session-timeout", type=int, default=DEFAULT_SESSION_TIMEOUT_MS, metavar="MS",
                    help=f"ZooKeeper session timeout in ms (default {DEFAULT_SESSION_TIMEOUT_MS}; "
                         "failover takes about this long)")
    up.add_argument("--health-timeout", type=int, metavar="MS",
                    help="healthChkTimeout in ms (default: from the session timeout, 2000-5000)")
    up.add_argument("--expiration", type=int, metavar="MS",
                    help="heartbeat expirationTime in ms (default: from the session timeout, at least 2000)")
    up.add_argument("--shard", default="1", help="shard name: ZooKeeper path /manatee/NAME (default 1)")
    up.add_argument("--first-ip", default=DEFAULT_FIRST_IP,
                    help=f"address of node a; ZooKeeper gets the one below (default {DEFAULT_FIRST_IP})")
    up.add_argument("--timeout", type=float, default=240.0, metavar="S",
                    help="how long to wait for a healthy shard (default 240)")
    up.add_argument("--auth", choices=["scram-sha-256", "md5"], default="scram-sha-256",
                    help="PostgreSQL auth for replication between nodes (default scram-sha-256)")
    up.add_argument("--zk-servers", type=int, choices=[1, 3], default=1, metavar="{1,3}",
                    help="ZooKeeper servers: 1 standalone (default) or a 3-server ensemble on ZooKeeper's address")
    up.add_argument("--tls", action="store_true",
                    help="HTTPS with client certificates for every status server and backupserver: a throwaway "
                         "CA and per-node certificates (openssl) in DIR/tls")
    up.add_argument("--zk-auth", action=argparse.BooleanOptionalAction, default=True,
                    help="ZooKeeper digest auth (default on; --no-zk-auth for an open ZooKeeper): a generated "
                         "shard credential (DIR/zk.auth); the shard's znodes get ACLs (writable only with it)")

    st = sub.add_parser("status", parents=[common], help="each node's address, role, pgUrl and processes")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    for name, helptext in [
        ("kill", "host death: SIGKILL the node's daemons and its PostgreSQL"),
        ("stop", "graceful stop of the node's daemons (SIGTERM, wait)"),
        ("start", "start the node's daemons that are not running"),
        ("partition", "drop the node's packets to and from ZooKeeper and the other nodes"),
        ("heal", "undo `partition`"),
        ("hang", "SIGSTOP every process of the node (a hung host)"),
        ("resume", "SIGCONT every process of the node"),
    ]:
        c = sub.add_parser(name, parents=[common], help=helptext)
        c.add_argument("node", help="node name (a, b, c, ...)")

    sub.add_parser("zk-stop", parents=[common],
                   help="stop the shard's ZooKeeper (all of it: an outage), keeping its data")
    zs = sub.add_parser("zk-start", parents=[common],
                        help="start the shard's ZooKeeper again (same address and data) and wait until it serves")
    zs.add_argument("--timeout", type=float, default=60.0, metavar="S", help="how long to wait (default 60)")

    sandbox_faults.add_parsers(sub, common)

    ps = sub.add_parser("psql", parents=[common], help="psql to the primary, or to NODE",
                        usage=f"{PROG} psql [--dir DIR] [NODE] [-- PSQL-ARGS...]")
    ps.add_argument("node", nargs="?", help="node name (default: the current primary)")

    dn = sub.add_parser("down", parents=[common], help="stop and remove everything the sandbox made")
    dn.add_argument("--keep", action="store_true", help="keep DIR (configs and logs) for inspection")
    return p


def _print_overview(info: dict[str, Any], out=print) -> None:
    zk = info["zookeeper"]
    out(f"shard {info['shard']}: ZooKeeper {zk['connect']} "
        f"({'running' if zk['alive'] else 'NOT RUNNING'}, "
        f"{str(len(zk['servers'])) + ' servers' if zk.get('servers') else 'pid ' + str(zk['pid'])}), "
        f"session timeout {info['sessionTimeoutMs']} ms, pool {info['pool']['name']}")
    for s in zk.get("servers", []):
        out(f"  ZooKeeper server {s['myid']} {s['connect']}: {s['mode'] or '-'}, pid {s['pid'] or '-'}"
            f"{'' if s['alive'] else ' (NOT RUNNING)'}")
    out(f"{'NODE':<5} {'ADDRESS':<14} {'ROLE':<12} {'PGURL':<40} {'PROCESSES'}")
    for n in info["nodes"]:
        procs = " ".join(f"{d}={p['pid'] or '-'}{'' if p['alive'] else '(dead)'}" for d, p in n["processes"].items())
        flags = (" [partitioned]" if n["partitioned"] else "") + (" [hung]" if n["hung"] else "")
        out(f"{n['name']:<5} {n['address']:<14} {n['role']:<12} {n['pgUrl']:<40} {procs}{flags}")


def _print_up(info: dict[str, Any], args) -> None:
    print(f"\nsandbox up in {info['seconds']}s, in {info['dir']}")
    _print_overview(info)
    print()
    for n in info["nodes"]:
        print(f"node {n['name']}: status {n['statusUrl']}  logs {n['logDir']}/*.log  socket {n['socketDir']}")
    print(f"ZooKeeper log: {info['zookeeper']['log']}")
    d = "" if args.dir == ".sandbox" else f" --dir {args.dir}"
    print(f"\npsql to the primary:  {PROG} psql{d}")
    print(f"fail the primary:     {PROG} kill{d} NODE     then: {PROG} status{d}")
    print(f"remove everything:    {PROG} down{d}")


PGPASS = "pgpass"
ENV_FILE = "manatee.env"


def write_tool_files(sb: Sandbox) -> tuple[Path, Path]:
    """DIR/pgpass (libpq's password file: each node's address and port, the socket, user
    postgres) and DIR/manatee.env (MANATEE_ZK, MANATEE_SHARD, PGPASSFILE as shell exports),
    so that manatee-stat -p and manatee-adm authenticate as the sandbox's sitters do.
    Both 0600: they hold the superuser's password."""
    st = sb.st
    d = Path(sb.dir).resolve()
    # the superuser's TCP password: adminAuth's where the sandbox has one (branch secpg), else
    # the replication password, which is the superuser's while the superuser replicates
    password = getattr(st, "admin_password", "") or st.repl_password or "*"
    lines = []
    for n in st.nodes:
        for host in (n.ip, "localhost"):  # localhost: libpq's name for a unix-socket connection
            lines.append(f"{host}:{n.pg_port}:*:postgres:{password}")
    pgpass, env = d / PGPASS, d / ENV_FILE
    exports = "".join(f"export {k}={v}\n" for k, v in tool_vars(st).items())
    for path, text in ((pgpass, "\n".join(lines) + "\n"),
                       (env, f"# source me: . {env}\nexport MANATEE_ZK={st.zk_connect}\n"
                             f"export MANATEE_SHARD={st.shard}\nexport PGPASSFILE={pgpass}\n{exports}")):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
    return pgpass, env


def tool_vars(st) -> dict[str, str]:
    """The sandbox's credentials for the tools: the shard secret (manatee-adm rebuild), and
    with --zk-auth the ZooKeeper credential, with --tls the CA and a client certificate."""
    secret = getattr(st, "secret_file", None)
    out = {"MANATEE_SECRET_FILE": secret} if secret else {}
    if getattr(st, "zk_auth", ""):
        out["MANATEE_ZK_AUTH_FILE"] = st.zk_auth_file
    if getattr(st, "tls", False):
        out.update(MANATEE_TLS_CA=os.path.join(st.tls_dir, "ca.pem"),
                   MANATEE_TLS_CERT=os.path.join(st.tls_dir, "tools.pem"),
                   MANATEE_TLS_KEY=os.path.join(st.tls_dir, "tools.key"))
    return out


def _tool(name: str) -> str:
    """The tool as the user can run it: its bare name when PATH finds this installation's,
    else its full path (scripts/sandbox.sh runs from a virtualenv that is not on PATH)."""
    here = Path(sys.executable).parent / name
    found = shutil.which(name)
    if not here.exists() or (found and Path(found).resolve() == here.resolve()):
        return name
    return str(here)


def tool_commands(zk: str, shard: str, pgpass: Path, env: Path,
                  extra: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(what, command) lines `up` prints: each works as printed, from any directory.
    `extra`: further variables the tools need (tool_vars: credentials, TLS files)."""
    pre = " ".join([f"PGPASSFILE={pgpass}", *(f"{k}={v}" for k, v in (extra or {}).items())])
    stat, adm = _tool("manatee-stat"), _tool("manatee-adm")
    return [
        ("the tools' settings", f". {env}   (then: {stat} -p, {adm} show, ...)"),
        ("shard state + lag", f"{pre} {stat} -p -z {zk} -s {shard}"),
        ("the shard as a table", f"{pre} {adm} show -z {zk} -s {shard}"),
        ("health (exit 0/1/2)", f"{pre} {adm} verify -z {zk} -s {shard}"),
        ("history", f"{adm} history -z {zk} -s {shard}"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    psql_args: list[str] = []
    if "--" in argv:  # psql [NODE] -- ARGS: everything after -- goes to psql untouched
        i = argv.index("--")
        argv, psql_args = argv[:i], argv[i + 1:]
    args = parser.parse_args(argv)
    if psql_args and args.cmd != "psql":
        parser.error(f"arguments after -- are for psql only, not {args.cmd}")
    sb = Sandbox(args.dir)
    try:
        if args.cmd == "up":
            info = sb.up(nodes=args.nodes, session_timeout_ms=args.session_timeout, shard=args.shard,
                         first_ip=args.first_ip, timeout=args.timeout, auth_method=args.auth,
                         zk_servers=args.zk_servers, tls=args.tls, zk_auth=args.zk_auth,
                         health_timeout_ms=args.health_timeout, expiration_ms=args.expiration)
            pgpass, env = write_tool_files(sb)
            _print_up(info, args)
            print("\nmanatee tools (PostgreSQL password in " + str(pgpass) + "):")
            for what, cmd in tool_commands(sb.st.zk_connect, sb.st.shard, pgpass, env, tool_vars(sb.st)):
                print(f"  {what + ':':<22}{cmd}")
        elif args.cmd == "status":
            info = sb.status()
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                _print_overview(info)
        elif args.cmd == "kill":
            pids = sb.kill(args.node)
            print(f"node {args.node}: killed {len(pids)} process(es): {' '.join(map(str, pids)) or 'none running'}")
        elif args.cmd == "stop":
            stopped = sb.stop(args.node)
            print(f"node {args.node}: stopped {', '.join(stopped) or 'nothing (not running)'}")
        elif args.cmd == "start":
            sb.start(args.node)
        elif args.cmd == "partition":
            table = sb.partition(args.node)
            print(f"node {args.node}: partitioned (nftables table inet {table})")
        elif args.cmd == "heal":
            print(f"node {args.node}: {'healed' if sb.heal(args.node) else 'was not partitioned'}")
        elif args.cmd == "hang":
            print(f"node {args.node}: stopped {len(sb.hang(args.node))} process(es) (SIGSTOP)")
        elif args.cmd == "resume":
            print(f"node {args.node}: resumed {len(sb.resume(args.node))} process(es) (SIGCONT)")
        elif args.cmd == "zk-stop":
            was = sb.zk_stop()
            print(f"ZooKeeper {sb.st.zk_connect}: {'stopped (data kept)' if was else 'was not running'}")
        elif args.cmd == "zk-start":
            pid = sb.zk_start(timeout=args.timeout)
            pids = " ".join(str(p) for p in sb.zk_pids()) if sb.st.zk_servers else pid
            print(f"ZooKeeper {sb.st.zk_connect}: serving (pid {pids})")
        elif args.cmd in sandbox_faults.COMMANDS:
            sandbox_faults.run(sb, args)
        elif args.cmd == "psql":
            argv_psql = sb.psql_argv(args.node, psql_args)
            sys.stdout.flush()
            os.execv(argv_psql[0], argv_psql)
        elif args.cmd == "down":
            if not sb.exists():
                print(f"no sandbox in {sb.dir}: nothing to do")
                return 0
            problems = sb.down(keep=args.keep)
            if problems:
                for p in problems:
                    print(f"{PROG}: down: {p}", file=sys.stderr)
                return EXIT_FAIL
            print(f"sandbox in {sb.dir} is down: processes stopped, pool destroyed, partitions healed"
                  + ("" if not args.keep else " (directory kept)"))
    except SandboxError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; `{PROG} down` removes what was started", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
