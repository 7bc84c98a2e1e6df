"""manatee-adm restart: a rolling restart of the shard's PostgreSQL, node by node, so that the
shard keeps taking writes except for one switchover's gap: the asyncs (the deepest first),
then the sync, then a switchover (manatee-adm switchover's own code), then the old primary,
which is a standby by then. Each node is restarted by its own sitter (signed POST /restart,
in its current role) and the next step waits, bounded by --wait, until that node streams
again (its /replica answers 200).

--pending restarts only the nodes whose /state shows a pending restart (PostgreSQL's
pg_settings.pending_restart); a node whose /state cannot be read is unknown, and the command
stops there rather than guess. --node N restarts one standby (the primary is refused: switch
over first), or with --in-place the primary where it is (writes stop until it serves again and
its standbys stream: what lowering a setting a standby needs at the primary's value takes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

from manatee.cli.adm_pgconf import _secret, shard_state, signed_post
from manatee.cli.adm_ops import find_peer
from manatee.cli.common import CliError
from manatee.core.httpjson import http_json
from manatee.shard.state import ClusterState

POLL_S = 0.2


def plan(st: ClusterState) -> list[tuple[str, object]]:
    """The rolling order: ("restart", peer) for each async (the deepest first) and the sync,
    then ("switchover", old primary), then ("restart", old primary). Pure: tested without I/O."""
    chain = st.chain()
    steps: list[tuple[str, object]] = [("restart", p) for p in reversed(chain[1:])]
    steps.append(("switchover", chain[0]))
    steps.append(("restart", chain[0]))
    return steps


def _pending(status_url: str, ip: str, timeout: float) -> list[str]:
    """The node's settings waiting for a restart; an unanswered /state is unknown: an error."""
    code, s = http_json(f"{status_url}/state", timeout=timeout)
    pg = s.get("pg") if code == 200 and isinstance(s, dict) else None
    if pg is None:
        raise CliError(f"{ip}: cannot tell whether a restart is pending (its /state: "
                       f"{code or 'no answer'}): stopping here")
    return list(pg.get("pendingRestart") or [])


def _fresh_pg(status_url: str, since: float, timeout: float) -> dict | None:
    """The pg section of the node's /state if its sitter observed PostgreSQL after `since`
    (this process's monotonic clock; the sitter says how old its observation is); None if
    older (it may predate the restart) or unanswered."""
    asked = time.monotonic()
    code, s = http_json(f"{status_url}/state", timeout=min(timeout, 2))
    ago = s.get("pgObservedAgo") if code == 200 and isinstance(s, dict) else None
    if not isinstance(ago, (int, float)) or asked - ago <= since:
        return None
    return s.get("pg") or {}


def streams_since(status_url: str, since: float, timeout: float) -> bool:
    """The node streams in an observation made after `since`, and /replica agrees."""
    pg = _fresh_pg(status_url, since, timeout)
    if not pg or not pg.get("streaming"):
        return False
    return http_json(f"{status_url}/replica", timeout=min(timeout, 2))[0] == 200


def _wait_streaming(peers, args, t0: float, since: float) -> float:
    """Wait (bounded by --wait from t0) until every one of `peers` streams in an observation
    made after `since`: the restarted node, and the standbys below it (their walreceiver
    lost its upstream and retries only every wal_retrieve_retry_interval). The seconds it took."""
    limit = t0 + args.wait
    waiting = list(peers)
    while time.monotonic() < limit:
        waiting = [p for p in waiting if not streams_since(p.status_url, since, args.timeout)]
        if not waiting:
            return time.monotonic() - t0
        time.sleep(POLL_S)
    raise CliError(f"{', '.join(p.ip for p in waiting)} did not stream again within {args.wait:g}s: stopping "
                   f"the rolling restart here (see `manatee-adm show`)")


def _below(st: ClusterState, p) -> list:
    """p and the standbys below it in the chain (those that lose their upstream when it restarts)."""
    chain = list(st.chain())
    return chain[chain.index(p):] if p in chain else [p]


def _serves_since(status_url: str, since: float, timeout: float) -> bool:
    """The node's PostgreSQL healthy and out of recovery (a primary) in an observation made
    after `since`."""
    pg = _fresh_pg(status_url, since, timeout)
    return bool(pg) and bool(pg.get("healthy")) and pg.get("inRecovery") is False


def restart_node(p, place: str, secret, args, below, in_place: bool = False) -> float:
    """Ask p's sitter to restart its PostgreSQL; wait until it did and p streams again (the
    primary, restarted in place: until it serves again and every standby below it streams)."""
    t0 = time.monotonic()
    code, body = signed_post(secret, p.status_url, "/restart", {"force": True} if in_place else {}, args.timeout)
    if code != 202:
        msg = body.get("message") if isinstance(body, dict) else body
        hint = " (pass --secret-file, or set MANATEE_SECRET_FILE, to the shard secret)" \
            if code == 401 and secret is None else ""
        raise CliError(f"{p.ip} ({place}) refused the restart: {code or 'no answer'} {msg}{hint}")
    before = body.get("restartsDone", 0)
    limit = t0 + args.wait
    while time.monotonic() < limit:  # the sitter restarts PostgreSQL in its next cycle
        code, s = http_json(f"{p.status_url}/state", timeout=args.timeout)
        if code == 200 and isinstance(s, dict) and (s.get("restartsDone") or 0) > before:
            since = time.monotonic()
            while in_place and not _serves_since(p.status_url, since, args.timeout):
                if time.monotonic() > limit:
                    raise CliError(f"{p.ip} (primary) did not serve again within {args.wait:g}s (see `manatee-adm show`)")
                time.sleep(POLL_S)
            return _wait_streaming(below[1:] if in_place else below, args, t0, since)
        time.sleep(POLL_S)
    raise CliError(f"{p.ip} ({place}) did not restart PostgreSQL within {args.wait:g}s: stopping here")


def _switchover(args, zk) -> float:
    from manatee.cli.adm import cmd_switchover

    t0 = time.monotonic()
    zk.deadline = max(zk.deadline, t0 + args.timeout + args.wait)
    sw = argparse.Namespace(**{**vars(args), "cancel": False, "node": None})
    cmd_switchover(sw, zk)  # raises CliError when it does not complete
    return time.monotonic() - t0


def cmd_restart(args, zk) -> int:
    from manatee.cli.adm import _say

    st = shard_state(zk, args.shard, "restart")
    if args.node is not None:
        p = find_peer(st, args.node)
        if st.place_of(p.id) == "primary" and not args.in_place:
            raise CliError(f"{p.ip} is the primary: switch over first (manatee-adm switchover), then restart "
                           f"it as a standby; or --in-place, which stops writes until it is back (seconds)")
        if args.in_place and st.place_of(p.id) != "primary":
            raise CliError(f"{p.ip} is not the primary: --in-place is for the primary only")
        steps = [("restart", p)]
    elif args.in_place:
        raise CliError("--in-place needs --node PRIMARY")
    else:
        steps = plan(st)
    secret = _secret(args)
    say = _say if not args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    summary: list[dict] = []
    t_all = time.monotonic()

    def record(action, p, place, seconds=None, why=None):
        summary.append({"action": action, "node": p.ip, "id": p.id, "place": place,
                        "seconds": None if seconds is None else round(seconds, 3), "why": why})

    try:
        for action, p in steps:
            place = st.place_of(p.id) or "standby"
            if not p.status_url:
                raise CliError(f"{p.ip} has no statusUrl in the state: cannot reach its sitter")
            if action == "switchover":
                if args.pending and not _pending(p.status_url, p.ip, args.timeout):
                    say(f"{p.ip} (primary): no restart pending: no switchover")
                    record("skip", p, place, why="no restart pending")
                    break  # the old primary needs no restart either
                say(f"switching over from {p.ip} (primary) to restart it as a standby")
                with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
                    secs = _switchover(args, zk)
                record("switchover", p, place, secs)
                zk.deadline = max(zk.deadline, time.monotonic() + args.timeout)
                st = shard_state(zk, args.shard, "restart")
                # the old primary rejoins as a standby (the switchover restarts it in that role)
                say(f"{p.ip}: rejoined as the {st.place_of(p.id) or 'standby'}; waiting for it to stream")
                _wait_streaming(st.chain()[1:], args, time.monotonic(), time.monotonic())
                continue
            if args.pending:
                names = _pending(p.status_url, p.ip, args.timeout)
                if not names:
                    say(f"{p.ip} ({place}): no restart pending")
                    record("skip", p, place, why="no restart pending")
                    continue
            say(f"{p.ip} ({place}): restarting PostgreSQL")
            in_place = args.in_place and place == "primary"
            secs = restart_node(p, place, secret, args, _below(st, p), in_place=in_place)
            say(f"{p.ip} ({place}): restarted; "
                f"{'serves again and its standbys stream' if in_place else 'streams again'} after {secs:.2f}s")
            record("restart", p, place, secs)
    except CliError as e:
        if not args.json:
            raise
        print(json.dumps({"ok": False, "error": str(e), "steps": summary,
                          "seconds": round(time.monotonic() - t_all, 3)}, indent=2))
        return e.exit_code
    if args.json:
        print(json.dumps({"ok": True, "steps": summary, "seconds": round(time.monotonic() - t_all, 3)},
                         indent=2))
    else:
        _say(f"rolling restart done in {time.monotonic() - t_all:.1f}s")
    return 0


def add_parsers(add, positive) -> None:
    sp = add("restart", "rolling restart of PostgreSQL: the asyncs, the sync, a switchover, then the old "
                        "primary; each node streams again before the next", json_=True)
    sp.add_argument("--pending", action="store_true",
                    help="only the nodes with a pending restart (pg_settings.pending_restart)")
    sp.add_argument("--in-place", action="store_true",
                    help="with --node PRIMARY: restart the primary where it is, without a switchover (writes "
                         "stop until it is back; e.g. to lower max_connections: docs/operators-guide.md)")
    sp.add_argument("--node", metavar="NODE", default=None,
                    help="only this standby (ip, id or zoneId); the primary is refused: switch over first")
    sp.add_argument("--wait", type=positive("--wait"), default=60.0, metavar="SECONDS",
                    help="how long each step may take before the command stops (default 60)")
    sp.add_argument("--secret-file", metavar="FILE", default=None,
                    help="the shard secret's file, to sign the requests (default: $MANATEE_SECRET_FILE)")


COMMANDS = {"restart": cmd_restart}
