"""The shard's znode paths are spelled in one place (manatee/shard/layout.py): no string in
the product outside manatee/shard/ begins a ZooKeeper path (`"/manatee/..."`, or the
`/election`, `/history`, `/error` part after an interpolation, as in `f"{base}/election"`).
Docstrings and messages may mention them. (`/state` is also a sitter's HTTP route, so it is
left to review.)"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "manatee"
FORBIDDEN = ("/manatee", "/election", "/history", "/error")


def strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal (f-string parts included) that is not a docstring."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def offenders(path: Path) -> list[str]:
    where = path.relative_to(PKG.parent) if PKG in path.parents else path.name
    return [f"{where}:{line}: {s!r}" for line, s in strings(ast.parse(path.read_text(), str(path)))
            if s.startswith(FORBIDDEN)]


def test_no_znode_path_is_spelled_outside_the_shard_package():
    found = [o for p in sorted(PKG.rglob("*.py")) if "shard" not in p.relative_to(PKG).parts[:1]
             for o in offenders(p)]
    assert found == [], "spell znode paths with manatee.shard.layout.ShardLayout:\n" + "\n".join(found)


def test_the_guard_sees_a_spelled_path_but_not_a_docstring(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(base):\n    """Reads <base>/election and /manatee/1."""\n'
                   '    return f"{base}/election/x", "/manatee/1", f"{base}/state", "see /run/manatee"\n')
    assert sorted(offenders(bad)) == ["bad.py:3: '/election/x'", "bad.py:3: '/manatee/1'"]
