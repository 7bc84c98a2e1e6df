"""How far a node's WAL goes, in SQL: one spelling for every query that needs it (the
sitter's status, its slots and metrics, manatee-adm's probe).

A standby's position is the greater of what its walreceiver received and what it
replayed: after a restart, pg_last_wal_receive_lsn() is the start of the segment the
standby asks its upstream for, not what it holds, until streaming moves it on (a sync
restarted while its primary hung could never take over: CI, 2026-12-04). greatest()
skips a NULL (no walreceiver yet)."""

STANDBY_WAL_SQL = "greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())"
#: primary or standby: its own WAL position (pg_lsn)
NODE_WAL_SQL = f"case when pg_is_in_recovery() then {STANDBY_WAL_SQL} else pg_current_wal_lsn() end"
