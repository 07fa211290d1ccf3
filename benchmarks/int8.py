#!/usr/bin/env python
"""Benchmark of the int8 student: what quantization costs in asymmetric mAP and saves in time.

    python benchmarks/int8.py --student student.pth.tar --teacher teacher.pth.tar \
        --data-root data --calibration data/test/synth-paris/jpg --image-size 96

Runs ``python -m aml.export --int8 ... --test-set`` (the asymmetric mAP Medium/Hard of the
float32 and int8 ONNX students, queries through onnxruntime, database by the teacher, and the
time per query image at 362 and 1024 px with one thread), then quantizes the same float32
graph two other ways to show the choices: the QOperator format (instead of QDQ) and every
node onnxruntime can quantize (instead of the trunk only), with their mAP, cosine to float32
and time. Writes ``benchmarks/results/int8.json``.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np

from aml.cli import export as export_cli
from aml.cli.arguments import setup_logging
from aml.export import Int8Settings, quantize_student
from aml.export.report import onnx_test_maps, onnx_timings
from aml.descriptors import ExtractionConfig
from aml.networks.loading import load_teacher
from aml.search import list_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)

#: the other ways of quantizing the same graph: name -> Int8Settings fields
VARIANTS = {"int8 QOperator": {"quant_format": "qoperator"}, "int8 QDQ, every node": {"quantized": "all"}}


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True, help="the student checkpoint")
    parser.add_argument("--teacher", required=True, help="its teacher (name or checkpoint)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--test-set", default="synth-oxford")
    parser.add_argument("--calibration", required=True, help="folder of calibration images")
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=96, help="calibration and test image size")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per file and size (median)")
    parser.add_argument("--folder", default=None, help="where the exported files go (default: a temporary folder)")
    add_json_argument(parser, "int8")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        deploy = Path(args.folder or tmp) / "deploy"
        export_argv = ["--network", args.student, "--out", str(deploy), "--teacher", args.teacher, "--int8",
                       "--calibration", args.calibration, "--calibration-images", str(args.calibration_images),
                       "--image-size", str(args.image_size), "--test-set", args.test_set,
                       "--time-repeats", str(args.repeats)] + (["--data-root", args.data_root] if args.data_root else [])
        files = export_cli.main(export_argv)
        setup_logging(verbose=False)
        export = json.loads((deploy / "int8.json").read_text())["report"]
        found = list_images(args.calibration)  # the same images as the export's: evenly spread
        calibration = [found[int(i)] for i in np.linspace(0, len(found) - 1, min(args.calibration_images, len(found)))]
        variants = {"float32": files["onnx"]}
        for name, fields in VARIANTS.items():
            out = deploy / f"student-{name.split()[1].strip(',').lower()}-{fields.get('quantized', 'trunk')}.onnx"
            variants[name] = quantize_student(files["onnx"], out, Int8Settings(tuple(calibration), args.image_size,
                                                                               **fields))
        teacher = load_teacher(args.teacher, args.data_root)
        compared = onnx_test_maps(variants, teacher, args.test_set, args.image_size, args.data_root,
                                  config=ExtractionConfig(workers=0, device="cpu"))
        compared["seconds_per_image"] = onnx_timings({k: v for k, v in variants.items() if k != "float32"},
                                                     repeats=args.repeats)
        sizes = {name: path.stat().st_size for name, path in [("float32", files["onnx"]), ("int8", files["int8"])]}
    results = {"export": export, "variants": compared, "file_bytes": sizes}
    settings = {"student": Path(args.student).name, "teacher": Path(args.teacher).name, "test_set": args.test_set,
                "calibration": args.calibration, "calibration_images": len(calibration),
                "image_size": args.image_size, "repeats": args.repeats, "threads": 1}
    path = write_record(args.json, "int8", settings, results, device="cpu")
    print(json.dumps(results, indent=1))
    if path:
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
