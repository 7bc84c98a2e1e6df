"""When a PostgreSQL socket dir (/run/manatee/<ip>-<port>) is stale — no live PostgreSQL holds
it — for the test bed's teardown (manatee_testbed.sockdirs.remove_stale) and for
scripts/check-leftovers.sh (`python3 -m manatee_testbed.sockdirs`, which reports only): one
table of cases for both uses of the one rule."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from manatee_testbed.sockdirs import default_socket_dir, lock_pid, remove_stale, why_kept

ROOT = Path(__file__).resolve().parents[2]
# as scripts/check-leftovers.sh runs it: the system's python3, the repository on its path
REPORT = ["python3", "-m", "manatee_testbed.sockdirs"]
REPORT_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{ROOT / 'testbed'}"}


def _report(root):
    return subprocess.run([*REPORT, str(root)], capture_output=True, text=True, timeout=30, env=REPORT_ENV)
SOCK, LOCK = ".s.PGSQL.5432", ".s.PGSQL.5432.lock"


@pytest.fixture(scope="module")
def pids(tmp_path_factory):
    """Real pids: `dead` (exited and reaped), `zombie` (exited, not reaped), `other` (a live
    process that is not PostgreSQL: a reused pid), `postgres` (a live process whose
    executable is called postgres)."""
    exe = tmp_path_factory.mktemp("bin") / "postgres"
    shutil.copy(shutil.which("sleep"), exe)
    pg = subprocess.Popen([str(exe), "60"])
    other = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    yield {"dead": gone.pid, "zombie": zombie.pid, "other": other.pid, "postgres": pg.pid}
    for p in (pg, other, zombie):
        p.kill()
        p.wait()


def lock(pid: int, port: int = 5432) -> str:
    """A socket lock file's text as PostgreSQL writes it."""
    return f"{pid}\n/var/tmp/x/pg/data\n1796532366\n{port}\n/run/manatee/127.1.2.3-{port}\n"


# (case, the dir's files: name -> text (None: an empty socket stand-in), stale?)
CASES = [
    ("empty (PostgreSQL stopped)", {}, True),
    ("killed: socket and lock of a dead pid", {SOCK: None, LOCK: lock("dead")}, True),
    ("lock of a dead pid alone", {LOCK: lock("dead")}, True),
    ("lock of a zombie", {SOCK: None, LOCK: lock("zombie")}, True),
    ("lock of a reused pid (not PostgreSQL)", {SOCK: None, LOCK: lock("other")}, True),
    ("lock of a live PostgreSQL", {SOCK: None, LOCK: lock("postgres")}, False),
    ("two servers, one alive", {LOCK: lock("dead"), ".s.PGSQL.6432.lock": lock("postgres", 6432)}, False),
    ("lock being written (empty)", {SOCK: None, LOCK: ""}, False),
    ("lock with no pid", {LOCK: "abc\n"}, False),
    ("lock of a standalone backend (negative pid)", {LOCK: lock("-dead")}, False),
    ("lock with a number beyond any pid", {LOCK: "99999999\n"}, False),
    ("socket without its lock", {SOCK: None}, False),
    ("a file that is not PostgreSQL's", {LOCK: lock("dead"), "notes.txt": "x"}, False),
]


def resolve(text: str | None, pids: dict[str, int]) -> str | None:
    """`text` with a pid name on its first line ("dead", "-dead", ...) made the real pid."""
    if not text:
        return text
    first, sep, rest = text.partition("\n")
    key = first.lstrip("-")
    if key in pids:
        first = first[: len(first) - len(key)] + str(pids[key])
    return first + sep + rest


def make_dir(root: Path, files: dict[str, str | None], pids: dict[str, int]) -> Path:
    d = root / "127.1.2.3-5432"
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(resolve(text, pids) or "")
    return d


@pytest.mark.parametrize("case,files,stale", CASES, ids=[c[0] for c in CASES])
def test_python_rule_and_removal(tmp_path, pids, case, files, stale):
    d = make_dir(tmp_path, files, pids)
    before = sorted(p.name for p in d.iterdir())
    why = remove_stale(d)
    assert (why is None) == stale, why
    if stale:
        assert not d.exists()
    else:  # kept untouched
        assert sorted(p.name for p in d.iterdir()) == before


@pytest.mark.parametrize("case,files,stale", CASES, ids=[c[0] for c in CASES])
def test_report_rule(tmp_path, pids, case, files, stale):
    d = make_dir(tmp_path, files, pids)
    r = _report(tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.splitlines() == ([str(d)] if stale else [])
    assert d.exists()  # the report removes nothing


def test_report_looks_only_at_node_dirs(tmp_path):
    """Only <ip>-<port> directories are the sitter's; other names and symlinks are not looked at."""
    for name in ("not-a-node", "127.0.0.1-5432.old", "x"):
        (tmp_path / name).mkdir()
    (tmp_path / "127.0.0.2-5432").symlink_to(tmp_path / "x")
    (tmp_path / "127.0.0.3-5432").write_text("")
    (tmp_path / "::1-5432").mkdir()
    r = _report(tmp_path)
    assert r.stdout.splitlines() == [str(tmp_path / "::1-5432")]
    r = _report(tmp_path / "none")
    assert (r.returncode, r.stdout) == (0, "")


def test_remove_stale_leaves_what_is_not_a_directory(tmp_path):
    assert remove_stale(tmp_path / "absent") is None
    (tmp_path / "f").write_text("")
    assert remove_stale(tmp_path / "f") == "not a directory"
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "d")
    assert remove_stale(tmp_path / "l") == "not a directory"
    assert (tmp_path / "d").is_dir()


def test_why_kept_names_the_holder():
    assert why_kept({LOCK: "4242\n"}, holds=lambda pid: pid == 4242) == f"{LOCK}: PostgreSQL pid 4242 is alive"
    assert why_kept({LOCK: "4242\n"}, holds=lambda pid: False) is None
    assert why_kept({SOCK: None}, holds=lambda pid: False) == f"{SOCK} has no lock file"


@pytest.mark.parametrize("text,pid", [("13718\n/d\n", 13718), (" 7 \n", 7), ("007\n", 7), ("4194304", 4194304),
                                      ("4194305\n", None), ("0\n", None), ("-12\n", None), ("", None),
                                      (None, None), ("1 2\n", None)])
def test_lock_pid(text, pid):
    assert lock_pid(text) == pid


def test_default_socket_dir_is_the_sitters():
    assert default_socket_dir("10.0.0.1", 5432) == "/run/manatee/10.0.0.1-5432"
