"""The package boundaries of docs/architecture.md, checked: what each package may import,
that the product never imports the test bed, and how big a product module or function may
grow. (Where znode paths are spelled: test_znode_layout_guard.py.)"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ROOT / "manatee"
MAX_MODULE_LINES = 520
MAX_FUNCTION_LINES = 80


def _modules(under: Path = PRODUCT):
    return sorted(p for p in under.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_the_product_never_imports_the_test_bed():
    bad = [str(p) for p in _modules() if any(m.split(".")[0] == "manatee_testbed" for m in _imports(p))]
    assert bad == []


def test_no_test_module_imports_another():
    """What tests share lives in tests/*.py helper modules (shard_ops, metrics_fakes, ...), not
    in a test module another one imports (its tests and fixtures would go along)."""
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in _modules(ROOT / "tests") for m in _imports(p)
           if m.split(".")[-1].startswith("test_") and m.startswith("tests.")]
    assert bad == []


def test_packages_import_only_downward():
    """core imports only core; shard imports core and shard; no library imports a daemon or a CLI."""
    allowed = {
        "core": {"core"},
        "shard": {"core", "shard"},
        "client.py": {"core", "shard"},
        "sitter": {"core", "shard", "sitter"},
        "backupserver": {"core", "shard", "backupserver"},
        "snapshotter": {"core", "snapshotter"},
        "cli": {"core", "shard", "cli", "client.py"},
    }
    bad = []
    for p in _modules():
        rel = p.relative_to(PRODUCT)
        top = rel.parts[0] if len(rel.parts) > 1 else rel.name
        if top not in allowed:
            continue
        for m in _imports(p):
            parts = m.split(".")
            if parts[0] != "manatee" or len(parts) == 1:
                continue
            target = parts[1] if parts[1] != "client" else "client.py"
            if target not in allowed[top] and target != "__version__":
                bad.append(f"{rel} imports {m}")
    assert bad == []


def test_no_product_module_or_function_is_too_big():
    big = []
    for p in _modules():
        src = p.read_text()
        if src.count("\n") > MAX_MODULE_LINES:
            big.append(f"{p.relative_to(ROOT)}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    big.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}(): {n} lines")
    assert big == []
