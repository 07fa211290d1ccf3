"""The data root: one folder for datasets, weights, whitening and features.

Resolved from an explicit argument, else the ``AML_DATA_ROOT`` environment variable, else
``./data``. Layout (as the original's): ``train/<name>/``, ``test/<name>/``, ``networks/``,
``whiten/``, ``model/``, ``features/``.
"""

import os
import re
from pathlib import Path
from typing import Optional, Union
from aml.utils.errors import ConfigError

ENV_VAR = "AML_DATA_ROOT"
DEFAULT_ROOT = "data"
SUBDIRS = ("train", "test", "networks", "whiten", "model", "features")


def resolve_data_root(data_root: Optional[Union[str, Path]] = None) -> Path:
    """Return the data root as an absolute path (argument > $AML_DATA_ROOT > ./data)."""
    chosen = data_root or os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def data_subdir(data_root: Optional[Union[str, Path]], name: str) -> Path:
    """Path of one of the standard sub-folders (``train``, ``test``, ``networks`` ...)."""
    if name not in SUBDIRS:
        raise ValueError(f"unknown data sub-folder {name!r}; expected one of {SUBDIRS}")
    return resolve_data_root(data_root) / name


def cid2filename(cid: str, prefix: Union[str, Path]) -> str:
    """Image path of a training image id (cirtorch's layout): prefix/cid[-2:]/cid[-4:-2]/cid[-6:-4]/cid."""
    return os.path.join(str(prefix), cid[-2:], cid[-4:-2], cid[-6:-4], cid)


_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_set_name(name: str) -> str:
    """``name`` if it can name a data set: one path component of letters, digits, '.', '_'
    and '-' (no '/', '..' or '+', which joins a test set to its distractors); else ValueError."""
    if not _SET_NAME.fullmatch(name or "") or ".." in name:
        raise ConfigError(f"{name!r} cannot name a data set: use letters, digits, '.', '_' and '-' only (one folder "
                          "name, no '/', '..' or '+')")
    return name
