"""PostgreSQL control, by concern:

* :mod:`~manatee.core.pg.runas` — PostgreSQL's programs run as the PostgreSQL OS user
  (``run_as``), private directories, and :class:`PgError`, what every part raises;
* :mod:`~manatee.core.pg.tools` — offline tools on a data directory: ``initdb``;
* :mod:`~manatee.core.pg.process` — the postmaster as a direct child
  (:class:`PostgresProcess`) and every process of its data directory;
* :mod:`~manatee.core.pg.client` — queries with a deadline off the event loop
  (:class:`PgClient`, the sitter's persistent monitoring connection), ``ensure_role``, and
  ``shut_socket`` (unblock a psycopg2 connection without a cancel request).

Callers import from here (``from manatee.core import pg``; ``pg.PgClient``): the names
below are the package's interface, the modules are how it is organised. Helpers only
tests need (WAL position, timeline, settings, ``pg_controldata``, SIGSTOP of every
backend) live in the test bed (``testbed/``, its ``postgres`` module).
"""

from manatee.core.pg.client import PgClient, ensure_role, shut_socket
from manatee.core.pg.process import PostgresProcess, pg_processes
from manatee.core.pg.runas import DEFAULT_BINDIR, PgError, ensure_private_dir, run_as
from manatee.core.pg.tools import initdb

__all__ = [
    "DEFAULT_BINDIR",
    "PgClient",
    "PgError",
    "PostgresProcess",
    "ensure_private_dir",
    "ensure_role",
    "initdb",
    "pg_processes",
    "run_as",
    "shut_socket",
]
