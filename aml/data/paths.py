"""The data root: one folder for datasets, weights, whitening and features.

Resolved from an explicit argument, else the ``AML_DATA_ROOT`` environment variable, else
``./data``. Layout (as the original's): ``train/<name>/``, ``test/<name>/``, ``networks/``,
``whiten/``, ``model/``, ``features/``.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from aml.utils.errors import ConfigError

ENV_VAR = "AML_DATA_ROOT"
DEFAULT_ROOT = "data"
SUBDIRS = ("train", "test", "networks", "whiten", "model", "features")


@dataclass(frozen=True)
class DataRoot:
    """The data root, resolved once: an absolute path that every data helper takes as it is.

    A path-like object (``os.fspath`` gives its folder), so it goes wherever a data root is
    asked for; `data_subdir` and the helpers below it do not resolve it again.

    Attributes:
        path: the absolute folder.
    """

    path: Path

    @classmethod
    def resolve(cls, data_root: Optional[Union[str, "os.PathLike[str]"]] = None) -> "DataRoot":
        """The data root: ``data_root`` > ``$AML_DATA_ROOT`` > ``./data``, made absolute (once).

        Args:
            data_root: the folder given, a `DataRoot` (returned as it is) or None.

        Returns:
            The resolved data root.
        """
        if isinstance(data_root, DataRoot):
            return data_root
        chosen = data_root or os.environ.get(ENV_VAR) or DEFAULT_ROOT
        path = Path(chosen).expanduser().resolve()
        if path.exists() and not path.is_dir():
            source = "--data-root" if data_root else (f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "./data")
            raise ConfigError(f"the data root {path} (from {source}) is a file, not a folder; give a folder")
        return cls(path)

    def subdir(self, name: str) -> Path:
        """One of the standard sub-folders (``train``, ``test``, ``networks`` ...)."""
        if name not in SUBDIRS:
            raise ValueError(f"unknown data sub-folder {name!r}; expected one of {SUBDIRS}")
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


DataRootLike = Union[None, str, "os.PathLike[str]", DataRoot]


def resolve_data_root(data_root: DataRootLike = None) -> Path:
    """Return the data root as an absolute path (argument > $AML_DATA_ROOT > ./data)."""
    return DataRoot.resolve(data_root).path


def data_subdir(data_root: DataRootLike, name: str) -> Path:
    """Path of one of the standard sub-folders (``train``, ``test``, ``networks`` ...)."""
    return DataRoot.resolve(data_root).subdir(name)


def below_common_folder(images: Sequence[str]) -> List[str]:
    """Each image's path below the folder all of them share: two lists of the same images
    under another root (a data root moved elsewhere) compare equal.

    Examples:
        >>> from aml.data.paths import below_common_folder
        >>> below_common_folder(["/a/data/x/1.jpg", "/a/data/y/2.jpg"])
        ['x/1.jpg', 'y/2.jpg']
        >>> below_common_folder(["/a/data/x/1.jpg", "/a/data/y/2.jpg", ""]), below_common_folder(["/a/1.jpg", "b.jpg"])
        (['x/1.jpg', 'y/2.jpg', ''], ['/a/1.jpg', 'b.jpg'])
    """
    named = [image for image in images if image]  # an empty line of a list edited by hand names nothing
    if not named:
        return list(images)
    try:
        folder = os.path.commonpath(named) if len(named) > 1 else os.path.dirname(named[0])
    except ValueError:  # absolute and relative names mixed: no folder they share
        return list(images)
    return [os.path.relpath(image, folder) if folder and image else image for image in images]


def within_data_root(paths: Sequence[Path], top: Path, root: Path) -> Dict[Path, str]:
    """Those of ``paths`` (found under the folder ``top``) that lie in the data root ``root``,
    reached through a folder under ``top`` that is the data root or a link to it (``--images
    .`` or ``--folders .`` beside ``./data``), each with the data root's entry it is in
    (``train``, ``test``, ``networks`` ...).

    Args:
        paths: files found by walking ``top``.
        top: the folder walked.
        root: the data root.

    Returns:
        Path -> the data root's entry (sub-folder or file name) that holds it.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from aml.data.paths import within_data_root
        >>> with tempfile.TemporaryDirectory() as top:
        ...     found = [Path(top, "data", "train", "a.jpg"), Path(top, "tower", "b.jpg")]
        ...     within_data_root(found, Path(top), Path(top, "data")) == {found[0]: "train"}
        True
    """
    top, root = Path(os.path.abspath(top)), root.resolve()
    resolved: Dict[Path, Path] = {}
    inside: Dict[Path, str] = {}
    for path in paths:
        absolute = Path(os.path.abspath(path))
        for folder in absolute.parents:
            if folder == top or not folder.is_relative_to(top):
                break
            if resolved.setdefault(folder, folder.resolve()) == root:
                inside[path] = absolute.relative_to(folder).parts[0]
                break
    return inside


def cid2filename(cid: str, prefix: Union[str, Path]) -> str:
    """Image path of a training image id (cirtorch's layout): prefix/cid[-2:]/cid[-4:-2]/cid[-6:-4]/cid."""
    return os.path.join(str(prefix), cid[-2:], cid[-4:-2], cid[-6:-4], cid)


_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_set_name(name: str) -> str:
    """``name`` if it can name a data set: one path component of letters, digits, '.', '_'
    and '-' (no '/', '..' or '+', which joins a test set to its distractors); else ValueError."""
    if not _SET_NAME.fullmatch(name or "") or ".." in name:
        raise ConfigError(
            f"{name!r} cannot name a data set: use letters, digits, '.', '_' and '-' only (one folder "
            "name, no '/', '..' or '+')"
        )
    return name


def link_folder(source: Path, link: Path) -> None:
    """Make ``link`` a relative link to the folder ``source`` unless it already reaches one; a
    dangling link (an absolute one made before the data root moved) is made again. Relative,
    so the data root can be moved or copied (``rsync -a``) with its links.

    Examples:
        >>> import os, tempfile
        >>> from pathlib import Path
        >>> from aml.data.paths import link_folder
        >>> with tempfile.TemporaryDirectory() as root:
        ...     (Path(root) / "120k" / "ims").mkdir(parents=True)
        ...     (Path(root) / "30k").mkdir()
        ...     link_folder(Path(root) / "120k" / "ims", Path(root) / "30k" / "ims")
        ...     os.readlink(Path(root) / "30k" / "ims")
        '../120k/ims'
    """
    if link.is_symlink() and not link.exists():
        link.unlink()
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(source, link.parent), link, target_is_directory=True)
