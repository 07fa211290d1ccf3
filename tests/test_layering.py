"""The package's layers import only downwards: data -> networks -> descriptors ->
evaluation/training -> cli (see README, Layout). Every import counts, also those inside
functions; only ``if __name__ == "__main__":`` entry shims are exempt."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aml"
#: rank of each top-level part of the package; a module may import only from ranks <= its own,
#: and never from another part of the same rank unless listed in SAME_RANK_ALLOWED.
RANKS = {"utils": 0, "data": 1, "layers": 1, "networks": 2, "losses": 2, "descriptors": 3, "reports": 3,
         "evaluation": 4, "training": 5, "search": 5, "export": 5, "cli": 6, "demo": 7}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path):
    tree = ast.parse(path.read_text())
    exempt = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            exempt |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aml."):
            yield node.module, node.lineno
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
    for module, line in imports(path):
        theirs = part_of(module)
        assert theirs in RANKS, f"{path.name}:{line} imports unknown part {module}"
        assert theirs == mine or RANKS[theirs] < RANKS[mine], (
            f"{path.relative_to(PACKAGE)}:{line} ({mine}, layer {RANKS[mine]}) imports {module} "
            f"({theirs}, layer {RANKS[theirs]})")
