"""Restricted unpickling for the dataset pickles that come from the internet.

Only plain containers, strings, numbers and numpy arrays may be rebuilt; any other global
(a function to call, a class to instantiate) stops the load, so a tampered file cannot run
code. Constructors that allocate from a number (``bytes(n)``, numpy arrays of a given
shape) are bounded, so a small file cannot ask for gigabytes.
"""

import math
import pickle
import struct
from pathlib import Path
from typing import Any, Callable, Union

from aml.utils.atomic import atomic_write
from aml.utils.errors import AmlError


_ALLOWED = {
    ("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float",
                                    "bool", "complex", "bytes", "bytearray")
} | {("collections", "OrderedDict"), ("__builtin__", "set")} | {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
    for name in ("_reconstruct", "scalar", "_frombuffer")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


# Callables that allocate what their arguments ask for: bytes(n), bytearray(n), numpy's array
# and scalar reconstruction (a shape, a dtype's item size).
_SIZED = {("builtins", "bytes"), ("builtins", "bytearray")} | {
    (module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")}
#: the most items (or bytes) one constructor call in a dataset pickle may ask for
MAX_ELEMENTS = 1 << 25


class UnreadablePickle(AmlError, pickle.UnpicklingError):
    """A dataset file that is truncated or not a dataset pickle."""


class UnsafePickleError(UnreadablePickle):
    """The pickle asked for something other than plain data, or for more memory than data holds."""


def _requested(value: Any) -> int:
    """The items an argument asks to allocate: an int, a shape (tuple of ints), a dtype's item size."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value)
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return math.prod(abs(v) for v in value)
    itemsize = getattr(value, "itemsize", None)
    return itemsize if isinstance(itemsize, int) and hasattr(value, "kind") else 0


def _bounded(name: str, constructor: Callable) -> Callable:
    def call(*args: Any) -> Any:
        largest = max((_requested(arg) for arg in args), default=0)
        if largest > MAX_ELEMENTS:
            raise UnsafePickleError(f"refusing {name} of {largest:,} items (at most {MAX_ELEMENTS:,} in a dataset "
                                    "file)")
        return constructor(*args)
    return call


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            found = super().find_class(module, name)
            return _bounded(f"{module}.{name}", found) if (module, name) in _SIZED else found
        raise UnsafePickleError(f"refusing to load {module}.{name}: only plain data is allowed in dataset files")


def load_pickle(path: Union[str, Path]) -> Any:
    """Load a data pickle (gnd, training db) admitting only containers, numbers, numpy arrays."""
    try:
        with open(path, "rb") as handle:
            return _RestrictedUnpickler(handle, encoding="latin1").load()
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset file {path} is missing; download or generate the data set") from None
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            struct.error, OverflowError, RecursionError, MemoryError) as err:
        raise UnreadablePickle(f"{path} is truncated or not a dataset pickle ({err}); download it again") from err


def save_pickle(obj: Any, path: Union[str, Path]) -> None:
    """Write a data pickle atomically (temporary file then rename)."""
    atomic_write(path, lambda out: pickle.dump(obj, out, protocol=4))


__all__ = ["load_pickle", "save_pickle", "UnreadablePickle", "UnsafePickleError", "MAX_ELEMENTS"]
