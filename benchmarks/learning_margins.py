"""Measure the outcomes that the learning tests assert, over seeds and CPU kernel sets.

Runs ``pytest -m learning`` with AML_TEST_SEED = each seed, under the machine's default
kernels, under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (a machine without AVX-512)
and under ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 (an older one),
and prints every ``LEARNING`` line the tests print. The tests' margins are set to about half
the smallest gain seen here. Usage: python benchmarks/learning_margins.py [--seeds 0,1,2]
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNELS = {"default": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
           "sse41": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"among {', '.join(KERNELS)}")
    parser.add_argument("-k", default="", help="pytest -k expression (a subset of the learning tests)")
    args = parser.parse_args()
    for kernels in args.kernels.split(","):
        for seed in args.seeds.split(","):
            env = dict(os.environ, AML_TEST_SEED=seed, **KERNELS[kernels])
            command = [sys.executable, "-m", "pytest", "-q", "-s", "-m", "learning", "tests", "-p", "no:cacheprovider"]
            run = subprocess.run(command + (["-k", args.k] if args.k else []), cwd=REPO, env=env,
                                 capture_output=True, text=True)
            status = "passed" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
            for line in run.stdout.splitlines():
                if "LEARNING" in line:  # pytest's progress dots may precede it
                    print(f"{kernels:8s} {line[line.index('LEARNING'):]}", flush=True)
            print(f"{kernels:8s} seed {seed}: {status}", flush=True)


if __name__ == "__main__":
    main()
