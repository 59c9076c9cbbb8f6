"""The layout rules of docs/ARCHITECTURE.md, checked on the source text (``ast``, nothing is
imported): imports run one way, at every level (no module imports one that imports it back, and
no folder imports one that imports it back: a folder counts as one node beside its siblings); no
function-level import of a project module; modules under 400 lines, functions under 50; the
mathematics imports only NumPy and the standard library.

One exception, at the folder level only: a facade (``FACADES``) is a module that keeps a promised
import path and only re-exports names defined above its folder. ``src/pruning/api.py`` is where the
README and issue 20 promise ``SparseTraining`` and ``PruningAlgorithm``; both build their settings
with ``src.config``, which imports the methods of ``src/pruning``, so they live above it
(``src/sparse_training.py``, ``src/model_train.py``) and the facade points up. Its edges still
count between modules (nothing it imports may import it back), and it may hold nothing but imports
(``test_facades_only_re_export``), so no code hides behind the exception."""
import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("src", "benchmarks", "tools", "scripts")
ENTRY_SCRIPTS = ("train.py", "eval.py", "export.py")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 50
# pure functions: numbers in, numbers out, unit-tested against independent NumPy computations
FACADES = ("src.pruning.api",)
MATHEMATICS = ("src.pruning.masks.schedules", "src.pruning.masks.distributions",
               "src.pruning.masks.rpg.rank_targets", "src.pruning.filters.allocation",
               "src.pruning.filters.widths")


def project_files():
    """{module name: path} of every Python file of the project (tests are not modules of it)."""
    files = {name[:-3]: os.path.join(ROOT, name) for name in ENTRY_SCRIPTS}
    for package in PACKAGES:
        for folder, dirs, names in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "results")]
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


FILES = project_files()
TREES = {module: ast.parse(open(path, encoding="utf-8").read()) for module, path in FILES.items()}


def project_module(name):
    """The project module an imported name lives in (``src.config.parse_args`` ->
    ``src.config``), or None for a third-party or standard-library name."""
    while name and name not in FILES:
        name = name.rpartition(".")[0]
    return name or None


def imported(node):
    """Project modules an Import / ImportFrom node names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    else:
        return set()
    return {m for m in map(project_module, names) if m}


def import_graph():
    return {module: {m for node in ast.walk(tree) for m in imported(node)} - {module}
            for module, tree in TREES.items()}


def find_cycle(graph):
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def folder_views(graph):
    """For every folder: the graph among its members, each sub-folder collapsed to one node."""
    folders = {m.rpartition(".")[0] for m in graph} | {""}
    views = {}
    for folder in folders:
        depth = len(folder.split(".")) if folder else 0

        def member(module):
            inside = not folder or module.startswith(folder + ".")
            return ".".join(module.split(".")[:depth + 1]) if inside and module != folder else None

        view = {}
        for source, targets in graph.items():
            a = member(source)
            if a:
                view.setdefault(a, set()).update(b for b in map(member, targets) if b and b != a)
        views[folder or "<project>"] = view
    return views


def test_imports_run_one_way_at_every_level():
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    without_facades = {module: set() if module in FACADES else targets for module, targets in graph.items()}
    for folder, view in folder_views(without_facades).items():
        cycle = find_cycle(view)
        assert cycle is None, f"in {folder}: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", FACADES)
def test_facades_only_re_export(module):
    body = TREES[module].body
    code = [node.lineno for node in body[1:] if not isinstance(node, (ast.Import, ast.ImportFrom))
            and not (isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"])]
    assert isinstance(body[0], ast.Expr) and not code, f"{FILES[module]}: code at lines {code}"


def test_no_function_level_project_import():
    found = [f"{os.path.relpath(FILES[module], ROOT)}:{node.lineno}"
             for module, tree in TREES.items()
             for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(function) if imported(node)]
    assert not found, "import a project module at the top of the file: " + ", ".join(found)


@pytest.mark.parametrize("module", sorted(FILES))
def test_small_modules_and_functions(module):
    path = FILES[module]
    with open(path, encoding="utf-8") as handle:
        lines = len(handle.read().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path}: {lines} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(TREES[module]) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path}: " + ", ".join(long)


@pytest.mark.parametrize("module", MATHEMATICS)
def test_the_mathematics_imports_only_numpy(module):
    roots = {alias.name.split(".")[0] for node in ast.walk(TREES[module]) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(TREES[module])
              if isinstance(node, ast.ImportFrom) and node.module}
    assert roots <= {"numpy"} | set(sys.stdlib_module_names), f"{module} imports {sorted(roots)}"


def test_the_rules_can_fail():
    """The checks find what they look for (a planted cycle, a folder-level cycle)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    views = folder_views({"p.x.one": {"p.two"}, "p.two": {"p.x.three"}, "p.x.three": set()})
    assert find_cycle(views["p"]) == ["p.two", "p.x", "p.two"]
    assert find_cycle(views["p.x"]) is None
