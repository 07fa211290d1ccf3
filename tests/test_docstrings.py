"""The public API's docstrings, in one (Google, timm-like) style: a one-line summary, then
``Args:`` naming every parameter, ``Returns:`` when something is returned, and an
``Examples:`` section of ``>>>`` lines that compile and, unless marked ``# doctest: +SKIP``
(they need a network file, a data set or a long computation), pass.

The names come from the ``__all__`` of the packages below, so a name is tested the day it
is made public. ``Examples:`` (not ``Example:``) is the heading mkdocstrings' parser (griffe)
reads as code examples; it renders ``Example:`` as an admonition of plain text."""

import dataclasses
import doctest
import importlib
import inspect
import io
import logging
import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

#: the packages of the API reference, as mkdocs.yml lists them (a hand list left aml.losses out)
PACKAGES = tuple(re.findall(r"^\s+- (aml\.\w+): reference/", (Path(__file__).parents[1] / "mkdocs.yml").read_text(), re.M))
#: types the docs reference that no package's __all__ lists (or that it lists under another name)
EXTRA = ("aml.networks.loading.LoadedNetwork", "aml.networks.loading.load_named_or_file",
         "aml.descriptors.key.DescriptorKey", "aml.training.config.TrainConfig", "aml.training.runner.TrainResult",
         "aml.training.runner.run", "aml.training.config.problems")
SECTION = re.compile(r"^(Args|Attributes|Returns|Raises|Examples|Example|Note|Warns|Yields):\s*$")
#: an entry of Args/Attributes: "name: what it is" at the section's first indentation
ENTRY = re.compile(r"^    (\*{0,2}\w+)(?: \([^)]*\))?:(?:\s|$)")
NAMED_RETURN = re.compile(r"^\w*\s*(?:\(.+\))?:")


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def public_objects() -> Dict[str, object]:
    """Qualified name -> object for every callable in the packages' __all__ and EXTRA (each
    object once, under its first name; constants such as BACKBONES are exempt)."""
    found: Dict[str, object] = {}
    seen = set()
    names = [f"{package}.{name}" for package in PACKAGES for name in importlib.import_module(package).__all__]
    for dotted in names + list(EXTRA):
        obj = _resolve(dotted)
        if callable(obj) and id(obj) not in seen:
            seen.add(id(obj))
            found[dotted] = obj
    return found


def public_methods() -> Dict[str, object]:
    """The public methods (and class or static methods) the public classes define themselves."""
    methods: Dict[str, object] = {}
    for dotted, obj in public_objects().items():
        if not inspect.isclass(obj):
            continue
        for name, member in vars(obj).items():
            if name.startswith("_"):
                continue
            if isinstance(member, (classmethod, staticmethod)):
                member = member.__func__
            if inspect.isfunction(member):
                methods[f"{dotted}.{name}"] = member
    return methods


OBJECTS = public_objects()
METHODS = public_methods()


def sections(doc: str) -> Dict[str, List[str]]:
    """Section title -> its lines (the lines up to the next title or the end)."""
    found: Dict[str, List[str]] = {}
    current = None
    for line in doc.splitlines():
        match = SECTION.match(line)
        if match:
            current = match.group(1)
            assert current not in found, f"two {current}: sections"
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def entries(lines: List[str]) -> List[str]:
    """The names an Args: or Attributes: section documents."""
    return [match.group(1) for match in map(ENTRY.match, lines) if match]


def own_doc(obj) -> str:
    """The object's own docstring, cleaned (a dataclass without one gets its signature as __doc__)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert doc and doc.strip(), "no docstring"
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        assert not doc.startswith(f"{obj.__name__}("), "only the signature dataclass writes as __doc__"
    return inspect.cleandoc(doc)


def parameters(obj) -> Tuple[List[str], List[str]]:
    """(names Args must document, names it may use for them): self/cls dropped, a starred
    parameter may be written with or without its stars."""
    if inspect.isclass(obj):
        init = next((c.__dict__["__init__"] for c in obj.__mro__ if "__init__" in c.__dict__), None)
        if init is None or not getattr(init, "__module__", "").startswith("aml"):
            return [], []  # e.g. an exception class, which takes Exception's arguments
        signature = inspect.signature(init)
    else:
        signature = inspect.signature(obj)
    names, spellings = [], []
    for name, parameter in signature.parameters.items():
        if name in ("self", "cls"):
            continue
        stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "")
        names.append(name)
        spellings.append(stars + name)
    return names, spellings


def returns_something(function) -> bool:
    annotation = inspect.signature(function).return_annotation
    return annotation not in (None, "None", inspect.Signature.empty)


def check_summary(doc: str) -> None:
    lines = doc.splitlines()
    assert lines[0].strip() and not SECTION.match(lines[0]), "the docstring does not start with a summary"
    assert len(lines) == 1 or not lines[1].strip(), "the summary is longer than one line"
    assert lines[0].rstrip().endswith("."), "the summary is not a sentence ending with a period"


def check_arguments(obj, found: Dict[str, List[str]]) -> None:
    names, spellings = parameters(obj)
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        fields = [f.name for f in dataclasses.fields(obj) if f.init]
        documented = entries(found.get("Attributes", found.get("Args", [])))
        assert sorted(documented) == sorted(fields), (
            f"Attributes: documents {documented}, the dataclass's fields are {fields}")
        return
    documented = entries(found.get("Args", []))
    if names:
        assert "Args" in found, f"no Args: section for the parameters {names}"
    plain = [name.lstrip("*") for name in documented]
    assert sorted(plain) == sorted(names), f"Args: documents {documented}, the parameters are {spellings}"


def check_returns(found: Dict[str, List[str]]) -> None:
    lines = [line for line in found.get("Returns", []) if line.strip()]
    assert lines, "no Returns: section"
    # griffe reads "word:" or "word (type):" at the start of a returned value as its name and type
    assert not NAMED_RETURN.match(lines[0].strip()), f"Returns: {lines[0].strip()!r} would render as a name"


def check_examples(dotted: str, found: Dict[str, List[str]]) -> None:
    assert "Example" not in found, "write Examples: (mkdocstrings reads Example: as an admonition, not code)"
    assert "Examples" in found, "no Examples: section"
    examples = doctest.DocTestParser().get_examples("\n".join(found["Examples"]))
    assert examples, "the Examples: section has no >>> lines"
    for example in examples:
        compile(example.source, f"<{dotted} example>", "single")


def check_documented(dotted: str, obj, example_required: bool) -> None:
    """Summary, Args (or Attributes) naming the parameters, Returns when something is returned
    (not for classes), and an Examples section that compiles (optional for methods)."""
    doc = own_doc(obj)
    check_summary(doc)
    found = sections(doc)
    check_arguments(obj, found)
    if not inspect.isclass(obj) and returns_something(obj):
        check_returns(found)
    if example_required or "Examples" in found or "Example" in found:
        check_examples(dotted, found)


@pytest.mark.parametrize("dotted", list(OBJECTS))
def test_public_name_is_documented(dotted):
    check_documented(dotted, OBJECTS[dotted], example_required=True)


@pytest.mark.parametrize("dotted", list(METHODS))
def test_public_method_is_documented(dotted):
    """Methods of public classes: summary, Args and Returns (an example is optional)."""
    check_documented(dotted, METHODS[dotted], example_required=False)


def _doctests(obj, dotted: str) -> List[doctest.DocTest]:
    module = inspect.getmodule(obj)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return finder.find(obj, dotted, module=module, globs={})


@pytest.mark.parametrize("dotted", list(OBJECTS))
def test_examples_pass(dotted):
    """Every example not marked +SKIP runs and prints what it shows (methods' examples included)."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = io.StringIO()
    failed = sum(runner.run(test, out=out.write).failed for test in _doctests(OBJECTS[dotted], dotted))
    assert failed == 0, out.getvalue()


def test_mkdocstrings_reads_them_without_warnings(caplog):
    """griffe, the parser under mkdocstrings, finds the sections (Examples as examples, not an
    admonition) and warns of nothing (an Args entry that names no parameter, a confusing
    indentation, a parameter without a type)."""
    griffe = pytest.importorskip("griffe")
    package = griffe.load("aml", search_paths=[str(Path(__file__).resolve().parents[1])], docstring_parser="google",
                          resolve_aliases=True)
    missing = []
    with caplog.at_level(logging.WARNING, logger="griffe"):
        for dotted in list(OBJECTS) + list(METHODS):
            obj = package[dotted[len("aml."):]]
            obj = obj.final_target if obj.is_alias else obj
            kinds = {section.kind.value for section in obj.docstring.parse("google")}
            if dotted in OBJECTS and "examples" not in kinds:
                missing.append(dotted)
    assert not missing, f"griffe finds no examples in {missing}"
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("griffe") and r.levelno >= logging.WARNING]
    assert not warnings, "\n".join(warnings)


def test_the_names_are_found():
    """The parametrisation is not empty, reaches every package of the API reference and the extra types."""
    assert len(OBJECTS) > 40 and len(PACKAGES) == 8
    assert all(any(name.startswith(package + ".") for name in OBJECTS) for package in PACKAGES)
    assert {"aml.search.open_database", "aml.export.export_student", "aml.losses.TupleBatch", "aml.training.config.problems"} <= set(OBJECTS)


def test_docstrings_use_markdown_not_sphinx_roles():
    """The API reference renders docstrings as Markdown: a Sphinx role (:func:`x`) would show
    as text. Write `x` instead."""
    role = re.compile(r":(func|class|meth|data|mod|attr|exc|obj):`")
    found = [f"{path}:{number}" for path in sorted((Path(__file__).resolve().parents[1] / "aml").rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if role.search(line)]
    assert not found, found
