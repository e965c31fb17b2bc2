"""The import graph of the project's own modules: no cycles, every dependency pointing down the layers,
and every project import at the top of its module (none hidden inside a function). A registry entry
"package.module:Class" (the task registry loads its tasks so, on demand) counts as an import of that
module by the module that registers it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import ROOT

# A module may import modules of its own layer or of lower ones. Listed by the longest matching prefix.
LAYERS = {
    "configs": 0,  # the config schema: imports nothing of the project
    "progress": 0,  # progress bars and their plain-line form for logs: imports nothing of the project
    "seed_keys": 0,  # counter-based generator seeds: imports nothing of the project
    "model": 1,
    "optim": 1,
    "data": 1,
    "checkpoints": 1,
    "runtime": 1,
    "eval": 2,  # evaluations and run-dir readers: what tasks evaluate with and the tools read runs with
    "tasks": 3,  # kinds of experiment: the LM task and the small tasks
    "small_tasks": 3,
    "trainer": 4,
    "train": 4,
    "eval.grid": 5,  # tools that drive the trainer
    "eval.study": 5,
    "eval.verify": 5,
    "eval.width_sweep": 5,
    "symbreak": 5,
}
SKIP = {"tests", "bench", "docs", "build", "dist"}
REGISTERED = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+:[A-Za-z_]\w*$")


def project_modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imports(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at the top level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = {id(node) for node in tree.body}
    # a registry is a module-level assignment: its entries count as imports at the top
    top |= {id(n) for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign)) for n in ast.walk(node)
            if isinstance(n, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and REGISTERED.match(node.value):
            names = [node.value.split(":")[0]]
        else:
            continue
        for name in names:
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                out.append((name, node.lineno, id(node) in top))
                break
    return out


def test_every_module_has_a_layer():
    assert all(layer(m) >= 0 for m in project_modules())


def test_imports_point_down_the_layers_and_sit_at_the_top():
    mods = project_modules()
    upward, hidden = [], []
    for module, path in mods.items():
        for target, line, at_top in imports(module, path, mods):
            if layer(target) > layer(module):
                upward.append(f"{path.relative_to(ROOT)}:{line} {module} (layer {layer(module)}) imports {target}")
            if not at_top:
                hidden.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function")
    assert not upward, "\n".join(upward)
    assert not hidden, "\n".join(hidden)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    mods = project_modules()
    assert not find_cycles({m: {t for t, _, _ in imports(m, p, mods)} for m, p in mods.items()})


def test_the_checks_fail_on_a_tree_that_breaks_the_rules(tmp_path):
    """A cycle hidden in a function and an upward import: each check must see its violation."""
    (tmp_path / "configs.py").write_text("import model\n")
    (tmp_path / "model.py").write_text("def f():\n    import configs\n")
    mods = {"configs": tmp_path / "configs.py", "model": tmp_path / "model.py"}
    edges = {m: {t for t, _, _ in imports(m, p, mods)} for m, p in mods.items()}
    assert find_cycles(edges) == [["configs", "model"]]
    assert imports("configs", mods["configs"], mods) == [("model", 1, True)]  # upward: layer 0 -> 1
    assert imports("model", mods["model"], mods) == [("configs", 2, False)]  # inside a function
    assert layer("model") > layer("configs")
    (tmp_path / "configs.py").write_text('REGISTRY = {"x": "model.part:Thing"}\n')  # registered, not imported
    assert imports("configs", mods["configs"], mods) == [("model", 1, True)]


def test_the_task_registry_counts_as_imports():
    """Every task the registry names is an edge of the graph, so its layer is checked like an import."""
    mods = project_modules()
    seen = {target for target, _, _ in imports("tasks", mods["tasks"], mods)}
    assert {"tasks.lm", "small_tasks.attention.mechanism", "small_tasks.composition.group_composition"} <= seen
