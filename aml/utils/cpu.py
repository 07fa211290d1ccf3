"""Process settings that make the CPU compute the same results faster."""

import os

# oneDNN compiles a kernel per convolution, pass and input shape, and keeps 1,024 of them by
# default. A training batch whose images come in 4 shapes, a varying number of each, needs
# several thousand for MobileNetV2 (52 convolutions, forward and two backward passes), so the
# default cache recompiled them batch after batch: MobileNetV2 trained at 96 px took 0.6 s per
# batch of 16 instead of 0.4 s. The kernels, and so the results, are the same.
ONEDNN_CACHE_CAPACITY = 16384


def enlarge_kernel_cache() -> None:
    """Raise oneDNN's kernel cache to `ONEDNN_CACHE_CAPACITY` (a value the user set in
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` is kept). Call it before the first convolution; the
    processes this one starts inherit it."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))


def threads_per_process(processes: int) -> int:
    """The torch threads each of ``processes`` processes sharing this machine's usable cores
    gets (at least 1), so that together they do not oversubscribe the cores."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, processes))
