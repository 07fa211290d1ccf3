"""Choosing negatives: hard-negative mining by descriptor ranking, random negatives, and
unsupervised triplets from a teacher's ranking. Pure functions over descriptor matrices
(columns = images); the ranking is one matrix product on the given device."""

from typing import Iterable, List, Sequence, Tuple

import numpy as np
import torch


def _ranked_candidates(query_vecs: torch.Tensor, pool_vecs: torch.Tensor, depth: int, device: str) -> np.ndarray:
    """depth x Q pool positions, best first, from pool^T queries (dot products)."""
    scores = pool_vecs.to(device).t() @ query_vecs.to(device)
    depth = min(depth, scores.shape[0])
    return torch.topk(scores, depth, dim=0, largest=True, sorted=True).indices.cpu().numpy()


def _walk(candidates: Iterable[int], pool_clusters: np.ndarray, query_cluster, nnum: int) -> List[int]:
    taken, seen = [], {query_cluster}
    for position in candidates:
        cluster = pool_clusters[position]
        if cluster not in seen:
            taken.append(int(position))
            seen.add(cluster)
            if len(taken) == nnum:
                break
    return taken


def mine_hard_negatives(
    query_vecs: torch.Tensor,
    pool_vecs: torch.Tensor,
    query_clusters: Sequence[int],
    pool_clusters: Sequence[int],
    nnum: int,
    device: str = "cpu",
) -> Tuple[List[List[int]], float]:
    """For each query, the ``nnum`` highest-scoring pool images whose cluster differs from
    the query's and from every negative already taken (one negative per cluster).

    Returns pool positions per query and the mean L2 distance ||q - n + 1e-6|| over all
    chosen negatives. A query whose pool runs out of clusters gets fewer negatives.
    """
    pool_cluster_ids = np.asarray(pool_clusters)
    if nnum == 0 or pool_vecs.shape[1] == 0:
        return [[] for _ in query_clusters], 0.0
    query_vecs, pool_vecs = query_vecs.to(device), pool_vecs.to(device)
    shallow = _ranked_candidates(query_vecs, pool_vecs, max(10 * nnum, 64), device)
    deep = None
    negatives = []
    for q, query_cluster in enumerate(query_clusters):
        taken = _walk(shallow[:, q], pool_cluster_ids, query_cluster, nnum)
        if len(taken) < nnum and shallow.shape[0] < pool_vecs.shape[1]:
            if deep is None:
                deep = _ranked_candidates(query_vecs, pool_vecs, pool_vecs.shape[1], device)
            taken = _walk(deep[:, q], pool_cluster_ids, query_cluster, nnum)
        negatives.append(taken)
    query_columns = [q for q, chosen in enumerate(negatives) for _ in chosen]
    if not query_columns:
        return negatives, 0.0
    pool_columns = [n for chosen in negatives for n in chosen]
    distances = torch.linalg.vector_norm(query_vecs[:, query_columns] - pool_vecs[:, pool_columns] + 1e-6, dim=0)
    return negatives, float(distances.cpu().double().mean())  # MPS has no float64


def random_negatives(
    query_clusters: Sequence[int], pool_clusters: Sequence[int], nnum: int, generator: torch.Generator
) -> List[List[int]]:
    """Like `mine_hard_negatives` but walking the pool in random order (no network)."""
    pool_cluster_ids = np.asarray(pool_clusters)
    return [
        _walk(torch.randperm(len(pool_cluster_ids), generator=generator).tolist(), pool_cluster_ids, c, nnum)
        for c in query_clusters
    ]


def teacher_triplets(
    anchor_vecs: torch.Tensor,
    pool_vecs: torch.Tensor,
    generator: torch.Generator,
    top_k: int = 300,
    device: str = "cpu",
) -> List[Tuple[int, int]]:
    """Unsupervised (positive, negative) pool positions per anchor: two distinct ranks drawn
    among the teacher's top ``top_k`` (ranked on ``device``); the better ranked one is the positive."""
    order = _ranked_candidates(anchor_vecs, pool_vecs, top_k, device)
    depth = order.shape[0]
    if depth < 2:
        raise ValueError("teacher triplets need a pool of at least 2 images")
    pairs = []
    for a in range(anchor_vecs.shape[1]):
        first, second = sorted(torch.randperm(depth, generator=generator)[:2].tolist())
        pairs.append((int(order[first, a]), int(order[second, a])))
    return pairs
