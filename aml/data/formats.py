"""The data formats of the original (cirtorch's), as types: a training or whitening set's db
(its pickle, one split of it), a test set's ``cfg`` (cirtorch's ``configdataset``) and each
query's ground truth in it. The files hold these plain dicts; the types say which keys they
have and what each holds."""

from typing import Any, Callable, List, Sequence, TypedDict


class TrainingDb(TypedDict):
    """One split of a training set's pickle, as cirtorch's ``TuplesDataset`` reads it.

    ``cids`` names the images (``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``), ``cluster``
    gives each image's landmark, ``qidxs`` and ``pidxs`` the query/positive pairs (image
    indices); aml adds the images' absolute paths as ``images``.
    """

    cids: List[str]
    cluster: List[int]
    qidxs: List[int]
    pidxs: List[int]
    images: List[str]


class GroundTruth(TypedDict, total=False):
    """One query's ground truth: its box, and the database images of each kind (revisited:
    easy, hard, junk; classic: ok, junk), as indices into ``imlist``."""

    bbx: Sequence[float]
    easy: Sequence[int]
    hard: Sequence[int]
    junk: Sequence[int]
    ok: Sequence[int]


class TestConfig(TypedDict):
    """cirtorch's ``cfg`` of a test set: its gnd pickle (``imlist``, ``qimlist``, ``gnd``) and
    where its files are."""

    imlist: List[str]
    qimlist: List[str]
    gnd: List[GroundTruth]
    gnd_fname: str
    ext: str
    qext: str
    dir_data: str
    dir_images: str
    n: int
    nq: int
    im_fname: Callable[[Any, int], str]
    qim_fname: Callable[[Any, int], str]
    dataset: str
    protocol: str
