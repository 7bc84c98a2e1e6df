"""Which old copies beside a node's dataset an interrupted restore left (manatee.sitter.dataset)."""

from manatee.sitter.dataset import interrupted

FOUND = [("z/pg-restore-1000", False), ("z/pg-restore-2000", True), ("z/pg-restore-3000", False)]


def test_unmarked_copies_are_an_interrupted_restores():
    assert interrupted(FOUND) == ["z/pg-restore-1000", "z/pg-restore-3000"]
    assert interrupted([]) == []


def test_a_running_restores_aside_and_a_copy_being_dropped_are_not():
    assert interrupted(FOUND, restoring_since_ms=2500) == ["z/pg-restore-1000"]
    assert interrupted(FOUND, dropping="z/pg-restore-3000") == ["z/pg-restore-1000"]
    assert interrupted(FOUND, restoring_since_ms=500) == []
    # a name that is not epoch ms is never taken for the running restore's
    assert interrupted([("z/pg-restore-old", False)], restoring_since_ms=1) == ["z/pg-restore-old"]
