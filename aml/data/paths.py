"""The data root: one folder for datasets, weights, whitening and features.

Resolved from an explicit argument, else the ``AML_DATA_ROOT`` environment variable, else
``./data``. Layout (as the original's): ``train/<name>/``, ``test/<name>/``, ``networks/``,
``whiten/``, ``model/``, ``features/``.
"""

import os
from pathlib import Path
from typing import Optional, Union

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
