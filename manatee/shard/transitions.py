"""Local role transitions: one declarative table from (current role, new role, what changed)
to the ordered steps the shell runs on its PostgreSQL, each with a plain comment to log.

The shape follows pg_auto_failover's keeper FSM: the table is the specification, readable
on its own (docs/design.md renders it). Step names are the shell's vocabulary (`STEPS`).
Every step is idempotent — the shell skips what is already true (start_pg on a running
PG, promote on a PG out of recovery) — so re-running a plan after a failure is safe.

Shell conventions that keep the table small:
- current_target is the last target whose steps all succeeded (None at start-up).
- When PG is not running although the current role wants it running (PG crashed, F5),
  the shell passes current_role="unassigned": the plan then starts it from scratch.
- A PG left running in role "unassigned" is never a writable primary (P→U stops it).
- `plan_from` gives the role to plan from: besides the crashed PG above, a PG that runs out
  of recovery is planned from "primary" when my role is standby (I made it one) and the target
  is not primary (a fork: S→S would only reload it, and it would go on taking writes; a fresh
  sitter's "unassigned" says nothing about what PG was, so a primary's PG is never stopped
  on a cycle that holds, its target unassigned), or when my role is unassigned and the state
  makes me a standby (U→S would configure it and skip the start of a running PG, which would
  go on taking writes for a cycle: a plan to primary that failed after its promotion leaves
  my role unassigned; a PostgreSQL I did not start is never "running" to me, PgManager.running),
  and so is a primary's step-down stop
  (Effect.STOP_TO_STEP_DOWN) whatever the role (a takeover whose promotion never ran is still
  a standby, and S→U would leave running the PG that the step-down waits to see stopped).
"""

from __future__ import annotations

from dataclasses import dataclass

from manatee.shard.state import (
    DEPOSED, FENCED, PRIMARY, REBUILD, ROLES, SAFE_MODE, STANDBY, UNASSIGNED, Peer, Target,
)

__all__ = [
    "STEPS", "STOP_PG", "INITDB_IF_EMPTY", "RESTORE_IF_EMPTY", "RESTORE_FROM_UPSTREAM",
    "CONFIGURE_PRIMARY", "CONFIGURE_STANDBY", "START_PG", "RELOAD_PG", "PROMOTE", "SET_SYNC",
    "SET_READ_ONLY", "SET_READ_WRITE", "SAFE_READ_ONLY", "WRITE_REGISTRAR", "REMOVE_REGISTRAR",
    "CHANGES", "ANY", "SAME", "NEW_UPSTREAM", "NEW_DOWNSTREAM", "NEW_SYNC", "READ_ONLY_ON",
    "READ_ONLY_OFF", "NEW_SYNC_READ_ONLY_ON", "NEW_SYNC_READ_ONLY_OFF",
    "Transition", "TRANSITIONS", "IMPOSSIBLE", "ImpossibleTransition", "classify", "plan", "plan_from",
    "render_table",
]

# -- the shell's vocabulary ----------------------------------------------------------------
STOP_PG = "stop_pg_immediately"
INITDB_IF_EMPTY = "initdb_if_empty"
RESTORE_IF_EMPTY = "restore_if_empty"
RESTORE_FROM_UPSTREAM = "restore_from_upstream"
CONFIGURE_PRIMARY = "configure_primary"
CONFIGURE_STANDBY = "configure_standby"
START_PG = "start_pg"
RELOAD_PG = "reload_pg"
PROMOTE = "promote"
SET_SYNC = "set_sync_standby"
SET_READ_ONLY = "set_read_only"
SET_READ_WRITE = "set_read_write"
SAFE_READ_ONLY = "safe_read_only"
WRITE_REGISTRAR = "write_registrar"
REMOVE_REGISTRAR = "remove_registrar"

STEPS: dict[str, str] = {
    STOP_PG: "stop PostgreSQL in immediate mode (no shutdown checkpoint, which would fork a primary's WAL)",
    INITDB_IF_EMPTY: "create the database if the data directory is empty (a new shard's first primary)",
    RESTORE_IF_EMPTY: "if the data directory is empty, restore it from target.upstream's backupserver",
    RESTORE_FROM_UPSTREAM: "set the dataset aside and restore it from target.upstream's backupserver",
    CONFIGURE_PRIMARY: "write the primary's config: synchronous_standby_names = target.sync, "
                       "default_transaction_read_only = target.read_only",
    CONFIGURE_STANDBY: "write standby.signal, primary_conninfo = target.upstream (empty: detached), "
                       "recovery_target_timeline = latest, synchronous_standby_names = ''",
    START_PG: "start PostgreSQL if it is not running",
    RELOAD_PG: "reload PostgreSQL's config (SIGHUP) if it is running",
    PROMOTE: "promote PostgreSQL if it is in recovery and wait until it is out of recovery",
    SET_SYNC: "set synchronous_standby_names to target.sync's application_name",
    SET_READ_ONLY: "set default_transaction_read_only = on",
    SET_READ_WRITE: "set default_transaction_read_only = off",
    SAFE_READ_ONLY: "if PostgreSQL runs out of recovery (a primary, or a fork), make it take no writes: "
                    "default_transaction_read_only = on, a sync that never connects, reload (a stopped one: "
                    "its files only); one in recovery is a standby and stays as it is (a primary's config "
                    "would remove its standby.signal); stopped or not answering: standby.signal says which",
    WRITE_REGISTRAR: "publish the registrar node naming my pgUrl as the primary",
    REMOVE_REGISTRAR: "delete my registrar node if it exists",
}

# -- what changed between two targets of the same role -------------------------------------
ANY = "any"  # the role changed, or the previous target is unknown
SAME = "unchanged"
NEW_UPSTREAM = "new upstream"
NEW_DOWNSTREAM = "new downstream only"
NEW_SYNC = "new sync"
READ_ONLY_ON = "read-only on"
READ_ONLY_OFF = "read-only off"
NEW_SYNC_READ_ONLY_ON = "new sync, read-only on"
NEW_SYNC_READ_ONLY_OFF = "new sync, read-only off"
CHANGES = (ANY, SAME, NEW_UPSTREAM, NEW_DOWNSTREAM, NEW_SYNC, READ_ONLY_ON, READ_ONLY_OFF,
           NEW_SYNC_READ_ONLY_ON, NEW_SYNC_READ_ONLY_OFF)


@dataclass(frozen=True)
class Transition:
    frm: str
    to: str
    change: str
    comment: str
    steps: tuple[str, ...]

    def __post_init__(self) -> None:
        assert self.frm in ROLES and self.to in ROLES and self.change in CHANGES, self
        unknown = [s for s in self.steps if s not in STEPS]
        assert not unknown, f"{self.frm}->{self.to}: unknown steps {unknown}"


class ImpossibleTransition(ValueError):
    """A pair the automation never produces; the shell logs it and keeps its current role."""


_U, _P, _S, _D, _F, _M, _R = UNASSIGNED, PRIMARY, STANDBY, DEPOSED, FENCED, SAFE_MODE, REBUILD
_T = Transition
_BECOME_PRIMARY = (CONFIGURE_PRIMARY, START_PG, PROMOTE, RELOAD_PG, WRITE_REGISTRAR)
_REBUILD = (STOP_PG, RESTORE_FROM_UPSTREAM, CONFIGURE_STANDBY, START_PG)
_JOIN = (RESTORE_IF_EMPTY, CONFIGURE_STANDBY, START_PG, RELOAD_PG)

TRANSITIONS: list[Transition] = [
    # ---- to primary ----
    _T(_U, _P, ANY, "the state names me primary: start PostgreSQL as the primary (creating the database "
                    "on a new shard), read-only until my sync catches up", (INITDB_IF_EMPTY, *_BECOME_PRIMARY)),
    _T(_S, _P, ANY, "my primary is gone and I hold every acknowledged write: promote PostgreSQL and stay "
                    "read-only until my new sync catches up", _BECOME_PRIMARY),
    _T(_R, _P, ANY, "my rebuild finished and I took over from the gone primary: promote PostgreSQL, "
                    "read-only until my new sync catches up", _BECOME_PRIMARY),
    _T(_F, _P, ANY, "I reconnected and the state still names me primary, so nobody replaced me: start "
                    "PostgreSQL again as the primary", _BECOME_PRIMARY),
    _T(_M, _P, ANY, "safe mode was cleared and the state names me primary: run PostgreSQL as the primary",
       _BECOME_PRIMARY),
    _T(_P, _P, ANY, "I am the primary but do not know how PostgreSQL is configured: apply the primary's "
                    "configuration again", _BECOME_PRIMARY),
    _T(_P, _P, SAME, "nothing changed", ()),
    _T(_P, _P, NEW_SYNC, "my sync changed: name the new one in synchronous_standby_names",
       (SET_SYNC, RELOAD_PG)),
    _T(_P, _P, READ_ONLY_ON, "stop taking writes: my sync is gone or not yet caught up",
       (SET_READ_ONLY, RELOAD_PG)),
    _T(_P, _P, READ_ONLY_OFF, "my sync has caught up: take writes", (SET_READ_WRITE, RELOAD_PG)),
    _T(_P, _P, NEW_SYNC_READ_ONLY_ON, "my sync changed: stop taking writes and name the new sync",
       (SET_READ_ONLY, SET_SYNC, RELOAD_PG)),
    _T(_P, _P, NEW_SYNC_READ_ONLY_OFF, "my sync changed and writes need no catch-up (one-node-write "
                                       "mode): name the new sync and take writes",
       (SET_SYNC, SET_READ_WRITE, RELOAD_PG)),
    # ---- to standby ----
    _T(_U, _S, ANY, "join the chain: restore my data from my upstream if I have none, then stream from it",
       _JOIN),
    _T(_P, _S, ANY, "the state makes me, a running primary, a standby: kill PostgreSQL without a shutdown "
                    "checkpoint and restart it as a standby (it refuses to follow if my WAL forked)",
       (STOP_PG, REMOVE_REGISTRAR, CONFIGURE_STANDBY, START_PG)),
    _T(_D, _S, ANY, "the primary moved me to the tail of the chain: start PostgreSQL as a standby "
                    "(if my WAL forked it refuses to follow and I rebuild)", _JOIN),
    _T(_F, _S, ANY, "I was replaced while fenced and the state makes me a standby: start PostgreSQL as a "
                    "standby (if my WAL forked it refuses to follow and I rebuild)", _JOIN),
    _T(_M, _S, ANY, "safe mode was cleared and the state makes me a standby: restart PostgreSQL as a "
                    "standby of my upstream", (STOP_PG, RESTORE_IF_EMPTY, CONFIGURE_STANDBY, START_PG)),
    _T(_R, _S, ANY, "my rebuild is done: stream from my upstream", (CONFIGURE_STANDBY, START_PG, RELOAD_PG)),
    _T(_S, _S, ANY, "I am a standby but do not know how PostgreSQL is configured: configure it again",
       _JOIN),
    _T(_S, _S, SAME, "nothing changed", ()),
    _T(_S, _S, NEW_UPSTREAM, "my upstream changed (or I detach from a gone primary): point primary_conninfo "
                             "at it and reload", (CONFIGURE_STANDBY, RELOAD_PG)),
    _T(_S, _S, NEW_DOWNSTREAM, "only the node behind me changed: nothing to do in PostgreSQL", ()),
    # ---- to rebuild ----
    _T(_U, _R, ANY, "my data is missing or my WAL diverged: restore my dataset from my upstream", _REBUILD),
    _T(_S, _R, ANY, "my WAL diverged from my upstream's, my upstream no longer keeps the WAL I need, or my "
                    "data is missing: restore my dataset from my upstream", _REBUILD),
    _T(_P, _R, ANY, "the state makes me, running as a primary, a standby, so my WAL has forked: restore "
                    "my dataset from my upstream", (STOP_PG, REMOVE_REGISTRAR, *_REBUILD[1:])),
    _T(_D, _R, ANY, "I rejoin the chain after being deposed but my WAL diverged: restore my dataset from "
                    "my upstream", _REBUILD),
    _T(_F, _R, ANY, "I was replaced while fenced and my WAL diverged: restore my dataset from my upstream",
       _REBUILD),
    _T(_M, _R, ANY, "safe mode was cleared and my WAL diverged: restore my dataset from my upstream",
       _REBUILD),
    _T(_R, _R, ANY, "a rebuild is needed and I do not know how far the last one got: rebuild again",
       _REBUILD),
    _T(_R, _R, SAME, "my last rebuild finished but I am diverged again (my upstream moved on to another "
                     "timeline): rebuild again", _REBUILD),
    _T(_R, _R, NEW_UPSTREAM, "I must rebuild and my upstream changed: rebuild from the new one", _REBUILD),
    _T(_R, _R, NEW_DOWNSTREAM, "my last rebuild finished but I am diverged again: rebuild again", _REBUILD),
    # ---- to unassigned ----
    _T(_P, _U, ANY, "I may not act as primary and have no other place: stop PostgreSQL at once so that I "
                    "acknowledge nothing more", (STOP_PG, REMOVE_REGISTRAR)),
    _T(_S, _U, ANY, "I have no live upstream or no place for now: leave PostgreSQL as it is, a read-only "
                    "standby", ()),
    _T(_R, _U, ANY, "I have no live upstream to rebuild from: wait", ()),
    _T(_D, _U, ANY, "I am no longer listed as deposed but have no place yet: PostgreSQL stays stopped", ()),
    _T(_F, _U, ANY, "I reconnected and have no place yet: PostgreSQL stays stopped", ()),
    _T(_M, _U, ANY, "safe mode was cleared and I have no place yet: stop PostgreSQL, which may be a "
                    "read-only primary", (STOP_PG, REMOVE_REGISTRAR)),
    _T(_U, _U, ANY, "nothing to do: I keep waiting", ()),
    _T(_U, _U, SAME, "nothing to do: I keep waiting", ()),
    # ---- to deposed ----
    _T(_P, _D, ANY, "another node took over: kill PostgreSQL without a shutdown checkpoint (which would "
                    "fork my WAL) and wait to rejoin at the tail", (STOP_PG, REMOVE_REGISTRAR)),
    _T(_U, _D, ANY, "the state lists me as deposed: keep PostgreSQL stopped", (STOP_PG,)),
    _T(_S, _D, ANY, "the state lists me as deposed: stop PostgreSQL", (STOP_PG,)),
    _T(_R, _D, ANY, "the state lists me as deposed: stop PostgreSQL", (STOP_PG,)),
    _T(_F, _D, ANY, "I was replaced while fenced: PostgreSQL stays stopped until I rejoin at the tail",
       (STOP_PG,)),
    _T(_M, _D, ANY, "safe mode was cleared and the state lists me as deposed: stop PostgreSQL",
       (STOP_PG, REMOVE_REGISTRAR)),
    _T(_D, _D, ANY, "I am deposed: make sure PostgreSQL is stopped", (STOP_PG,)),
    _T(_D, _D, SAME, "I am deposed: PostgreSQL stays stopped", ()),
    # ---- to fenced ----
    _T(_P, _F, ANY, "my ZooKeeper session expired: kill PostgreSQL at once (no shutdown checkpoint) so that "
                    "I acknowledge nothing after another node may have been promoted", (STOP_PG,)),
    _T(_U, _F, ANY, "my ZooKeeper session expired while the state names me primary: keep PostgreSQL "
                    "stopped", (STOP_PG,)),
    _T(_S, _F, ANY, "my ZooKeeper session expired just as I was to take over: stop PostgreSQL", (STOP_PG,)),
    _T(_R, _F, ANY, "my ZooKeeper session expired just as I was to take over: stop PostgreSQL", (STOP_PG,)),
    _T(_D, _F, ANY, "my ZooKeeper session expired: PostgreSQL stays stopped", (STOP_PG,)),
    _T(_M, _F, ANY, "my ZooKeeper session expired while the state names me primary: stop PostgreSQL",
       (STOP_PG,)),
    _T(_F, _F, ANY, "I am fenced: make sure PostgreSQL is stopped", (STOP_PG,)),
    _T(_F, _F, SAME, "I am fenced: PostgreSQL stays stopped until I reconnect", ()),
    # ---- to safe mode ----
    _T(_P, _M, ANY, "the shard is in safe mode: stop taking writes and keep serving reads", (SAFE_READ_ONLY,)),
    _T(_S, _M, ANY, "the shard is in safe mode: a standby takes no writes and stays as it is; one whose PostgreSQL "
                    "runs out of recovery (a fork, a promotion cut short) is made read-only", (SAFE_READ_ONLY,)),
    _T(_R, _M, ANY, "the shard is in safe mode: keep PostgreSQL as it is, read-only if it runs out of recovery",
       (SAFE_READ_ONLY,)),
    _T(_U, _M, ANY, "the shard is in safe mode: keep PostgreSQL as it is, read-only if it runs out of recovery",
       (SAFE_READ_ONLY,)),
    _T(_D, _M, ANY, "the shard is in safe mode: PostgreSQL stays stopped", ()),
    _T(_F, _M, ANY, "the shard is in safe mode: PostgreSQL stays stopped", ()),
    _T(_M, _M, ANY, "the shard is in safe mode and I do not know my configuration: make sure PostgreSQL "
                    "takes no writes (a standby's configuration is kept)", (SAFE_READ_ONLY,)),
    _T(_M, _M, SAME, "the shard is still in safe mode: change nothing", ()),
]

IMPOSSIBLE: dict[tuple[str, str], str] = {
    (DEPOSED, PRIMARY): "a deposed former primary never becomes primary directly: its WAL may have forked "
                        "(S4), so it must first rejoin as a standby, stream, and be chosen as sync",
}

_INDEX: dict[tuple[str, str, str], Transition] = {}
for _t in TRANSITIONS:
    _key = (_t.frm, _t.to, _t.change)
    assert _key not in _INDEX, f"duplicate transition {_key}"
    assert (_t.frm, _t.to) not in IMPOSSIBLE, f"{_key} is listed as impossible"
    _INDEX[_key] = _t


def _pid(p: Peer | None) -> str | None:
    return p.id if p is not None else None


def classify(current_role: str, current_target: Target | None, new: Target) -> str:
    """What differs between the current and the new target (one of CHANGES)."""
    if current_target is None or current_target.role != current_role or current_role != new.role:
        return ANY
    cur = current_target
    if new.role == PRIMARY:
        sync_changed = _pid(cur.sync) != _pid(new.sync)
        ro_changed = cur.read_only != new.read_only
        if sync_changed and ro_changed:
            return NEW_SYNC_READ_ONLY_ON if new.read_only else NEW_SYNC_READ_ONLY_OFF
        if sync_changed:
            return NEW_SYNC
        if ro_changed:
            return READ_ONLY_ON if new.read_only else READ_ONLY_OFF
        return SAME
    if new.role in (STANDBY, REBUILD):
        if _pid(cur.upstream) != _pid(new.upstream):
            return NEW_UPSTREAM
        if _pid(cur.downstream) != _pid(new.downstream):
            return NEW_DOWNSTREAM
        return SAME
    return SAME


def plan(current_role: str, current_target: Target | None, new_target: Target) -> Transition:
    """The transition to run to get from my current role/target to `new_target`.

    Raises ImpossibleTransition for pairs the automation never produces, ValueError for an
    unknown role."""
    if current_role not in ROLES:
        raise ValueError(f"unknown current role {current_role!r}; one of {', '.join(ROLES)}")
    if (current_role, new_target.role) in IMPOSSIBLE:
        raise ImpossibleTransition(f"{current_role} -> {new_target.role}: "
                                   f"{IMPOSSIBLE[(current_role, new_target.role)]}")
    change = classify(current_role, current_target, new_target)
    t = _INDEX.get((current_role, new_target.role, change))
    if t is None:  # a narrower row is missing: fall back to the full transition
        t = _INDEX[(current_role, new_target.role, ANY)]
    return t


def plan_from(role: str, target_role: str, *, running: bool, out_of_recovery: bool, step_down_stop: bool) -> str:
    """The current role the shell passes to `plan` (the conventions in the module's docstring).
    `out_of_recovery`: PostgreSQL said so this cycle (an unanswered query is not a fork)."""
    if role in (PRIMARY, STANDBY) and not running:
        return UNASSIGNED
    forked = out_of_recovery and target_role != PRIMARY and (
        role == STANDBY or (role == UNASSIGNED and target_role == STANDBY))
    if running and (step_down_stop or forked):
        return PRIMARY
    return role


def render_table() -> str:
    """The table as Markdown (docs/design.md embeds this output)."""
    lines = ["| from | to | when | steps | comment |", "|---|---|---|---|---|"]
    for t in TRANSITIONS:
        steps = ", ".join(t.steps) if t.steps else "—"
        lines.append(f"| {t.frm} | {t.to} | {t.change} | {steps} | {t.comment} |")
    for (frm, to), why in IMPOSSIBLE.items():
        lines.append(f"| {frm} | {to} | impossible | — | {why} |")
    return "\n".join(lines)
