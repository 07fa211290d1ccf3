"""Every loss against the original's numbers (spec section 11, float64)."""

import pytest
import torch

from aml.losses import (LOSSES, ContrastiveDistLoss, ContrastiveLoss, CrossEntropyDistLoss, CrossEntropyLoss,
                        HardDarkRank, MultiSimilarityLoss, RKdAD, RegressionLoss, TripletLoss, check_loss_mode)

A, P, N1, N2 = (1.0, 0.0), (0.6, 0.8), (0.96, 0.28), (-1.0, 0.0)
TA = (0.8, 0.6)


def columns(*vectors):
    return torch.tensor(vectors, dtype=torch.float64).t()


def labels(*values):
    return torch.tensor(values, dtype=torch.float64)


TUPLE = (columns(A, P, N1, N2), labels(-1, 1, 0, 0))


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
    x, y = columns(A, P), labels(-1, 1)
    assert ContrastiveLoss(0.7)(x, y).item() == pytest.approx(0.399999600001, abs=1e-11)
    assert RegressionLoss()(x, y).item() == pytest.approx(0.399999600001, abs=1e-11)


def test_contr_plus_tuple():
    x, y = columns(A, TA, P, N1, N2), labels(-1, 1, 1, 0, 0)
    assert ContrastiveLoss(0.7)(x, y).item() == pytest.approx(0.687009655239, abs=1e-11)


def test_contrastive_dist_pulls_negatives_to_target_distance():
    x, y = columns(A, P, N1), labels(-1, 1, 0)
    d_n1 = torch.linalg.vector_norm(torch.tensor([1 - 0.96 + 1e-6, -0.28 + 1e-6], dtype=torch.float64))
    target = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    expected = 0.399999600001 + 0.5 * (0.5 - d_n1.item()) ** 2
    assert ContrastiveDistLoss()(x, y, target).item() == pytest.approx(expected, abs=1e-9)


def test_several_tuples_sum():
    x = torch.cat([TUPLE[0], TUPLE[0]], dim=1)
    y = torch.cat([TUPLE[1], TUPLE[1]])
    assert ContrastiveLoss(0.7)(x, y).item() == pytest.approx(2 * 0.487010055238, abs=1e-11)
    assert MultiSimilarityLoss()(x, y).item() == pytest.approx(2 * 0.759069434946, abs=1e-11)


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
        TripletLoss()(columns(A, TA, P, N1), labels(-1, 1, 1, 0))
    with pytest.raises(ValueError, match="anchor"):
        ContrastiveLoss()(columns(A, P), labels(1, -1))


def test_mode_loss_compatibility():
    check_loss_mode("contrastive", "reg")
    check_loss_mode("rkd", "rand")
    for loss, mode in (("rkd", "ts"), ("triplet", "ts_self"), ("contrastive", "rand"), ("contrastive_dist", "std")):
        with pytest.raises(ValueError, match=f"--loss {loss} cannot be used with --mode {mode}"):
            check_loss_mode(loss, mode)
    assert set(LOSSES) >= {"contrastive", "triplet", "contrastive_dist", "cross_entropy", "cross_entropy_dist",
                           "multi", "rkd", "regression"}
