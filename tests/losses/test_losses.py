"""Every loss against the original's numbers (float64), through the one call shape
``loss(student, reference, labels, target)``."""

import pytest
import torch

from aml.layers import functional as LF
from aml.losses import (LOSSES, ContrastiveDistLoss, ContrastiveLoss, CrossEntropyDistLoss, CrossEntropyLoss,
                        HardDarkRank, LossKind, MultiSimilarityLoss, RKdAD, RegressionLoss, TripletLoss)
from aml.training.modes import MODES, check_loss_mode

A, P, N1, N2 = (1.0, 0.0), (0.6, 0.8), (0.96, 0.28), (-1.0, 0.0)
TA = (0.8, 0.6)


def columns(*vectors):
    return torch.tensor(vectors, dtype=torch.float64).t()


def labels(*values):
    return torch.tensor(values, dtype=torch.float64)


def rows(*vectors):
    return torch.tensor(vectors, dtype=torch.float64)


TUPLE = (rows(A), rows(P, N1, N2), labels(1, 0, 0))  # anchor row, reference rows, their labels


def test_contrastive():
    assert ContrastiveLoss(0.7)(*TUPLE).item() == pytest.approx(0.487010055238, abs=1e-11)


def test_triplet_with_cli_and_class_margins():
    assert TripletLoss(0.7)(*TUPLE).item() == pytest.approx(1.42, abs=1e-11)
    assert TripletLoss(0.1)(*TUPLE).item() == pytest.approx(0.82, abs=1e-11)


def test_multi_similarity():
    assert MultiSimilarityLoss()(*TUPLE).item() == pytest.approx(0.759069434946, abs=1e-11)


def test_cross_entropy_dist():
    assert CrossEntropyDistLoss(temp=0.1)(*TUPLE).item() == pytest.approx(6.118054001175, abs=1e-9)


def test_cross_entropy_on_similarities():
    s = torch.tensor([0.6, 0.96, -1.0]) / 0.1
    expected = -(s[0] - torch.logsumexp(s, 0))
    assert CrossEntropyLoss(temp=0.1)(*TUPLE).item() == pytest.approx(expected.item(), abs=1e-5)


def test_regression_pair():
    pair = (rows(A), rows(P), labels(1))
    assert ContrastiveLoss(0.7)(*pair).item() == pytest.approx(0.399999600001, abs=1e-11)
    assert RegressionLoss()(*pair).item() == pytest.approx(0.399999600001, abs=1e-11)


def test_contr_plus_tuple():
    assert ContrastiveLoss(0.7)(rows(A), rows(TA, P, N1, N2), labels(1, 1, 0, 0)).item() == pytest.approx(
        0.687009655239, abs=1e-11)


def test_contrastive_dist_pulls_negatives_to_target_distance():
    d_n1 = torch.linalg.vector_norm(torch.tensor([1 - 0.96 + 1e-6, -0.28 + 1e-6], dtype=torch.float64))
    target = torch.tensor([0.0, 0.5], dtype=torch.float64)  # one teacher distance per reference row
    expected = 0.399999600001 + 0.5 * (0.5 - d_n1.item()) ** 2
    assert ContrastiveDistLoss()(rows(A), rows(P, N1), labels(1, 0), target).item() == pytest.approx(expected, abs=1e-9)


def test_several_tuples_sum():  # the functional formulas take several tuples in one matrix
    x = torch.cat([columns(A, P, N1, N2)] * 2, dim=1)
    y = torch.cat([labels(-1, 1, 0, 0)] * 2)
    assert LF.contrastive_loss(x, y, 0.7).item() == pytest.approx(2 * 0.487010055238, abs=1e-11)
    assert LF.multi_similarity_loss(x, y).item() == pytest.approx(2 * 0.759069434946, abs=1e-11)


STUDENT = torch.tensor([(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.6, 0.8, 0), (0, 0.6, 0.8)], dtype=torch.float64)
TEACHER = torch.tensor([(1, 0, 0), (0.8, 0.6, 0), (0, 0, 1), (0.6, 0.8, 0), (0, 0.8, 0.6)], dtype=torch.float64)


def test_rkd():
    assert RKdAD()(STUDENT, TEACHER).item() == pytest.approx(0.157342660894, abs=1e-9)


def test_hard_dark_rank():
    assert HardDarkRank()(STUDENT, TEACHER).item() == pytest.approx(3.994939300100, abs=1e-9)


def test_relational_losses_give_no_teacher_gradient():
    teacher = TEACHER.clone().requires_grad_(True)
    student = STUDENT.clone().requires_grad_(True)
    RKdAD()(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None


def test_bad_tuples_are_refused():
    with pytest.raises(ValueError, match="exactly one positive"):
        TripletLoss()(rows(A), rows(TA, P, N1), labels(1, 1, 0))
    with pytest.raises(ValueError, match="anchor"):
        LF.contrastive_loss(columns(A, P), labels(1, -1))
    with pytest.raises(ValueError, match=r"one anchor row \(1 x D\)"):
        ContrastiveLoss()(rows(A, P), rows(N1), labels(0))
    with pytest.raises(ValueError, match="2 reference rows but 1 labels"):
        ContrastiveLoss()(rows(A), rows(P, N1), labels(1))


def test_every_loss_has_the_one_call_shape():
    """Each registered loss takes (student, reference, labels, target) and gives a scalar."""
    for name, spec in LOSSES.items():
        loss = spec.build(0.7, 0.1)
        if spec.kind is LossKind.RELATIONAL:
            value = loss(STUDENT, TEACHER, None, None)
        else:
            value = loss(rows(A), rows(P, N1), labels(1, 0), torch.tensor([0.0, 0.5], dtype=torch.float64))
        assert value.dim() == 0 and torch.isfinite(value), name
        assert any(spec.accepts(mode) for mode in MODES.values()), name


def test_mode_loss_compatibility():
    check_loss_mode("contrastive", "reg")
    check_loss_mode("rkd", "rand")
    for loss, mode in (("rkd", "ts"), ("triplet", "ts_self"), ("contrastive", "rand"), ("contrastive_dist", "std")):
        with pytest.raises(ValueError, match=f"--loss {loss} cannot be used with --mode {mode}"):
            check_loss_mode(loss, mode)
    assert set(LOSSES) >= {"contrastive", "triplet", "contrastive_dist", "cross_entropy", "cross_entropy_dist",
                           "multi", "rkd", "regression"}
