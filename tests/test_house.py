"""House rules that keep the code readable, checked on the source (docs/architecture.md).

* Imports run one way: no import cycle among raycseg's and cseg's modules, counting
  imports inside functions too (a function-local import does not hide a circle here),
  and a package imports only packages of lower tiers (the order of docs/architecture.md).
* No module over 400 lines, except the worker loop's module.
* No function body over 60 lines (docstring excluded), except the worker loop itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"raycseg": REPO / "raycseg", "cseg": REPO / "cli"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_MODULES = {"raycseg.train.worker"}
LONG_FUNCTIONS = {("raycseg.train.worker", "train_loop_per_worker")}
# docs/architecture.md, "Import order": lowest tier first; `errors` may be imported anywhere.
TIERS = [
    {"errors", "storage", "distributed", "losses", "media"},
    {"config", "shards", "cluster"},
    {"run_directory", "data"},
    {"models", "reports"},
    {"eval", "tracking"},
    {"methods"},
    {"train"},
    {"tune", "bench"},
    {"cseg"},
]


def modules() -> dict[str, Path]:
    """Every module of the two packages by dotted name (a package by its name)."""
    found = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file, functions included."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # a submodule, else a name defined in `base`
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
    return {target for target in targets if target in known and target != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return [*stack[stack.index(child) :], child]
            if child not in state and (cycle := visit(child)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_imports_run_one_way():
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def package_of(module: str) -> str:
    """The tier unit of a module: `cseg`, or raycseg's top-level package or module under it."""
    parts = module.split(".")
    return "cseg" if parts[0] == "cseg" else ".".join(parts[1:2]) or "raycseg"


def test_packages_import_only_lower_tiers():
    tier = {package: level for level, packages in enumerate(TIERS) for package in packages}
    known = modules()
    upward = []
    for name, path in known.items():
        source = package_of(name)
        for target in imported(name, path, known):
            destination = package_of(target)
            if destination in (source, "errors", "raycseg"):  # raycseg: only __version__
                continue
            if tier[destination] >= tier[source]:
                upward.append(f"{name} -> {target}")
    assert set(tier) == {package_of(name) for name in known} - {"raycseg"}
    assert not upward, f"imports that do not go to a lower tier: {upward}"


def test_modules_and_functions_stay_short():
    long_modules, long_functions = [], []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES and name not in LONG_MODULES:
            long_modules.append(f"{name} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            length = body[-1].end_lineno - body[0].lineno + 1 if body else 0
            if length > MAX_FUNCTION_LINES and (name, node.name) not in LONG_FUNCTIONS:
                long_functions.append(f"{name}.{node.name} ({length} lines)")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"function bodies over {MAX_FUNCTION_LINES} lines: {long_functions}"
