"""The package's import graph, read from the source with `ast` (nothing is imported): no import
cycle among grlhfv_jax modules, and no stage imports another stage.

Edges: every `import` and `from ... import` anywhere in a file (module level, inside functions,
under `if`), relative imports resolved; `from X import y` is an edge to the module X.y when y is a
submodule, else to X. Importing a.b.c also runs the packages a and a.b: those implied edges are not
counted (each package's `__init__` would otherwise form a cycle with every submodule it exports).
A registry that loads modules by name (`importlib.import_module`) has an edge to each module its
name table holds: stages/__init__.py (STAGES) to every stage module, models/families.py
(FAMILIES) to every family package. So a stage that imports the registry is a cycle, as it is when
the program runs.

Stages: the modules STAGES names (grlhfv_jax/stages/<module>.py). No module of grlhfv_jax/stages/
imports a stage module, the registry (stages/__init__.py) excepted; helpers that live in stages/
(not in STAGES) may be imported by the stages.
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "grlhfv_jax"
NAME = "grlhfv_jax"

# module holding a by-name loader -> (the dict it reads names from, how a value becomes a module)
REGISTRIES = {
    f"{NAME}.stages": ("MODULES", lambda v: f"{NAME}.stages.{v}"),
    f"{NAME}.models.families": ("FAMILIES", lambda v: f"{NAME}.models.{v}"),
}
# By-name loaders whose names are the string arguments of calls elsewhere: config.schema imports the
# module of each `registry("pkg.module.TABLE")` a schema names (an edge from the file that names it).
STRING_LOADERS = {f"{NAME}.config.schema": "registry"}


def module_files(root: pathlib.Path, name: str) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py under `root` (the package `name`)."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = (name,) + f.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _is_package(f: pathlib.Path) -> bool:
    return f.name == "__init__.py"


def imports_of(module: str, f: pathlib.Path, modules) -> list[tuple[str, int]]:
    """(imported package module, line) for every import statement in file `f` of `module`, at any
    depth; imports of modules outside `modules` are dropped."""
    package = module if _is_package(f) else module.rpartition(".")[0]
    out = []

    def add(target, line):
        while target and target not in modules:  # a name inside a module: the module
            target = target.rpartition(".")[0]
        if target:
            out.append((target, line))

    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                add(sub if sub in modules else base, node.lineno)
    return out


def registry_targets(f: pathlib.Path, table: str, to_module) -> list[tuple[str, int]]:
    """The modules a by-name loader (file `f`) can load: `to_module(value)` for each value of its
    name table `table` (a dict literal)."""
    for node in ast.parse(f.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == table for t in node.targets):
            return [(to_module(v), node.lineno) for v in ast.literal_eval(node.value).values()]
    raise AssertionError(f"{f}: no {table} = {{...}} table")


def string_loader_targets(f: pathlib.Path, funcs, modules) -> list[tuple[str, int]]:
    """The modules named by the string argument of each call to one of `funcs` in file `f`
    ("pkg.module.TABLE" -> pkg.module), where that module is one of the package's."""
    out = []
    for node in ast.walk(ast.parse(f.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in funcs
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            target = node.args[0].value.rsplit(".", 1)[0]
            if target in modules:
                out.append((target, node.lineno))
    return out


def import_graph(root: pathlib.Path = PKG, name: str = NAME, registries=REGISTRIES):
    """module -> {imported module: first line}, over the package's modules."""
    modules = module_files(root, name)
    graph = {}
    for m, f in modules.items():
        edges = imports_of(m, f, modules) + (registry_targets(f, *registries[m]) if m in registries else [])
        edges += string_loader_targets(f, set(STRING_LOADERS.values()), modules)
        graph[m] = {}
        for target, line in edges:
            graph[m].setdefault(target, line)
    return graph


def find_cycles(graph: dict[str, dict]) -> list[list[str]]:
    """The import cycles, in import order with the first module repeated at the end ([a, b, c, a]:
    a imports b imports c imports a). For each strongly connected set of modules (Tarjan): the
    shortest cycle through its first module, then through each module no cycle listed yet, so
    every module of every set appears in some listed cycle."""
    index, low, stack, on_stack, sets = {}, {}, [], set(), []

    def connect(v):  # recursive: the package is a few hundred modules at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.add(w)
                if w == v:
                    break
            if len(members) > 1 or v in graph.get(v, ()):
                sets.append(members)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for members in sorted(sets, key=min):
        covered = set()
        for m in sorted(members):
            if m not in covered:
                cycles.append(shortest_cycle(graph, members, m))
                covered |= set(cycles[-1])
    return cycles


def shortest_cycle(graph, members, start) -> list[str]:
    """The shortest path start -> ... -> start inside `members` (breadth first)."""
    came_from, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while came_from[path[-1]] is not None:
                        path.append(came_from[path[-1]])
                    return path[::-1] + [start]
                if w in members and w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(members)}")


def describe(graph, cycle) -> str:
    """The cycle on one line, then each of its imports with its line, for an error message."""
    steps = [f"{a} -> {b} (line {graph[a][b]} of {a})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n      " + "\n      ".join(steps)


def stage_modules(graph) -> set[str]:
    return {m for m, _ in registry_targets(PKG / "stages" / "__init__.py", *REGISTRIES[f"{NAME}.stages"])} & set(graph)


def stage_imports(graph, stages, folder) -> list[tuple[str, str, int]]:
    """(module, stage it imports, line) for each module inside package `folder` (not the package
    itself: the registry) that imports one of `stages` other than itself."""
    return [
        (m, t, line)
        for m, edges in sorted(graph.items())
        if m.startswith(f"{folder}.")
        for t, line in sorted(edges.items())
        if t in stages and t != m
    ]


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 50 and f"{NAME}.stages.sft" in graph[f"{NAME}.stages"]  # the registry's edges
    cycles = find_cycles(graph)
    assert not cycles, (
        f"{len(cycles)} import cycle(s) (shortest ones, together through every module on a cycle):\n"
        + "\n".join(f"  {describe(graph, c)}" for c in cycles)
    )


def test_no_stage_imports_another_stage():
    graph = import_graph()
    stages = stage_modules(graph)
    assert {f"{NAME}.stages.{s}" for s in ("data", "sft", "grm_rl", "policy_rl", "rm", "evaluate")} <= stages
    bad = stage_imports(graph, stages, f"{NAME}.stages")
    assert not bad, f"{len(bad)} stage import(s) inside stages/:\n" + "\n".join(
        f"  {m} imports the stage {t} (line {line})" for m, t, line in bad
    )


def test_every_by_name_loader_is_a_known_registry():
    """importlib.import_module in the package only where REGISTRIES gives the modules it loads
    (a new loader would hide its edges from the cycle test)."""
    found = set()
    for m, f in module_files(PKG, NAME).items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "importlib.import_module",
                "import_module",
                "__import__",
            ):
                found.add(m)
    assert found == set(REGISTRIES) | set(STRING_LOADERS), found


# ----------------------------------------------------------------------------- the checker itself
def test_stage_imports_on_a_synthetic_graph():
    graph = {
        "p.stages": {"p.stages.a": 1, "p.stages.b": 1},  # the registry
        "p.stages.a": {"p.stages.helper": 3, "p.stages": 4},
        "p.stages.b": {"p.stages.a": 7, "p.other": 8},
        "p.stages.helper": {"p.stages.b": 2},
        "p.other": {"p.stages.a": 5},
    }
    got = stage_imports(graph, {"p.stages.a", "p.stages.b"}, "p.stages")
    assert got == [("p.stages.b", "p.stages.a", 7), ("p.stages.helper", "p.stages.b", 2)]


def test_find_cycles_on_a_synthetic_graph():
    graph = {
        "a": {"b": 1},
        "b": {"c": 1, "d": 1},
        "c": {"a": 1},
        "d": {"e": 1},
        "e": {},
        "f": {"f": 1},
        "g": {"h": 1, "e": 1},
        "h": {"g": 1, "i": 1},
        "i": {"g": 1},
    }
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["f", "f"], ["g", "h", "g"], ["i", "g", "h", "i"]]
    assert find_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) == []


def test_import_graph_of_a_synthetic_package(tmp_path):
    """Module-level, function-level, relative and `from package import submodule` imports are
    edges; a name imported from a module is an edge to that module; outside imports are dropped;
    a registry's name table gives edges."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .sub import thing\n",
        "a.py": "import os\nimport pkg.b as b\n\ndef f():\n    from pkg.sub import c\n",
        "b.py": "from . import a\nfrom .a import f\n",
        "reg.py": "import importlib\nTABLE = {'x': 'a', 'y': 'b'}\n",
        "sub/__init__.py": "from .c import thing\n",
        "sub/c.py": "thing = 1\n\nclass K:\n    def m(self):\n        from ..b import f\n        from .. import reg\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    graph = import_graph(pkg, "pkg", {"pkg.reg": ("TABLE", lambda v: f"pkg.{v}")})
    assert {m: set(e) for m, e in graph.items()} == {
        "pkg": {"pkg.sub"},
        "pkg.a": {"pkg.b", "pkg.sub.c"},
        "pkg.b": {"pkg.a"},
        "pkg.reg": {"pkg.a", "pkg.b"},
        "pkg.sub": {"pkg.sub.c"},
        "pkg.sub.c": {"pkg.b", "pkg.reg"},
    }
    assert graph["pkg.a"]["pkg.sub.c"] == 5
    # one strongly connected set {a, b, reg, sub.c}: two cycles list all four
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.reg", "pkg.a", "pkg.sub.c", "pkg.reg"]]


@pytest.mark.parametrize(
    "text, want",
    [
        ("import pkg.sub.c\n", {"pkg.sub.c"}),
        ("from pkg import sub\n", {"pkg.sub"}),
        ("from pkg.sub import c, thing\n", {"pkg.sub.c", "pkg.sub"}),
        ("if x:\n    from .sub.c import thing\n", {"pkg.sub.c"}),
    ],
    ids=["import-dotted", "from-package-import-submodule", "submodule-and-name", "relative-nested"],
)
def test_each_import_form_is_an_edge(tmp_path, text, want):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for rel in ("__init__.py", "sub/__init__.py", "sub/c.py"):
        (pkg / rel).write_text("")
    (pkg / "m.py").write_text(text)
    assert set(import_graph(pkg, "pkg", {})["pkg.m"]) == want
