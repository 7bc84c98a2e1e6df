"""What an operator asks of a sitter through its status server (manatee-adm rebuild,
restart, reload): each request is checked against the node's place in the shard state,
recorded for the loop's next cycle, and the loop woken. The loop's own state is changed
only here and by the loop itself (a mixin of manatee.sitter.loop.Sitter).

A rebuild request marks the node for a rebuild until its restore succeeds (not as diverged
while no restore has begun: its data is as it was). Before the restore begins it lapses if
the node is named the sync unforced, if its primary cannot serve it, or if the node has become
the primary (rebuildpath.withdrawn_request)."""

from __future__ import annotations

from manatee.shard import latches
from manatee.shard.rebuildpath import (CAUSE_REQUESTED, PHASE_REQUESTED, PHASE_WITHDRAWN, RESTORE_FINISHED,
                                       withdrawn_request)
from manatee.shard.state import REBUILD


class OperatorRequests:
    """The Sitter's request_* methods (and reload_config), and the lapse of an unforced rebuild."""

    rebuild_forced: bool | None = None  # a pending rebuild request forced the sync's (withdrawn_request)
    upstream_unready: str | None = None  # why my upstream could not be restored from (known), last cycle

    def _member_refusal(self, force: bool, *, sync_refused: bool) -> tuple[str | None, dict | None]:
        """My place in the shard state, and why an operator request is refused there (or None)."""
        place = self.view.state.place_of(self.me.id) if self.view.state else None
        if place is None:
            return place, {"code": "NotAMember", "message": f"{self.me.id} is not in the shard state"}
        if place == "primary" and (sync_refused or not force):
            return place, {"code": "IsPrimary",
                           "message": f"{self.me.id} is the primary: switch over first (manatee-adm switchover)"}
        if sync_refused and place == "sync" and not force:
            return place, {"code": "IsSync",
                           "message": f"{self.me.id} is the sync: the primary cannot take writes until it names "
                                      f"another sync; use --force to rebuild it anyway"}
        return place, None

    def request_rebuild(self, force: bool = False) -> tuple[int, dict]:
        """An operator asks this node to restore its data from its upstream (manatee-adm
        rebuild). It is marked as diverged, so the core rebuilds it from its upstream (a
        deposed node: once the primary moved it back into the chain); the restore clears the
        mark. Refused for the primary, for a node not in the state, and for the sync unless
        forced (the primary cannot take writes while its sync rebuilds)."""
        place, refused = self._member_refusal(force, sync_refused=True)
        if refused is not None:
            return 409, refused
        if self.role == REBUILD and (self.steps.restore_progress or {}).get("phase") not in RESTORE_FINISHED:
            return 202, {"rebuild": "running", "restore": self.steps.restore_progress}
        # (a restore that has just finished, its node not yet out of the rebuild role, is not a
        # rebuild running: this request asks for another one, not for the last one's result)
        # whether it forced the sync's rebuild (--force means nothing for an async or a deposed
        # node), unless my WAL was already seen to diverge: then it is needed anyway
        self.rebuild_forced = None if self.diverged else (force and place == "sync")
        self.diverged = True
        self.steps.rebuild_cause = CAUSE_REQUESTED  # perhaps for damage: a stream, never a rewind
        self.steps.restore_tries = latches.RestoreTries()  # the operator's request waits for no back-off
        self.steps.restore_progress = {"phase": PHASE_REQUESTED, "completed": 0, "size": 0, "source": None}
        self.log.info("rebuild_requested", place=place)
        self.publish()
        self.wake.set()
        return 202, {"rebuild": "requested", "place": place}

    def request_restart(self, force: bool = False) -> tuple[int, dict]:
        """manatee-adm restart: restart PostgreSQL in this node's current role (its next cycle
        does it, so it never races a transition). Refused for the primary unless forced (writes
        stop while it restarts: switch over first) and for a node not in the shard state."""
        place, refused = self._member_refusal(force, sync_refused=False)
        if refused is not None:
            return 409, refused
        self.restart_request = force
        self.publish()
        self.wake.set()
        return 202, {"restart": "requested", "place": place, "restartsDone": self.pg_restarts}

    def reload_config(self, new) -> tuple[str, ...]:
        """The daemon's reload hook (SIGHUP, POST /reload): apply what can change at run time
        — postgresMgrCfg.parameters, written and reloaded by the next cycle — and say which
        config keys were applied (the rest need a sitter restart)."""
        if self.pg.set_parameters(new.postgresMgrCfg.parameters):
            self.publish()  # /state says "parametersPending" from now until a cycle has applied them
            self.wake.set()
        return ("postgresMgrCfg.parameters",)

    def rebuild_pending(self) -> bool:
        """An operator's rebuild request that no restore has begun, with no divergence seen
        since: my data is as it was (Observation.rebuild_requested, not .diverged)."""
        return self.rebuild_forced is not None and (self.steps.restore_progress or {}).get("phase") == PHASE_REQUESTED

    def _withdraw_lapsed_rebuild(self, st, observed: bool) -> None:
        """After an observation of my PostgreSQL (`observed`: it said my WAL diverged, or it
        forked): drop a rebuild request that lapsed (rebuildpath.withdrawn_request), given my
        place and what my last restore attempt heard from my upstream (`upstream_unready`,
        set by the loop; taken here)."""
        if observed:
            self.rebuild_forced = None  # a divergence seen: the rebuild is needed, asked for or not
        unready, self.upstream_unready = self.upstream_unready, None
        why = withdrawn_request(self.rebuild_forced, st.place_of(self.me.id) if st is not None else None,
                                (self.steps.restore_progress or {}).get("phase"), unready)
        if why is None:
            return
        self.rebuild_forced = None
        self.diverged = False
        self.steps.rebuild_cause = None
        self.steps.restore_progress = {"phase": PHASE_WITHDRAWN, "completed": 0, "size": 0, "source": None,
                                       "reason": why}
        self.log.warning("rebuild_request_withdrawn", reason=why)
