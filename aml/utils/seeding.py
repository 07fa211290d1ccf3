"""Random streams derived from a run's seed.

Every random draw of a training run comes from a generator built here from (seed, stream
name, keys), so a run's weights depend only on its flags, data and ``--seed``: not on what ran
before (loading a teacher, extracting a cache), on loader workers or on PYTHONHASHSEED.
Streams with different names are independent. The one draw from torch's global generator,
a network's initial weights, is made inside `global_seed`, which seeds it and then gives the
caller's state back.
"""

import contextlib
import zlib
from typing import Iterator

import numpy as np
import torch


def derived_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit seed for ``stream`` (e.g. 'tuples', 'shuffle') and integer ``keys`` (e.g. the
    epoch), from numpy's SeedSequence; the stream name enters through a stable CRC32."""
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(stream.encode()), *[int(k) & 0xFFFFFFFF for k in keys]]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def generator(seed: int, stream: str, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with `derived_seed`."""
    return torch.Generator().manual_seed(derived_seed(seed, stream, *keys))


@contextlib.contextmanager
def global_seed(seed: int) -> Iterator[None]:
    """Inside: torch's global CPU generator seeded with ``seed``, for what draws from it alone
    (a network's initial weights); after: the caller's generator state, as it was, and the
    GPUs' generators untouched.

    Examples:
        >>> import torch
        >>> from aml.utils.seeding import global_seed
        >>> before = torch.get_rng_state()
        >>> with global_seed(0):
        ...     first = torch.rand(1)
        >>> with global_seed(0):
        ...     again = torch.rand(1)
        >>> bool(first == again), bool((torch.get_rng_state() == before).all())
        (True, True)
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
