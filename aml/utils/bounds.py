"""Ranges of numeric options, held once: a dataclass field names its range where it is
declared (`bounded`), and both the command line (the flag's type) and the config's own check
(`out_of_bounds`) read it from there."""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional


@dataclass(frozen=True)
class Bound:
    """A range of numbers: what a value must be, said in words, and the test.

    Attributes:
        kind: the number type (``int`` or ``float``), which also parses a flag's text.
        what: the range in words (``"a positive integer"``).
        accept: whether a value of ``kind`` is in the range.
    """

    kind: Callable[[str], Any]
    what: str
    accept: Callable[[Any], bool]

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is out of the range (None when it is in).

        Args:
            value: the value to check.

        Returns:
            ``"must be <what>, got <value>"``, or None.
        """
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind is int and numeric and not float(value).is_integer():
            numeric = False
        if numeric and math.isfinite(value) and self.accept(value):
            return None
        return f"must be {self.what}, got {value!r}"

    def parse(self, text: str) -> Any:
        """The number a flag's text stands for.

        Args:
            text: the flag's value as typed.

        Returns:
            The number, of ``kind``.

        Raises:
            ValueError: ``"must be <what>, got '<text>'"`` when it is not a number in the range.
        """
        try:
            value = self.kind(text)
        except ValueError:
            raise ValueError(f"must be {self.what}, got {text!r}") from None
        if self.problem(value) is not None:
            raise ValueError(f"must be {self.what}, got {text!r}")
        return value


POSITIVE_INT = Bound(int, "a positive integer", lambda v: v > 0)
NONNEGATIVE_INT = Bound(int, "an integer >= 0", lambda v: v >= 0)
POSITIVE_FLOAT = Bound(float, "a positive finite number", lambda v: v > 0)
NONNEGATIVE_FLOAT = Bound(float, "a finite number >= 0", lambda v: v >= 0)
UNIT_INTERVAL = Bound(float, "a number in [0, 1)", lambda v: 0 <= v < 1)


def bounded(default: Any, bound: Bound) -> Any:
    """A dataclass field with a default and a range (kept in the field's metadata).

    Args:
        default: the field's default.
        bound: its range.

    Returns:
        The ``dataclasses.field``.
    """
    return dataclasses.field(default=default, metadata={"bound": bound})


def bound_of(cls: type, name: str) -> Bound:
    """The range the field ``name`` of a dataclass declares with `bounded`.

    Args:
        cls: the dataclass.
        name: the field.

    Returns:
        Its range.

    Raises:
        KeyError: when the field declares none.
    """
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata["bound"]


def out_of_bounds(obj: Any) -> List[str]:
    """The fields of a dataclass instance whose values leave their declared range.

    Args:
        obj: the dataclass instance.

    Returns:
        One ``"--<field> <value>: must be ..."`` per field out of range (a field is named as
        the flag of the same name: ``neg_num`` is ``--neg-num``).
    """
    found = []
    for f in dataclasses.fields(obj):
        bound = f.metadata.get("bound")
        value = getattr(obj, f.name)
        problem = bound.problem(value) if bound is not None else None
        if problem:
            found.append(f"--{f.name.replace('_', '-')} {value}: {problem}")
    return found
