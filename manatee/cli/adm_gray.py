"""What a sitter's GET /state tells manatee-adm beyond its own probes (pure, like adm_view).

- Its view of its PostgreSQL, for when manatee-adm cannot connect itself (a connection
  storm takes every slot the CLI could use, while the sitter keeps its own way in): the
  node is then shown as its sitter observed it ("up*"), with the CLI's failure named,
  instead of "down".
- The gray-failure latches (docs/operators-guide.md): the primary's write probe, its sync's
  flush stall, the start back-off of PostgreSQL, and the decision that goes with them.
"""

from __future__ import annotations

from typing import Any, Mapping

#: the sitter's observation of its PostgreSQL stands in for the CLI's own only when this fresh
SITTER_PG_FRESH_S = 10.0


def _section(sitter: Any, key: str) -> Mapping[str, Any]:
    v = sitter.get(key) if isinstance(sitter, Mapping) else None
    return v if isinstance(v, Mapping) else {}


#: connection errors that say PostgreSQL is not serving *now* (nothing listens, or it is
#: starting or stopping): newer news than the sitter's observation, which then does not stand
#: in (sandbox trial 2026-12-06: a crash-looping node shown "up*" with "Connection refused")
NOT_SERVING_NOW = ("connection refused", "no such file or directory", "the database system is starting up",
                   "the database system is shutting down", "not yet accepting connections",
                   "the database system is in recovery mode")


def pg_via_sitter(pg: Mapping[str, Any] | None, sitter: Any) -> Mapping[str, Any] | None:
    """The CLI's probe of a node's PostgreSQL, or — when the CLI could not connect (not a
    refused login: that is the operator's credentials; not an error that says PostgreSQL is
    not serving now: NOT_SERVING_NOW) and the node's sitter observed its PostgreSQL running
    and answering at most SITTER_PG_FRESH_S ago — what the sitter saw, marked
    {"via": "sitter", "cliError": ..., "observedAgo": ...}."""
    if pg is None or pg.get("up") or pg.get("auth") == "failed":
        return pg
    if any(m in str(pg.get("error") or "").lower() for m in NOT_SERVING_NOW):
        return pg
    spg, ago = _section(sitter, "pg"), (sitter or {}).get("pgObservedAgo") if isinstance(sitter, Mapping) else None
    if not (spg.get("running") and spg.get("healthy") and spg.get("known", True)
            and isinstance(ago, (int, float)) and ago <= SITTER_PG_FRESH_S):
        return pg
    recovery = bool(spg.get("inRecovery"))
    return {"up": True, "recovery": recovery, "readOnly": recovery or bool(sitter.get("readOnly")),
            "wal": spg.get("wal"), "via": "sitter", "cliError": pg.get("error") or "no answer",
            "observedAgo": ago}


def repl_via_sitter(sitter: Any) -> dict[str, Any] | None:
    """A standby's replication as its own sitter sees it (whether its walreceiver streams),
    for when its upstream's pg_stat_replication could not be read; lag unknown."""
    spg = _section(sitter, "pg")
    if "streaming" not in spg:
        return None
    return {"state": "streaming" if spg.get("streaming") else None, "via": "sitter"}


#: a sitter's cycles that failed in a row from which show and verify name them (a cycle or
#: two fail now and then, e.g. while ZooKeeper's leader changes)
CYCLE_FAILURES_SHOWN = 3


def gray_json(sitter: Any) -> dict[str, Any]:
    """The latches and the latest decision from the sitter's /state (None where it said nothing)."""
    s = sitter if isinstance(sitter, Mapping) else {}
    return {"writeProbe": s.get("writeProbe"), "syncFlushStall": s.get("syncFlushStall"),
            "startBackoff": s.get("startBackoff"), "restoreBackoff": s.get("restoreBackoff"),
            "cycles": s.get("cycles"),
            "decision": {"rule": s.get("rule"), "reason": s.get("reason")} if s.get("rule") else None}


def gray_notes(ip: str, pg: Mapping[str, Any] | None, sitter: Any) -> list[str]:
    """show's lines under "nodes:" for one node: what its sitter's latches hold now, the decision
    that goes with them, and whether PG/MODE came from its sitter."""
    out = []
    if pg is not None and pg.get("via") == "sitter":
        out.append(f"  {ip}: manatee-adm could not connect to its PostgreSQL ({pg.get('cliError')}); "
                   f"PG and MODE ('up*') as its sitter observed them {float(pg.get('observedAgo') or 0):.1f}s ago")
    wp, st, sb = (_section(sitter, k) for k in ("writeProbe", "syncFlushStall", "startBackoff"))
    latched = []
    if wp.get("failures"):
        latched.append(f"write probe failed {wp['failures']} time(s) in a row (limit {wp.get('limit', '?')}; "
                       f"last: {wp.get('lastError') or '?'})")
    if isinstance(wp.get("wraparoundFor"), (int, float)):
        latched.append(f"PostgreSQL refuses new transaction IDs to avoid wraparound for "
                       f"{float(wp['wraparoundFor']):.0f}s ({_line(wp.get('wraparoundError'))})")
    if st.get("seconds"):
        latched.append(f"its sync's flush has not advanced for {float(st['seconds']):.1f}s while WAL waits "
                       f"(the sync is replaced after {_secs(st.get('bound'))})")
    if sb.get("failures"):
        latched.append(f"PostgreSQL failed to start {sb['failures']} time(s) in a row"
                       + (f"; next try in {float(sb['nextTryIn']):.1f}s" if sb.get("nextTryIn") else ""))
    cy = _section(sitter, "cycles")
    if isinstance(cy.get("failedInARow"), int) and cy["failedInARow"] >= CYCLE_FAILURES_SHOWN:
        latched.append(f"its last {cy['failedInARow']} cycles failed (last: {_line(cy.get('lastError'))})")
    rb = _section(sitter, "restoreBackoff")
    if rb.get("failures"):
        latched.append(f"its last {rb['failures']} rebuild(s) failed in a row (last: {rb.get('lastError') or '?'})"
                       + (f"; next try in {float(rb['nextTryIn']):.1f}s" if rb.get("nextTryIn") else ""))
    out += [f"  {ip}: {x}" for x in latched]
    if latched and isinstance(sitter, Mapping) and sitter.get("rule"):
        out.append(f"  {ip}: decided {sitter['rule']}: {sitter.get('reason') or 'no reason given'}")
    return out


def gray_problems(what: str, role: str, sitter: Any, sev_crit: str, sev_warn: str) -> list[tuple[str, str]]:
    """(severity, line) for the latches that an operator should look at: a primary whose write
    probe fails, a sync flush stalled for half its bound or more, PostgreSQL that fails to start,
    a config its sitter cannot write, a replay paused by hand, rebuilds that keep failing."""
    out = []
    wp, st, sb = (_section(sitter, k) for k in ("writeProbe", "syncFlushStall", "startBackoff"))
    if wp.get("failures") and role == "primary":
        out.append((sev_crit, f"{what}: its write probe failed {wp['failures']} time(s) in a row "
                              f"({wp.get('lastError') or 'no error recorded'}): it may not be able to commit"))
    wrap = wp.get("wraparoundFor")
    if isinstance(wrap, (int, float)) and role == "primary":  # no failover follows: it would not help
        out.append((sev_crit, f"{what}: PostgreSQL refuses new transaction IDs to avoid wraparound for "
                              f"{wrap:.0f}s ({_line(wp.get('wraparoundError'))}): no write commits; a "
                              f"failover would not help (every standby has the same IDs), so none is made. End "
                              f"what holds the oldest xmin (a long transaction, a prepared transaction, a "
                              f"replication slot), then VACUUM (FREEZE) the database it names"))
    bound = st.get("bound")
    if st.get("seconds") and isinstance(bound, (int, float)) and float(st["seconds"]) >= bound / 2:
        out.append((sev_warn, f"{what}: its sync's flush has not advanced for {float(st['seconds']):.1f}s "
                              f"(replaced after {_secs(bound)})"))
    if sb.get("failures"):
        out.append((sev_crit if role in ("primary", "sync") else sev_warn,
                    f"{what}: PostgreSQL failed to start {sb['failures']} time(s) in a row"))
    ce = _section(sitter, "pg").get("configError")
    if ce:  # sandbox trial 2026-12-06: a read-only dataset showed only "PostgreSQL does not answer"
        out.append((sev_crit if role in ("primary", "sync") else sev_warn,
                    f"{what}: its sitter cannot write PostgreSQL's config ({str(ce).splitlines()[0][:200]}): "
                    f"is its dataset full, read-only or not mounted?"))
    if _section(sitter, "pg").get("notSuperuser"):  # it cannot undo that itself: SUPERUSER takes a superuser
        out.append((sev_crit if role in ("primary", "sync") else sev_warn,
                    f"{what}: the role its sitter connects as is no longer a superuser (ALTER ROLE ... "
                    f"NOSUPERUSER): it cannot promote, reload or reset settings, so a failover or switchover "
                    f"would fail; give it back (ALTER ROLE ... SUPERUSER) as another superuser"))
    arch = _section(sitter, "pg").get("archiveFailing")
    if arch:  # a failing archive_command keeps WAL until the disk is full
        out.append((sev_warn, f"{what}: archiving WAL fails (archive_command; last failure: {_line(arch)}): "
                              f"PostgreSQL keeps every segment not archived, so its disk fills until the archive "
                              f"takes WAL again; its PostgreSQL log says why"))
    out += _primary_value_problems(what, role, _section(sitter, "pg"), sev_crit, sev_warn)
    paused = _section(sitter, "pg").get("replayPausedFor")
    if isinstance(paused, (int, float)):  # sandbox trial 2026-12-06: "ok" with the sync's replay paused
        out.append((sev_crit if role == "sync" else sev_warn,
                    f"{what}: its WAL replay is paused (pg_wal_replay_pause()) for {paused:.0f}s: reads there are "
                    f"stale, the WAL it receives piles up, and a takeover must first replay it all; resume it "
                    f"with `select pg_wal_replay_resume()` (its sitter does on the sync, unless the shard is frozen)"))
    cy = _section(sitter, "cycles")
    if isinstance(cy.get("failedInARow"), int) and cy["failedInARow"] >= CYCLE_FAILURES_SHOWN:
        out.append((sev_crit if role in ("primary", "sync") else sev_warn,
                    f"{what}: its sitter's last {cy['failedInARow']} cycles failed ({_line(cy.get('lastError'))}): "
                    f"it cannot carry out its decisions (a sync cannot take over) until that is fixed"))
    rule = sitter.get("rule") if isinstance(sitter, Mapping) else None
    if role == "primary" and isinstance(rule, str) and rule.startswith("primary.no_data"):
        out.append((sev_crit, f"{what}: its data directory is empty and its sitter keeps PostgreSQL stopped "
                              f"(no empty database is created): {str(sitter.get('reason') or '?').splitlines()[0]}"))
    rb = _section(sitter, "restoreBackoff")
    if isinstance(rb.get("failures"), int) and rb["failures"] >= 2:  # one failure is retried at once
        out.append((sev_warn, f"{what}: its last {rb['failures']} rebuilds failed in a row "
                              f"({rb.get('lastError') or 'no error recorded'}); they are retried less and less often"))
    return out


def heartbeat_problems(what: str, node_id: str, sitter: Any, up_ip: str, up_sitter: Any,
                       sev: str) -> list[tuple[str, str]]:
    """(severity, line) when a live standby's upstream has not heard its heartbeat for longer
    than its expiration time (its /state `standbys.heard`): the link between them is cut, or
    the standby withholds its heartbeats to give way. PostgreSQL reports such a standby
    "streaming" until wal_sender_timeout (30 s), so without this `show` says "none" meanwhile.
    Nothing when the upstream has no record of it (it just joined, or an older sitter), unless
    the standby says its upstream refuses its heartbeats (its /state `heartbeatRefused`: HTTP
    401/403, e.g. a shard secret that differs: sandbox trial 2026-12-05, `show` said "none")."""
    refused = sitter.get("heartbeatRefused") if isinstance(sitter, Mapping) else None
    if refused:  # it cannot have been heard: say why, not only that
        return [(sev, f"{what}: its upstream {up_ip} refuses its heartbeats ({refused}): is its shard "
                      f"secret the same as the other nodes'? It cannot be the sync while this lasts, and "
                      f"its rebuild requests are refused the same way")]
    sb = _section(up_sitter, "standbys")
    exp, heard = sb.get("expirationS"), sb.get("heard")
    rec = heard.get(node_id) if isinstance(heard, Mapping) else None
    age = rec.get("ageS") if isinstance(rec, Mapping) else None
    if not isinstance(exp, (int, float)) or not isinstance(age, (int, float)) or age <= exp:
        return []
    spg = _section(sitter, "pg")
    if spg.get("heartbeatsWithheld"):
        why = "it withholds them to give way" + (f": {spg['unhealthyWhy']}" if spg.get("unhealthyWhy") else "")
    else:
        why = ("the link between them is cut, or its sitter is stuck (its PostgreSQL may still be "
               "shown streaming until wal_sender_timeout)")
    return [(sev, f"{what}: its upstream {up_ip} has not heard its heartbeat for {age:.0f}s "
                  f"(expiration {exp:g}s): {why}")]


def _primary_value_problems(what: str, role: str, pg: Mapping[str, Any], sev_crit: str,
                            sev_warn: str) -> list[tuple[str, str]]:
    """A standby whose settings are below its primary's (manatee/sitter/primaryfloors.py):
    paused by PostgreSQL until its sitter restarts it with them, or raised by its sitter above
    what its own config says."""
    out = []
    if pg.get("belowPrimary"):
        out.append((sev_crit if role == "sync" else sev_warn,
                    f"{what}: PostgreSQL paused its replay: a setting is below the primary's value (its log: "
                    f"'insufficient parameter settings'); it cannot be promoted until its sitter restarts it "
                    f"with the primary's value"))
    raised = pg.get("raisedToPrimary")
    if isinstance(raised, Mapping) and raised:
        values = ", ".join(f"{k} {v}" for k, v in sorted(raised.items()))
        out.append((sev_warn, f"{what}: its sitter raised {values} to the primary's value (a standby needs at least "
                              f"that; its postgresMgrCfg.parameters has less): set them in its config, as on the "
                              f"primary, then manatee-adm reload (the raise lasts until its sitter restarts)"))
    return out


def _line(v: Any) -> str:
    """A message's first line, at most 200 characters ("?" for none)."""
    return (str(v or "?").strip().splitlines() or ["?"])[0][:200]


def _secs(v: Any) -> str:
    return f"{float(v):.0f}s" if isinstance(v, (int, float)) else "its bound"

