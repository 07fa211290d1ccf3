"""Argument helpers shared by the command lines: safe scale lists, devices, data root."""

import argparse
import ast
import contextlib
import logging
import operator
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from aml.utils.devices import DeviceError, parse_device
from aml.utils.atomic import NOT_WRITABLE, is_disk_full
from aml.utils.bounds import (
    NONNEGATIVE_FLOAT,
    NONNEGATIVE_INT,
    POSITIVE_FLOAT,
    MAX_SCALES,
    POSITIVE_INT,
    UNIT_INTERVAL,
    Bound,
    bound_of,
    scales_problem,
)
from aml.utils.distributed import DEFAULT_TIMEOUT_S, current_rank, is_peer_failure, launched_by_torchrun, shutdown
from aml.utils.errors import AmlError, ConfigError, SettingsError, path_problem, paths_of

if TYPE_CHECKING:
    from aml.descriptors import ExtractionConfig

_BINARY: Dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: Dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


#: where flags go: a parser, or one of its argument groups (a heading in --help)
Flags = Union[argparse.ArgumentParser, argparse._ArgumentGroup]


def _number(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _number(node.left), _number(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("an exponent must lie within -64 and 64")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(node.operand))
    raise ValueError(f"not a number: {ast.dump(node)}")


MAX_SCALES_TEXT = 400  # characters of a --multiscale list: its scales, each an expression of a few numbers


def parse_scales(text: str) -> List[float]:
    """'[1, 1/2**(1/2), 1/2]' -> [1.0, 0.7071..., 0.5] without eval: only numbers and
    + - * / ** are allowed, in a list, a tuple or alone."""
    if len(text) > MAX_SCALES_TEXT:  # the parser recurses per term: thousands of them overflow its stack
        raise argparse.ArgumentTypeError(
            f"--multiscale of {len(text)} characters: a list of at most {MAX_SCALES} scales takes at most "
            f"{MAX_SCALES_TEXT}, such as '[1, 1/2**(1/2), 1/2]'"
        )
    try:
        tree = ast.parse(text.strip(), mode="eval").body
        items = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
        scales = [_number(item) for item in items]
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, MemoryError) as err:
        raise argparse.ArgumentTypeError(
            f"--multiscale {text!r} is not a list of numbers such as '[1, 1/2**(1/2), 1/2]' ({err})"
        ) from None
    problem = scales_problem(scales)
    if problem:
        raise argparse.ArgumentTypeError(f"--multiscale {text!r}: {problem}")
    return scales


def flag_type(bound: Bound) -> Callable[[str], Any]:
    """The argparse ``type`` of a flag whose values lie in ``bound`` (its error names the range)."""

    def convert(text: str) -> Any:
        try:
            return bound.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = bound.what
    return convert


def field_type(cls: type, name: str) -> Callable[[str], Any]:
    """The argparse ``type`` of the flag of a config field declared with a range
    (`aml.utils.bounds.bounded`): the range is the field's, held once."""
    return flag_type(bound_of(cls, name))


positive_int = flag_type(POSITIVE_INT)
nonnegative_int = flag_type(NONNEGATIVE_INT)
positive_float = flag_type(POSITIVE_FLOAT)
nonnegative_float = flag_type(NONNEGATIVE_FLOAT)
unit_interval = flag_type(UNIT_INTERVAL)


def _file_above(path: Path) -> Path:
    """The nearest existing path above ``path``: a folder, or a file where a folder must be."""
    for above in path.absolute().parents:
        if above.exists() or above.is_symlink():
            return above
    return Path("/")


def _check_above(text: str, path: Path) -> None:
    """Refuse a path that cannot be created: a file stands where a folder above it must be."""
    above = _file_above(path)
    if above.is_symlink() and not above.exists():
        raise argparse.ArgumentTypeError(
            f"{text}: {above} is a link that leads nowhere (to a missing path, or round a loop of links); mend or "
            "remove the link, or give another path"
        )
    if not above.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text}: {above} is a file, not a folder, so nothing can be written under it; give another path"
        )


def folder(text: str) -> str:
    """A folder that exists or can be created: refuses a path that is a file, or under one, and
    a link that leads nowhere (dangling, or a loop: nothing can be created there)."""
    path = Path(text)
    if path.is_symlink() and not path.exists():
        raise argparse.ArgumentTypeError(
            f"{text} is a link that leads nowhere (to a missing path, or round a loop of links); give a folder, or "
            "mend or remove the link"
        )
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder; give a folder (it is created if missing)")
    _check_above(text, path)
    return text


def _check_writable(text: str, path: Path) -> None:
    """Refuse a path under a folder this user cannot write in (read-only, or another user's)."""
    above = path if path.is_dir() else _file_above(path)
    if not os.access(above, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"{text}: this user cannot write in {above} (read-only, or another user's); give a path you can write to"
        )


def output_folder(text: str) -> str:
    """A `folder` that a command writes into, refused at parse time when this user cannot
    write there (a read-only mount), so that no command finds out after its work."""
    folder(text)
    _check_writable(text, Path(text))
    return text


def results_folder(text: str) -> str:
    """An `output_folder` for a command's results (a report, a run folder), refused when it is,
    or lies in, a search store: the store's next indexing would refuse the folder for it."""
    from aml.search.store import store_holding

    output_folder(text)
    store = store_holding(text)
    if store is not None:
        raise argparse.ArgumentTypeError(f"{text} is in the store {store}, which it would break; write it elsewhere")
    return text


def input_folder(text: str) -> str:
    """The argparse ``type`` of a folder a command reads (``--images``, ``--store``): refuses a
    path that is a file; whether it exists is checked after parsing (`check_input_folders`)."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder; give a folder")
    return text


def check_input_folders(parser: argparse.ArgumentParser, args: argparse.Namespace, holding: Dict[str, str]) -> None:
    """Refuse, as the parser's one-line error, a folder the command reads from (an
    `input_folder`, so never a file) that does not exist, so that a mistyped one is named as
    such rather than as every image below it missing (checked after parsing: the docs'
    commands parse anywhere).

    Args:
        parser: the command's parser.
        args: its parsed flags.
        holding: flag -> what its folder holds ("the images"), for the fix.
    """
    for flag, what in holding.items():
        text = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if text is None:
            continue
        if not Path(text).exists():
            parser.error(f"argument {flag}: {text} does not exist; give the folder that holds {what}")


def device_name(text: str) -> str:
    """A device aml runs on (auto, cpu, cuda, cuda:N, mps), refused at parse time when it is not
    one; whether this machine has it is known when the command starts (`resolve_device`)."""
    if text != "auto":
        try:
            parse_device(text)
        except DeviceError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return text


def output_file(text: str, example: str = "results.json") -> str:
    """A file that can be written (replaced if it exists): refuses a folder, a path under a
    file and one in a folder this user cannot write to, so that a command does not find out
    after its work; ``example`` is the file name the messages suggest."""
    if not text.strip():  # Path("") is the working folder: "is a folder" named nothing
        raise argparse.ArgumentTypeError(f"the file name is empty; give one (e.g. {example})")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name (e.g. {Path(text) / example})")
    _check_above(text, path)
    _check_writable(text, path)
    return text


#: how a file of each kind a command writes begins: an existing file that begins otherwise
#: (a checkpoint, an image, a store's descriptors) is not the command's to replace
OUTPUT_KINDS: Dict[str, str] = {"JSON": "a JSON file", "PNG": "a PNG image"}  # `aml.utils.plain_files.FILE_KINDS`
#: the file name each kind's messages suggest
_EXAMPLE_NAMES: Dict[str, str] = {"JSON": "results.json", "PNG": "heatmap.png"}


def _owner(path: Path) -> Optional[str]:
    """What of aml's ``path`` would break: any file in a store's folder (the next indexing
    refuses files that are not the store's), a run folder's history, a feature file's
    settings (what checks its provenance), or an export's int8 report (its measurements);
    None: nothing."""
    from aml.export.report import INT8_REPORT
    from aml.export.student import EXPORTED_FILES
    from aml.reports.curves import HISTORY
    from aml.training.run_folder import LOSS_LOG

    from aml.search.store import store_holding

    folder = path.absolute().parent
    store = store_holding(path.parent)
    if store is not None:
        return f"in the store {store}"
    if path.name == HISTORY and (folder / LOSS_LOG).exists():
        return f"in the run folder {folder}"
    if path.name == INT8_REPORT and any((folder / name).is_file() for name in EXPORTED_FILES.values()):
        return f"the int8 report of the export in {folder}"
    if path.name.endswith(".npy.json") and path.with_name(path.name[: -len(".json")]).is_file():
        return f"the settings of the feature file {path.with_name(path.name[: -len('.json')])} (its provenance)"
    return None


def output_file_of(kind: str) -> Callable[[str], str]:
    """The argparse ``type`` of an output file of ``kind`` (a name of `OUTPUT_KINDS`): an
    `output_file` that, when it exists and is not empty, must be a file of that kind, so that
    a slip of the tab key (``--results model_best.pth.tar``) never replaces a user's file."""
    from aml.utils.plain_files import begins_as

    def looks_right(head: bytes) -> bool:
        return begins_as(head, OUTPUT_KINDS[kind])

    def convert(text: str) -> str:
        output_file(text, _EXAMPLE_NAMES[kind])
        path = Path(text)
        owner = _owner(path)
        if owner is not None:
            raise argparse.ArgumentTypeError(f"{text} is {owner}, which it would break; write it elsewhere")
        if not path.is_file():
            return text
        try:
            with open(path, "rb") as handle:
                head = handle.read(64)
        except OSError as err:
            raise argparse.ArgumentTypeError(f"{text}: cannot read it to check what it is ({err.strerror})") from None
        if head.strip() and not looks_right(head):
            raise argparse.ArgumentTypeError(
                f"{text} exists and is not a {kind} file: it is not replaced; give another file name"
            )
        return text

    convert.__name__ = f"{kind} file"
    return convert


@dataclass(frozen=True)
class IgnoredFlag:
    """A flag that other flags make meaningless: given then (a value other than the command's
    default), the command refuses it rather than ignore it.

    Attributes:
        flag: the flag as typed.
        dest: its attribute in the parsed flags (a command without it is not concerned).
        ignored: whether the other flags make it meaningless.
        why: why, said after the flag.
    """

    flag: str
    dest: str
    ignored: Callable[[argparse.Namespace], bool]
    why: str

    def problem(self, args: argparse.Namespace, defaults: Dict[str, Any]) -> Optional[str]:
        """The refusal of this flag in ``args`` (``defaults``: the command's, by attribute), or None."""
        if self.dest not in defaults or getattr(args, self.dest) == defaults[self.dest] or not self.ignored(args):
            return None
        return f"{self.flag} {getattr(args, self.dest)}: {self.why}; leave it out"


def _without_distractors(args: argparse.Namespace) -> bool:
    """A command of test sets with distractors (test.py, aml.compat) given none."""
    from aml.data.distractors import SEPARATOR

    return hasattr(args, "distractor_dtype") and SEPARATOR not in args.datasets


def _with_onnx(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "onnx", None))


def _onnx_with_workers(args: argparse.Namespace) -> bool:
    return _with_onnx(args) and args.workers > 0


def _onnx_on_a_gpu(args: argparse.Namespace) -> bool:
    return _with_onnx(args) and args.device != "cpu"


def _without_amp(args: argparse.Namespace) -> bool:
    """--no-amp, or a named device other than CUDA without --amp (autocast on CUDA only)."""
    device = str(getattr(args, "device", "auto"))
    off_cuda = device != "auto" and not device.startswith("cuda") and getattr(args, "amp", None) is None
    return getattr(args, "amp", None) is False or off_cuda


def _named_device(args: argparse.Namespace) -> bool:
    return getattr(args, "device", "auto") != "auto"


def _no_report(args: argparse.Namespace) -> bool:
    return not getattr(args, "report", None)


#: the flags other flags make meaningless, for every command (`Parser` refuses them)
IGNORED_FLAGS = (
    IgnoredFlag("--amp-dtype", "amp_dtype", _without_amp, "--no-amp, or a device other than CUDA, encodes in float32"),
    IgnoredFlag(
        "--gpu-id", "gpu_id", _named_device, "it picks the GPU of --device auto; --device names its own (cuda:N)"
    ),
    IgnoredFlag("--report-top", "report_top", _no_report, "it sets what --report shows"),
    IgnoredFlag(
        "--distractor-dtype",
        "distractor_dtype",
        _without_distractors,
        "only a distractor set's descriptors are stored (--datasets NAME+1m)",
    ),
    IgnoredFlag(
        "--shard-size",
        "shard_size",
        _without_distractors,
        "only a distractor set's descriptors are stored in shards (--datasets NAME+1m)",
    ),
    IgnoredFlag("--device", "device", _onnx_on_a_gpu, "--onnx runs the student in onnxruntime on the CPU"),
    IgnoredFlag("--workers", "workers", _onnx_with_workers, "--onnx reads the query images in this process"),
    IgnoredFlag("--gpu-id", "gpu_id", _with_onnx, "--onnx runs the student in onnxruntime on the CPU"),
)


def _defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Dict[str, Any]:
    """The defaults of ``parser``'s flags by attribute, those of the sub-command ``args`` chose included."""
    found: Dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(str(getattr(args, action.dest, "")))
            found.update(_defaults(chosen, args) if chosen is not None else {})
        elif action.dest != argparse.SUPPRESS:
            found.setdefault(action.dest, action.default)
    return found


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the usage stays behind --help), said once
    per machine under torchrun (every process of a machine reads the same flags and files),
    and which refuses a flag that the others make meaningless (`IGNORED_FLAGS`)."""

    def error(self, message: str):
        said = not launched_by_torchrun() or int(os.environ.get("LOCAL_RANK") or 0) == 0
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n" if said else None)

    def parse_args(self, args=None, namespace=None):
        """The parsed flags; an error for a flag that the others make meaningless."""
        parsed = super().parse_args(args, namespace)
        defaults = _defaults(self, parsed)
        for rule in IGNORED_FLAGS:
            problem = rule.problem(parsed, defaults)
            if problem:
                self.error(problem)
        return parsed


def add_runtime_arguments(parser: Flags, distributed: bool = True) -> None:
    """--data-root, --device and --quiet, which every command takes, and --dist-timeout for the
    commands that run under torchrun (``distributed``)."""
    parser.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        type=folder,
        help="data root for datasets, weights and features (default: $AML_DATA_ROOT or ./data)",
    )
    parser.add_argument(
        "--device", default="auto", type=device_name, help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars (log lines stay)")
    if not distributed:
        return
    parser.add_argument(
        "--dist-timeout",
        default=DEFAULT_TIMEOUT_S,
        type=positive_float,
        metavar="SECONDS",
        help="under torchrun: how long a process waits for the others (at a gather or a gradient "
        f"reduction) before it stops with an error (default: {DEFAULT_TIMEOUT_S})",
    )


def refuse_torchrun(parser: argparse.ArgumentParser) -> None:
    """End a command that runs as one process when torchrun started several: each would do the
    whole work and write the same files."""
    if int(os.environ.get("WORLD_SIZE", "1") or "1") > 1:
        parser.error(f"{parser.prog} runs as one process; start it without torchrun")


def add_image_size_arguments(parser: Flags) -> None:
    """--image-size and --multiscale: the size and the scales images are encoded at."""
    parser.add_argument(
        "--image-size",
        "-imsize",
        default=1024,
        type=positive_int,
        metavar="N",
        help="maximum size of the longer image side (default: 1024)",
    )
    parser.add_argument(
        "--multiscale",
        "-ms",
        metavar="MULTISCALE",
        default="[1]",
        type=parse_scales,
        help="scales, e.g. '[1, 1/2**(1/2), 1/2]' (default: '[1]')",
    )


def add_worker_arguments(parser: Flags) -> None:
    """--workers (image loading workers, 8 by default) and --gpu-id (the GPU of --device auto)."""
    parser.add_argument(
        "--workers",
        "-j",
        default=8,
        type=nonnegative_int,
        metavar="N",
        help="image loading workers; on the CPU at most the cores torch's threads leave free (default: 8)",
    )
    parser.add_argument("--gpu-id", "-g", default="0", metavar="N", help="GPU id used with --device auto (default: 0)")


def add_test_set_arguments(parser: Flags) -> None:
    """What test.py and python -m aml.compat test on, and at which size: --datasets (with their
    distractor sets), --distractor-dtype, --shard-size, --image-size, --multiscale and
    --whitening; `checked_test_sets` reads the names."""
    from aml.data.distractors import DISTRACTOR_SETS
    from aml.data.testsets import TEST_SETS
    from aml.data.trainsets import whitening_set_names

    parser.add_argument(
        "--datasets",
        "-d",
        metavar="DATASETS",
        default="roxford5k,rparis6k",
        help=f"comma separated test sets: {', '.join(TEST_SETS)}, or any folder <data_root>/test/NAME "
        "with jpg/ and gnd_NAME.pkl; add a distractor set with '+': "
        f"{', '.join('NAME+' + d for d in DISTRACTOR_SETS)} (1m = the revisitop 1M distractors) "
        "(default: roxford5k,rparis6k)",
    )
    parser.add_argument(
        "--distractor-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="how distractor descriptors are stored on disk: float16 halves the disk and the reads, "
        "and rounds the scores (default: float32)",
    )
    parser.add_argument(
        "--shard-size",
        default=16384,
        type=positive_int,
        metavar="N",
        help="distractor images per shard of the descriptor store (default: 16384)",
    )
    add_image_size_arguments(parser)
    parser.add_argument(
        "--whitening",
        "-w",
        metavar="WHITENING",
        default=None,
        help=f"learned whitening set: {' | '.join(whitening_set_names())}, or a custom set made by "
        "python -m aml.cli.make_trainset (default: none)",
    )


def comma_names(flag: str, text: str, what: str) -> List[str]:
    """The names of a comma separated flag (``--datasets a,b``), each given once.

    Args:
        flag: the flag, for the message.
        text: its value as typed.
        what: what it names (``"test set"``), for the message.

    Returns:
        The names, in the order given (empty names, as in ``a,,b``, left out).

    Raises:
        ConfigError: when it names nothing, or one name twice (it would be run twice, and is
            most often a slip for another name).

    Examples:
        >>> from aml.cli.arguments import comma_names
        >>> comma_names("--datasets", "roxford5k,,rparis6k", "test set")
        ['roxford5k', 'rparis6k']
        >>> comma_names("--datasets", "roxford5k,roxford5k", "test set")
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: --datasets 'roxford5k,roxford5k' names roxford5k twice; give each test set once
    """
    names = [name for name in text.split(",") if name]
    if not names:
        raise ConfigError(f"{flag} {text!r} names no {what}; give one or more, comma separated")
    twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:
        raise ConfigError(f"{flag} {text!r} names {twice} twice; give each {what} once")
    return names


def checked_test_sets(args: argparse.Namespace) -> List[str]:
    """The test sets of the flags of `add_test_set_arguments`, each a known or custom test set,
    and --whitening a set with whitening pairs.

    Args:
        args: the parsed flags.

    Returns:
        The test set names as the registry spells them (``ROxford5k`` is ``roxford5k``), with
        their ``+`` distractor suffixes.

    Raises:
        ConfigError: for no test set, one named twice (in any case) or an unknown one, or a
            whitening set without whitening pairs.
    """
    from aml.data.distractors import SEPARATOR, split_test_name
    from aml.data.testsets import get_test_set

    names = []
    for name in comma_names("--datasets", args.datasets, "test set"):
        test, suffix = split_test_name(name)
        names.append(get_test_set(test, args.data_root).name + (f"{SEPARATOR}{suffix}" if suffix else ""))
        if names[-1] in names[:-1]:
            raise ConfigError(f"--datasets {args.datasets!r} names {names[-1]} twice; give each test set once")
    if args.whitening:
        _check_whitening_set(args.whitening, args.data_root)
    return names


def _check_whitening_set(name: str, data_root: Optional[str]) -> None:
    """Refuse a --whitening that names no set with whitening pairs, naming the file it needs."""
    from aml.data.paths import resolve_data_root
    from aml.data.trainsets import get_train_set, whitening_set_names

    choose = f"choose from {', '.join(whitening_set_names())}"
    try:
        found = get_train_set(name, data_root).whitening
    except ConfigError:
        found = None
    if not found:
        folder = resolve_data_root(data_root) / "train" / name
        had = "has no whitening pairs" if found is not None else "is no training set"
        raise ConfigError(
            f"--whitening {name} {had}; {choose}, or make a folder {folder} with ims/ and {name}-whiten.pkl "
            "(python -m aml.cli.make_trainset)"
        )


def add_extraction_arguments(parser: Flags, training: bool = False) -> None:
    """How images become descriptors: --batch-size (unless ``training``, where it counts
    tuples), --amp/--no-amp, --amp-dtype, --decode and --compile."""
    from aml.descriptors import DECODE_CHOICES
    from aml.descriptors.extraction import AMP_DTYPES, CPU_PIXEL_BUDGET, GPU_BATCH_SIZE

    if not training:
        parser.add_argument(
            "--batch-size",
            default=None,
            type=positive_int,
            help=f"images per forward at extraction (default: {GPU_BATCH_SIZE} on CUDA; on the CPU "
            f"as many as fit in {CPU_PIXEL_BUDGET:,} pixels)",
        )
    if training:
        amp_help = (
            "bfloat16 autocast of the training forward passes (the losses in fp32); extraction (mining, the "
            "teacher, tests) autocasts to --amp-dtype on CUDA only, with or without --amp; --no-amp: fp32 "
            "everywhere (default: training in fp32)"
        )
    else:
        amp_help = "autocast of extraction to --amp-dtype; --no-amp: fp32 (default: on CUDA, off on the CPU)"
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help=amp_help)
    parser.add_argument(
        "--amp-dtype",
        choices=sorted(AMP_DTYPES),
        default="float16",
        help="dtype of extraction's autocast (default: float16, closer to fp32 than bfloat16; docs/speed.md)",
    )
    parser.add_argument(
        "--decode",
        choices=DECODE_CHOICES,
        default="auto",
        help="where images are decoded: pil (loader workers, normalised there: the original's way), "
        "workers (PIL in the workers, uint8 to the device, normalised there: the same pixels), "
        "device (JPEG bytes decoded in batches on the device, nvJPEG on CUDA, and resized with PIL's "
        "LANCZOS arithmetic: PIL's pixels on the CPU, close on CUDA); "
        "default auto: workers on CUDA, pil on the CPU",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network for extraction (pays on large sets; see docs/speed.md)",
    )


def extraction_from(args: argparse.Namespace, device: Optional[str] = None) -> "ExtractionConfig":
    """The `aml.descriptors.ExtractionConfig` of the flags of `add_extraction_arguments`,
    ``--workers`` and ``--quiet``; a flag a command does not offer keeps its default.

    Args:
        args: the parsed flags.
        device: the compute device (None: the network's).

    Returns:
        How the command's images are encoded (progress bars unless ``--quiet``).
    """
    from aml.descriptors import ExtractionConfig

    return ExtractionConfig(
        workers=args.workers,
        device=device,
        batch_size=getattr(args, "batch_size", None),
        amp=getattr(args, "amp", None),
        amp_dtype=getattr(args, "amp_dtype", "float16"),
        decode=getattr(args, "decode", "auto"),
        compile=getattr(args, "compile", False),
        progress=not args.quiet,
    )


def add_reranking_arguments(parser: Flags, qe: bool = True, dba: bool = True, superglobal: bool = True) -> None:
    """--qe/--qe-alpha (alpha query expansion), --dba/--dba-alpha (database-side augmentation)
    and --superglobal/--sg-k/--sg-beta (SuperGlobal's re-ranking); `reranking_from` turns them
    into a `Reranking`."""
    from aml.evaluation.superglobal import PAPER_BETA, PAPER_K, PAPER_M

    if qe:
        parser.add_argument(
            "--qe",
            type=positive_int,
            default=None,
            metavar="K",
            help="alpha query expansion (αQE): each query plus its K nearest database images, "
            "weighted by their similarity to the power --qe-alpha, searched again; the neighbours "
            "are the database's descriptors (the teacher's in an asymmetric search) (default: off)",
        )
        parser.add_argument(
            "--qe-alpha",
            type=nonnegative_float,
            default=None,
            metavar="A",
            help="αQE's power of the similarities; 0 weighs every neighbour 1 (average query expansion) (default: 3)",
        )
    if dba:
        parser.add_argument(
            "--dba",
            type=positive_int,
            default=None,
            metavar="K",
            help="database-side augmentation (DBA): each database descriptor plus its K nearest other "
            "database images, weighted as in αQE, before the search (default: off)",
        )
        parser.add_argument(
            "--dba-alpha",
            type=nonnegative_float,
            default=None,
            metavar="A",
            help="DBA's power of the similarities (default: 3)",
        )
    if superglobal:
        parser.add_argument(
            "--superglobal",
            type=positive_int,
            default=None,
            metavar="M",
            help="SuperGlobal's re-ranking (Shao et al., ICCV 2023) of each query's first M results, "
            "last: each of them averaged with its --sg-k nearest among them, the query expanded by "
            f"the maximum of the first --sg-k + 1; the paper's M is {PAPER_M} (default: off)",
        )
        parser.add_argument(
            "--sg-k",
            type=nonnegative_int,
            default=None,
            metavar="K",
            help=f"SuperGlobal's neighbours per image (default: {PAPER_K}, the paper's)",
        )
        parser.add_argument(
            "--sg-beta",
            type=nonnegative_float,
            default=None,
            metavar="B",
            help=f"SuperGlobal's weight of the neighbours against the image itself (default: {PAPER_BETA:g}, "
            "the paper's)",
        )


def reranking_from(args: argparse.Namespace):
    """The `Reranking` of the flags of `add_reranking_arguments`; a ValueError names an alpha
    given without its K, a SuperGlobal setting without --superglobal, or --sg-beta with --sg-k 0."""
    from aml.evaluation.reranking import DEFAULT_ALPHA, Reranking
    from aml.evaluation.superglobal import PAPER_BETA, PAPER_K, SuperGlobal

    values: Dict[str, Any] = {}
    for name in ("qe", "dba"):
        k, alpha = getattr(args, name, None), getattr(args, f"{name}_alpha", None)
        if alpha is not None and k is None:
            raise ConfigError(f"--{name}-alpha {alpha:g} without --{name}: give --{name} K too")
        values[name] = k or 0
        values[f"{name}_alpha"] = DEFAULT_ALPHA if alpha is None else alpha
    m, k, beta = (getattr(args, name, None) for name in ("superglobal", "sg_k", "sg_beta"))
    for flag, value in (("--sg-k", k), ("--sg-beta", beta)):
        if value is not None and m is None:
            raise ConfigError(f"{flag} {value:g} without --superglobal: give --superglobal M too")
    if k == 0 and beta is not None:
        raise ConfigError(f"--sg-beta {beta:g} with --sg-k 0: no neighbour is weighed; give --sg-k 1 or more")
    if m is not None:
        values["superglobal"] = SuperGlobal(m, PAPER_K if k is None else k, PAPER_BETA if beta is None else beta)
    return Reranking(**values)


def command_of(program: str, argv: Optional[Sequence[str]]) -> Optional[List[str]]:
    """The command line a command's results record: ``python <program> <argv>`` for a call of
    its ``main(argv)`` from Python (the caller's own command line is not it), else None (this
    process's, `aml.reports.provenance.provenance`'s default).

    Args:
        program: how the command is run (``"test.py"``, ``"-m aml.compat"``).
        argv: the arguments ``main`` was given; None: the process's own.

    Returns:
        The command's words, or None.

    Examples:
        >>> from aml.cli.arguments import command_of
        >>> command_of("-m aml.compat", ["a.pth", "b.pth"]), command_of("test.py", None)
        (['python', '-m', 'aml.compat', 'a.pth', 'b.pth'], None)
    """
    return None if argv is None else ["python", *program.split(), *argv]


def setup_logging(verbose: bool = True) -> None:
    """Log lines to stdout, as the original printed them."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(message)s", stream=sys.stdout, force=True
    )


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread, so that writes in progress clean up)."""


def _terminate_handler(owner: int):
    """A SIGTERM handler that raises Terminated in the process ``owner`` and, in the loader
    workers forked from it, dies as SIGTERM's default action does."""

    def handler(signum, frame) -> None:
        if os.getpid() == owner:
            raise Terminated
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    return handler


def _no_access(err: OSError) -> str:
    """An access refused (permissions, a read-only file system) as one line naming the path."""
    return (
        f"{paths_of(err)}: {err.strerror or err} (read-only, or another user's); give paths this user can read and "
        "write; files already written are complete"
    )


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn an error meant for the user into ``error: <message>`` and exit status 1.

    An `aml.utils.errors.AmlError` (a flag, a name, a file or a data set that cannot work), a
    missing file or folder, one this user may not read or write (permissions, a read-only file
    system), a full disk and a torchrun peer that went away end the program with one line;
    anything else (a bug) keeps its traceback.
    """
    try:
        yield
    except SettingsError as err:  # every process meets it alike: one line for the job
        sys.exit(f"error: {err}" if current_rank() == 0 else 1)
    except (AmlError, FileNotFoundError, NotADirectoryError) as err:
        sys.exit(f"error: {err}")
    except (OSError, RuntimeError) as err:
        if isinstance(err, OSError) and err.errno in NOT_WRITABLE:  # another user's, or a read-only mount
            sys.exit(f"error: {_no_access(err)}")
        if isinstance(err, OSError) and path_problem(err):  # a name too long
            sys.exit(f"error: {path_problem(err)}")
        if is_disk_full(err):
            sys.exit(
                f"error: no space left on the device ({str(err).splitlines()[0]}): free space and run again; "
                "checkpoints and files already written are complete"
            )
        if not isinstance(err, RuntimeError) or not is_peer_failure(err):
            raise
        sys.exit(
            "error: another process of this torchrun job did not answer in time (--dist-timeout) or went away: "
            f"it died or hangs; checkpoints already written are complete ({str(err).splitlines()[0]})"
        )


#: what every command says when it is stopped (Ctrl-C, SIGTERM)
STOPPED = (
    "the files already written are complete (each is written atomically); the same command goes on from them "
    "(a training run with --resume)"
)


def run_cli(main) -> None:
    """Run a command's ``main()``; errors about the user's files and flags, and a diverged
    training run, end the program with one clear line (exit status 1) instead of a traceback
    (`one_line_errors`). SIGTERM ends it as Ctrl-C does (an atomic write in progress removes
    its temporary file), with exit status 143 (Ctrl-C: 130, as a shell reports it), saying
    `STOPPED`."""
    from aml.utils.cpu import enlarge_kernel_cache

    enlarge_kernel_cache()
    signal.signal(signal.SIGTERM, _terminate_handler(os.getpid()))
    try:
        with one_line_errors():
            main()
            shutdown()
    except KeyboardInterrupt:
        print(f"interrupted: {STOPPED}", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except Terminated:
        print(f"terminated (SIGTERM): {STOPPED}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
