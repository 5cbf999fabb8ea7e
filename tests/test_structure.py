"""The shape of the source tree, read from its AST: no import cycle among sft's modules (imports inside
functions count: they only hide a cycle), and no module grown past what one reader holds in mind."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("sftcli", "hydra_plugins/sft_submitit", "hydra_plugins/sft_sweeper")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The sft modules `path` imports at run time (anywhere in it; `if TYPE_CHECKING:` blocks never run).
    A package's __init__ counts where its names are imported from it (a facade that re-exports)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for block in ast.walk(tree) if _type_checking_block(block) for n in ast.walk(block)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        if isinstance(node, ast.ImportFrom):
            # `from a.b import c`: the module a.b.c when there is one, else the names of module a.b.
            modules_named = [t for t in targets[1:] if t in modules]
            targets = modules_named + ([targets[0]] if len(modules_named) < len(targets) - 1 else [])
        found.update(t for t in targets if t in modules and t != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_no_import_cycle_among_sfts_modules() -> None:
    graph = import_graph()
    cycles = _cycles(graph)
    described = ["\n  ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in cycles]
    assert not cycles, "import cycles:\n  " + "\n\n  ".join(described)


def test_the_cycle_check_sees_imports_inside_functions(tmp_path) -> None:
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from pkg import b\n")
    assert _imports(a, "pkg.a", {"pkg.a": a, "pkg.b": a}) == {"pkg.b"}
    assert _cycles({"x": {"y"}, "y": {"x"}, "z": {"x"}}) == [["x", "y"]]


def test_no_module_above_500_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules above {MAX_LINES} lines: {long}"


def _script_problems(path: Path) -> list[str]:
    """What ties a script to sft's inside: an sftcli import other than sftcli.api, a sys.path edit, or an
    assignment to an attribute of an imported module (monkeypatching)."""
    tree = ast.parse(path.read_text())
    modules = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sftcli" \
                and node.module != "sftcli.api":
            problems.append(f"line {node.lineno}: from {node.module} import ...")
        if isinstance(node, ast.Import):
            problems += [f"line {node.lineno}: import {a.name}" for a in node.names
                         if a.name.split(".")[0] == "sftcli" and a.name != "sftcli.api"]
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            problems.append(f"line {node.lineno}: sys.path")
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            problems += [f"line {node.lineno}: assigns {t.value.id}.{t.attr}" for t in targets
                         if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in modules]
    return sorted(problems, key=lambda p: int(p.split(":")[0].split()[1]))


def test_benchmarks_and_experiments_use_only_the_public_api() -> None:
    scripts = sorted([*(REPO / "benchmarks").glob("*.py"), *(REPO / "experiments").glob("*.py")])
    assert scripts
    found = {str(p.relative_to(REPO)): problems for p in scripts if (problems := _script_problems(p))}
    assert not found, found


def test_the_script_check_sees_private_imports_and_patches(tmp_path) -> None:
    script = tmp_path / "s.py"
    script.write_text("import sys\nimport sftcli.engine.build as b\nfrom sftcli.api import Engine\n"
                      "sys.path.insert(0, '.')\nb.load_data = None\n")
    assert _script_problems(script) == ["line 2: import sftcli.engine.build", "line 4: sys.path",
                                        "line 5: assigns b.load_data"]
