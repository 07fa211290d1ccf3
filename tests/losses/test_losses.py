"""Every loss against the original's numbers (float64), through the one call shape
``loss(TupleBatch)``, and batched: B tuples in one call equal B calls of one tuple."""

import importlib
import inspect
from dataclasses import replace

import pytest
import torch

from aml.layers import functional as LF
from aml.losses import (LOSSES, ContrastiveDistLoss, ContrastiveLoss, CrossEntropyDistLoss, CrossEntropyLoss,
                        HardDarkRank, LossKind, MultiSimilarityLoss, RKdAD, RegressionLoss, TeacherContext, TripletLoss,
                        TupleBatch)
from aml.training.modes import MODES, check_loss_mode

A, P, N1, N2 = (1.0, 0.0), (0.6, 0.8), (0.96, 0.28), (-1.0, 0.0)
TA = (0.8, 0.6)


def columns(*vectors):
    return torch.tensor(vectors, dtype=torch.float64).t()


def labels(*values):
    return torch.tensor(values, dtype=torch.float64)


def rows(*vectors):
    return torch.tensor(vectors, dtype=torch.float64)


def one(anchor, members, member_labels, target=None):
    """The batch of one tuple: an anchor, its members and their labels."""
    return TupleBatch.single(rows(anchor), rows(*members), torch.tensor(member_labels),
                             None if target is None else torch.tensor(target, dtype=torch.float64))


TUPLE = one(A, (P, N1, N2), (1, 0, 0))
CONTEXT = TeacherContext.of(rows(TA, P, N1, N2, A), [0, 0, 1, 1, 2])  # for the losses that need_context


def in_context(loss, batch, queries):
    """``batch`` with its queries (rows of CONTEXT) where ``loss`` needs the teacher's view of the split."""
    return replace(batch, queries=torch.tensor(queries), context=CONTEXT) if loss.needs_context else batch


def test_contrastive():
    assert ContrastiveLoss(0.7)(TUPLE).item() == pytest.approx(0.487010055238, abs=1e-11)


def test_triplet_with_cli_and_class_margins():
    assert TripletLoss(0.7)(TUPLE).item() == pytest.approx(1.42, abs=1e-11)
    assert TripletLoss(0.1)(TUPLE).item() == pytest.approx(0.82, abs=1e-11)


def test_multi_similarity():
    assert MultiSimilarityLoss()(TUPLE).item() == pytest.approx(0.759069434946, abs=1e-11)


def test_cross_entropy_dist():
    assert CrossEntropyDistLoss(temp=0.1)(TUPLE).item() == pytest.approx(6.118054001175, abs=1e-9)


def test_cross_entropy_on_similarities():
    s = torch.tensor([0.6, 0.96, -1.0]) / 0.1
    expected = -(s[0] - torch.logsumexp(s, 0))
    assert CrossEntropyLoss(temp=0.1)(TUPLE).item() == pytest.approx(expected.item(), abs=1e-5)


def test_regression_pair():
    pair = one(A, (P,), (1,))
    assert ContrastiveLoss(0.7)(pair).item() == pytest.approx(0.399999600001, abs=1e-11)
    assert RegressionLoss()(pair).item() == pytest.approx(0.399999600001, abs=1e-11)


def test_contr_plus_tuple():
    assert ContrastiveLoss(0.7)(one(A, (TA, P, N1, N2), (1, 1, 0, 0))).item() == pytest.approx(
        0.687009655239, abs=1e-11)


def test_contrastive_dist_pulls_negatives_to_target_distance():
    d_n1 = torch.linalg.vector_norm(torch.tensor([1 - 0.96 + 1e-6, -0.28 + 1e-6], dtype=torch.float64))
    batch = one(A, (P, N1), (1, 0), target=(0.0, 0.5))  # one teacher distance per member
    expected = 0.399999600001 + 0.5 * (0.5 - d_n1.item()) ** 2
    assert ContrastiveDistLoss()(batch).item() == pytest.approx(expected, abs=1e-9)


def test_several_tuples_sum():  # the functional formulas take several tuples in one matrix
    x = torch.cat([columns(A, P, N1, N2)] * 2, dim=1)
    y = torch.cat([labels(-1, 1, 0, 0)] * 2)
    assert LF.contrastive_loss(x, y, 0.7).item() == pytest.approx(2 * 0.487010055238, abs=1e-11)
    assert LF.multi_similarity_loss(x, y).item() == pytest.approx(2 * 0.759069434946, abs=1e-11)


STUDENT = torch.tensor([(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.6, 0.8, 0), (0, 0.6, 0.8)], dtype=torch.float64)
TEACHER = torch.tensor([(1, 0, 0), (0.8, 0.6, 0), (0, 0, 1), (0.6, 0.8, 0), (0, 0.8, 0.6)], dtype=torch.float64)


def test_rkd():
    assert RKdAD()(TupleBatch.pairs(STUDENT, TEACHER)).item() == pytest.approx(0.157342660894, abs=1e-9)


def test_hard_dark_rank():
    assert HardDarkRank()(TupleBatch.pairs(STUDENT, TEACHER)).item() == pytest.approx(3.994939300100, abs=1e-9)


def test_relational_losses_give_no_teacher_gradient():
    teacher = TEACHER.clone().requires_grad_(True)
    student = STUDENT.clone().requires_grad_(True)
    RKdAD()(TupleBatch.pairs(student, teacher)).backward()
    assert teacher.grad is None and student.grad is not None


def test_bad_tuples_are_refused():
    with pytest.raises(ValueError, match="exactly one positive"):
        TripletLoss()(one(A, (TA, P, N1), (1, 1, 0)))
    with pytest.raises(ValueError, match="anchor"):
        LF.contrastive_loss(columns(A, P), labels(1, -1))
    with pytest.raises(ValueError, match=r"anchors B x D and members B x M x D"):
        TupleBatch(rows(A, P), rows(N1), torch.tensor([0]))
    with pytest.raises(ValueError, match="2 members but 1 labels"):
        TupleBatch.single(rows(A), rows(P, N1), torch.tensor([1]))
    with pytest.raises(ValueError, match="needs the teacher's distances"):
        ContrastiveDistLoss()(one(A, (P, N1), (1, 0)))


def test_every_loss_has_the_one_call_shape():
    """Each registered loss takes a TupleBatch: one value per tuple, or one per batch."""
    for name, spec in LOSSES.items():
        loss = spec.build(0.7, 0.1)
        if spec.kind is LossKind.RELATIONAL:
            value = loss(TupleBatch.pairs(STUDENT, TEACHER))
            assert value.dim() == 0 and torch.isfinite(value), name
        else:
            batch = TupleBatch.from_columns(torch.cat([columns(A, P, N1)] * 3, dim=1), labels(-1, 1, 0).repeat(3),
                                            torch.tensor([0.0, 0.5] * 3, dtype=torch.float64))
            value = loss(in_context(loss, batch, [0, 1, 2]))
            assert value.shape == (3,) and torch.isfinite(value).all(), name
        assert loss.kind is spec.kind
        assert any(spec.accepts(mode) for mode in MODES.values()), name


# Tuples of different lengths in one batch (the shorter padded): every tuple loss, batched,
# against the same loss called on each tuple alone, values and gradients.
RAGGED = [(A, (P, N1, N2), (1, 0, 0), (0.1, 0.9, 1.4)), (P, (A, N2), (1, 0), (0.2, 0.3)),
          (N1, (TA, P, N2, A), (1, 0, 0, 0), (0.3, 0.2, 0.5, 0.7))]  # anchor, members, labels, target
TUPLE_LOSSES = [name for name, spec in LOSSES.items() if spec.kind is LossKind.TUPLE]


@pytest.mark.parametrize("name", TUPLE_LOSSES)
def test_a_cirtorch_call_of_a_tuple_loss_names_the_call_that_computes_it(name):
    """The error names a function or module that exists and gives the loss's own value on
    cirtorch's columns (aml's cross_entropy is not the original's CrossEntropyLoss)."""
    loss = LOSSES[name].build(0.7, 0.1)
    x, batch = ragged_batch()
    with pytest.raises(TypeError, match=f"takes a TupleBatch.*{loss.cirtorch_call or 'has no call'}"):
        loss(x, batch.labels)
    if loss.cirtorch_call is None:
        assert loss.needs_context, name  # only the losses of the split's context have none
        return
    module, _, attribute = loss.cirtorch_call.rpartition(".")
    call = getattr(importlib.import_module(module), attribute)
    y = torch.cat([labels(-1, *l) for _, _, l, _ in RAGGED])
    extra = (batch.target[batch.labels >= 0],) if loss.needs_target else ()
    settings = {k: getattr(loss, k) for k in inspect.signature(call).parameters if k not in ("x", "label") and hasattr(loss, k)}
    value = call(**settings)(x, y, *extra) if inspect.isclass(call) else call(x, y, *extra, **settings)
    assert value.item() == pytest.approx(loss(batch).sum().item(), abs=1e-12)


@pytest.mark.parametrize("name", [name for name, spec in LOSSES.items() if spec.kind is LossKind.RELATIONAL])
def test_a_cirtorch_call_of_a_relational_loss_names_the_call_that_computes_it(name):
    loss = LOSSES[name].build(0.7, 0.1)
    with pytest.raises(TypeError, match=f"takes a TupleBatch.*use {loss.cirtorch_call}$"):
        loss(STUDENT, TEACHER)
    module, _, attribute = loss.cirtorch_call.rpartition(".")
    value = getattr(importlib.import_module(module), attribute)()(STUDENT, TEACHER)
    assert value.item() == pytest.approx(loss(TupleBatch.pairs(STUDENT, TEACHER)).item(), abs=1e-12)


def ragged_batch(requires_grad=False):
    x = torch.cat([columns(a, *m) for a, m, _, _ in RAGGED], dim=1).requires_grad_(requires_grad)
    y = torch.cat([labels(-1, *l) for _, _, l, _ in RAGGED])
    target = torch.tensor([t for *_, ts in RAGGED for t in ts], dtype=torch.float64)
    return x, TupleBatch.from_columns(x, y, target)


@pytest.mark.parametrize("name", TUPLE_LOSSES)
def test_a_batch_of_tuples_equals_each_tuple_alone(name):
    loss = LOSSES[name].build(0.7, 0.1)
    x, batch = ragged_batch(requires_grad=True)
    assert batch.labels.tolist()[1] == [1, 0, -1, -1] and batch.members.shape == (3, 4, 2)
    values = loss(in_context(loss, batch, [0, 1, 2]))
    alone = [loss(in_context(loss, one(a, m, l, t), [k])).item() for k, (a, m, l, t) in enumerate(RAGGED)]
    assert values.tolist() == pytest.approx(alone, abs=1e-12)
    values.sum().backward()
    assert torch.isfinite(x.grad).all()
    for k, (a, m, l, t) in enumerate(RAGGED):  # each tuple's gradient is that of its own loss
        anchor = rows(a).requires_grad_(True)
        alone = TupleBatch.single(anchor, rows(*m), torch.tensor(l), torch.tensor(t, dtype=torch.float64))
        loss(in_context(loss, alone, [k])).backward()
        start = sum(1 + len(r[1]) for r in RAGGED[:k])
        assert torch.allclose(x.grad[:, start], anchor.grad[0], atol=1e-12), k


def test_the_batched_formulas_by_hand():
    """Two tuples, the second padded: contrastive per tuple by hand, d with cirtorch's eps."""
    anchors = rows((0.0, 0.0), (1.0, 0.0))
    members = torch.tensor([[(3.0, 4.0), (0.3, 0.4)], [(1.0, 0.0), (0.0, 0.0)]], dtype=torch.float64)
    member_labels = torch.tensor([[1, 0], [0, -1]])
    d = LF.tuple_distances(anchors, members, eps=0.0)
    assert d.tolist() == [[5.0, 0.5], [0.0, 1.0]]
    values = LF.contrastive_losses(anchors, members, member_labels, margin=0.7, eps=0.0)
    assert values.tolist() == pytest.approx([0.5 * 25 + 0.5 * 0.2 ** 2, 0.5 * 0.7 ** 2], abs=1e-12)
    assert LF.regression_losses(anchors, members, member_labels, eps=0.0).tolist() == [12.5, 0.0]


def test_mode_loss_compatibility():
    check_loss_mode("contrastive", "reg")
    check_loss_mode("rkd", "rand")
    for loss, mode in (("rkd", "ts"), ("triplet", "ts_self"), ("contrastive", "rand"), ("contrastive_dist", "std")):
        with pytest.raises(ValueError, match=f"--loss {loss} cannot be used with --mode {mode}"):
            check_loss_mode(loss, mode)
    assert set(LOSSES) >= {"contrastive", "triplet", "contrastive_dist", "cross_entropy", "cross_entropy_dist",
                           "multi", "rkd", "regression"}


@pytest.mark.parametrize("temp, reason", [(1e-30, "diverges whatever --lr is"), (1e30, "nothing is learned"),
                                          (float("nan"), "a finite number > 0"), (-0.1, "a finite number > 0")])
def test_a_degenerate_temperature_is_refused_with_the_reason(temp, reason):
    from aml.losses import build_loss

    with pytest.raises(ValueError, match=reason):
        build_loss("cross_entropy", temp=temp)
    assert build_loss("cross_entropy", temp=0.05).temp == 0.05


def test_pairs_of_other_shapes_are_refused():
    """A teacher's D x N matrix against the student's N x D rows was a shape error deep in the loss."""
    from aml.losses import TupleBatch
    from aml.utils.errors import ConfigError

    rows = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    assert TupleBatch.pairs(rows, rows).members.shape == (6, 1, 4)
    with pytest.raises(ConfigError, match=r"pairs takes N x D rows .* got \(6, 4\) and \(4, 6\)"):
        TupleBatch.pairs(rows, rows.T)


def test_a_margin_that_is_no_margin_is_refused():
    """build_loss took a margin of -1 or NaN (main.py's flag bounds it; a script's call did not)."""
    from aml.losses import build_loss
    from aml.utils.errors import ConfigError

    for margin in (-1, float("nan"), float("inf"), "0.7"):
        with pytest.raises(ConfigError, match=r"--loss-margin .*: a margin is a finite number >= 0"):
            build_loss("contrastive", margin=margin)
    assert build_loss("contrastive", margin=0).margin == 0
    import numpy as np

    assert build_loss("contrastive", margin=np.float32(0.5)).margin == 0.5
