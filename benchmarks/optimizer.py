#!/usr/bin/env python
"""Time of one optimizer step over a student's parameter groups: the loop over tensors (the
original's) against the fused kernel that aml uses where it can (aml.training.optim).

    python benchmarks/optimizer.py                      # resnet18, mobilenet_v2; 1 thread
    python benchmarks/optimizer.py --archs resnet101 --threads 2

Also prints the largest difference between the two after ``--steps`` steps from the same
gradients (rounding only: the update is the same formula).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from aml.networks import build_network
from aml.training.optim import OPTIMIZERS, parameter_groups

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)


def timed_steps(arch: str, name: str, fused: bool, steps: int) -> tuple:
    """Seconds per step and the weights after ``steps`` steps of seeded gradients."""
    torch.manual_seed(0)
    net = build_network(arch, pretrained=False)
    groups = parameter_groups(net, 1e-4, 1e-6)
    optimizer = OPTIMIZERS[name].build(groups, 1e-4, 0.9, 1e-6, fused or None)
    params = [p for g in groups for p in g["params"]]
    generator = torch.Generator().manual_seed(1)
    elapsed = 0.0
    for _ in range(steps + 1):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * 1e-3
        start = time.perf_counter()
        optimizer.step()
        elapsed += time.perf_counter() - start if _ else 0.0  # the first step allocates the state
    return elapsed / steps, [p.detach().clone() for p in params]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="resnet18,mobilenet_v2")
    parser.add_argument("--optimizers", default="adam,sgd")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    add_json_argument(parser, "optimizer")
    args = parser.parse_args()
    rows = []
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU kernels {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'network':14s} {'optimizer':9s} {'loop ms':>8s} {'fused ms':>9s} {'max |diff|':>11s}")
    for arch in args.archs.split(","):
        for name in args.optimizers.split(","):
            loop, a = timed_steps(arch, name, False, args.steps)
            fused, b = timed_steps(arch, name, True, args.steps)
            diff = max((x - y).abs().max().item() for x, y in zip(a, b))
            print(f"{arch:14s} {name:9s} {loop * 1e3:8.1f} {fused * 1e3:9.1f} {diff:11.2e}")
            rows.append({"network": arch, "optimizer": name, "loop_ms": loop * 1e3, "fused_ms": fused * 1e3,
                         "max_abs_difference": diff})
    write_record(args.json, "optimizer", {k: v for k, v in vars(args).items() if k != "json"}, rows, device="cpu")


if __name__ == "__main__":
    main()
