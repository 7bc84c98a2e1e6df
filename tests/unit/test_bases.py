"""Base snapshots (manatee.core.bases): which marks a completed stream writes, and how they
are read back from `zfs get`."""

import asyncio

import pytest

from manatee.core.bases import BASES_PROP, bases_by_peer, is_marked, mark_base, marks_for, parse_bases, peer_key
from manatee.core.zfs import ZfsError, parse_local_values

DS = "zones/pg"
S1, S2, S3 = f"{DS}@1700000000001", f"{DS}@1700000000002", f"{DS}@1700000000003"


@pytest.mark.parametrize("value,peers", [
    ("-", set()), ("", set()),
    ("127.0.0.12", {"127.0.0.12"}),
    ("127.0.0.13,127.0.0.12", {"127.0.0.12", "127.0.0.13"}),
    ("127.0.0.12, ::1 ,junk", {"127.0.0.12", "::1"}),
    ("0:0:0:0:0:0:0:1", {"::1"}),
])
def test_parse_bases(value, peers):
    assert parse_bases(value) == peers


def test_any_local_value_is_a_mark_even_unreadable():
    assert is_marked("junk") and is_marked("127.0.0.1")
    assert not is_marked("-") and not is_marked("")


def test_peer_key_is_canonical_or_none():
    assert peer_key("[::1]") == "::1" and peer_key(" 127.0.0.1 ") == "127.0.0.1"
    assert peer_key("node-a") is None


def test_bases_by_peer_is_what_state_shows():
    assert bases_by_peer({S1: "127.0.0.12,127.0.0.13", S2: "-", S3: "junk"}) == {
        "127.0.0.12": "1700000000001", "127.0.0.13": "1700000000001", "junk": "1700000000003"}
    assert bases_by_peer({}) == {}


def test_first_mark_for_a_peer():
    assert marks_for({S1: "-", S2: "-"}, S2, "127.0.0.12") == {S2: "127.0.0.12"}


def test_a_newer_exchange_moves_the_peers_mark_and_keeps_the_others():
    current = {S1: "127.0.0.12,127.0.0.13", S2: "127.0.0.12", S3: "-"}
    assert marks_for(current, S3, "127.0.0.12") == {S1: "127.0.0.13", S2: None, S3: "127.0.0.12"}


def test_the_sender_of_an_increment_keeps_the_mark_on_its_base():
    current = {S1: "127.0.0.12", S2: "127.0.0.12", S3: "-"}  # S2: an earlier send whose receive failed
    assert marks_for(current, S3, "127.0.0.12", keep=(S1,)) == {S2: None, S3: "127.0.0.12"}
    assert marks_for({S1: "-", S3: "-"}, S3, "127.0.0.12", keep=(S1,)) == {S3: "127.0.0.12"}  # adds none


def test_marking_the_same_snapshot_again_changes_nothing():
    assert marks_for({S1: "127.0.0.13", S2: "127.0.0.12"}, S2, "127.0.0.12") == {}


def test_a_snapshot_gains_a_second_peer():
    assert marks_for({S2: "127.0.0.13"}, S2, "127.0.0.12") == {S2: "127.0.0.12,127.0.0.13"}


def test_marks_for_refuses_a_name():
    with pytest.raises(ValueError):
        marks_for({S1: "-"}, S1, "node-a")


def test_parse_local_values_reads_only_local_values_of_the_datasets_snapshots():
    text = (f"{DS}\t-\t-\n"
            f"{S1}\t127.0.0.12\tlocal\n"
            f"{S2}\t127.0.0.13\tinherited from {DS}\n"
            f"{DS}/child@1700000000009\t127.0.0.14\tlocal\n"
            f"{S3}\t-\t-\n")
    assert parse_local_values(text, DS) == {S1: "127.0.0.12", S2: "-", S3: "-"}


class _Zfs:
    def __init__(self, values, fail_on=None):
        self.values, self.fail_on, self.calls = dict(values), fail_on, []

    async def snapshot_bases(self, dataset):
        return dict(self.values)

    async def set(self, name, prop, value):
        self.calls.append(("set", name, value))
        if self.fail_on == name:
            raise ZfsError(["zfs", "set"], 1, "cannot set property")
        self.values[name] = value

    async def inherit(self, name, prop):
        assert prop == BASES_PROP
        self.calls.append(("inherit", name))
        self.values[name] = "-"


class _Log:
    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((level, event, kw))


def test_mark_base_writes_the_new_mark_before_clearing_the_old():
    zfs, log = _Zfs({S1: "127.0.0.12", S2: "-"}), _Log()
    assert asyncio.run(mark_base(zfs, DS, S2, "127.0.0.12", log))
    assert zfs.calls == [("set", S2, "127.0.0.12"), ("inherit", S1)]  # never a moment with no base
    assert log.events[-1][1] == "base_marked" and log.events[-1][2]["moved_from"] == [S1]


def test_mark_base_failure_is_logged_not_raised_and_the_old_mark_stays():
    zfs, log = _Zfs({S1: "127.0.0.12", S2: "-"}, fail_on=S2), _Log()
    assert not asyncio.run(mark_base(zfs, DS, S2, "127.0.0.12", log))
    assert zfs.values[S1] == "127.0.0.12"
    assert log.events[-1][:2] == ("warning", "base_mark_failed")


def test_mark_base_is_bounded():
    class Hung(_Zfs):
        async def snapshot_bases(self, dataset):
            await asyncio.sleep(60)

    log = _Log()
    assert not asyncio.run(mark_base(Hung({}), DS, S1, "127.0.0.12", log, timeout=0.05))
    assert log.events[-1][1] == "base_mark_failed"
