"""The fault soak's operator rounds: what a person at the console does while the shard is
under load, run with the real `manatee-adm` and the sandbox's credentials.

- `switchover`: `manatee-adm switchover` of a healthy shard; it must succeed (a failure is
  one of the round's problems), and the round's outage is its write gap.
- `rebuild_kill`: `manatee-adm rebuild` of the async, and while it is asked for or runs the
  primary or the sync is killed (kill -9) after a random delay, then started again. The
  random simulation found a deadlock in that double fault (seed 560392: an async that
  accepted an unforced rebuild, named the sync before the restore began). The rebuild must
  end within the bound: done, withdrawn (the async became the sync first), or refused (the
  kill came before the request); a command still waiting at the bound is a problem.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from manatee_testbed.cli.sandbox import tool_vars

ADM_KINDS = ("switchover", "rebuild_kill")
#: the longest a round waits for the rebuild command, beyond the shard's reaction to the kill
REBUILD_WAIT_S = 120.0


def adm_command(nem: Any, cmd: str, *rest: str) -> tuple[list[str], dict[str, str]]:
    """`manatee-adm CMD SHARD ZK REST...` for the nemesis's sandbox, and its environment."""
    st = nem.sb.st
    env = {**os.environ, "PGPASSFILE": str(nem.view.passfile), **tool_vars(st)}
    return [sys.executable, "-m", "manatee.cli.adm", cmd, st.shard, st.zk_connect, *rest], env


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def switchover(nem: Any, r: Any, t: dict[str, Any]) -> str:
    r.target = f"{t['primary']}(primary)->{t['sync']}(sync)"
    argv, env = adm_command(nem, "switchover")
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)
    said = last_line(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        r.problems.append(f"manatee-adm switchover of a healthy shard failed (exit {proc.returncode}): {said}")
    return f"switchover: exit {proc.returncode} after {time.monotonic() - t0:.2f}s: {said}"


def rebuild_outcome(returncode: int | None, said: str) -> tuple[str, bool]:
    """(what the rebuild command's end says, whether it is a problem): done, withdrawn or
    refused are answers; a command that did not end, or said the rebuild did not finish,
    is not."""
    if returncode is None:
        return "still waiting at the bound", True
    if returncode == 0:
        return "done", False
    if "was withdrawn" in said:
        return "withdrawn", False
    if "refused the rebuild" in said or "Nothing requested" in said or "cannot serve" in said:
        return "refused", False
    return "failed", "did not finish" in said


def rebuild_kill(nem: Any, r: Any, t: dict[str, Any]) -> str:
    node = nem.sb.st.node(t["async"][-1])
    victim_role = nem.rng.choice(("primary", "sync"))
    victim = t[victim_role]
    delay = round(nem.rng.uniform(0.0, 1.5), 2)
    r.target = f"{node.name}(async, rebuild)->{victim}({victim_role}, killed after {delay}s)"
    argv, env = adm_command(nem, "rebuild", "--node", node.ip, "--wait", f"{REBUILD_WAIT_S:g}")
    from manatee_testbed.nemesis import inflict  # (nemesis imports this module)

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    notes, out, ended = [], "", False
    try:
        time.sleep(delay)
        inflict(f"kill {victim}", nem.sb.kill, victim)
        note = nem._await_reaction(victim)
        if note:
            notes.append(note)
        nem.sb.start(victim)
        out, _ = proc.communicate(timeout=REBUILD_WAIT_S + 30)
        ended = True
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = last_line(out)
    outcome, problem = rebuild_outcome(proc.returncode if ended else None, said)
    if problem:
        r.problems.append(f"the rebuild of {node.name} {outcome}: {said}")
    return "; ".join([*notes, f"rebuild of {node.name}: {outcome} (exit {proc.returncode}): {said}"])
