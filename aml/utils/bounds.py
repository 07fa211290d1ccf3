"""Ranges of numeric options, held once: a dataclass field names its range where it is
declared (`bounded`), and both the command line (the flag's type) and the config's own check
(`out_of_bounds`) read it from there."""

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from aml.utils.errors import ConfigError


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

    def checked(self, value: Any, what: str) -> Any:
        """``value`` as ``kind`` (a numpy number too) when it is in the range.

        Args:
            value: the value given (a Python argument).
            what: its name, for the message.

        Returns:
            ``kind(value)``.

        Raises:
            ConfigError: ``"<what> must be <the range>, got <value>"``.

        Examples:
            >>> import numpy as np
            >>> from aml.utils.bounds import NONNEGATIVE_INT
            >>> NONNEGATIVE_INT.checked(np.int64(2), "k")
            2
        """
        plain: Any = None  # an int for an int range (2.0 is not a count), a float for a float one
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if isinstance(value, numbers.Integral):
                plain = int(value)
            elif self.kind is float:
                plain = float(value)
        finite = isinstance(plain, int) or (isinstance(plain, float) and math.isfinite(plain))
        if not (finite and self.accept(plain)):
            raise ConfigError(f"{what} must be {self.what}, got {value!r}")
        return self.kind(plain)

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
#: a seed: the random streams take 32 bits of it (2**32 would seed as 0 does, under another run name)
SEED = Bound(int, "an integer in [0, 2**32)", lambda v: 0 <= v < 2**32)
POSITIVE_FLOAT = Bound(float, "a positive finite number", lambda v: v > 0)
NONNEGATIVE_FLOAT = Bound(float, "a finite number >= 0", lambda v: v >= 0)
UNIT_INTERVAL = Bound(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
MAX_SCALE = 4.0  # a larger scale enlarges a 1024-px image past 4096 px: a mistake, not a setting
MIN_SCALE = 1 / 16  # a smaller one leaves a few pixels of a 362-px image (or none): nothing to describe
MAX_SCALES = 8
SCALE = Bound(
    float, f"a number in [{MIN_SCALE}, {MAX_SCALE}] (1 = the image size itself)", lambda v: MIN_SCALE <= v <= MAX_SCALE
)


def digits(text: str) -> Optional[int]:
    """The number ``text`` spells in the digits 0 to 9, or None (`str.isdigit` also takes
    digits of other scripts and superscripts, some of which `int` refuses).

    Args:
        text: the text, e.g. a field of a file or of the environment.

    Returns:
        The number, or None when ``text`` is empty or holds anything but 0 to 9.

    Examples:
        >>> from aml.utils.bounds import digits
        >>> digits("042"), digits("5²"), digits(""), digits("-1")
        (42, None, None, None)
    """
    return int(text) if text.isascii() and text.isdigit() else None


def scales_problem(scales: Any) -> Optional[str]:
    """Why ``scales`` is not a list of multi-scale factors (None when it is one).

    Args:
        scales: the factors, as parsed or as read from a file.

    Returns:
        What is wrong, or None.

    Examples:
        >>> from aml.utils.bounds import scales_problem
        >>> scales_problem([1, 0.5]) is None
        True
        >>> scales_problem([1, 0])
        'every scale must be a number in [0.0625, 4.0] (1 = the image size itself), got 0'
    """
    if not isinstance(scales, (list, tuple)) or not scales:
        return f"must be a list of scales, got {scales!r}"
    if len(scales) > MAX_SCALES:
        return f"{len(scales)} scales; at most {MAX_SCALES} (the original's multi-scale test uses 3)"
    for scale in scales:
        if SCALE.problem(scale) is not None:
            return f"every scale must be {SCALE.what}, got {scale!r}"
    return None


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
