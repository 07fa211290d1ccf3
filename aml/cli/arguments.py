"""Argument helpers shared by the command lines: safe scale lists, devices, data root."""

import argparse
import ast
import logging
import operator
import sys
from typing import List

import torch

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _number(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _number(node.left), _number(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(node.operand))
    raise ValueError(f"not a number: {ast.dump(node)}")


def parse_scales(text: str) -> List[float]:
    """'[1, 1/2**(1/2), 1/2]' -> [1.0, 0.7071..., 0.5] without eval: only numbers and
    + - * / ** are allowed, in a list, a tuple or alone."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
        items = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
        scales = [_number(item) for item in items]
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as err:
        raise argparse.ArgumentTypeError(f"--multiscale {text!r} is not a list of numbers such as "
                                         f"'[1, 1/2**(1/2), 1/2]' ({err})") from None
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"--multiscale {text!r}: scales must be positive")
    return scales


def resolve_device(device: str, gpu_id: str = "0") -> torch.device:
    """'auto' -> cuda:<first gpu id> when CUDA is available, else cpu; anything else as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{gpu_id.split(',')[0] or 0}")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return resolved


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--data-root and --device, which every command takes."""
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="data root for datasets, weights and features (default: $AML_DATA_ROOT or ./data)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")


def setup_logging(verbose: bool = True) -> None:
    """Log lines to stdout, as the original printed them."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stdout, force=True)


def run_cli(main) -> None:
    """Run a command's ``main()``; errors about the user's files and flags end the program
    with one clear line instead of a traceback."""
    from aml.data.download import DownloadError
    from aml.data.images import ImageLoadError
    from aml.networks.checkpoint import CheckpointError

    try:
        main()
    except (DownloadError, CheckpointError, ImageLoadError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit("interrupted: checkpoints already written are complete (they are written atomically)")
