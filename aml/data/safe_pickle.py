"""Restricted unpickling for the dataset pickles that come from the internet.

Only plain containers, strings, numbers and numpy arrays may be rebuilt; any other global
(a function to call, a class to instantiate) stops the load, so a tampered file cannot run
code.
"""

import pickle
from pathlib import Path
from typing import Any, Union

from aml.utils.atomic import atomic_write


_ALLOWED = {
    ("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float",
                                    "bool", "complex", "bytes", "bytearray", "slice", "range")
} | {("collections", "OrderedDict"), ("__builtin__", "set")} | {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
    for name in ("_reconstruct", "scalar", "_frombuffer")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than plain data."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
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
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise pickle.UnpicklingError(f"{path} is truncated or not a dataset pickle ({err}); download it again") from err


def save_pickle(obj: Any, path: Union[str, Path]) -> None:
    """Write a data pickle atomically (temporary file then rename)."""
    atomic_write(path, lambda out: pickle.dump(obj, out, protocol=4))


__all__ = ["load_pickle", "save_pickle", "UnsafePickleError"]
