"""The package's layers import only downwards: data -> networks -> descriptors ->
evaluation/training -> cli (see docs/design.md). Every import counts, also those inside
functions and ``if __name__ == "__main__":`` blocks."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aml"
#: rank of each top-level part of the package; a module may import only from ranks <= its own,
#: and never from another part of the same rank unless listed in SAME_RANK_ALLOWED.
RANKS = {"utils": 0, "data": 1, "layers": 1, "networks": 2, "losses": 2, "descriptors": 3, "reports": 3,
         "evaluation": 4, "training": 5, "search": 5, "export": 5, "compat": 5, "cli": 6, "demo": 7}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def absolute(path: Path, node: ast.ImportFrom) -> list:
    """The modules a ``from`` import names, relative ones (``from ..cli import train``) resolved
    against ``path``'s package: a relative import counts as its absolute form."""
    if not node.level:
        return [node.module or ""]
    package = ("aml",) + path.relative_to(PACKAGE).parts[:-1]
    base = ".".join(package[: len(package) - (node.level - 1)])
    if node.module:
        return [f"{base}.{node.module}"]
    return [f"{base}.{alias.name}" for alias in node.names]  # from .. import cli


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            for module in absolute(path, node):
                if module.startswith("aml."):
                    yield module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("aml."):
                    yield alias.name, node.lineno


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_part_of_the_package_has_a_rank():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES} - {"__init__"}
    assert parts == set(RANKS)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_import_from_a_higher_layer(path):
    mine = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if mine == "__init__":
        return
    # a package's __main__.py is a command (python -m aml.export), which nothing imports: it
    # stands where the command lines stand
    rank = max(RANKS[mine], RANKS["cli"]) if path.name == "__main__.py" else RANKS[mine]
    for module, line in imports(path):
        theirs = part_of(module)
        assert theirs in RANKS, f"{path.name}:{line} imports unknown part {module}"
        assert theirs == mine or RANKS[theirs] < rank or (path.name == "__main__.py" and RANKS[theirs] <= rank), (
            f"{path.relative_to(PACKAGE)}:{line} ({mine}, layer {RANKS[mine]}) imports {module} "
            f"({theirs}, layer {RANKS[theirs]})")


def _module_name(path: Path) -> str:
    parts = ("aml",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, known: set) -> set:
    """The aml modules ``path`` imports: ``from aml.x import y`` counts as aml.x.y when y is a module,
    and ``from .x import y`` as its absolute form."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):  # relative ones too, resolved (`absolute`)
            for module in (name for name in absolute(path, node) if name.split(".")[0] == "aml"):
                subs = {f"{module}.{alias.name}" for alias in node.names} & known
                found |= subs or {module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("aml.")}
    return found - {_module_name(path)}


def test_no_import_circles():
    """No module reaches itself through the modules it imports (inside functions too)."""
    known = {_module_name(p) for p in MODULES}
    graph = {_module_name(p): _imported_modules(p, known) for p in MODULES}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done" or module not in graph:
            return
        assert state.get(module) != "open", "import circle: " + " -> ".join(trail[trail.index(module):] + [module])
        state[module] = "open"
        for target in sorted(graph[module]):
            visit(target, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_relative_imports_are_resolved_before_they_are_ranked(tmp_path):
    """``from ..cli import train`` in aml/data/ was not seen at all (only names starting "aml."
    were), so a relative import could climb any layer."""
    source = "from ..cli import train\nfrom . import images\nfrom .. import search\n"
    path = PACKAGE / "data" / "probe.py"
    tree = ast.parse(source)
    found = [module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for module in absolute(path, node)]
    assert found == ["aml.cli", "aml.data.images", "aml.search"]
