"""The package's layers (docs/architecture.md): imports only go down, no circles, and no module
uses another module's private names. Read from the source with `ast`, every import counted —
module level, inside functions and under TYPE_CHECKING alike. The package root
(raytune_ft/__init__.py) sits above every layer: no module imports it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "raytune_ft"
ROOT = "raytune_ft"  # the package root: it re-exports the API lazily, so it is above the entry points

# lowest first; a module may import its own layer's modules and any layer below
LAYERS = [
    ("config", "data_fraction", "errors", "layout", "networks", "models", "checkpoints", "pareto"),
    ("space", "data"),
    ("families",),
    ("train",),
    ("deploy",),
    ("report",),
    ("search",),
    ("analyze", "to_parquet", "api"),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in package.rglob("*.py")}


def _unit(module: str) -> str:
    """The layer unit of a dotted module: its subpackage, or the root module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every raytune_ft import in `path`."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("raytune_ft")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("raytune_ft"):
                out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _resolve(base: str, name: str, modules: dict[str, Path]) -> tuple[str, str | None]:
    """`from base import name`: (the module it comes from, the name taken or None for a module)."""
    return (f"{base}.{name}", None) if f"{base}.{name}" in modules else (base, name)


def _layer_problems(package: Path) -> list[str]:
    """Every import in `package` that goes up a layer, reaches the root or a module in no layer, or
    takes a private name of another module."""
    modules = _modules(package)
    problems = []
    for module, path in modules.items():
        unit = _unit(module)
        if module == "raytune_ft" or unit not in LAYER_OF:
            assert module == "raytune_ft", f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
            continue
        for base, names, line in _imports(path, module):
            for name in names or [None]:
                target, taken = _resolve(base, name, modules) if name else (base, None)
                other = _unit(target)
                if target == ROOT:
                    problems.append(f"{module}:{line} imports the package root ({ROOT}/__init__.py"
                                    f"{f', name {taken}' if taken else ''}), which sits above every layer")
                elif other and other not in LAYER_OF:
                    problems.append(f"{module}:{line} imports {target}, which is in no layer")
                elif other and LAYER_OF[other] > LAYER_OF[unit]:
                    problems.append(f"{module}:{line} imports {target} from a higher layer")
                if taken and taken.startswith("_") and not taken.startswith("__") and target != module:
                    problems.append(f"{module}:{line} imports the private name {taken} of {target}")
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name: f"{n.module}.{a.name}" if isinstance(n, ast.ImportFrom) else a.name
                   for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                   for a in n.names if (getattr(n, "module", None) or a.name).startswith("raytune_ft")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and aliases[node.value.id] in modules \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                problems.append(f"{module}:{node.lineno} uses the private name {node.value.id}.{node.attr}")
    return problems


def test_every_import_goes_down_a_layer_or_stays_in_its_own_and_no_private_name_crosses():
    problems = _layer_problems(PACKAGE)
    assert not problems, "\n".join(problems)


def test_a_module_importing_the_package_root_is_an_upward_import(tmp_path):
    """`from raytune_ft import __version__` and `import raytune_ft` import raytune_ft/__init__.py,
    whatever the name taken; `from raytune_ft import layout` imports the module layout."""
    package = tmp_path / "raytune_ft"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text('"""The root."""\n')
    (package / "layout.py").write_text('"""Layer 0."""\nfrom raytune_ft import __version__\n')
    (package / "data" / "__init__.py").write_text('"""Layer 1."""\nimport raytune_ft\nfrom raytune_ft import layout\n')
    assert sorted(_layer_problems(package)) == [
        "raytune_ft.data:2 imports the package root (raytune_ft/__init__.py), which sits above every layer",
        "raytune_ft.layout:2 imports the package root (raytune_ft/__init__.py, name __version__), which sits "
        "above every layer"]


def test_the_version_is_the_installed_distributions():
    from importlib.metadata import version

    import raytune_ft

    assert raytune_ft.__version__ == version("raytune_ft") and "__version__" in dir(raytune_ft)


def test_no_import_circle_between_modules():
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for base, names, _ in _imports(path, module):
            for name in names or [None]:
                target = _resolve(base, name, modules)[0] if name else base
                if target in modules and target != module:
                    graph[module].add(target)
    # a package's __init__ importing its own submodules is how it re-exports them, not a circle
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    assert not cycles, "\n".join(cycles)


def test_every_module_opens_with_a_docstring():
    missing = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, missing
