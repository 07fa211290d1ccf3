"""Reading and writing files of plain data (tensors, containers, numbers, numpy arrays).

Checkpoints, trunk weights, whitening and search stores all go through these two functions:
``torch.load(weights_only=True)`` with an allow-list of numpy's own types, so no file can run
code, and the atomic writer, so no interrupted write leaves a half-written file in place.
"""

import errno
import math
import os
import re
import tokenize
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Dict, Optional, Tuple, Union

import numpy as np
import torch

from aml.utils.atomic import atomic_write
from aml.utils.errors import AmlError, no_access
from aml.utils.types import PathLike


class CheckpointError(AmlError, RuntimeError):
    """A saved file (checkpoint, weights, store) is missing, truncated, foreign or does not fit."""


def _numpy_globals() -> list:
    """What numpy arrays and scalars need to unpickle (numpy 1.x names included). The two
    functions are taken from what numpy's own pickling returns, not from a private module."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    dtypes = [np.dtype] + [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]
    return [
        reconstruct,
        scalar,
        np.ndarray,
        *dtypes,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (scalar, "numpy.core.multiarray.scalar"),
    ]


def _load_safetensors(path: PathLike, map_location: Union[str, torch.device]) -> Any:
    """The tensors of a ``.safetensors`` file (a format that holds nothing but tensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(map_location))
    except FileNotFoundError:
        if Path(path).exists():  # safetensors (0.8) says so of a file this user may not read
            raise no_access(path, PermissionError(errno.EACCES, os.strerror(errno.EACCES))) from None
        raise CheckpointError(f"{path} does not exist; check the path or download it again") from None
    except PermissionError as err:
        raise no_access(path, err) from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read {path}: it is truncated or not a safetensors file ({err}). Download or copy it again."
        ) from err


def load_plain_file(
    path: PathLike, map_location: Union[str, torch.device] = "cpu", wanted: str = "the checkpoint or weights file"
) -> Any:
    """``torch.load`` that admits only tensors, containers, numbers and numpy arrays (a
    ``.safetensors`` file is read with safetensors, which holds tensors only).

    Args:
        path: the file.
        map_location: where its tensors go.
        wanted: what to give instead, named when ``path`` turns out to be another kind of
            file (an image, a NumPy array, a web page).

    Returns:
        What the file holds.

    Raises:
        CheckpointError: naming ``path``, when it is missing, truncated or holds anything else.
        NoAccess: for a file this user may not read.
    """
    if Path(path).suffix == ".safetensors":
        return _load_safetensors(path, map_location)
    try:
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            # a TorchScript file is named for what it is by the caller; torch's advice to call
            # torch.jit.load is not the user's to follow
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; check the path or download it again") from None
    except PermissionError as err:
        raise no_access(path, err) from None
    except Exception as err:  # damaged bytes make torch.load raise anything: AssertionError, LookupError, ...
        raise CheckpointError(_unreadable(Path(path), err, wanted)) from err


#: how files of each kind begin, to tell a file given by mistake from the kind asked for
FILE_KINDS: Dict[str, Tuple[bytes, ...]] = {
    "a JPEG image": (b"\xff\xd8\xff",),
    "a PNG image": (b"\x89PNG\r\n\x1a\n",),
    "a numpy array (.npy)": (b"\x93NUMPY",),
    "an ONNX model": (b"\x08",),  # a ModelProto: its ir_version, field 1, comes first
    "a zip archive": (b"PK\x03\x04",),  # TorchScript, and torch.save's own format
    "a JSON file": (b"{", b"["),  # after any white space
    # after any white space (and a UTF-8 byte order mark), in any case: a portal's or a 404 page
    "a web page (HTML)": (b"<!doctyp", b"<html", b"<!--", b"<head", b"<body", b"<title", b"<meta", b"<?xml"),
}
#: the kinds whose first bytes may follow white space
_SPACED_KINDS = ("a JSON file", "a web page (HTML)")


def begins_as(head: bytes, kind: str) -> bool:
    """Whether a file's first bytes ``head`` are those of ``kind`` (a key of `FILE_KINDS`).

    Examples:
        >>> from aml.utils.plain_files import begins_as
        >>> begins_as(b'  {"results": 1}', "a JSON file"), begins_as(b"PK\\x03\\x04", "an ONNX model")
        (True, False)
        >>> begins_as(b"\\n<!DOCTYPE html>", "a web page (HTML)")
        True
        >>> begins_as(b"\\xef\\xbb\\xbf<!-- a portal -->", "a web page (HTML)")
        True
    """
    if kind == "a web page (HTML)":
        head = head.lower().lstrip().removeprefix(b"\xef\xbb\xbf")
    return (head.lstrip() if kind in _SPACED_KINDS else head).startswith(FILE_KINDS[kind])


_PICKLED_OBJECT = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def file_format(path: PathLike) -> Optional[str]:
    """What a file that should hold arrays or tensors is instead, by its first bytes (``"empty
    (0 bytes)"``, ``"a JPEG image"``, ...); None: none of those.

    Examples:
        >>> import tempfile, pathlib
        >>> from aml.utils.plain_files import file_format
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     (pathlib.Path(folder) / "feats.npy").write_bytes(b"\\xff\\xd8\\xff\\xe0")
        ...     file_format(pathlib.Path(folder) / "feats.npy")
        4
        'a JPEG image'
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)  # a web page's white space before its first tag
    except OSError:  # a folder, a file this user cannot read: the caller's error names it
        return None
    if not head:
        return "empty (0 bytes)"
    # a zip may be torch.save's own format: not named as something else
    return next((kind for kind in FILE_KINDS if kind != "a zip archive" and begins_as(head, kind)), None)


def _unreadable(path: Path, err: BaseException, wanted: str) -> str:
    """Why ``path`` is not a PyTorch file of plain data, in one line: what it is instead (by
    its first bytes), a pickled object's class, or torch's own first words."""
    if path.is_dir():
        return f"{path} is a folder, not a PyTorch file; give the file in it"
    other = file_format(path)
    if other == "empty (0 bytes)":
        return f"{path} is empty (0 bytes): the copy or the download stopped; copy or download it again"
    if other is not None:
        return f"{path} is {other}, not a PyTorch file; give {wanted}"
    if "TorchScript" in str(err):  # torch.jit.save's zip: a program, not a checkpoint
        return (
            f"{path} is a TorchScript program (torch.jit.save, e.g. aml's export), which runs but holds no "
            f"checkpoint to rebuild the network from; give {wanted} (for an export, the .pth.tar checkpoint it "
            "was exported from)"
        )
    pickled = _PICKLED_OBJECT.search(str(err))
    if pickled is not None:
        return (
            f"{path} holds a pickled {pickled.group(1)} object (torch.save of a whole model), whose loading could run "
            "code: aml loads tensors only; save its state_dict instead (torch.save(model.state_dict(), ...))"
        )
    first = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines()[0][:200] if str(err) else ""
    first = first.split(". ")[0]  # torch's advice to load with weights_only=False is not aml's
    return (
        f"cannot read {path}: it is truncated, corrupt or not a PyTorch file made of plain data "
        f"({type(err).__name__}: {first}). Copy or make it again (a file aml downloaded is fetched anew once deleted)."
    )


def is_state_dict(value: Any) -> bool:
    """Whether ``value`` (a loaded file) is a state dict: a non-empty mapping of names to tensors.

    Examples:
        >>> import torch
        >>> from aml.utils.plain_files import is_state_dict
        >>> is_state_dict({"fc.weight": torch.zeros(2)}), is_state_dict({"meta": {}, "state_dict": {}})
        (True, False)
    """
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def save_plain_file(obj: Any, path: PathLike) -> Path:
    """``torch.save`` through the atomic writer: an existing ``path`` is replaced only whole."""
    return atomic_write(path, lambda out: torch.save(obj, out))


#: numpy's readers of a ``.npy`` header by format version (version 3's is version 2's in UTF-8,
#: which it holds only for a structured dtype's non-Latin field names)
_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
    (3, 0): np.lib.format.read_array_header_2_0,
}
#: what numpy raises besides ValueError for a damaged header: it parses the header's text as a
#: Python literal (a changed byte: SyntaxError, tokenize's TokenError), or a dtype it cannot make
_DAMAGED_HEADER = (SyntaxError, tokenize.TokenError, TypeError, OverflowError)


def load_npy(path: PathLike) -> np.ndarray:
    """The array of a ``.npy`` file, read without pickles (so no file can run code).

    The header is checked against the file's size before the array is allocated: a damaged
    header that claims billions of values is refused, not allocated.

    Args:
        path: the file.

    Returns:
        Its array.

    Raises:
        NoAccess: for a file this user may not read.
        ValueError: for a file that is not one array: unreadable, pickled objects, a damaged
            header, fewer bytes than the header says, or a zip (an ``.npz`` archive, a PyTorch
            checkpoint), which ``np.load`` opens as an archive.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from aml.utils.plain_files import load_npy
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     np.savez(pathlib.Path(folder) / "two.npz", a=np.ones(2))
        ...     load_npy(pathlib.Path(folder) / "two.npz")
        Traceback (most recent call last):
        ...
        ValueError: a zip archive (.npz or a PyTorch file), not one .npy array
    """
    try:
        with open(path, "rb") as handle:
            _check_npy_header(handle, Path(path).stat().st_size)
            handle.seek(0)
            return np.lib.format.read_array(handle, allow_pickle=False)  # a MemoryError here is one
    except PermissionError as err:
        raise no_access(path, err) from None


def _check_npy_header(handle: BinaryIO, size: int) -> None:
    """Refuse a zip, a ``.npy`` header numpy cannot read, or one that claims more bytes of
    values than the file of ``size`` bytes holds (numpy would allocate them first)."""
    if handle.read(4) == b"PK\x03\x04":
        raise ValueError("a zip archive (.npz or a PyTorch file), not one .npy array")
    handle.seek(0)
    try:
        version = np.lib.format.read_magic(handle)
        header = _NPY_HEADERS.get(version)
        if header is None:
            raise ValueError(f"a .npy of format version {version[0]}.{version[1]}, which numpy does not read")
        shape, _, dtype = header(handle)
    except _DAMAGED_HEADER as err:
        raise ValueError(f"a damaged .npy header ({type(err).__name__}: {err})") from None
    if dtype.hasobject:  # pickled objects, of no fixed size: numpy refuses them (allow_pickle=False)
        return
    needed = math.prod(shape) * dtype.itemsize
    if needed > size - handle.tell():
        raise ValueError(
            f"its header says {shape} {dtype} values, {needed} bytes, but {size - handle.tell()} follow it: the file "
            "is truncated or its header damaged"
        )
