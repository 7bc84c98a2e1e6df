"""What the sitter reads in PostgreSQL's log as "this data cannot follow its upstream".

A standby whose history forked, or whose data cannot even start (its pg_control names a
checkpoint that is not in its WAL), is rebuilt from its upstream by the core; every other
line must not trigger that (a rebuild throws the node's data away)."""

import pytest

from manatee.sitter.pgmanager import DIVERGENCE_PATTERNS


@pytest.mark.parametrize("line", [
    "FATAL:  could not start WAL streaming: ERROR:  requested starting point 0/3000000 on timeline 1 is not in this server's history",
    "LOG:  new timeline 3 is not a child of this server's timeline 2",
    "LOG:  new timeline 2 forked off current database system timeline 1 before current recovery point 0/30000A0",
    "LOG:  invalid primary checkpoint record",
    "PANIC:  could not locate a valid checkpoint record",
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
