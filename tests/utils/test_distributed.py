"""The distributed helpers with one process (what every single-process run sees) and the
arithmetic of sharding (what every rank computes)."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from aml.utils.distributed import (World, gather_columns, gather_objects, init_from_environment, is_peer_failure,
                                   main_first, shard_range, warn_once)


@pytest.mark.parametrize("count, size, blocks", [
    (10, 3, [range(0, 4), range(4, 7), range(7, 10)]),
    (2, 4, [range(0, 1), range(1, 2), range(2, 2), range(2, 2)]),
    (8, 2, [range(0, 4), range(4, 8)]),
    (0, 2, [range(0, 0), range(0, 0)]),
])
def test_shards_are_contiguous_cover_everything_once_and_differ_by_at_most_one(count, size, blocks):
    assert [shard_range(count, World(rank, size)) for rank in range(size)] == blocks


@pytest.mark.parametrize("rank, given", [("0", 1), ("1", 0), ("3", 0)])
def test_a_warning_every_process_would_give_alike_is_given_by_rank_0_alone(monkeypatch, caplog, rank, given):
    monkeypatch.setenv("RANK", rank)
    with caplog.at_level("WARNING", logger="aml.tests"):
        warn_once(logging.getLogger("aml.tests"), ">> --save-freq %d is above --epochs %d", 5, 3)
    assert [record.getMessage() for record in caplog.records] == [">> --save-freq 5 is above --epochs 3"] * given


def test_one_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = init_from_environment(torch.device("cpu"))
    assert world == World() and world.is_main and not world.distributed
    x = torch.arange(6.0).reshape(2, 3)
    assert gather_columns(x, 3, world) is x and gather_objects([1], world) == [[1]]
    assert main_first(world, lambda: 42) == 42


def test_a_process_on_a_numbered_gpu_pins_through_that_gpu(monkeypatch):
    """CUDA's current device is per thread and starts at GPU 0: the main thread (DataLoader's
    pinning follows it) and each pinning reader thread make the run's GPU current, else
    page-locked memory opens a context on GPU 0 as well."""
    import threading

    from aml.descriptors import extraction

    current = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    init_from_environment(torch.device("cpu"))
    init_from_environment(torch.device("cuda"))  # the current GPU, whichever it is
    assert current == []
    init_from_environment(torch.device("cuda", 1))
    reader = threading.Thread(target=extraction._pinning_thread, args=(torch.device("cuda", 1),))
    reader.start()
    reader.join()
    assert current == [torch.device("cuda", 1)] * 2


def test_nccl_is_bound_to_the_local_gpu_and_waits_on_it(monkeypatch):
    """Without device_id and device_ids torch guessed NCCL's GPU from the global rank (another
    GPU where a machine runs fewer processes than it has GPUs) and warned at every barrier."""
    import torch.distributed as dist

    from aml.utils import distributed

    calls = []
    for name, value in dict(WORLD_SIZE="2", LOCAL_RANK="1", RANK="3", MASTER_ADDR="node-1", MASTER_PORT="29500").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **options: calls.append((backend, options)))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    init_from_environment(torch.device("cuda"))
    init_from_environment(torch.device("cpu"))
    assert [call[0] for call in calls] == ["set_device", "nccl", "gloo"]
    assert calls[0][1] == 1 and calls[1][1]["device_id"] == torch.device("cuda", 1)
    assert calls[2][1]["device_id"] is None
    waits = []
    monkeypatch.setattr(dist, "barrier", lambda **options: waits.append(options))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for backend in ("nccl", "gloo"):
        monkeypatch.setattr(dist, "get_backend", lambda: backend)
        distributed.barrier(World(rank=0, size=2))
    assert waits == [{"device_ids": [1]}, {}]


def test_a_partial_or_stale_torchrun_environment_is_one_line(monkeypatch):
    """WORLD_SIZE left in a shell ended in torch's traceback (RANK expected); a group whose other
    processes never start waited for --dist-timeout, then a DistStoreError traceback."""
    import socket

    import torch.distributed as dist

    from aml.utils.errors import ConfigError

    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^WORLD_SIZE=2 says this is one of several processes, but RANK, LOCAL_RANK, "
                                          r"MASTER_ADDR, MASTER_PORT are not set: start the job with torchrun"):
        init_from_environment(torch.device("cpu"))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    for name, value in dict(RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="x").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=r"^MASTER_PORT=x is no port number: start the job with torchrun"):
        init_from_environment(torch.device("cpu"))
    monkeypatch.setenv("MASTER_PORT", str(port))
    with pytest.raises(ConfigError, match=rf"^process 0 could not join the group of 2 processes at 127.0.0.1:{port} "
                                          r"\(.*\); start every process with torchrun, or unset WORLD_SIZE"):
        init_from_environment(torch.device("cpu"), timeout_s=1)
    assert not dist.is_initialized()


def test_peer_failures_are_told_apart_from_other_errors():
    assert is_peer_failure(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 5000ms for recv"))
    assert is_peer_failure(RuntimeError("Connection closed by peer [127.0.0.1]:1234"))
    assert not is_peer_failure(RuntimeError("CUDA out of memory"))
    assert not is_peer_failure(ValueError("Timed out waiting"))


RANKS_SCRIPT = """
import json, sys
from pathlib import Path

import numpy as np
import torch

from aml.descriptors import DescriptorKey, ExtractionConfig, cached_descriptors
from aml.networks import build_network
from aml.utils.distributed import all_ranks, barrier, current_world, from_main, init_from_environment, shutdown

folder = Path(sys.argv[1])
world = init_from_environment(torch.device("cpu"), timeout_s=120)  # a loaded 2-core machine is slow
answers = [all_ranks(world.rank == 0, world), all_ranks(True, world), from_main(world.rank + 10, world)]
torch.manual_seed(0)
net = build_network("resnet18", pretrained=False).eval()
images = [str(folder / f"{i}.jpg") for i in range(4)]
config = ExtractionConfig(workers=0)
key = DescriptorKey.of(net, 32, (1,), config)
cache = folder / f"cache{world.rank}"  # each rank its own data root (two machines); rank 0's holds the file
cache.mkdir()
if world.is_main:
    np.save(cache / f"db_{key.digest(images)}.npy", np.zeros((512, 4), dtype=np.float32))
barrier(world)
vecs = cached_descriptors(net, images, key, cache, "db", config=config)
np.save(folder / f"vecs{world.rank}.npy", vecs)
(folder / f"answers{world.rank}.json").write_text(json.dumps(answers))
shutdown()
"""


def photos(folder, count):
    """``count`` small random JPEGs, 0.jpg, 1.jpg, ..."""
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def two_processes(script, folder):
    """``script`` (its first argument: ``folder``) run by torchrun in 2 gloo processes, which must succeed."""
    path = folder / "script.py"
    path.write_text(script)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(path),
               str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_ranks_take_one_decision_on_a_cache_only_some_of_them_see(tmp_path):
    """On two machines with a data root each, rank 0 alone finds the cache it wrote: all ranks
    must encode (a collective), or the others wait for it in vain."""
    photos(tmp_path, 4)
    two_processes(RANKS_SCRIPT, tmp_path)
    assert [json.loads((tmp_path / f"answers{r}.json").read_text()) for r in (0, 1)] == [[False, True, 10]] * 2
    vecs = [np.load(tmp_path / f"vecs{r}.npy") for r in (0, 1)]
    assert np.array_equal(vecs[0], vecs[1]) and np.abs(vecs[0]).sum(axis=0).min() > 0  # encoded, not the zeros


@pytest.mark.parametrize("count, size, step_columns", [(7, 2, 2), (10, 3, 1), (5, 2, 100), (2, 3, 1)])
def test_columns_are_gathered_in_steps_that_bound_the_devices_memory(monkeypatch, count, size, step_columns):
    """Every rank's block was gathered whole on the collective's device, then joined there:
    twice the whole matrix on every GPU (millions of images at 2048-d would not fit)."""
    import torch.distributed as dist

    from aml.utils import distributed
    from aml.utils.distributed import shard_range

    rows, rank = 3, size - 1
    whole = torch.arange(rows * count, dtype=torch.float32).reshape(rows, count)
    blocks = [shard_range(count, World(r, size)) for r in range(size)]
    monkeypatch.setattr(distributed, "GATHER_BYTES", step_columns * rows * 4 * size)
    monkeypatch.setattr(distributed, "_collective_device", lambda: torch.device("cpu"))
    calls = []

    def all_gather(parts, part):  # the other ranks' parts of the same columns, padded alike
        start = len(calls) * step_columns
        calls.append(part.shape)
        assert part.numel() * size * 4 <= distributed.GATHER_BYTES
        for r, block in enumerate(blocks):
            piece = whole[:, block.start + start : block.start + min(start + part.shape[1], len(block))]
            parts[r].zero_()
            parts[r][:, : piece.shape[1]] = piece
        assert torch.equal(parts[rank][:, : part.shape[1]], part)

    monkeypatch.setattr(dist, "all_gather", all_gather)
    mine = whole[:, blocks[rank].start : blocks[rank].stop]
    assert torch.equal(distributed.gather_columns(mine, count, World(rank, size)), whole)
    assert len(calls) == -(-len(blocks[0]) // step_columns)
