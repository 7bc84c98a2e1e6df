"""manatee-adm reload says why a node's new settings are not confirmed applied (from its /state)."""

from __future__ import annotations

import pytest

from manatee.cli.adm_pgconf import unconfirmed_why

PG_OK = {"known": True, "parametersPending": True, "configError": None, "error": None}


@pytest.mark.parametrize("code,state,said", [
    (0, None, "did not answer (no answer)"),
    (503, {"error": "x"}, "did not answer (503)"),
    (200, "not json", "did not answer (200)"),
    (200, {"pg": PG_OK, "restore": {"phase": "receiving"}}, "being rebuilt (receiving)"),
    (200, {"pg": None}, "has not looked at PostgreSQL yet"),
    (200, {"pg": {**PG_OK, "configError": "writing PostgreSQL's config has not finished within 60s: the disk stalls"}},
     "cannot write PostgreSQL's config: writing PostgreSQL's config has not finished within 60s"),
    (200, {"pg": {**PG_OK, "known": False, "error": "query timed out"}}, "status is unknown: query timed out"),
    (200, {"pg": PG_OK, "cycles": {"failedInARow": 4, "lastError": "boom"}}, "last 4 cycles failed: boom"),
    (200, {"pg": PG_OK, "restore": {"phase": "done"}, "cycles": {"failedInARow": 0}, "pgObservedAgo": 0.4},
     "has not reloaded PostgreSQL with them yet (PostgreSQL last looked at 0.4s ago)"),
])
def test_unconfirmed_why_names_what_the_node_said(code, state, said):
    assert said in unconfirmed_why(code, state)
