"""What the sitter reads in PostgreSQL's log as "this data cannot follow its upstream".

A standby whose history forked, or whose data cannot even start (its pg_control names a
checkpoint that is not in its WAL), is rebuilt from its upstream by the core; every other
line must not trigger that (a rebuild throws the node's data away)."""

import pytest

from manatee.sitter.pglog import DIVERGENCE_PATTERNS, disk_full_in, diverged_in, wraparound_refusal


@pytest.mark.parametrize("line", [
    "FATAL:  could not start WAL streaming: ERROR:  requested starting point 0/3000000 on timeline 1 is not in this server's history",
    "LOG:  new timeline 3 is not a child of this server's timeline 2",
    "LOG:  new timeline 2 forked off current database system timeline 1 before current recovery point 0/30000A0",
    "LOG:  invalid primary checkpoint record",
    "PANIC:  could not locate a valid checkpoint record",
    # nemesis 2026-12-06 (seed 20261209): a segment of the new timeline cut short by a full disk
    "FATAL:  according to history file, WAL location 0/A3FD88 belongs to timeline 3, but previous "
    "recovered WAL file came from timeline 4",
])
def test_unusable_data_is_recognised(line):
    assert DIVERGENCE_PATTERNS.search(line)


@pytest.mark.parametrize("line", [
    "LOG:  database system was interrupted; last known up at 2026-11-27 01:41:36 UTC",
    "LOG:  redo starts at 0/1002000",
    "FATAL:  the database system is starting up",
    "LOG:  started streaming WAL from primary at 0/3000000 on timeline 2",
    "LOG:  checkpoint starting: time",
    "FATAL:  could not connect to the primary server: connection refused",
])
def test_ordinary_lines_are_not(line):
    assert not DIVERGENCE_PATTERNS.search(line)


@pytest.mark.parametrize("line", [
    "FATAL:  could not start WAL streaming: ERROR:  requested starting point 0/3000000 on timeline 1 is not in this server's history",
    "FATAL:  could not start WAL streaming: ERROR:  requested starting point 0/A00000 is ahead of the WAL flush position of this server 0/9FFCB8",
    "LOG:  new timeline 2 forked off current database system timeline 1 before current recovery point 0/30000A0",
    # seen in a sandbox trial: the old primary wrote a checkpoint past the fork before it
    # stepped down for a full disk, and its startup process refused the new timeline
    "FATAL:  requested timeline 2 is not a child of this server's history",
])
def test_my_walreceiver_refused_by_my_upstream_is_divergence(line):
    log = f"2026-12-03 16:52:13.255 UTC [4821] LOG:  started\n2026-12-03 16:52:13.256 UTC [4822] {line}\n"
    assert diverged_in(log) and diverged_in(log.rstrip("\n"))


def test_my_walsender_refusing_my_standby_is_not_my_divergence():
    """F19 (issue 8): the old primary, its WAL torn at a segment's end, rejoined below the new
    sync and asked it for WAL its history does not have; the sync's walsender logged the
    refusal, and the sync read it as its own divergence and rebuilt itself."""
    log = ("2026-12-03 16:53:05.560 UTC [5157] ERROR:  requested starting point 0/A00000 on timeline 1 is not "
           "in this server's history\n"
           "2026-12-03 16:53:05.560 UTC [5157] DETAIL:  This server's history forked from timeline 1 at 0/9FFCB8.\n"
           "2026-12-03 16:53:05.560 UTC [5157] STATEMENT:  START_REPLICATION SLOT \"s\" 0/A00000 TIMELINE 1\n"
           "2026-12-03 16:52:13.255 UTC [4821] ERROR:  requested starting point 0/A00000 is ahead of the WAL flush "
           "position of this server 0/9FFCB8\n")
    assert not diverged_in(log)
    assert diverged_in(log + "2026-12-03 16:53:06.000 UTC [5200] LOG:  invalid primary checkpoint record\n")


def test_disk_full_in_finds_the_newest_panic_for_lack_of_space_only():
    log = ("2026-12-03 22:07:58.100 UTC [11] ERROR:  could not extend file \"base/5/16384\": No space left on device\n"
           "2026-12-03 22:07:58.684 UTC [12] PANIC:  could not write to log file 000000010000000000000009 at offset "
           "917504, length 131072: Disk quota exceeded\n"
           "2026-12-03 22:07:58.686 UTC [10] LOG:  WAL writer process (PID 12) was terminated by signal 6: Aborted\n"
           "2026-12-03 22:08:01.002 UTC [13] PANIC:  could not write to file \"pg_wal/xlogtemp.13\": "
           "No space left on device\n"
           "2026-12-03 22:08:01.010 UTC [10] LOG:  all server processes terminated; reinitializing\n")
    assert disk_full_in(log) == ("2026-12-03 22:08:01.002 UTC [13] PANIC:  could not write to file "
                                 "\"pg_wal/xlogtemp.13\": No space left on device")
    # an ERROR (a table that could not grow: the statement failed, PostgreSQL did not crash) is not one
    assert disk_full_in(log.split("\n")[0]) is None
    assert disk_full_in("PANIC:  could not locate a valid checkpoint record\n") is None


def test_a_panic_on_a_read_only_disk_counts_as_a_disk_that_takes_no_writes():
    """Sandbox trial 2026-12-06: the primary's dataset set readonly=on (these lines from its log)."""
    log = ("2026-12-06 01:56:01.230 UTC [6801] LOG:  could not create file \"pg_replslot/s/state.tmp\": "
           "Read-only file system\n"
           "2026-12-06 01:56:01.231 UTC [6801] PANIC:  could not create file \"pg_logical/replorigin_checkpoint.tmp\": "
           "Read-only file system\n"
           "2026-12-06 01:56:01.457 UTC [8137] LOG:  could not remove cache file \"global/pg_internal.init\": "
           "Read-only file system\n")
    assert disk_full_in(log) == ("2026-12-06 01:56:01.231 UTC [6801] PANIC:  could not create file "
                                 "\"pg_logical/replorigin_checkpoint.tmp\": Read-only file system")
    assert disk_full_in(log.split("\n")[0]) is None  # a LOG line alone: it did not crash


def test_a_walreceiver_that_cannot_write_its_wal_counts_and_other_fatals_do_not():
    """Sandbox trial 2026-12-06, the sync's dataset read-only (lines from its log)."""
    fatal = ('2026-12-06 02:00:50.033 UTC [12533] FATAL:  could not create file "pg_wal/xlogtemp.12533": '
             'Read-only file system')
    log = ('2026-12-06 02:00:50.032 UTC [12533] LOG:  could not create archive status file '
           '"pg_wal/archive_status/000000020000000000000008.done": Read-only file system\n' + fatal + "\n"
           '2026-12-06 02:00:50.054 UTC [12526] LOG:  waiting for WAL to become available at 0/900018\n')
    assert disk_full_in(log) == fatal
    assert disk_full_in(fatal.replace("Read-only file system", "No space left on device")) is not None
    # a FATAL about another file (a client's temporary file), or about the WAL for another reason, is not one
    assert disk_full_in('[1] FATAL:  could not create file "base/pgsql_tmp/x": Read-only file system') is None
    assert disk_full_in('[1] FATAL:  could not open file "pg_wal/0001": Permission denied') is None


@pytest.mark.parametrize("pgcode, message, refusal", [
    # PostgreSQL 15 (this machine's, seen on a real server), 16+, and the MultiXact form
    ("54000", 'ERROR:  database is not accepting commands to avoid wraparound data loss in database "template1"\n'
              "HINT:  Stop the postmaster and vacuum that database in single-user mode.", True),
    ("54000", 'ERROR:  database is not accepting commands that assign new transaction IDs to avoid wraparound '
              'data loss in database "app"', True),
    ("54000", 'ERROR:  database is not accepting commands that generate new MultiXactIds to avoid wraparound '
              'data loss in database "app"', True),
    # the warnings before it, another program limit, and the words under another SQLSTATE: not it
    ("01000", 'WARNING:  database "app" must be vacuumed within 2097867 transactions', False),
    ("54000", "ERROR:  row is too big: size 9000, maximum size 8160", False),
    (None, "database is not accepting commands to avoid wraparound data loss", False),
])
def test_the_wraparound_refusal_is_told_by_its_sqlstate_and_words(pgcode, message, refusal):
    assert wraparound_refusal(pgcode, message) is refusal
