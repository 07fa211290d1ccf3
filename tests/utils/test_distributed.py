"""The distributed helpers with one process (what every single-process run sees) and the
arithmetic of sharding (what every rank computes)."""

import pytest
import torch

from aml.utils.distributed import (World, gather_columns, gather_objects, init_from_environment, is_peer_failure,
                                   main_first, shard_range)


@pytest.mark.parametrize("count, size, blocks", [
    (10, 3, [range(0, 4), range(4, 7), range(7, 10)]),
    (2, 4, [range(0, 1), range(1, 2), range(2, 2), range(2, 2)]),
    (8, 2, [range(0, 4), range(4, 8)]),
    (0, 2, [range(0, 0), range(0, 0)]),
])
def test_shards_are_contiguous_cover_everything_once_and_differ_by_at_most_one(count, size, blocks):
    assert [shard_range(count, World(rank, size)) for rank in range(size)] == blocks


def test_one_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = init_from_environment(torch.device("cpu"))
    assert world == World() and world.is_main and not world.distributed
    x = torch.arange(6.0).reshape(2, 3)
    assert gather_columns(x, 3, world) is x and gather_objects([1], world) == [[1]]
    assert main_first(world, lambda: 42) == 42


def test_peer_failures_are_told_apart_from_other_errors():
    assert is_peer_failure(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 5000ms for recv"))
    assert is_peer_failure(RuntimeError("Connection closed by peer [127.0.0.1]:1234"))
    assert not is_peer_failure(RuntimeError("CUDA out of memory"))
    assert not is_peer_failure(ValueError("Timed out waiting"))
