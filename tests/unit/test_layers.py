"""The layers of DESIGN.md hold, checked on the source (AST) of the whole tree.

* ``protocols/`` is pure: it imports neither ``ray`` nor ``actors`` nor ``cluster``;
* ``actors/`` never imports ``cluster/``;
* inside ``actors/`` only the thin shells (each actor's ``actor.py``) and the Ray transport
  (``actors/transport/raycall.py``, ``launch.py``) import ``ray``;
* actor packages do not reach into each other, and the shared packages (the transport family,
  the xenbus cores, the host network, the guest programs) import no actor package;
* no two modules import each other, directly or through others (imports inside functions
  count: a lazy import is still a dependency).

Each rule is also run on a small planted tree that breaks it, so the check is shown to fail.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("protocols", "actors", "cluster")
ACTOR_PACKAGES = frozenset({"hypervisor", "xenstored", "console", "blkback", "netback",
                            "toolstack", "domain", "registry", "forkserver"})
RAY_IN_ACTORS = frozenset({"actors.transport.raycall", "actors.transport.launch"})


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load_tree(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every module of the three packages under ``root``, by dotted name."""
    return {module_name(root, p): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def imports_of(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """What ``name`` imports, anywhere in it: ``from a.b import c`` counts as ``a.b.c`` when that
    is a module of the tree, else as ``a.b``; relative imports are resolved."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                up = here[:len(here) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return found


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    modules = load_tree(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def _actor_package(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "actors" and len(parts) > 1 and parts[1] in ACTOR_PACKAGES \
        else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a rule of the module docstring, as ``importer -> imported``."""
    bad = []
    for mod, targets in sorted(graph.items()):
        for target in sorted(targets):
            top = _top(target)
            if _top(mod) == "protocols" and top in ("ray", "actors", "cluster"):
                bad.append(f"{mod} -> {target} (protocols/ is pure)")
            if _top(mod) == "actors" and top == "cluster":
                bad.append(f"{mod} -> {target} (actors/ never imports cluster/)")
            if _top(mod) == "actors" and top == "ray" and not (
                    mod.endswith(".actor") or mod in RAY_IN_ACTORS):
                bad.append(f"{mod} -> {target} (only actor shells and the Ray transport "
                           "import ray)")
            mine, theirs = _actor_package(mod), _actor_package(target)
            if _top(mod) == "actors" and theirs is not None and mine != theirs:
                bad.append(f"{mod} -> {target} (reaches into another actor package)")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue  # outside the tree (stdlib, ray, ...)
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# -- the tree as it is --------------------------------------------------------------------

def test_every_import_respects_the_layers():
    graph = import_graph(ROOT)
    assert len(graph) > 100, "the tree was not found"
    assert layer_violations(graph) == []


def test_no_modules_import_each_other():
    assert cycles(import_graph(ROOT)) == []


# -- the checks can fail ------------------------------------------------------------------

def _plant(tmp_path: pathlib.Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in {"protocols/__init__.py": "", "actors/__init__.py": "",
                      "cluster/__init__.py": "", **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path)


def test_the_check_sees_a_back_import_and_ray_where_it_does_not_belong(tmp_path):
    graph = _plant(tmp_path, {
        "protocols/wire.py": "def f():\n    from actors.domain import kernel\n",
        "actors/domain/__init__.py": "",
        "actors/domain/kernel.py": "from cluster.api import Cluster\nimport ray\n",
        "actors/domain/actor.py": "import ray\n",
        "actors/hypervisor/__init__.py": "",
        "actors/hypervisor/grants.py": "from ..domain import kernel\n",
        "actors/xenbus/__init__.py": "",
        "actors/xenbus/backend.py": "from actors.hypervisor.grants import x\n",
        "cluster/api.py": "import ray\nfrom actors.domain import actor\n",
    })
    assert layer_violations(graph) == [
        "actors.domain.kernel -> cluster.api (actors/ never imports cluster/)",
        "actors.domain.kernel -> ray (only actor shells and the Ray transport import ray)",
        "actors.hypervisor.grants -> actors.domain.kernel (reaches into another actor package)",
        "actors.xenbus.backend -> actors.hypervisor.grants (reaches into another actor package)",
        "protocols.wire -> actors.domain.kernel (protocols/ is pure)",
    ]


def test_the_check_sees_modules_importing_each_other_through_others(tmp_path):
    graph = _plant(tmp_path, {
        "cluster/bench.py": "from cluster import blk\n",
        "cluster/blk.py": "def f():\n    from cluster.common import x\n",
        "cluster/common.py": "from cluster.bench import y\n",
        "cluster/fine.py": "from cluster import common\n",
    })
    assert cycles(graph) == [["cluster.bench", "cluster.blk", "cluster.common"]]
