"""python -m aml.export: the student as TorchScript and ONNX, checked against PyTorch."""

import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from aml.cli.arguments import Parser, folder, run_cli
from aml.export import ExportError, export_student
from aml.networks.loading import load_test_network
from aml.search import StoreError, open_store
from aml.utils.plain_files import load_plain_file


def _whitening(args):
    if args.store:
        store = open_store(args.store)
        if store.whitening is None:
            raise StoreError(f"the store {args.store} has no whitening to fold in")
        return store.whitening
    if args.whitening_file:
        data = load_plain_file(args.whitening_file)
        return np.asarray(data["m"]), np.asarray(data["P"])
    return None


def main(argv: Optional[List[str]] = None) -> Dict[str, Path]:
    """Export, check, print the files and the max abs differences; returns the files."""
    parser = Parser(prog="python -m aml.export", description="Export a student for deployment (TorchScript + ONNX).")
    parser.add_argument("--network", "-npath", required=True, help="the student: a checkpoint path or a published name")
    parser.add_argument("--out", required=True, type=folder, help="folder for student.pt and student.onnx")
    whitening = parser.add_mutually_exclusive_group()
    whitening.add_argument("--store", type=folder, default=None,
                           help="fold in the whitening of this search store (python -m aml.search index -w ...)")
    whitening.add_argument("--whitening-file", default=None, help="fold in a whitening file ({'m', 'P'})")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="TorchScript only")
    parser.add_argument("--data-root", default=None, type=folder)
    args = parser.parse_args(argv)
    try:
        net = load_test_network(args.network, None, None, args.data_root).net
        files, diffs = export_student(net, args.out, _whitening(args), onnx=args.onnx)
    except (ExportError, StoreError) as err:
        sys.exit(f"error: {err}")
    for kind, path in files.items():
        check = f"max abs diff to PyTorch {diffs[kind]:.2e}" if kind in diffs else "not checked (no onnxruntime)"
        print(f">> {kind}: {path} ({check})")
    return files


if __name__ == "__main__":
    run_cli(main)
