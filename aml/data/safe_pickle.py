"""Restricted unpickling for the dataset pickles that come from the internet.

Only plain containers, strings, numbers and numpy arrays may be rebuilt; any other global
(a function to call, a class to instantiate) stops the load, so a tampered file cannot run
code. What the file's constructor calls build (``bytes(n)``, ``list(x)`` of another object,
numpy arrays of a given shape) is counted against one budget per file, so a small file
cannot ask for gigabytes, in one call or in many.
"""

import math
import pickle
import struct
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from aml.utils.atomic import atomic_write
from aml.utils.errors import AmlError, DataError, MissingFile

_NUMPY = ("numpy.core.multiarray", "numpy._core.multiarray")
_BUILTINS = ("builtins", "__builtin__")  # protocols 0 to 2 name the module as Python 2 did
_ALLOWED = (
    {
        (module, name)
        for module in _BUILTINS
        for name in (
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "str",
            "int",
            "float",
            "bool",
            "complex",
            "bytes",
            "bytearray",
        )
    }
    | {("collections", "OrderedDict")}
    | {
        (module, name)
        for module in _NUMPY + ("numpy.core.numeric", "numpy._core.numeric")
        for name in ("_reconstruct", "scalar", "_frombuffer")
    }
    | {("numpy", "ndarray"), ("numpy", "dtype")}
    | {("_codecs", "encode")}  # how protocols 0 to 2 write bytes (numpy's buffers too) in Python 3
)

#: the most items (or bytes) that the constructor calls of one dataset pickle may build together
MAX_ELEMENTS = 1 << 25


class UnreadablePickle(AmlError, pickle.UnpicklingError):
    """A dataset file that is truncated or not a dataset pickle."""


class UnsafePickleError(UnreadablePickle):
    """The pickle asked for something other than plain data, or for more memory than data holds."""


class DatasetFileError(DataError):
    """A dataset pickle that reads, but does not hold what its kind holds (a gnd's image lists
    and entries, a training db's images and pairs): named with the file and the fix."""


def kind_of(value: Any) -> str:
    """How an error shows a value of the wrong type: its type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def index_array(value: Any) -> Optional[np.ndarray]:
    """``value`` as a flat array of indices (a gnd's lists may come as n x 1 arrays, which
    scoring flattens too).

    Args:
        value: a field of a pickle.

    Returns:
        Its indices, or None when it is not a list (tuple, array) of integers.
    """
    if not isinstance(value, (list, tuple, np.ndarray)):
        return None
    try:
        indices = np.asarray(value).ravel()
    except (ValueError, TypeError):  # ragged or nested lists
        return None
    return indices if indices.size == 0 or np.issubdtype(indices.dtype, np.integer) else None


def _count(value: Any) -> int:
    """Items that a constructor builds from ``value``: ``n`` of ``bytes(n)``, else a copy of it."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return abs(value)
    try:
        return len(value)
    except TypeError:
        return 0


def _itemsize(dtype: Any) -> int:
    try:
        return np.dtype(dtype).itemsize
    except (TypeError, ValueError):
        return 0  # numpy refuses it in the call itself


def _shape(shape: Any) -> int:
    if isinstance(shape, int) and not isinstance(shape, bool):
        return abs(shape)
    if isinstance(shape, tuple) and all(isinstance(v, int) for v in shape):
        return math.prod(abs(v) for v in shape)
    return 0


def _copied(*args: Any) -> int:
    """``list(x)``, ``bytes(n)``, ``str(b, encoding)``...: what the first argument holds or asks for."""
    return _count(args[0]) if args else 0


def _text(*args: Any) -> int:
    """``str(x)`` of text or a number; of anything else (its repr) it could be any size."""
    if args and not isinstance(args[0], (str, bytes, bytearray, int, float)):
        raise UnsafePickleError(f"refusing str() of a {type(args[0]).__name__}: a dataset file holds text")
    return _copied(*args)


def _latin1(*args: Any) -> int:
    """``_codecs.encode(text, "latin1")``, bytes as protocols 0 to 2 write them; no other codec."""
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise UnsafePickleError("refusing _codecs.encode other than of text to latin1: a dataset file holds bytes")
    return len(args[0])


def _array(subtype: Any = None, shape: Any = 0, dtype: Any = "b", *rest: Any) -> int:
    """numpy's ``_reconstruct(subtype, shape, dtype)``: the array's bytes."""
    return _shape(shape) * _itemsize(dtype)


def _new_array(shape: Any = 0, dtype: Any = float, *rest: Any) -> int:
    """``numpy.ndarray(shape, dtype, ...)`` called directly."""
    return _shape(shape) * _itemsize(dtype)


def _scalar(dtype: Any = None, obj: Any = None) -> int:
    return _itemsize(dtype) + _count(obj)


# What each constructor that allocates builds, from its arguments (before it runs).
_SIZES: Dict[Tuple[str, str], Callable[..., int]] = {
    **{
        (module, name): _copied
        for module in _BUILTINS
        for name in ("bytes", "bytearray", "list", "tuple", "set", "frozenset", "dict")
    },
    **{(module, "str"): _text for module in _BUILTINS},
    ("collections", "OrderedDict"): _copied,
    ("numpy", "ndarray"): _new_array,
    ("_codecs", "encode"): _latin1,
    **{(module, "_reconstruct"): _array for module in _NUMPY},
    **{(module, "scalar"): _scalar for module in _NUMPY},
}


class _ArrayType:
    """What ``numpy.ndarray`` unpickles as: passed to ``_reconstruct`` it is the class, called
    directly (``numpy.ndarray((2**28,))``) it is a constructor within the budget."""

    def __init__(self, call: Callable[..., Any]):
        self.call = call

    def __call__(self, *args: Any) -> Any:
        return self.call(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only `_ALLOWED` globals; their calls build at most `MAX_ELEMENTS` items in all."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.built = 0

    def find_class(self, module: str, name: str) -> Any:
        if not ((module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType"))):
            raise UnsafePickleError(f"refusing to load {module}.{name}: only plain data is allowed in dataset files")
        found = super().find_class(module, name)
        size = _SIZES.get((module, name))
        if size is None:
            return found
        bounded = self._bounded(f"{module}.{name}", found, size)
        return _ArrayType(bounded) if found is np.ndarray else bounded

    def _bounded(self, name: str, constructor: Callable[..., Any], size: Callable[..., int]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            args = tuple(np.ndarray if isinstance(arg, _ArrayType) else arg for arg in args)
            wanted = size(*args)
            if self.built + wanted > MAX_ELEMENTS:
                raise UnsafePickleError(
                    f"refusing {name} of {wanted:,} items: with the {self.built:,} built before, "
                    f"more than the {MAX_ELEMENTS:,} a dataset file may build"
                )
            self.built += wanted
            return constructor(*args)

        return call


def load_pickle(path: Union[str, Path]) -> Any:
    """Load a data pickle (gnd, training db) admitting only containers, numbers, numpy arrays."""
    try:
        with open(path, "rb") as handle:
            return _RestrictedUnpickler(handle, encoding="latin1").load()
    except FileNotFoundError:
        raise MissingFile(f"dataset file {path} is missing; download or generate the data set") from None
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
        struct.error,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as err:
        raise UnreadablePickle(
            f"{path} is truncated or not a dataset pickle ({err}); copy or make it again (a file aml downloaded or "
            "generated is made anew once deleted)"
        ) from err


def save_pickle(obj: Any, path: Union[str, Path]) -> None:
    """Write a data pickle atomically (temporary file then rename)."""
    atomic_write(path, lambda out: pickle.dump(obj, out, protocol=4))


__all__ = [
    "load_pickle",
    "save_pickle",
    "UnreadablePickle",
    "UnsafePickleError",
    "DatasetFileError",
    "MAX_ELEMENTS",
    "index_array",
    "kind_of",
]
