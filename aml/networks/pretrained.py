"""Published weights as data: retrieval networks (teachers and students) and the learned
linear layers (local, regional and final whitening) of cirtorch."""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

CIRTORCH = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/"
AML = "http://files.inria.fr/aml/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the set the published students' whitening files were learned on (the paper's, cirtorch's)
PUBLISHED_WHITENING_SET = "retrieval-SfM-120k"


@dataclass(frozen=True)
class PretrainedNetwork:
    """One entry of the pretrained list, as data: where the checkpoint is, what it outputs,
    how its inputs are normalised, and how to verify it."""

    name: str
    url: str
    kind: str  # "teacher" (cirtorch network) or "student" (aml)
    dim: int  # descriptor dimension (meta['outputdim'] of the file)
    teacher: Optional[str] = None  # the teacher a student was trained against, when any
    whitening_url: Optional[str] = None  # a student's whitening, learned on `PUBLISHED_WHITENING_SET`
    sha256: Optional[str] = None  # prefix of the file's sha256, when published (cirtorch names carry it)
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


def _cirtorch_networks() -> Dict[str, PretrainedNetwork]:
    files = {  # name: (path, dimension, sha256 prefix)
        "retrievalSfM120k-vgg16-gem": ("retrieval-SfM-120k/retrievalSfM120k-vgg16-gem-b4dcdc6.pth", 512, "b4dcdc6"),
        "retrievalSfM120k-resnet101-gem": (
            "retrieval-SfM-120k/retrievalSfM120k-resnet101-gem-b80fb85.pth",
            2048,
            "b80fb85",
        ),
        "rSfM120k-tl-resnet50-gem-w": ("retrieval-SfM-120k/rSfM120k-tl-resnet50-gem-w-97bf910.pth", 2048, "97bf910"),
        "rSfM120k-tl-resnet101-gem-w": ("retrieval-SfM-120k/rSfM120k-tl-resnet101-gem-w-a155e54.pth", 2048, "a155e54"),
        "rSfM120k-tl-resnet152-gem-w": ("retrieval-SfM-120k/rSfM120k-tl-resnet152-gem-w-f39cada.pth", 2048, "f39cada"),
        "gl18-tl-resnet50-gem-w": ("gl18/gl18-tl-resnet50-gem-w-83fdc30.pth", 2048, "83fdc30"),
        "gl18-tl-resnet101-gem-w": ("gl18/gl18-tl-resnet101-gem-w-a4d43db.pth", 2048, "a4d43db"),
        "gl18-tl-resnet152-gem-w": ("gl18/gl18-tl-resnet152-gem-w-21278d5.pth", 2048, "21278d5"),
    }
    return {
        name: PretrainedNetwork(name, CIRTORCH + "networks/" + path, "teacher", dim, sha256=sha)
        for name, (path, dim, sha) in files.items()
    }


def _student(name: str, dim: int, teacher: Optional[str]) -> PretrainedNetwork:
    """An aml student (no published checksum: verified by size only)."""
    stem = name.replace("-", "_")
    return PretrainedNetwork(name, AML + stem + ".pth.tar", "student", dim, teacher, AML + stem + "_whitening.pth")


def _aml_students() -> Dict[str, PretrainedNetwork]:
    students = {}
    for arch in ("efficientnet-b3", "mobilenet-v2"):
        for method in ("contr-plus", "reg", "contr", "dark", "ms", "rkd", "triplet"):
            for teacher, dim in (("resnet101", 2048), ("vgg16", 512)):
                name = f"{arch}-gem-{method}-{teacher}"
                students[name] = _student(name, dim, teacher)
    # Teacher-free (std mode) students; efficientnet's names use an underscore before the dim.
    for name, dim in (
        ("efficientnet-b3-gem-contr_2048", 2048),
        ("efficientnet-b3-gem-contr_512", 512),
        ("mobilenet-v2-gem-contr-2048", 2048),
        ("mobilenet-v2-gem-contr-512", 512),
    ):
        students[name] = _student(name, dim, None)
    # The original list points this one at a typo'd '.pthaa.tar'; the file is '.pth.tar'.
    return students


#: every name of the original test.py list, plus nothing else.
PRETRAINED: Dict[str, PretrainedNetwork] = {**_cirtorch_networks(), **_aml_students()}

#: teacher alias (the --teacher flag) -> the published network it stands for.
TEACHERS: Dict[str, str] = {"vgg16": "retrievalSfM120k-vgg16-gem", "resnet101": "retrievalSfM120k-resnet101-gem"}
#: the teacher of the original's flags (--teacher), whose dimension a student projects to by default
DEFAULT_TEACHER = "vgg16"
DEFAULT_TEACHER_DIM = PRETRAINED[TEACHERS[DEFAULT_TEACHER]].dim


def teacher_dimension(teacher: Optional[str] = None) -> Optional[int]:
    """The descriptor dimension of a published teacher.

    Args:
        teacher: a teacher alias (``vgg16``, ``resnet101``) or a name of the pretrained list;
            None: `DEFAULT_TEACHER`.

    Returns:
        Its listed dimension; None for any other name (a checkpoint path).
    """
    entry = PRETRAINED.get(TEACHERS.get(teacher or DEFAULT_TEACHER, teacher or DEFAULT_TEACHER))
    return entry.dim if entry is not None else None


def published_spelling(text: str) -> Optional[str]:
    """The teacher alias or name of the pretrained list that ``text`` spells, in any case.

    Args:
        text: a name as typed (``VGG16``).

    Returns:
        The alias or name as listed (``vgg16``), or None for any other text.

    Examples:
        >>> from aml.networks.pretrained import published_spelling
        >>> published_spelling("VGG16"), published_spelling("runs/model_best.pth.tar")
        ('vgg16', None)
    """
    folded = text.casefold()
    return next((name for name in (*TEACHERS, *PRETRAINED) if name.casefold() == folded), None)


_WHITEN = CIRTORCH + "whiten/retrieval-SfM-120k/retrieval-SfM-120k-"

#: learned linear layers that cirtorch publishes for training initialisation.
LOCAL_WHITENING: Dict[str, str] = {"resnet101": _WHITEN + "resnet101-lwhiten-9f830ef.pth"}
REGIONAL_WHITENING: Dict[str, str] = {
    "alexnet-gem-r": _WHITEN + "alexnet-gem-r-rwhiten-c8cf7e2.pth",
    "vgg16-gem-r": _WHITEN + "vgg16-gem-r-rwhiten-19b204e.pth",
    "resnet101-mac-r": _WHITEN + "resnet101-mac-r-rwhiten-7f1ed8c.pth",
    "resnet101-gem-r": _WHITEN + "resnet101-gem-r-rwhiten-adace84.pth",
}
FINAL_WHITENING: Dict[str, str] = {
    "alexnet-gem": _WHITEN + "alexnet-gem-whiten-454ad53.pth",
    "alexnet-gem-r": _WHITEN + "alexnet-gem-r-whiten-4c9126b.pth",
    "vgg16-gem": _WHITEN + "vgg16-gem-whiten-eaa6695.pth",
    "vgg16-gem-r": _WHITEN + "vgg16-gem-r-whiten-83582df.pth",
    "resnet50-gem": _WHITEN + "resnet50-gem-whiten-f15da7b.pth",
    "resnet101-mac-r": _WHITEN + "resnet101-mac-r-whiten-9df41d3.pth",
    "resnet101-gem": _WHITEN + "resnet101-gem-whiten-22ab0c1.pth",
    "resnet101-gem-r": _WHITEN + "resnet101-gem-r-whiten-b379c0a.pth",
    "resnet101-gemmp": _WHITEN + "resnet101-gemmp-whiten-770f53c.pth",
    "resnet152-gem": _WHITEN + "resnet152-gem-whiten-abe7b93.pth",
    "densenet121-gem": _WHITEN + "densenet121-gem-whiten-79e3eea.pth",
    "densenet169-gem": _WHITEN + "densenet169-gem-whiten-6b2a76a.pth",
    "densenet201-gem": _WHITEN + "densenet201-gem-whiten-22ea45c.pth",
}
