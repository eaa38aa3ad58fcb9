"""The package's structure: every module imports on its own, no import cycles, layers respected,
no unexplained long functions, and every ``docs/...`` path the code cites exists.

The import graph is built statically (``ast``) from ``src/crfkit``, so it is independent of what
Python happens to have cached: an edge ``A -> B`` means module ``A`` names ``B`` in an import
statement. Imports at module level and inside functions are kept apart: a cycle among module-level
imports breaks ``import`` in some order, a cycle through a function-level import is a layering
smell (it is caught by the layer test).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "crfkit"

# Layers (docs/architecture.md), top to bottom. A module may import from its own folder and from the
# folders listed for it; ``_validation`` is the shared error/validation helper usable everywhere.
ALLOWED = {
    "models": set(),
    "decomposition": {"models"},
    "ops": {"models", "decomposition"},
    "inference": {"models", "decomposition", "ops"},
    "learning": {"models", "decomposition", "ops", "inference"},
    "io": {"models"},
    "nn": {"models", "decomposition", "ops", "inference"},
    "data": {"models", "decomposition", "ops", "inference", "learning", "io"},
    "training": {"models", "decomposition", "ops", "inference", "learning", "nn", "data", "io"},
    "stereo": {"models", "decomposition", "ops", "inference", "data", "io"},
    "cli": {
        "models", "decomposition", "ops", "inference", "learning", "nn", "data", "io", "training", "stereo", "crfkit"
    },
}

# Files outside the arch-structure branch that still hold functions over 80 lines without a reason in
# their docstring (the core half of issue 13 reworks them). Remove entries as they are fixed.
LONG_FUNCTION_PENDING: set[str] = set()

# Import cycles (through a function-level import) in files outside this branch (issue 13, core half). Remove when fixed.
CYCLE_PENDING: set[frozenset[str]] = set()

# Files outside this branch that still cite the working material (models/ is the core half's).
CITATION_PENDING: set[str] = set()


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = _all_modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The crfkit modules one import statement names (a ``from X import y`` names ``X.y`` when that
    is a module, ``X`` otherwise)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "crfkit" and a.name in MODULES]
    if node.level:
        base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "crfkit":
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return [t for t in dict.fromkeys(out) if t in MODULES]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str) -> tuple[set[str], set[str]]:
    """``(module_level, function_level)`` crfkit imports of one module."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).update(_resolve(name, child))
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, nested)

    visit(tree, False)
    return top, inner


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (or a self-import), Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(comp)

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_the_cycle_finder_finds_cycles():
    """The checker itself, on a graph with a known answer."""
    found = _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}})
    assert sorted(map(sorted, found)) == [["a", "b", "c"], ["e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_relative_imports():
    """A known edge of each kind, so an empty graph cannot pass the cycle tests."""
    top, _ = GRAPH["crfkit.inference"]
    assert any(m.startswith("crfkit.inference.") for m in top)
    assert "crfkit.models.graph" in GRAPH["crfkit.learning.learners"][0] | GRAPH["crfkit.learning.learners"][1]


def test_no_module_level_import_cycle():
    cycles = _cycles({m: top for m, (top, _) in GRAPH.items()})
    assert cycles == [], f"module-level import cycles: {cycles}"


def test_no_import_cycle_through_function_level_imports():
    """Module- and function-level imports together (except packages' own ``__init__`` re-exports, which
    a submodule never needs): a cycle here means two modules depend on each other."""
    edges = {
        m: {t for t in top | inner if not (_is_package(t) and m.startswith(t + "."))}
        for m, (top, inner) in GRAPH.items()
    }
    edges.pop("crfkit", None)  # the root re-exports everything; nothing below imports it
    cycles = [c for c in _cycles(edges) if frozenset(c) not in CYCLE_PENDING]
    assert cycles == [], f"import cycles (module- or function-level): {cycles}"


@pytest.mark.xfail(strict=False, reason=f"pending in the core half of issue 13: {sorted(map(sorted, CYCLE_PENDING))}")
def test_no_import_cycle_through_function_level_imports_pending():
    edges = {m: top | inner for m, (top, inner) in GRAPH.items() if m != "crfkit"}
    assert [c for c in _cycles(edges) if frozenset(c) in CYCLE_PENDING] == []


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "crfkit"


def test_layers_import_only_from_layers_above():
    bad = []
    for m, (top, inner) in GRAPH.items():
        src = _layer(m)
        if src in ("crfkit", "_validation"):
            continue
        for t in top | inner:
            dst = _layer(t)
            if dst in (src, "_validation") or dst in ALLOWED[src]:
                continue
            bad.append(f"{m} -> {t}")
    assert bad == [], "imports against the layer order:\n" + "\n".join(bad)


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-W", "error::DeprecationWarning:crfkit", "-c", code], capture_output=True,
                          text=True, env=env, timeout=600)


def _optional_ok(m: str) -> bool:
    """Modules that need an optional accelerator are imported only when it is there."""
    if m == "crfkit.ops.chain.triton" or m == "crfkit.ops.chain.custom_op":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
    return True


def _import_all(order: list[str]) -> str:
    return "import importlib\nfor m in " + repr(order) + ":\n    importlib.import_module(m)\nprint('ok')"


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported first (then the rest), one fresh interpreter per module, batched into one script
    that forks so the test stays fast: a cycle that breaks only in some order fails here."""
    mods = [m for m in sorted(MODULES) if _optional_ok(m)]
    script = (
        "import importlib, os, sys\n"
        f"mods = {mods!r}\n"
        "bad = []\n"
        "for m in mods:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            importlib.import_module(m)\n"
        "            for k in mods: importlib.import_module(k)\n"
        "        except BaseException as e:\n"
        "            sys.stderr.write(f'{m}: {type(e).__name__}: {e}\\n'); os._exit(1)\n"
        "        os._exit(0)\n"
        "    if os.waitpid(pid, 0)[1] != 0: bad.append(m)\n"
        "print('bad', bad)\n"
    )
    # fork after `import torch` keeps each child cheap; crfkit itself is imported only in the children
    res = _run("import torch, numpy\n" + script)
    assert res.returncode == 0, res.stderr
    assert "bad []" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_all_modules_import_in_order(order):
    mods = [m for m in sorted(MODULES) if _optional_ok(m)]
    if order == "reversed":
        mods = mods[::-1]
    res = _run(_import_all(mods))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _long_functions(rel: str) -> list[str]:
    path = SRC / rel
    tree = ast.parse(path.read_text())
    out = []
    for fn in _functions(tree):
        n = fn.end_lineno - fn.lineno + 1
        if n > 80:
            doc = ast.get_docstring(fn) or ""
            if "long because" not in doc.lower():
                out.append(f"{rel}:{fn.lineno} {fn.name} ({n} lines)")
    return out


def _src_files() -> list[str]:
    return [str(p.relative_to(SRC)) for p in sorted(PKG.rglob("*.py"))]


def test_long_function_check_detects_long_functions(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(85))
    f = SRC / "crfkit" / "_tmp_long_function_probe.py"
    assert not f.exists()
    tree = ast.parse(f"def f():\n{body}\n\ndef g():\n    '''Long because tables.'''\n{body}\n")
    names = [fn.name for fn in _functions(tree) if fn.end_lineno - fn.lineno + 1 > 80
             and "long because" not in (ast.get_docstring(fn) or "").lower()]
    assert names == ["f"]


def test_no_function_over_80_lines_without_a_reason():
    bad = [x for rel in _src_files() if rel not in LONG_FUNCTION_PENDING for x in _long_functions(rel)]
    assert bad == [], "functions over 80 lines without 'long because' in the docstring:\n" + "\n".join(bad)


@pytest.mark.xfail(strict=False, reason=f"pending in the core half of issue 13: {sorted(LONG_FUNCTION_PENDING)}")
def test_no_function_over_80_lines_without_a_reason_pending():
    bad = [x for rel in sorted(LONG_FUNCTION_PENDING) if (SRC / rel).exists() for x in _long_functions(rel)]
    assert bad == [], "\n".join(bad)


DOC_PATH = re.compile(r"\bdocs/[\w./-]+\.md\b")


def test_every_cited_docs_path_exists():
    cited = {}
    for p in sorted(PKG.rglob("*.py")):
        for match in DOC_PATH.findall(p.read_text()):
            cited.setdefault(match, str(p.relative_to(ROOT)))
    assert cited, "the code cites no docs/ page at all"
    missing = {c: where for c, where in cited.items() if not (ROOT / c).is_file()}
    assert missing == {}, f"docs/ paths cited in src/ but missing: {missing}"


def test_no_citation_of_working_material():
    """MATH.md and DESIGN.md are not shipped; the code cites docs/ instead."""
    bad = [str(p.relative_to(ROOT)) for p in sorted(PKG.rglob("*.py"))
           if re.search(r"\b(MATH|DESIGN)\.md\b", p.read_text())]
    assert set(bad) <= CITATION_PENDING, bad
