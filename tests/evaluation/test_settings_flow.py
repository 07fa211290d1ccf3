"""How far `evaluate`'s settings travel: the calls that receive them, traced, in few modules
and few climbs back up the layers (issue 39: at most 10 modules, at most 3 climbs).

The counting rules:

- ``evaluate`` runs under ``sys.settrace`` (the call events ``sys.setprofile`` also gives,
  without those of C functions); every call of a Python function whose code is in a file of
  the package (``aml/**/*.py``) is looked at, with the values of its parameters as it starts.
  The methods that ``dataclass`` writes (``__init__``, ``__eq__``, ...) have no file and store
  fields only: they are not looked at.
- A call *receives the settings* when one of its parameters other than ``self`` and ``cls``
  is named like the settings or one of their parts (``settings``, ``config``, ``data_root``,
  ``extraction``, ``request``, ``reranking``, ``key``; whatever the value, None aside) or
  holds one of their types (`TestSettings`, `ExtractionConfig`, `DataRoot`, `Reranking`; also
  among ``*args`` and ``**kwargs``). The
  values resolved from them (images, ground truth, folders, a plan, descriptors) are not the
  settings: a call that takes only those does not count, as a call of the settings' own
  methods (``settings.but``, ``root.subdir``) does not.
- The *modules* are the files of the calls that receive the settings.
- The *layers* are docs/design.md's (`tests.test_layering.RANKS`: ``data`` 1, ``descriptors``
  3, ``evaluation`` 4, ...). A *climb* is a call that receives the settings in a higher layer
  than the one before it that did (in the order they run): the settings went down, came
  back, and go down again.

The test runs `evaluate` on synth-oxford and synth-paris with the synthetic distractor set
(``synth-paris+synth1m``), whitening learned on synth-sfm and αQE (``--qe 2``), symmetric and
asymmetric, first with nothing cached or stored (the whitening learned, the database and the
distractors encoded), then again with everything found. It counted 11 modules and 15 climbs
(14 with everything found) when evaluate read each test set as its turn came, and counts 8
and 2 since it reads everything first (`aml.evaluation.plan.TestPlan`).
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch

import aml
from aml.data.paths import DataRoot
from aml.data.synthetic import SyntheticDistractorConfig, generate_distractor_set
from aml.descriptors import ExtractionConfig
from aml.evaluation import Reranking, TestSettings, evaluate
from aml.networks import build_network, load_named_or_file
from aml.networks.checkpoint import checkpoint_state, save_checkpoint
from tests.test_layering import RANKS

NAMES = frozenset({"settings", "config", "data_root", "extraction", "request", "reranking", "key"})
PARTS = (TestSettings, ExtractionConfig, DataRoot, Reranking)
PACKAGE = Path(aml.__file__).resolve().parent
MOST_MODULES, MOST_CLIMBS = 10, 3


def _module(filename: str) -> Optional[str]:
    """``aml.x.y`` of a file of the package, None for any other file."""
    path = Path(filename)
    if path.suffix != ".py" or PACKAGE not in path.parents:
        return None
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("aml",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def _receives_settings(frame) -> bool:
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)  # *args, **kwargs
    values = frame.f_locals
    for name in code.co_varnames[:count]:
        if name in ("self", "cls"):
            continue
        value = values.get(name)
        if (name in NAMES and value is not None) or isinstance(value, PARTS):
            return True
        if isinstance(value, (tuple, dict)):  # *args, **kwargs
            items = value.values() if isinstance(value, dict) else value
            if any(isinstance(item, PARTS) for item in items):
                return True
    return False


@dataclass
class SettingsTrace:
    """The calls that received the settings, in order: (module, function)."""

    calls: List[Tuple[str, str]]

    @property
    def modules(self) -> List[str]:
        return list(dict.fromkeys(module for module, _ in self.calls))

    def layer(self, module: str) -> int:
        return RANKS[module.split(".")[1]]

    @property
    def climbs(self) -> List[Tuple[str, str]]:
        """Each call that went back up, as 'from -> to'."""
        return [
            (f"{before[0]}.{before[1]}", f"{after[0]}.{after[1]}")
            for before, after in zip(self.calls, self.calls[1:])
            if self.layer(after[0]) > self.layer(before[0])
        ]


def trace_settings(run) -> Tuple[object, SettingsTrace]:
    """``run()`` with the calls that receive the settings recorded."""
    calls: List[Tuple[str, str]] = []

    modules: Dict[str, Optional[str]] = {}  # by file name

    def trace(frame, event, arg):  # called at each Python call; None: no tracing inside it
        filename = frame.f_code.co_filename
        module = modules[filename] if filename in modules else modules.setdefault(filename, _module(filename))
        if module is not None and _receives_settings(frame):
            calls.append((module, frame.f_code.co_name))

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        result = run()
    finally:
        sys.settrace(previous)
    return result, SettingsTrace(calls)


@pytest.fixture
def private_root(synth_root, tmp_path) -> Path:
    """A data root with synth_root's test and training sets and a synthetic distractor set, and
    nothing cached or stored yet."""
    generate_distractor_set(synth_root, "synth-1m", SyntheticDistractorConfig(images=150, image_size=64))
    root = tmp_path / "data"
    root.mkdir()
    for folder in ("test", "train"):
        (root / folder).symlink_to(synth_root / folder, target_is_directory=True)
    return root


def _network(folder: Path, seed: int):
    torch.manual_seed(seed)
    net = build_network("resnet18", pretrained=False)
    return load_named_or_file(str(save_checkpoint(checkpoint_state(net, 0, 0.0), folder / f"net{seed}.pth.tar")))


@pytest.mark.parametrize("asymmetric", [False, True], ids=["symmetric", "asymmetric"])
def test_the_settings_flow_down_through_few_modules(private_root, tmp_path, asymmetric):
    student = _network(tmp_path, 0)
    teacher = _network(tmp_path, 1) if asymmetric else None
    settings = TestSettings(
        datasets=("synth-oxford", "synth-paris+synth1m"),
        image_size=32,
        whitening="synth-sfm",
        extraction=ExtractionConfig(workers=0, device="cpu"),
        data_root=private_root,
        reranking=Reranking(qe=2),
    )
    for run in ("nothing cached", "everything cached"):
        results, trace = trace_settings(lambda: evaluate(student, settings, teacher))
        searches = ["plain", "plain + αqe2", "whiten", "whiten + αqe2", "distractors"]
        assert list(results["synth-paris+synth1m"].record()) == searches
        # the trace saw the settings go where they must: extraction, the store, the searches
        assert {"aml.descriptors.extraction", "aml.descriptors.store", "aml.evaluation.reranking"} <= set(
            trace.modules
        ), trace.modules
        assert len(trace.modules) <= MOST_MODULES, f"{run}: {len(trace.modules)} modules: {trace.modules}"
        climbs = "\n".join(f"{a} -> {b}" for a, b in trace.climbs)
        assert len(trace.climbs) <= MOST_CLIMBS, f"{run}: {len(trace.climbs)} climbs:\n{climbs}"
    assert (tmp_path / f"net{1 if asymmetric else 0}.pth.tar_synth-sfm_whiten_32.pth").exists()  # learned, then read


def test_a_call_with_the_settings_or_a_part_counts_and_a_climb_is_a_call_higher_up(tmp_path):
    """The counting itself, on calls made by hand."""
    from aml.data.paths import data_subdir
    from aml.descriptors.extraction import resolve_amp

    root = DataRoot.resolve(tmp_path)
    _, trace = trace_settings(
        lambda: (
            root.subdir("test"),  # the settings' own method: not counted
            resolve_amp(None, torch.device("cpu")),  # no settings
            ExtractionConfig(workers=0).pixel_path(),  # a method, which calls functions without settings
            data_subdir(root, "test"),  # a part by name and type, in layer 1, which resolves it again
        )
    )
    assert trace.calls == [("aml.data.paths", "data_subdir"), ("aml.data.paths", "resolve")]
    trace = SettingsTrace(
        [
            ("aml.data.paths", "a"),
            ("aml.descriptors.cache", "b"),
            ("aml.data.paths", "c"),
            ("aml.evaluation.testing", "d"),
            ("aml.evaluation.reranking", "e"),
        ]
    )
    assert trace.modules == [
        "aml.data.paths",
        "aml.descriptors.cache",
        "aml.evaluation.testing",
        "aml.evaluation.reranking",
    ]
    assert [after for _, after in trace.climbs] == ["aml.descriptors.cache.b", "aml.evaluation.testing.d"]
