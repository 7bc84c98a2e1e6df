"""manatee-adm: the operator's tool beyond the guide's three (what patronictl gives Patroni users).

    manatee-adm show       [--json]              the shard as a table, its generation and problems
    manatee-adm verify     [--json]              "ok" and exit 0 when healthy; else the problems, exit 1
                                                 when only warnings (a freeze...), exit 2 when critical
    manatee-adm pg-status  [--json] [PERIOD]     each node's WAL and lag (bytes, seconds), every PERIOD s
    manatee-adm history    [--json]              the history as a table
    manatee-adm freeze     -r REASON             no automatic transitions (no failover) until unfreeze
    manatee-adm unfreeze
    manatee-adm switchover [--node NODE] [--wait S] [--cancel]
                                                 planned takeover by the sync (write gap well under 1 s)
    manatee-adm rebuild    --node NODE [--force] [--wait S]
                                                 restore a node from its upstream, with progress
    manatee-adm reload     [--wait S]        every sitter re-reads its config (PostgreSQL parameters)
    manatee-adm set-primary --node NODE [--force]
                                                 safe-mode runbook step 3 (all sitters stopped)
    manatee-adm state-restore [--dry-run] [--yes] [--ignore-unreachable]
                                                 re-create a missing state znode, or replace an
                                                 unreadable one, from what the live sitters
                                                 remember (adm_staterestore.py)
    manatee-adm reap       --node NODE           forget a deposed former primary gone for good
                                                 (adm_reap.py)

The shard and ZooKeeper, as for every tool: -z/--zk ZK -s/--shard SHARD, -c sitter.json, or
$MANATEE_ZK / $MANATEE_SHARD; the original's positional `COMMAND SHARD ZK` still works. A node
is always `--node` (its ip, id or zoneId; `--to` and set-primary's positional NODE remain as
hidden aliases). Every subcommand also takes -t/--timeout (ZooKeeper and PostgreSQL answers),
-v and --version. Failures
are one line on stderr and a non-zero exit (1: could not do it, 2: usage), never a
traceback; see manatee/cli/common.py. PostgreSQL is asked over each node's pgUrl; a password
comes from the URL, PGPASSWORD or PGPASSFILE (a refused password shows as "auth failed", not
"down").

State changes (freeze, unfreeze, a switchover request) are compare-and-set writes on the
state znode's version, retried when a sitter wrote in between. The switchover itself is
carried out by the sitters (docs/adm.md, manatee/shard/decide.py `_primary_switchover`):
this tool only asks, then watches until the new primary takes writes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Callable, Sequence

from manatee import __version__ as VERSION
from manatee.cli import adm_pgconf, adm_reap, adm_restart, adm_staterestore
from manatee.cli import adm_view as V
from manatee.cli.adm_ops import find_peer, request_switchover, set_freeze, set_primary, withdraw_switchover
from manatee.cli.adm_probe import gather
from manatee.cli.common import (
    EXIT_OK, ArgParser, CliError, UsageError, ZkReader, _quiet_libraries, _start_watchdog,
    add_common_args, add_target_args, check_timeout, dump_json, one_line_failures, resolve_target,
)
from manatee.cli.history import read_history, records
from manatee.core.httpjson import http_json
from manatee.core.lsn import format_lsn
from manatee.shard.rebuildpath import PHASE_REQUESTED, PHASE_WITHDRAWN, cannot_restore_from
from manatee.shard.state import ClusterState
from manatee.shard.syncstore import SyncShardStore

TOOL = "manatee-adm"
HTTP_TIMEOUT = 1.5

__all__ = ["main", "build_parser", "COMMANDS"]


# --------------------------------------------------------------------------- subcommands

def _say(msg: str) -> None:
    print(msg, flush=True)


def cmd_show(args, zk: ZkReader) -> int:
    v = gather(zk, args.shard, args.timeout)
    print(dump_json(V.show_json(v)) if args.json else V.render_show(v))
    return EXIT_OK


#: verify's exit status by verdict (Nagios-style): ok 0, warning 1, critical 2
VERIFY_EXIT = {V.OK: EXIT_OK, V.WARNING: 1, V.CRITICAL: 2}


def cmd_verify(args, zk: ZkReader) -> int:
    v = gather(zk, args.shard, args.timeout)
    found = V.assess(v)
    verdict = V.verdict(found)
    if args.json:
        print(dump_json({"shard": v.shard, "generation": v.generation, "status": verdict,
                         "problems": [{"severity": s, "message": m} for s, m in found]}))
    elif not found:
        print("ok")
    else:
        for sev, msg in found:
            print(f"{sev}: {msg}")
    return VERIFY_EXIT[verdict]


def cmd_history(args, zk: ZkReader) -> int:
    recs, bad = records(read_history(zk, args.shard))
    for b in bad:
        print(f"{TOOL}: skipped: {b}", file=sys.stderr)
    print(dump_json(list(recs)) if args.json else V.render_history(recs))
    return EXIT_OK


def cmd_freeze(args, zk: ZkReader) -> int:
    old, new = set_freeze(zk, args.shard, args.reason)
    if new is None:
        _say(f"shard {args.shard} is already frozen: {old.freeze.reason} (by {old.freeze.by} at {old.freeze.time})")
    else:
        _say(f"shard {args.shard} frozen at generation {new.generation}: {args.reason}")
    return EXIT_OK


def cmd_unfreeze(args, zk: ZkReader) -> int:
    old, new = set_freeze(zk, args.shard, None)
    _say(f"shard {args.shard} was not frozen: nothing to do" if new is None
         else f"shard {args.shard} unfrozen (was: {old.freeze.reason})")
    return EXIT_OK


def cmd_set_primary(args, zk: ZkReader) -> int:
    rec = SyncShardStore(zk, args.shard).read()
    old, new = set_primary(zk, args.shard, args.node, rec.error, [p.to_json() for p in rec.election], args.force)
    _say(f"generation {new.generation}: primary {new.primary.ip} ({new.primary.id}), no sync; was primary "
         f"{old.primary.ip} in generation {old.generation}. Next: manatee-clear, then start "
         f"{new.primary.ip}'s sitter first (runbook steps 4-5)")
    return EXIT_OK


def _sitter_state(peer) -> tuple[dict | None, object]:
    """(its sitter's /state, or None when it did not answer; the answer as it came)."""
    code, body = http_json(f"{peer.status_url}/state", timeout=HTTP_TIMEOUT)
    return (body if code == 200 and isinstance(body, dict) else None), body


def _primary_reason(st: ClusterState) -> str:
    state, answer = _sitter_state(st.primary)
    return state.get("reason") or "?" if state is not None else f"no answer ({answer})"


def _primary_waits(primary) -> str | None:
    """Why the primary does not go on with a switchover yet (its decision primary.switchover_waiting)."""
    state, _ = _sitter_state(primary)
    return state.get("reason") if state is not None and state.get("rule") == "primary.switchover_waiting" else None


def cmd_switchover(args, zk: ZkReader) -> int:
    if args.cancel:
        new = withdraw_switchover(zk, args.shard)
        _say("no switchover pending: nothing to cancel" if new is None else "switchover request withdrawn")
        return EXIT_OK
    store = SyncShardStore(zk, args.shard)
    rec = store.read()
    req = request_switchover(zk, args.shard, args.node, rec.error, {p.id for p in rec.election})
    old_primary, target, gen0 = req.primary, req.sync, req.generation
    t0 = time.monotonic()
    _say(f"switchover requested: {old_primary.ip} -> {target.ip} (generation {gen0})")
    limit = t0 + args.wait
    seen_release = took = False
    waits, asked = None, t0  # what the primary last said it waits for, when it was last asked
    try:
        while time.monotonic() < limit:
            zk.deadline = max(zk.deadline, time.monotonic() + args.timeout)
            st = store.state_or_none()
            if st is not None and not took:
                if st.generation > gen0:
                    if st.primary.id == old_primary.id:
                        raise CliError(f"{old_primary.ip} named another sync in generation {st.generation} "
                                       f"(was {target.ip}, gone or sick?): the switchover was dropped; "
                                       f"see `manatee-adm show` and `manatee-adm history`")
                    if st.primary.id != target.id:
                        raise CliError(f"the shard moved on without the switchover: generation {st.generation} "
                                       f"has primary {st.primary.ip} (a failure in the meantime?)")
                    took = True
                    _say(f"{target.ip} took over in generation {st.generation} after "
                         f"{time.monotonic() - t0:.2f}s; waiting for it to take writes")
                elif st.switchover is None:
                    raise CliError(f"the switchover request was withdrawn (by the primary {old_primary.ip}: "
                                   f"{_primary_reason(st)})")
                elif st.switchover.released and not seen_release:
                    seen_release = True
                    _say(f"{old_primary.ip} stopped at WAL {format_lsn(st.switchover.released_wal)} and released "
                         f"the primary role after {time.monotonic() - t0:.2f}s")
                elif not seen_release and time.monotonic() - asked >= 1.0:
                    asked, said = time.monotonic(), _primary_waits(old_primary)
                    if said is not None and said != waits:  # e.g. its sync is sick: say so, once
                        _say(f"{old_primary.ip} waits: {said}")
                    waits = said
            if took and http_json(f"{target.status_url}/primary", timeout=0.5)[0] == 200:
                _say(f"switchover done: {target.ip} is the writable primary "
                     f"({time.monotonic() - t0:.2f}s after the request); {old_primary.ip} rejoins as a standby")
                return EXIT_OK
            time.sleep(0.05)
    except KeyboardInterrupt:
        if not took:
            withdraw_switchover(zk, args.shard, req.switchover.requested)
            raise CliError("interrupted: switchover request withdrawn") from None
        raise
    if took:
        raise CliError(f"{target.ip} took over but did not take writes within {args.wait:g}s "
                       f"(its sync has not caught up?); see `manatee-adm show`")
    gone = withdraw_switchover(zk, args.shard, req.switchover.requested)
    raise CliError(f"the switchover did not complete within {args.wait:g}s"
                   + ("; request withdrawn" if gone is not None else "")
                   + f"; the primary says: {_primary_reason(req)}")


def restore_progress_line(r: dict) -> str:
    """A rebuild's progress from /state's `restore`: phase, bytes of the sender's estimate, source.
    An increment's estimate is a lower bound: once passed, the bytes so far are shown without it."""
    line = f"{r.get('phase')}"
    done, size = r.get("completed") or 0, r.get("size")
    if size and done <= size:
        line += f" {V.fmt_bytes(done)} of {V.fmt_bytes(size)} ({100.0 * done / size:.0f}%)"
    elif size:
        line += f" {V.fmt_bytes(done)} (more than the {V.fmt_bytes(size)} estimated)"
    if r.get("source"):
        line += f" from {r['source']}"
    return line


def upstream_cannot_serve(st: ClusterState, p) -> str | None:
    """Why a rebuild of `p` would only wait for its upstream (None: it can start, or the node's
    sitter will refuse or place it itself: the primary, a deposed node). The sitter restores
    from the nearest member ahead of it, once that one's PostgreSQL runs and answers; asked
    while none can serve, the request would hold a sound node (perhaps the sync, the only copy
    that can take over when its primary's data is gone) waiting for it."""
    chain = st.chain()
    ids = [q.id for q in chain]
    if p.id not in ids[1:]:
        return None
    ahead = list(reversed(chain[:ids.index(p.id)]))
    for q in ahead:
        state, _answer = _sitter_state(q)
        if state is None:  # its sitter does not answer: not the upstream (look further ahead)
            continue
        why = cannot_restore_from(state)
        if why is None:
            return None
        msg = (f"{p.ip} would restore from {q.ip} ({st.place_of(q.id)}), but {why} "
               f"(its sitter says: {state.get('reason') or '?'})")
        if st.place_of(p.id) == "sync":
            msg += (f"; {p.ip} is the sync, the one node that can take over: rebuild it once {q.ip} "
                    "serves, or see the safe-mode runbook")
        return msg + ". Nothing requested"
    return (f"no member ahead of {p.ip} answers ({', '.join(q.ip for q in ahead)}): cannot tell whether "
            "its rebuild could start. Nothing requested")


def cmd_rebuild(args, zk: ZkReader) -> int:
    st, _version = SyncShardStore(zk, args.shard).state("rebuild")
    p = find_peer(st, args.node)
    if not p.status_url:
        raise CliError(f"{p.ip} has no statusUrl in the state: cannot reach its sitter")
    why = upstream_cannot_serve(st, p)
    if why is not None:
        raise CliError(why)
    from manatee.core.auth import SecretError, load_secret_file, sign_request

    secret_file = args.secret_file or os.environ.get("MANATEE_SECRET_FILE")
    try:
        secret = load_secret_file(secret_file) if secret_file else None
    except SecretError as e:
        raise CliError(f"--secret-file: {e}") from None
    req = {"force": args.force}
    signed = sign_request(secret, "POST", "/rebuild", json.dumps(req).encode())
    code, body = http_json(f"{p.status_url}/rebuild", req, timeout=args.timeout, headers=signed)
    if code == 0:
        raise CliError(f"the sitter of {p.ip} does not answer at {p.status_url}: {body}")
    if code >= 400:
        msg = body.get("message") if isinstance(body, dict) else body
        hint = "" if code != 401 or secret else " (pass --secret-file, or set MANATEE_SECRET_FILE, to the shard secret)"
        raise CliError(f"{p.ip} refused the rebuild: {msg}{hint}")
    _say(f"rebuild of {p.ip} ({st.place_of(p.id)}) requested")
    t0 = time.monotonic()
    last = None
    started = False
    done_at = None  # when this process first saw the restore done: a later look is after it
    while time.monotonic() - t0 < args.wait:
        code, s = http_json(f"{p.status_url}/state", timeout=2)
        if code == 200 and isinstance(s, dict):
            r = s.get("restore") or {}
            phase = r.get("phase")
            line = f"{restore_progress_line(r)}; sitter: {s.get('localRole')}"
            if line != last:
                _say(f"[{time.monotonic() - t0:6.1f}s] {line}")
                last = line
            if phase == PHASE_WITHDRAWN:  # set only after this request was accepted: its own answer
                raise CliError(f"the rebuild of {p.ip} was withdrawn: {r.get('reason')}")
            started = started or s.get("localRole") == "rebuild" or phase not in (None, PHASE_REQUESTED)
            if started and phase == "done":
                done_at = done_at or time.monotonic()
            # streaming in an observation made before the restore ended (the old copy's) is no answer
            if done_at is not None and adm_restart.streams_since(p.status_url, done_at, args.timeout):
                _say(f"rebuild of {p.ip} done in {time.monotonic() - t0:.1f}s: it streams from its upstream")
                return EXIT_OK
        time.sleep(0.5)
    raise CliError(f"the rebuild of {p.ip} did not finish within {args.wait:g}s (last: {last}); "
                   f"it may still be running: see {p.status_url}/restore")


def cmd_pg_status(args, zk: ZkReader) -> int:
    def show(v: V.ShardView, stamp: str | None) -> None:
        if args.json:  # one JSON document per line, so that a repeating run is JSON lines
            print(dump_json(V.pg_status_json(v, stamp), compact=True), flush=True)
        else:
            print(V.render_pg_status(v, stamp), flush=True)

    if not args.period:
        zk.deadline = time.monotonic() + args.timeout
        show(gather(zk, args.shard, args.timeout, sitters=False), None)
        return EXIT_OK
    # Repeating: Ctrl-C (or SIGTERM) is how it ends. The signal only sets a flag, so that it
    # never lands inside a ZooKeeper or PostgreSQL call (a KeyboardInterrupt raised there can
    # leave a library thread waiting); the sample in progress finishes within its timeout.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        zk.deadline = time.monotonic() + args.timeout
        v = gather(zk, args.shard, args.timeout, sitters=False)
        show(v, V.iso_now())
        if not args.json:
            print(flush=True)
        stop.wait(args.period)
    return EXIT_OK


# --------------------------------------------------------------------------- CLI

def _positive(name: str) -> Callable[[str], float]:
    def conv(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number of seconds, not {s!r}") from None
        if not 0 < v <= 86400:
            raise argparse.ArgumentTypeError(f"{name} must be between 0 and 86400 seconds, not {s}")
        return v
    return conv


def build_parser() -> ArgParser:
    p = ArgParser(prog=TOOL, description="Operate a manatee shard: show, verify, pg-status, history, "
                                         "freeze/unfreeze, switchover, rebuild, state-restore, reap.")
    p.add_argument("--version", action="version", version=f"%(prog)s (manatee) {VERSION}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=ArgParser)
    sub.required = True

    def add(name: str, help_: str, extra: str = "", json_: bool = False) -> ArgParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        add_common_args(sp)
        add_target_args(sp, "SHARD ZK", extra)
        if json_:
            sp.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
        return sp

    add("show", "the shard as a table: generation, freeze, each node's role, PostgreSQL, lag and disk; "
                "problems", json_=True)
    add("verify", "print ok and exit 0 when healthy; else each problem with its severity, exit 1 when "
                  "only warnings (e.g. a planned freeze), 2 when any is critical", json_=True)
    add("pg-status", "each node's WAL position and replication lag (bytes, seconds); with PERIOD, "
                     "repeat every PERIOD seconds until Ctrl-C", "[PERIOD]", json_=True)
    add("history", "the shard's history of topology changes as a table", json_=True)
    sp = add("freeze", "stop all automatic transitions (no failover) until unfreeze")
    sp.add_argument("-r", "--reason", required=True, help="why (shown by show and in the state)")
    add("unfreeze", "let the sitters act again")
    sp = add("switchover", "planned takeover by the sync: the primary goes read-only, the sync takes over")
    sp.add_argument("--node", metavar="NODE", help="the sync's ip, id or zoneId (a check: only the sync may "
                                                   "take over)")
    sp.add_argument("--to", dest="node", metavar="NODE", help=argparse.SUPPRESS)  # the old spelling
    sp.add_argument("--wait", type=_positive("--wait"), default=30.0, metavar="SECONDS",
                    help="give up (and withdraw the request) after this long (default 30)")
    sp.add_argument("--cancel", action="store_true", help="withdraw a pending switchover request")
    sp = add("set-primary", "safe-mode runbook step 3: NODE is the primary of a new generation, no sync, "
                            "nobody else in the chain (all sitters must be stopped)")
    sp.add_argument("--node", metavar="NODE", help="the node with the most WAL: its ip, id or zoneId "
                                                   "(also accepted as the last positional word)")
    sp.add_argument("--force", action="store_true", help="also when the shard is not in safe mode")
    sp = add("rebuild", "restore a node's data from its upstream (its sitter does it), showing progress")
    sp.add_argument("--node", required=True, metavar="NODE", help="the node's ip, id or zoneId")
    sp.add_argument("--force", action="store_true", help="also rebuild the sync (the primary blocks writes "
                                                         "until it names another)")
    sp.add_argument("--wait", type=_positive("--wait"), default=600.0, metavar="SECONDS",
                    help="stop watching after this long (default 600)")
    sp.add_argument("--secret-file", metavar="FILE", default=None,
                    help="the shard secret's file, to sign the request (default: $MANATEE_SECRET_FILE)")
    adm_pgconf.add_parsers(add, _positive)
    adm_restart.add_parsers(add, _positive)
    adm_staterestore.add_parsers(add, _positive)
    adm_reap.add_parsers(add, _positive)
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace, ZkReader], int]] = {
    "show": cmd_show, "verify": cmd_verify, "pg-status": cmd_pg_status, "history": cmd_history,
    "freeze": cmd_freeze, "unfreeze": cmd_unfreeze, "switchover": cmd_switchover, "rebuild": cmd_rebuild,
    "set-primary": cmd_set_primary, **adm_pgconf.COMMANDS, **adm_restart.COMMANDS,
    **adm_staterestore.COMMANDS, **adm_reap.COMMANDS,
}


def _budget(args: argparse.Namespace) -> float | None:
    """How long the whole run may take (the watchdog's limit); None: until Ctrl-C."""
    if args.cmd == "pg-status" and args.period:
        return None
    if args.cmd == "state-restore" and not (args.yes or args.dry_run) and sys.stdin.isatty():
        return None  # it waits for the operator's answer
    extra = {"switchover": getattr(args, "wait", 0), "rebuild": getattr(args, "wait", 0),
             "reload": getattr(args, "wait", 0),
             "restart": getattr(args, "wait", 0) * 8}.get(args.cmd, 0)  # --wait bounds each step
    return args.timeout * 2 + extra + 5


#: the positional words each subcommand takes after the legacy SHARD ZK: (min, max)
EXTRAS = {"pg-status": (0, 1), "set-primary": (0, 1)}


def _resolve(args: argparse.Namespace) -> str:
    """Fill args.shard (and the subcommand's own positional words) by the common convention;
    returns the ZooKeeper connect string."""
    t = resolve_target(args, extras=EXTRAS.get(args.cmd, (0, 0)))
    args.shard = t.shard
    if args.cmd == "pg-status":
        try:
            args.period = _positive("PERIOD")(t.extra[0]) if t.extra else None
        except argparse.ArgumentTypeError as e:
            raise UsageError(str(e)) from None
    elif args.cmd == "set-primary":
        if t.extra and args.node is not None and t.extra[0] != args.node:
            raise UsageError(f"set-primary: NODE given twice ({t.extra[0]!r} and --node {args.node!r})")
        args.node = args.node or (t.extra[0] if t.extra else None)
        if not args.node:
            raise UsageError("set-primary: the following arguments are required: --node NODE")
    return t.zk


def _run(args: argparse.Namespace, watchdogs: list[threading.Timer]) -> int:
    check_timeout(args.timeout)
    if args.cmd == "freeze" and not args.reason.strip():
        raise UsageError("freeze: --reason must say why (it is shown to every operator)")
    _quiet_libraries(args.verbose)
    hosts = _resolve(args)
    budget = _budget(args)
    if budget is not None:
        watchdogs.append(_start_watchdog(TOOL, budget))
    with ZkReader(hosts, time.monotonic() + args.timeout) as zk:
        if args.cmd not in ("switchover", "rebuild", "freeze", "unfreeze", "set-primary", "reap"):
            SyncShardStore(zk, args.shard).require()
        zk.deadline = time.monotonic() + args.timeout + (getattr(args, "wait", 0) or 0)
        return COMMANDS[args.cmd](args, zk)


def main(argv: Sequence[str] | None = None) -> int:
    watchdogs: list[threading.Timer] = []
    try:
        return one_line_failures(TOOL, lambda: _run(build_parser().parse_args(argv), watchdogs))
    finally:
        for w in watchdogs:
            w.cancel()


if __name__ == "__main__":
    raise SystemExit(main())
