"""Real photos for checks on real images, from the scikit-image wheel (``skimage/data/``).

Nothing else of scikit-image is used, so it is installed without its dependencies (see
``requirements-data.txt``); the files are found without importing the package.
"""

import importlib.util
from pathlib import Path
from typing import Dict

from aml.utils.errors import MissingFile

#: scikit-image's photographs (grey ones are read as RGB): name -> file in skimage/data/.
#: ``motorcycle_left`` and ``motorcycle_right`` are two views of one scene (a stereo pair).
PHOTOS = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}
PACKAGE = "scikit-image"


def photo_folder() -> Path:
    """scikit-image's ``data`` folder; a FileNotFoundError says how to install it."""
    spec = importlib.util.find_spec("skimage")
    folders = [Path(f) / "data" for f in (spec.submodule_search_locations or [])] if spec else []
    for folder in folders:
        if all((folder / name).is_file() for name in PHOTOS.values()):
            return folder
    raise MissingFile(
        f"the real photos come from the {PACKAGE} wheel, which is not installed: "
        "pip install --no-deps -r requirements-data.txt"
    )


def sample_photos() -> Dict[str, Path]:
    """Name -> path of every photo of `PHOTOS`.

    Example:
        >>> sample_photos()["chelsea"].name  # doctest: +SKIP
        'chelsea.png'
    """
    folder = photo_folder()
    return {name: folder / file for name, file in PHOTOS.items()}
