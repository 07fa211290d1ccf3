"""One error base: every error aml raises for its user derives from AmlError, the command
lines turn it (and only it, with the OS cases) into one line, and every registry lookup
refuses an unknown name the same way."""

import importlib
import inspect
import pkgutil
from typing import Tuple

import pytest

import aml
from aml.cli.arguments import run_cli
from aml.utils.errors import AmlError, ConfigError, DataError, lookup

#: exceptions of aml that are not meant for users: raised and caught inside one module
INTERNAL = {"aml.training.trainer._NonFiniteLoss", "aml.cli.arguments.Terminated"}


def _error_classes():
    found = {}
    for module in pkgutil.walk_packages(aml.__path__, "aml."):
        if module.name.endswith("__main__"):
            continue
        for name, obj in vars(importlib.import_module(module.name)).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.name:
                found[f"{module.name}.{name}"] = obj
    return found


def test_every_error_class_of_the_package_derives_from_aml_error():
    classes = _error_classes()
    assert len(classes) >= 16
    stray = sorted(name for name, cls in classes.items() if name not in INTERNAL and not issubclass(cls, AmlError))
    assert not stray, stray


def test_every_error_class_pickles_to_the_same_message():
    """torchrun hands rank 0's error to the other ranks pickled (from_main): a StoreDamaged came
    back with its default fix added to the message again ('delete the store' for one shard)."""
    import pickle

    samples = {str: "x", int: 1, float: 1.0, Tuple[int, ...]: (1, 2)}
    for name, cls in _error_classes().items():
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        own = cls.__init__ is not BaseException.__init__ and parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        values = [samples.get(p.annotation, "x") for p in parameters if p.default is inspect.Parameter.empty] if own \
            else ["a message"]
        made = cls(*values)
        again = pickle.loads(pickle.dumps(made))
        assert type(again) is cls and str(again) == str(made), name


def test_the_errors_keep_their_builtin_kind():
    from aml.data.download import DownloadError
    from aml.data.safe_pickle import UnsafePickleError
    from aml.search import StoreError
    import pickle

    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(StoreError, ValueError) and issubclass(DownloadError, RuntimeError)
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


def test_no_module_raises_a_bare_file_not_found_for_its_user():
    """A missing file of aml's (a data set, a feature file, a store's shard, the photos' wheel)
    raised a builtin FileNotFoundError, outside the one error base: it is a MissingFile, which
    is both."""
    import ast
    from pathlib import Path

    from aml.descriptors.files import load_feature_file
    from aml.utils.errors import MissingFile

    bare = []
    for path in Path(aml.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                if getattr(node.exc.func, "id", None) in ("FileNotFoundError", "RuntimeError", "OSError"):
                    bare.append(f"{path.name}:{node.lineno}")
    assert not bare, bare
    assert issubclass(MissingFile, AmlError) and issubclass(MissingFile, FileNotFoundError)
    with pytest.raises(MissingFile, match="feature file no/such.npy does not exist; create it with extract_features"):
        load_feature_file(Path("no/such.npy"), 3)


def _raising(error):
    def main():
        raise error
    return main


def test_run_cli_turns_a_users_error_into_one_line():
    with pytest.raises(SystemExit) as info:
        run_cli(_raising(ConfigError("--lr -1: must be a positive finite number")))
    assert info.value.code == "error: --lr -1: must be a positive finite number"
    with pytest.raises(SystemExit) as info:
        run_cli(_raising(FileNotFoundError("no/such/file.jpg")))
    assert info.value.code == "error: no/such/file.jpg"


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("adam"), TypeError("a bug"), RuntimeError("a bug")])
def test_run_cli_shows_the_traceback_of_a_bug(bug):
    with pytest.raises(type(bug)):
        run_cli(_raising(bug))


def test_every_registry_lookup_refuses_an_unknown_name_with_the_choices():
    from aml.data.distractors import prepare_distractors
    from aml.losses import build_loss
    from aml.networks.backbones import get_backbone
    from aml.networks.retrieval_net import build_network
    from aml.training.modes import check_loss_mode, get_mode
    from aml.training.optim import build_optimizer

    refusals = {
        "loss 'nope'; choose one of bct, contrastive": lambda: build_loss("nope"),
        "loss 'nope'; choose one of bct": lambda: check_loss_mode("nope", "std"),
        "optimizer 'adamw'; choose one of adam, sgd": lambda: build_optimizer(
            build_network("resnet18", pretrained=False), "adamw", 1e-3, 0.9, 0.0),
        "training mode 'nope'; choose one of rand, rand_tpl": lambda: get_mode("nope"),
        "architecture 'resnet9'; choose one of ": lambda: get_backbone("resnet9"),
        "pooling 'max'; choose one of gem, gemmp": lambda: build_network("resnet18", "max", pretrained=False),
        "distractor set '2m'; choose one of 1m, synth1m": lambda: prepare_distractors("2m"),
    }
    for message, call in refusals.items():
        with pytest.raises(ConfigError, match="unknown " + message):
            call()


def test_lookup_lists_the_choices_in_the_order_given():
    with pytest.raises(ConfigError, match="unknown decoding 'gpu'; choose one of auto, pil"):
        lookup({"pil": 1}, "gpu", "decoding", ["auto", "pil"])
