"""DESIGN.md: ``protocols/`` is pure data and pure functions; it never imports ray."""

import ast
import pathlib

PROTOCOLS = pathlib.Path(__file__).resolve().parents[2] / "protocols"


def _imported_roots(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_protocols_module_imports_ray():
    modules = sorted(PROTOCOLS.rglob("*.py"))
    assert modules, "protocols/ has no modules"
    offenders = [str(p.relative_to(PROTOCOLS)) for p in modules if "ray" in _imported_roots(p)]
    assert offenders == []


def test_the_check_sees_a_ray_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ray import util\n")
    assert "ray" in _imported_roots(bad)
