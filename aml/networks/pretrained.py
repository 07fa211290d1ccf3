"""Published weights as data: retrieval networks (teachers and students) and the learned
linear layers (local, regional and final whitening) of cirtorch."""

from dataclasses import dataclass
from typing import Dict, Optional

CIRTORCH = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/"
AML = "http://files.inria.fr/aml/"


@dataclass(frozen=True)
class PretrainedNetwork:
    """One entry of the pretrained list: checkpoint URL, kind, teacher, optional whitening."""

    name: str
    url: str
    kind: str  # "teacher" (cirtorch network) or "student" (aml)
    teacher: Optional[str] = None  # the teacher a student was trained against, when any
    whitening_url: Optional[str] = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


def _cirtorch_networks() -> Dict[str, PretrainedNetwork]:
    files = {
        "retrievalSfM120k-vgg16-gem": "retrieval-SfM-120k/retrievalSfM120k-vgg16-gem-b4dcdc6.pth",
        "retrievalSfM120k-resnet101-gem": "retrieval-SfM-120k/retrievalSfM120k-resnet101-gem-b80fb85.pth",
        "rSfM120k-tl-resnet50-gem-w": "retrieval-SfM-120k/rSfM120k-tl-resnet50-gem-w-97bf910.pth",
        "rSfM120k-tl-resnet101-gem-w": "retrieval-SfM-120k/rSfM120k-tl-resnet101-gem-w-a155e54.pth",
        "rSfM120k-tl-resnet152-gem-w": "retrieval-SfM-120k/rSfM120k-tl-resnet152-gem-w-f39cada.pth",
        "gl18-tl-resnet50-gem-w": "gl18/gl18-tl-resnet50-gem-w-83fdc30.pth",
        "gl18-tl-resnet101-gem-w": "gl18/gl18-tl-resnet101-gem-w-a4d43db.pth",
        "gl18-tl-resnet152-gem-w": "gl18/gl18-tl-resnet152-gem-w-21278d5.pth",
    }
    return {name: PretrainedNetwork(name, CIRTORCH + "networks/" + path, "teacher") for name, path in files.items()}


def _student(name: str, teacher: Optional[str], url_stem: Optional[str] = None, suffix: str = ".pth.tar") -> PretrainedNetwork:
    stem = url_stem or name.replace("-", "_")
    return PretrainedNetwork(name, AML + stem + suffix, "student", teacher, AML + stem + "_whitening.pth")


def _aml_students() -> Dict[str, PretrainedNetwork]:
    students = {}
    for arch in ("efficientnet-b3", "mobilenet-v2"):
        for method in ("contr-plus", "reg", "contr", "dark", "ms", "rkd", "triplet"):
            for teacher in ("resnet101", "vgg16"):
                name = f"{arch}-gem-{method}-{teacher}"
                students[name] = _student(name, teacher)
    # Teacher-free (std mode) students; efficientnet's names use an underscore before the dim.
    for name in ("efficientnet-b3-gem-contr_2048", "efficientnet-b3-gem-contr_512",
                 "mobilenet-v2-gem-contr-2048", "mobilenet-v2-gem-contr-512"):
        students[name] = _student(name, None)
    # The original list points this one at a typo'd '.pthaa.tar'; the file is '.pth.tar'.
    return students


#: every name of the original test.py list, plus nothing else.
PRETRAINED: Dict[str, PretrainedNetwork] = {**_cirtorch_networks(), **_aml_students()}

#: teacher name (the --teacher flag) -> pretrained network and descriptor dimension.
TEACHERS: Dict[str, str] = {"vgg16": "retrievalSfM120k-vgg16-gem", "resnet101": "retrievalSfM120k-resnet101-gem"}
TEACHER_DIMS: Dict[str, int] = {"vgg16": 512, "resnet101": 2048}


def student_dimension(network: PretrainedNetwork) -> Optional[int]:
    """Descriptor dimension of a published student (from its teacher or its name)."""
    if network.teacher:
        return TEACHER_DIMS[network.teacher]
    for dim in (2048, 512):
        if network.name.endswith(str(dim)):
            return dim
    return None


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
