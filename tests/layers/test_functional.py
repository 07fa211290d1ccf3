"""cirtorch's functional API: the original's numbers (float64), batches of
tuples as cirtorch lays them out, and the modules using these very functions."""

import inspect
import math

import pytest
import torch

from aml.layers import GeM, GeMmp, Rpool, functional as LF
from aml.losses import ContrastiveLoss, TripletLoss, TupleBatch

A, P, N1, N2, TA = (1.0, 0.0), (0.6, 0.8), (0.96, 0.28), (-1.0, 0.0), (0.8, 0.6)


def columns(*vectors):
    return torch.tensor(vectors, dtype=torch.float64).t()


def labels(*values):
    return torch.tensor(values, dtype=torch.float64)


X, Y = columns(A, P, N1, N2), labels(-1, 1, 0, 0)


@pytest.mark.parametrize("name, parameters", [
    ("mac", ["x"]), ("spoc", ["x"]), ("gem", ["x", "p", "eps"]), ("rmac", ["x", "L", "eps"]),
    ("roipool", ["x", "rpool", "L", "eps"]), ("l2n", ["x", "eps"]), ("powerlaw", ["x", "eps"]),
    ("contrastive_loss", ["x", "label", "margin", "eps"]), ("contrastive_loss_dist", ["x", "label", "dists", "eps"]),
    ("triplet_loss", ["x", "label", "margin"]), ("cross_entropy_loss", ["x", "label", "temp", "eps"]),
    ("cross_entropy_loss_dist", ["x", "label", "temp", "eps"]), ("pdist", ["e", "squared", "eps"]),
])
def test_cirtorch_names_and_signatures(name, parameters):
    signature = inspect.signature(getattr(LF, name))
    assert list(signature.parameters)[:len(parameters)] == parameters


def test_losses_give_the_original_numbers():
    assert LF.contrastive_loss(X, Y).item() == pytest.approx(0.487010055238, abs=1e-11)
    assert LF.triplet_loss(X, Y, margin=0.7).item() == pytest.approx(1.42, abs=1e-11)
    assert LF.triplet_loss(X, Y).item() == pytest.approx(0.82, abs=1e-11)
    assert LF.cross_entropy_loss_dist(X, Y, 0.1).item() == pytest.approx(6.118054001175, abs=1e-9)
    assert LF.contrastive_loss(columns(A, P), labels(-1, 1)).item() == pytest.approx(0.399999600001, abs=1e-11)
    assert LF.contrastive_loss(columns(A, TA, P, N1, N2), labels(-1, 1, 1, 0, 0)).item() == pytest.approx(
        0.687009655239, abs=1e-11)


def test_contrastive_dist_pulls_negatives_to_the_targets():
    d = [math.dist(A, v) for v in (P, N1, N2)]  # eps 1e-6 aside
    at_targets = LF.contrastive_loss_dist(X, Y, torch.tensor([0.0, d[1], d[2]], dtype=torch.float64), eps=0.0)
    assert at_targets.item() == pytest.approx(0.5 * d[0] ** 2, abs=1e-12)
    off = LF.contrastive_loss_dist(X, Y, torch.tensor([0.0, d[1] + 0.1, d[2] - 0.2], dtype=torch.float64), eps=0.0)
    assert off.item() == pytest.approx(0.5 * d[0] ** 2 + 0.5 * (0.1 ** 2 + 0.2 ** 2), abs=1e-12)


def test_a_batch_of_tuples_is_the_sum_of_its_tuples():
    other = columns(P, A, N2, N1)
    batch, batch_labels = torch.cat([X, other], dim=1), torch.cat([Y, Y])
    for loss in (LF.contrastive_loss, LF.triplet_loss):
        assert loss(batch, batch_labels).item() == pytest.approx(loss(X, Y).item() + loss(other, Y).item(), abs=1e-12)
    with pytest.raises(ValueError, match="exactly one positive"):
        LF.triplet_loss(columns(A, TA, P, N1), labels(-1, 1, 1, 0))
    with pytest.raises(ValueError, match="must start with its anchor"):
        LF.contrastive_loss(X, labels(1, -1, 0, 0))


def test_the_triplet_losses_check_of_one_positive_reads_nothing_back_from_a_device():
    """It read a boolean back per chunk (a wait for the device per tuple without
    --batch-forward); off the CPU the device asserts it (here the meta device stands for CUDA)."""
    from aml.layers.functional import triplet_losses
    from tests.dispatch import HostWaits

    anchors, members = torch.zeros(2, 4, device="meta"), torch.zeros(2, 3, 4, device="meta")
    tuple_labels = torch.tensor([[1, 0, 0], [1, 0, -1]]).to("meta")
    with HostWaits() as reads:
        assert triplet_losses(anchors, members, tuple_labels).shape == (2,)
    assert reads.count == 0


def test_cross_entropy_loss_is_the_original_formula():
    x = torch.tensor([[0.2, -0.4, 1.0], [0.5, 0.1, -0.3]], dtype=torch.float64)
    y = labels(-1, 1, 0)
    expected = -sum(y[j] * (x[i, j] / 0.5 - torch.logsumexp(x[i] / 0.5, dim=0))
                    for i in range(2) for j in range(3))
    assert LF.cross_entropy_loss(x, y, 0.5).item() == pytest.approx(expected.item(), abs=1e-12)


def test_pooling_functions():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    assert LF.gem(x).item() == pytest.approx(2.9240177382, abs=1e-9)
    assert LF.mac(x).item() == 4.0 and LF.spoc(x).item() == 2.5
    two = torch.rand(2, 3, 5, 7) + 0.1
    p = torch.tensor([1.0, 3.0, 5.0])
    per_channel = LF.gem(two, p.reshape(3, 1, 1))  # as cirtorch's GeMmp passes p
    assert torch.allclose(per_channel, LF.gem(two, p))
    for c in range(3):
        assert torch.allclose(per_channel[:, c], LF.gem(two[:, c:c + 1], float(p[c]))[:, 0])
    assert torch.allclose(LF.l2n(two).norm(dim=1), torch.ones(2, 5, 7), atol=1e-5)
    assert torch.allclose(LF.powerlaw(torch.tensor([4.0, -9.0]), eps=0.0), torch.tensor([2.0, -3.0]))


def test_roipool_pools_the_whole_map_then_every_region():
    x = torch.rand(2, 4, 6, 9)
    pooled = LF.roipool(x, LF.mac, L=3)
    regions = LF.rmac_regions(6, 9, 3)
    assert pooled.shape == (2, 1 + len(regions), 4, 1, 1)
    top, left, side = regions[-1]
    assert torch.equal(pooled[:, -1], LF.mac(x[..., top:top + side, left:left + side]))
    # R-MAC = normalised global MAC + sum of normalised regional MACs
    rmac = LF.l2n(pooled.flatten(2), dim=2).sum(dim=1)
    assert torch.allclose(LF.rmac(x).flatten(1), rmac, atol=1e-6)


def test_modules_call_the_functional_formulas(monkeypatch):
    calls = []

    def spy(name):
        original = getattr(LF, name)

        def wrapped(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)
        monkeypatch.setattr(LF, name, wrapped)

    for name in ("contrastive_losses", "triplet_losses", "gem", "roipool"):
        spy(name)
    batch = TupleBatch.from_columns(X, Y)
    ContrastiveLoss()(batch)
    TripletLoss()(batch)
    LF.contrastive_loss(X, Y)  # cirtorch's column form: the same batched formula
    x = torch.rand(1, 4, 6, 6)
    Rpool(GeM())(x)
    GeMmp(mp=4)(x)
    assert calls.count("contrastive_losses") == 2 and calls.count("triplet_losses") == 1
    assert calls.count("roipool") == 1 and calls.count("gem") >= 2
