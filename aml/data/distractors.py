"""Distractor sets: images added to a test set's database (all of them negatives for every
query), the large-scale protocol of revisitop (rOxford5k+1M, rParis6k+1M).

``test.py -d roxford5k+1m`` names a test set and a distractor set; ``1m`` is revisitop1m
(1,001,001 images), ``synth1m`` a generated stand-in with the same layout. On disk
(``<data_root>/test/<folder>/``): ``jpg/`` and ``<folder>.txt`` listing the images relative
to ``jpg/``, as revisitop's download script leaves them.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from aml.data.download import download_file, fetch_archives
from aml.data.images import IMAGE_EXTENSIONS
from aml.data.paths import data_subdir
from aml.data.synthetic import generate_distractor_set
from aml.utils.errors import ConfigError, DataError, lookup
from aml.utils.text_files import TextFile, read_text_file
from aml.utils.types import PathLike

SEPARATOR = "+"
REVISITOP1M = "http://ptak.felk.cvut.cz/revisitop/revisitop1m/"
REVISITOP1M_ARCHIVES = 100


@dataclass(frozen=True)
class DistractorSet:
    """A distractor set: its folder under ``<data_root>/test/`` and how to get it there."""

    folder: str
    prepare: Callable[[Path, bool], None]  # (test root, progress bars?)


def revisitop1m_urls() -> List[str]:
    """The 100 image archives and the image list, as revisitop's download script names them."""
    archives = [f"{REVISITOP1M}jpg/revisitop1m.{i}.tar.gz" for i in range(1, REVISITOP1M_ARCHIVES + 1)]
    return archives + [f"{REVISITOP1M}revisitop1m.txt"]


def _download_revisitop1m(test_root: Path, progress: bool) -> None:
    """Download (resumable, verified) and unpack the archives, then the list: an interrupted
    run downloads only what is missing, and ``jpg/`` appears only when all are unpacked."""
    folder = test_root / "revisitop1m"
    *archives, listing = revisitop1m_urls()
    parts = folder / "archives"
    fetch_archives([(url, parts / url.rsplit("/", 1)[1]) for url in archives], folder / "jpg", progress=progress)
    download_file(listing, folder / "revisitop1m.txt", progress=progress)


def _generate_synthetic(test_root: Path, progress: bool) -> None:
    generate_distractor_set(test_root.parent, "synth-1m", progress=progress)


DISTRACTOR_SETS: Dict[str, DistractorSet] = {
    "1m": DistractorSet("revisitop1m", _download_revisitop1m),
    "synth1m": DistractorSet("synth-1m", _generate_synthetic),
}
#: a distractor set's list of its images (names that are not UTF-8 kept as they are)
DISTRACTOR_LIST_TEXT = TextFile(
    "the distractor list", "it is damaged or not the set's; delete it to download or generate it again", names=True
)


def split_test_name(name: str) -> Tuple[str, Optional[str]]:
    """'roxford5k+1m' -> ('roxford5k', '1m'); 'roxford5k' -> ('roxford5k', None). A ValueError
    names the distractor sets when the suffix is not one of them."""
    test, sep, suffix = name.partition(SEPARATOR)
    if not sep:
        return name, None
    if suffix.lower() not in DISTRACTOR_SETS:
        raise ConfigError(
            f"{name}: unknown distractor set {suffix!r} after '{SEPARATOR}'; choose from "
            f"{sorted(DISTRACTOR_SETS)} (e.g. roxford5k{SEPARATOR}1m)"
        )
    return test, suffix.lower()


def prepare_distractors(suffix: str, data_root: Optional[PathLike] = None, progress: bool = False) -> Path:
    """Make sure the distractor set ``suffix`` is on disk (download or generate); its folder."""
    return _prepared(suffix, data_subdir(data_root, "test"), progress)


def _prepared(suffix: str, test_root: Path, progress: bool) -> Path:
    entry = lookup(DISTRACTOR_SETS, suffix, "distractor set")
    folder = test_root / entry.folder
    if not ((folder / f"{entry.folder}.txt").is_file() and (folder / "jpg").is_dir()):
        entry.prepare(test_root, progress)
    return folder


def distractor_images(suffix: str, data_root: Optional[PathLike] = None, progress: bool = False) -> List[str]:
    """Paths of the distractor images, in the order of the set's list."""
    return read_distractor_list(suffix, data_subdir(data_root, "test"), progress)


def read_distractor_list(suffix: str, test_root: Path, progress: bool = False) -> List[str]:
    """`distractor_images` in the folder of the test sets (``<data_root>/test``).

    Args:
        suffix: the distractor set (``1m``, ``synth1m``).
        test_root: the folder of the test sets; the set is prepared there when missing.
        progress: bars while downloading and unpacking.

    Returns:
        The paths of its images, in the order of its list.

    Raises:
        DataError: naming the list, when it names an image outside the set's ``jpg/``.
    """
    folder = _prepared(suffix, Path(test_root), progress)
    name = lookup(DISTRACTOR_SETS, suffix, "distractor set").folder
    listing = folder / f"{name}.txt"
    lines = read_text_file(listing, DISTRACTOR_LIST_TEXT).split()
    outside = next((line for line in lines if Path(line).is_absolute() or ".." in Path(line).parts), None)
    if outside is not None:
        raise DataError(
            f"{listing} lists {outside}, which is not inside {folder / 'jpg'}: the list is damaged or not the "
            "set's; delete it to download or generate it again"
        )
    # a web page sent for the list (a portal's) listed its words: searched as +1M without a distractor
    other = next((line for line in lines if Path(line).suffix.lower() not in IMAGE_EXTENSIONS), None)
    if other is not None:
        raise DataError(
            f"{listing} lists {other!r}, which is not an image file name: the list is damaged, a web page or not "
            "the set's; delete it to download or generate it again"
        )
    return [str(folder / "jpg" / line) for line in lines]
