"""The package's import graph follows the data's way: no circles, no import running back up a
layer, nothing in the library importing a job, and imports inside functions only where they keep
a heavy or optional dependency (RDKit, e3nn, xTB, ASE, ...) off the paths that do not need it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "moldiff"

# from the ground up; a module may import its own layer or any below
LAYERS = [
    ("moldiff.geometry", "moldiff.state", "moldiff.files", "moldiff.data"),
    ("moldiff.noise", "moldiff.nn", "moldiff.chem", "moldiff.analytic"),
    ("moldiff.loss", "moldiff.io", "moldiff.metrics"),
    ("moldiff.guidance", "moldiff.sampling"),
    ("moldiff.model",),
    ("moldiff.likelihood", "moldiff.bridge", "moldiff.train"),
    ("moldiff.jobs",),
]
# third-party packages that are heavy to import or optional: deferring them is the one reason
# for an import inside a function
HEAVY = {"rdkit", "e3nn", "tblite", "ase", "torchdiffeq", "pandas", "qm9pack", "msgpack", "tqdm", "omegaconf", "matplotlib",
         "posebusters", "torch_geometric", "hydra", "scipy", "pytorch_lightning"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()


def _imports(name: str):
    """(target, inside_function) for every import in module ``name``: moldiff modules by their
    full name, third-party ones by their top-level package."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("moldiff"):
                while target not in MODULES:
                    target = target.rpartition(".")[0]
            else:
                target = target.split(".")[0]
            yield target, id(node) in inner


def _layer(name: str) -> int:
    for k, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return k
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def _graph(top_level_only: bool):
    return {m: {t for t, inner in _imports(m) if t.startswith("moldiff") and t != m and not (top_level_only and inner)} for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        if m != "moldiff":
            _layer(m)


def test_no_import_runs_back_up_a_layer():
    bad = [f"{m} ({_layer(m)}) -> {t} ({_layer(t)})" for m, targets in _graph(False).items() if m != "moldiff"
           for t in targets if t != "moldiff" and _layer(t) > _layer(m)]
    assert not bad, "imports running back up a layer:\n" + "\n".join(sorted(bad))


def test_no_import_circles():
    graph = _graph(False)
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_nothing_in_the_library_imports_a_job():
    bad = [f"{m} -> {t}" for m, targets in _graph(False).items() if not m.startswith("moldiff.jobs")
           for t in targets if t.startswith("moldiff.jobs")]
    assert not bad, bad


def _heavy(m: str, seen=None) -> bool:
    """Whether importing moldiff module ``m`` imports a heavy or optional package at module level."""
    seen = set() if seen is None else seen
    seen.add(m)
    for t, inner in _imports(m):
        if inner:
            continue
        if t in HEAVY or (t.startswith("moldiff") and t not in seen and _heavy(t, seen)):
            return True
    return False


def test_imports_inside_functions_only_defer_heavy_dependencies():
    bad = [f"{m}: {t}" for m in MODULES for t, inner in _imports(m)
           if inner and not (t in HEAVY or (t.startswith("moldiff") and _heavy(t)))]
    assert not bad, "imports inside functions that defer nothing heavy:\n" + "\n".join(sorted(set(bad)))
