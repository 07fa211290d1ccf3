"""cirtorch's loss modules (aml.layers.loss), called as cirtorch calls them: the original's
numbers (float64) and the registry's modules' sums."""

import pytest
import torch

from aml import losses as registry
from aml.layers import loss as cirtorch

A, P, N1, N2 = (1.0, 0.0), (0.6, 0.8), (0.96, 0.28), (-1.0, 0.0)


def tuple_matrix(*vectors):
    return torch.tensor(vectors, dtype=torch.float64).t()  # D x S, anchor first


X = tuple_matrix(A, P, N1, N2)
LABEL = torch.tensor([-1, 1, 0, 0])


def test_cirtorch_calls_give_the_original_numbers():
    assert cirtorch.ContrastiveLoss(margin=0.7)(X, LABEL).item() == pytest.approx(0.4870100552, abs=1e-10)
    assert cirtorch.TripletLoss(margin=0.7)(X, LABEL).item() == pytest.approx(1.42, abs=1e-11)
    assert cirtorch.TripletLoss(margin=0.1)(X, LABEL).item() == pytest.approx(0.82, abs=1e-11)
    assert cirtorch.MultiSimilarityLoss()(X, LABEL).item() == pytest.approx(0.7590694349, abs=1e-10)
    assert repr(cirtorch.ContrastiveLoss(margin=0.7)) == "ContrastiveLoss(margin=0.7000)"


def test_two_tuples_in_one_matrix_sum_their_losses():
    both = torch.cat([X, tuple_matrix(P, A, N2)], dim=1)
    label = torch.tensor([-1, 1, 0, 0, -1, 1, 0])
    for module in (cirtorch.ContrastiveLoss(0.7), cirtorch.MultiSimilarityLoss(), cirtorch.CrossEntropyDistLoss(0.1)):
        alone = module(X, LABEL) + module(tuple_matrix(P, A, N2), torch.tensor([-1, 1, 0]))
        assert module(both, label).item() == pytest.approx(alone.item(), abs=1e-12), type(module).__name__


# cirtorch's module and the registry's module of each loss the two share
PAIRS = [(cirtorch.ContrastiveLoss(0.7), registry.ContrastiveLoss(margin=0.7)),
         (cirtorch.TripletLoss(0.1), registry.TripletLoss(margin=0.1)),
         (cirtorch.MultiSimilarityLoss(), registry.MultiSimilarityLoss()),
         (cirtorch.CrossEntropyDistLoss(0.1), registry.CrossEntropyDistLoss(temp=0.1))]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: type(pair[0]).__name__)
def test_the_cirtorch_call_equals_the_registry_call(pair):
    columns, rows = pair
    assert columns(X, LABEL).item() == pytest.approx(rows(registry.TupleBatch.from_columns(X, LABEL)).item(), abs=1e-12)


def test_contrastive_dist_takes_the_target_distances():
    dist = torch.tensor([0.0, 0.5, 1.5], dtype=torch.float64)
    expected = registry.ContrastiveDistLoss()(registry.TupleBatch.from_columns(X, LABEL, dist))
    assert cirtorch.ContrastiveDistLoss()(X, LABEL, dist).item() == pytest.approx(expected.item(), abs=1e-12)


def test_the_original_cross_entropy_is_kept_as_it_computed():
    # -sum(label * log_softmax(x / T, dim=1)): the anchor's -1 enters it
    expected = -(LABEL.double().reshape(1, -1) * torch.log_softmax(X / 0.1, dim=1)).sum()
    assert cirtorch.CrossEntropyLoss(0.1)(X, LABEL).item() == pytest.approx(expected.item(), abs=1e-12)


def test_a_matrix_without_its_anchor_first_is_refused():
    with pytest.raises(ValueError, match="anchor"):
        cirtorch.ContrastiveLoss()(X, torch.tensor([1, -1, 0, 0]))


# the original's relational test vectors (rows of the same five images)
STUDENT = torch.tensor([(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.6, 0.8, 0), (0, 0.6, 0.8)], dtype=torch.float64)
TEACHER = torch.tensor([(1, 0, 0), (0.8, 0.6, 0), (0, 0, 1), (0.6, 0.8, 0), (0, 0.8, 0.6)], dtype=torch.float64)


def test_the_relational_losses_take_the_originals_rows():
    assert cirtorch.RKdAD()(STUDENT, TEACHER).item() == pytest.approx(0.157342660894, abs=1e-9)
    assert cirtorch.HardDarkRank()(STUDENT, TEACHER).item() == pytest.approx(3.994939300100, abs=1e-9)
    pairs = registry.TupleBatch.pairs(STUDENT, TEACHER)
    assert cirtorch.RKdAD()(STUDENT, TEACHER).item() == registry.RKdAD()(pairs).item()
    assert cirtorch.HardDarkRank()(STUDENT, TEACHER).item() == registry.HardDarkRank()(pairs).item()


def test_the_registrys_relational_losses_name_the_module_of_the_originals_call():
    with pytest.raises(TypeError, match="use aml.layers.loss.RKdAD"):
        registry.RKdAD()(STUDENT, TEACHER)
    with pytest.raises(TypeError, match="use aml.layers.loss.HardDarkRank"):
        registry.HardDarkRank()(STUDENT, TEACHER)


def test_the_original_amls_loss_signatures_and_defaults():
    """ContrastiveDistLoss(margin=...) raised (and ContrastiveDistLoss(0.7) took 0.7 as eps);
    CrossEntropyLoss(temp, eps) raised, and both cross-entropy modules defaulted to temp 0.1
    where the original's default is 1."""
    import inspect

    for module, names in ((cirtorch.ContrastiveDistLoss, ["margin", "eps"]), (cirtorch.CrossEntropyLoss, ["temp", "eps"]),
                          (cirtorch.CrossEntropyDistLoss, ["temp", "eps"])):
        assert list(inspect.signature(module).parameters) == names
    dist = torch.tensor([0.0, 0.5, 1.5], dtype=torch.float64)
    assert cirtorch.ContrastiveDistLoss(0.7)(X, LABEL, dist).item() == pytest.approx(
        cirtorch.ContrastiveDistLoss(margin=0.7, eps=1e-6)(X, LABEL, dist).item(), abs=1e-12)
    assert repr(cirtorch.ContrastiveDistLoss(margin=0.7)) == "ContrastiveDistLoss(margin=0.7000)"
    assert cirtorch.CrossEntropyLoss()(X, LABEL).item() == pytest.approx(
        cirtorch.CrossEntropyLoss(1, 1e-6)(X, LABEL).item(), abs=1e-12)
    assert cirtorch.CrossEntropyDistLoss()(X, LABEL).item() == pytest.approx(
        cirtorch.CrossEntropyDistLoss(temp=1)(X, LABEL).item(), abs=1e-12)
    assert repr(cirtorch.CrossEntropyLoss(temp=0.1)) == "CrossEntropyLoss(temp=0.10)"


def test_dark_rank_of_four_images_ranks_the_three_others_as_the_original():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    scores = lambda e: -3 * torch.cdist(e, e).pow(3)  # noqa: E731
    order = scores(teacher).sort(dim=1, descending=True)[1][:, 1:]
    ordered = torch.gather(scores(student), 1, order)
    tails = torch.stack([torch.logsumexp(ordered[:, k:], dim=1) for k in range(3)], dim=1)
    expected = -(ordered - tails).sum(dim=1).mean()
    assert cirtorch.HardDarkRank()(student, teacher).item() == pytest.approx(expected.item(), abs=1e-6)
