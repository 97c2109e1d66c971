"""The package's import graph, read with ``ast``: no import circle, and no module imports from a layer
above its own, so that each layer can be read (and tested) without the ones built on it.  Imports made
inside functions count too: a deferred import is still a dependency."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "loader"
PKG = "gpt4all_loader"

#: the layers, lowest first; a module may import from its own layer and the ones below
LAYERS = [
    {"errors", "formats", "reports"},
    {"engines", "facts_cache", "published"},
    {"plan", "constrain", "sampling"},
    {"model", "worker", "probing", "memory", "chat", "smoke", "convert", "tool_calls", "batching"},
    {"cli", "testing", "build", "__init__"},
]

#: imports that go against the layers or close a circle and belong to other points of issue #26 ("The
#: house, round 2"); each one is listed so that it stays visible, and any new one fails the test
KNOWN: set[tuple[str, str]] = set()
#: production modules that use loader/testing/ on purpose: gpt4all-demo fetches its files from a registry
TESTING_USERS = {("cli.demo", "testing.realfiles")}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] or ["__init__"]
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """The package modules ``path`` (module ``name``) imports, anywhere in it."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if name != "__init__" else []
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base if is_pkg else base[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                target = anchor + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == PKG:
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # "from . import x" may name a submodule
                sub = ".".join(target + [alias.name])
                out.add(sub if (ROOT / Path(*target, alias.name)).with_suffix(".py").exists()
                        or (ROOT / Path(*target, alias.name)).is_dir() else ".".join(target) or "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PKG:
                    out.add(".".join(alias.name.split(".")[1:]) or "__init__")
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    return {name: {t for t in _imports(p, name) if t in files} for name, p in files.items()}


def _layer(name: str) -> int:
    top = name.split(".")[0]
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{name}: no layer; add it to LAYERS in {__file__}")


def _is_package(name: str) -> bool:
    return name == "__init__" or (ROOT / Path(*name.split("."))).is_dir()


def test_no_import_goes_up_a_layer():
    graph = import_graph()
    up = sorted((a, b) for a, deps in graph.items() for b in deps
                if _layer(b) > _layer(a) and (a, b) not in KNOWN)
    assert not up, "imports from a higher layer:\n" + "\n".join(f"  {a} -> {b}" for a, b in up)


def test_no_import_circle():
    """A package's __init__ re-exporting its own modules is not a circle: edges into a package's
    __init__ from inside it are left out."""
    graph = {a: {b for b in deps if (a, b) not in KNOWN
                 and not (_is_package(b) and (b == "__init__" or a.startswith(b + ".")))}
             for a, deps in import_graph().items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import circles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_production_code_does_not_import_testing():
    graph = import_graph()
    bad = sorted((a, b) for a, deps in graph.items() for b in deps
                 if b.startswith("testing") and not a.startswith("testing") and (a, b) not in TESTING_USERS)
    assert not bad, bad
