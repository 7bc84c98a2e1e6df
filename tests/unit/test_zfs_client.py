"""manatee.core.zfs without ZFS: errors, argument lists, output parsing, and the streaming
methods run against stand-in binaries (/bin/sh, small scripts) over loopback TCP."""

import asyncio
import os
import socket

import pytest

from manatee.core.zfs import (
    Snapshot,
    Zfs,
    ZfsError,
    create_args,
    default_snapshot_name,
    newest_first,
    parse_holds,
    parse_name_value,
    parse_snapshot_creations,
    recv_args,
    send_args,
)
from manatee.core.zfsstream import StreamError


def test_zfs_error_shows_command_status_and_stderr():
    e = ZfsError(["/usr/sbin/zfs", "destroy", "pool/my ds@1"], 1, "cannot destroy 'pool/ds@1': dataset is busy\n")
    s = str(e)
    assert s.startswith("/usr/sbin/zfs destroy 'pool/my ds@1': exit 1")
    assert "stderr: cannot destroy 'pool/ds@1': dataset is busy" in s
    assert e.cmd == ["/usr/sbin/zfs", "destroy", "pool/my ds@1"]
    assert e.returncode == 1
    assert e.busy and not e.not_found


def test_zfs_error_joins_multiline_stderr_and_names_signal():
    e = ZfsError(["zfs", "recv", "p/x"], -9, "line one\n\n  line two  \n", "after 10 bytes")
    assert str(e) == "zfs recv p/x: killed by SIGKILL; after 10 bytes; stderr: line one | line two"


def test_zfs_error_without_stderr_and_truncates_long_stderr():
    assert str(ZfsError(["zfs", "list"], 2, "")).endswith("exit 2; no stderr")
    long = ZfsError(["zfs"], 1, "x" * 2000)
    assert len(str(long)) < 600 and str(long).endswith("...")


def test_zfs_error_not_found():
    e = ZfsError(["zfs", "snapshot", "p/x@1"], 1, "cannot open 'p/x': dataset does not exist")
    assert e.not_found and not e.busy
    assert isinstance(e, Exception)


def test_snapshot_full_and_parse():
    s = Snapshot("pool/a/b", "1700000000000", 1700000000)
    assert s.full == "pool/a/b@1700000000000"
    assert Snapshot.parse("pool/a@x", 5) == Snapshot("pool/a", "x", 5)
    for bad in ("pool/a", "@x", "pool/a@"):
        with pytest.raises(ValueError):
            Snapshot.parse(bad)
    with pytest.raises(Exception):
        s.name = "y"  # frozen


def test_default_snapshot_name_is_13_digit_epoch_ms():
    import time

    before = int(time.time() * 1000)
    name = default_snapshot_name()
    after = int(time.time() * 1000)
    assert len(name) == 13 and name.isdigit()
    assert before <= int(name) <= after


def test_send_and_recv_args():
    assert send_args("p/a@2") == ["send", "p/a@2"]
    assert send_args("p/a@2", "p/a@1") == ["send", "-i", "p/a@1", "p/a@2"]
    assert recv_args("p/b") == ["recv", "-u", "p/b"]
    assert recv_args("p/b", force=True) == ["recv", "-F", "-u", "p/b"]
    assert recv_args("p/b", force=True, no_mount=False) == ["recv", "-F", "p/b"]


def test_create_args():
    assert create_args("p/a") == ["create", "p/a"]
    assert create_args("p/a/b", {"mountpoint": "/m", "atime": False, "canmount": "noauto"}, parents=True) == [
        "create", "-p", "-o", "mountpoint=/m", "-o", "atime=off", "-o", "canmount=noauto", "p/a/b",
    ]


def test_parse_snapshot_creations_keeps_only_own_snapshots():
    out = (
        "p/a\t1000\n"
        "p/a@1700000000001\t1700000000\n"
        "p/a@op\t1700000005\n"
        "p/a/child\t1000\n"
        "p/a/child@1700000000002\t1700000001\n"
        "p/ab@x\t1\n"
        "\n"
    )
    snaps = parse_snapshot_creations(out, "p/a")
    assert snaps == [Snapshot("p/a", "1700000000001", 1700000000), Snapshot("p/a", "op", 1700000005)]


def test_newest_first_orders_by_creation_then_name():
    a = Snapshot("p", "1700000000001", 10)
    b = Snapshot("p", "1700000000002", 10)
    c = Snapshot("p", "0000000000000", 11)
    assert newest_first([a, c, b]) == [c, b, a]


def test_parse_name_value_and_holds():
    assert parse_name_value("p@1\t3\np@2\t0\n") == [("p@1", "3"), ("p@2", "0")]
    assert parse_holds("p@1\tbackup\tThu Nov 26 2026\np@1\tsend-x\tThu\n") == {"backup", "send-x"}
    assert parse_holds("") == set()


async def test_run_missing_binary_raises_oserror_not_hang():
    z = Zfs(zfs_path="/nonexistent/zfs")
    with pytest.raises(FileNotFoundError):
        await z.run("list")


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(actively opened, accepted) non-blocking TCP sockets on loopback, as sender and restore use."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        a = socket.socket()
        a.setblocking(False)
        (b, _), _ = await asyncio.gather(loop.sock_accept(listener), loop.sock_connect(a, listener.getsockname()))
    b.setblocking(False)
    return a, b


def fake_zfs(tmp_path, name: str, body: str) -> Zfs:
    """A Zfs client whose `zfs` binary is a shell script (ignores its arguments)."""
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return Zfs(zfs_path=str(script))


def children_named(name: bytes) -> list[int]:
    """PIDs of this process's children whose command line starts with `name`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and cmd.startswith(name):
                found.append(int(entry))
    return found


async def test_send_to_socket_passes_incremental_args_and_surfaces_stderr():
    # /bin/sh stands in for zfs: `sh send -i A B` fails (no script named "send") with stderr
    z = Zfs(zfs_path="/bin/sh")
    a, b = await tcp_pair()
    try:
        with pytest.raises(ZfsError) as ei:
            await z.send_to_socket("p/a@2", a, incremental_from="p/a@1")
    finally:
        a.close()
        b.close()
    assert ei.value.cmd == ["/bin/sh", "send", "-i", "p/a@1", "p/a@2"]
    assert ei.value.returncode != 0 and "send" in ei.value.stderr


async def test_recv_from_socket_passes_force_and_surfaces_stderr():
    z = Zfs(zfs_path="/bin/sh")
    a, b = await tcp_pair()
    try:
        with pytest.raises(ZfsError) as ei:
            await z.recv_from_socket("p/b", b, force=True)
    finally:
        a.close()
        b.close()
    assert ei.value.cmd == ["/bin/sh", "recv", "-F", "-u", "p/b"]
    assert ei.value.returncode != 0 and "recv" in ei.value.stderr


async def test_send_and_recv_count_exactly_the_stream_bytes(tmp_path):
    """TCP_INFO counts SYN and FIN as one byte each; the returned counts must not."""
    payload = os.urandom(300_000)
    (tmp_path / "in").write_bytes(payload)
    sender = fake_zfs(tmp_path, "zfs-send", f"exec cat {tmp_path / 'in'}")
    receiver = fake_zfs(tmp_path, "zfs-recv", f"exec cat > {tmp_path / 'out'}")
    a, b = await tcp_pair()  # a: connected (the backupserver side), b: accepted (the restore side)
    sent_progress: list[int] = []
    recv_progress: list[int] = []

    async def receive() -> int:
        try:
            return await receiver.recv_from_socket("p/x", b, progress=recv_progress.append)
        finally:
            b.close()

    try:
        sent, received = await asyncio.gather(
            sender.send_to_socket("p/x@1", a, progress=sent_progress.append, stall_timeout=10), receive()
        )
    finally:
        a.close()
        b.close()
    assert sent == received == len(payload)
    assert sent_progress[-1] == sent and sent_progress == sorted(sent_progress)
    assert recv_progress[-1] == received and max(recv_progress) == received
    assert (tmp_path / "out").read_bytes() == payload


async def test_send_stall_kills_zfs_and_raises_stream_error(tmp_path):
    z = fake_zfs(tmp_path, "zfs", "exec sleep 30")  # a zfs send that never writes
    a, b = await tcp_pair()
    try:
        with pytest.raises(StreamError) as ei:
            await asyncio.wait_for(z.send_to_socket("p/x@1", a, stall_timeout=0.5), 10)
    finally:
        a.close()
        b.close()
    assert "stalled" in str(ei.value) and "after 0 bytes" in str(ei.value)
    assert children_named(b"sleep") == []  # killed and reaped before the error returned


async def test_recv_cancelled_kills_zfs_recv(tmp_path):
    z = fake_zfs(tmp_path, "zfs", "exec sleep 30")  # a zfs recv waiting for input
    a, b = await tcp_pair()
    try:
        task = asyncio.ensure_future(z.recv_from_socket("p/x", b))
        await asyncio.sleep(0.3)
        assert children_named(b"sleep")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert children_named(b"sleep") == []
    finally:
        a.close()
        b.close()


async def test_run_error_from_real_process_carries_stderr():
    # /bin/sh stands in for zfs: the error plumbing is the same for any binary
    z = Zfs(zfs_path="/bin/sh")
    with pytest.raises(ZfsError) as ei:
        await z.run("-c", "echo boom >&2; exit 3")
    assert ei.value.returncode == 3
    assert ei.value.stderr.strip() == "boom"
    assert ei.value.cmd == ["/bin/sh", "-c", "echo boom >&2; exit 3"]


async def test_run_cancelled_leaves_no_child():
    z = Zfs(zfs_path="/bin/sh")
    task = asyncio.ensure_future(z.run("-c", "echo $$ > /dev/stderr; exec sleep 30"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert children_named(b"sleep") == [], "child left running"


def test_a_zfs_that_does_not_answer_fails_the_call_at_its_deadline(tmp_path):
    """Zfs(timeout=...): a hung zfs (here a stand-in that sleeps) is killed and the call fails
    with a ZfsError that says so, instead of hanging its caller."""
    pidfile = tmp_path / "pid"
    hung = tmp_path / "zfs"
    hung.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    hung.chmod(0o755)

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ZfsError) as e:
            await Zfs(zfs_path=str(hung), timeout=0.3).run("list")
        return loop.time() - t0, e.value

    took, err = asyncio.run(go())
    assert took < 3, took
    assert "no answer within 0.3s" in str(err) and "SIGKILL" in str(err)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
