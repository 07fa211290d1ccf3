"""The losses of later papers (CSD, BCT, HVS, LCE: `aml.losses.compatibility`) against
hand-computed values on 2-d descriptors, their teacher context, and that minimising each
one makes the student's descriptors retrieve in the teacher's space."""

import math
from dataclasses import replace

import pytest
import torch

from aml.losses import (LOSSES, BackwardCompatibleLoss, CompatibleEmbeddingLoss, ContextualSimilarityLoss,
                        HeterogeneousCompatibilityLoss, TeacherContext, TupleBatch)
from aml.losses.compatibility import boundary_losses, contextual_similarity_losses, prototype_logits
from aml.losses.context import class_prototypes
from aml.training.modes import MODES, check_loss_mode

NEW = ("csd", "bct", "hvs", "lce")

# The teacher's split: images 0, 1 in cluster 5, images 2, 3 in cluster 9. Class 0 (cluster 5)
# has prototype (1.6, 0.8) / |.| = (2, 1) / sqrt 5, both members at cosine 2 / sqrt 5 from it;
# class 1 has prototype (-1, 1) / sqrt 2, both members at cosine 1 / sqrt 2.
TEACHER = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
CONTEXT = TeacherContext.of(TEACHER, [5, 5, 9, 9])
Q = (0.0, 1.0)  # the student's descriptor of image 0: cos 1 / sqrt 5 to its prototype, 1 / sqrt 2 to the other


def batch_of(anchors, queries, context=CONTEXT):
    """Tuples of one positive (the teacher's descriptor of the query, as mode reg draws)."""
    queries = torch.tensor(queries)
    anchors = torch.as_tensor(anchors, dtype=torch.float64).reshape(len(queries), -1)
    members = context.descriptors[queries][:, None, :]
    return TupleBatch(anchors, members, torch.ones((len(anchors), 1), dtype=torch.long), queries=queries,
                      context=context)


def test_the_context_holds_prototypes_and_boundaries_by_hand():
    assert CONTEXT.classes.tolist() == [0, 0, 1, 1] and len(CONTEXT) == 4
    s5, s2 = math.sqrt(5), math.sqrt(2)
    assert CONTEXT.prototypes.reshape(-1).tolist() == pytest.approx([2 / s5, 1 / s5, -1 / s2, 1 / s2], abs=1e-12)
    assert CONTEXT.boundaries.tolist() == pytest.approx([2 / s5, 1 / s2], abs=1e-12)
    prototypes, boundaries = class_prototypes(torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]),
                                              torch.tensor([0, 1, 0]), 2)  # (1,0) and (0,-1): not opposite
    assert prototypes[1].tolist() == [0.0, 1.0] and boundaries.tolist() == pytest.approx([2 ** -0.5, 1.0], abs=1e-6)
    with pytest.raises(ValueError, match="4 teacher descriptors but 3 cluster ids"):
        TeacherContext.of(TEACHER, [5, 5, 9])


def test_bct_is_the_cross_entropy_under_the_prototypes():
    # temp 0.5: logits 2 cos = (2 / sqrt 5, sqrt 2), class 0
    expected = math.log(1 + math.exp(math.sqrt(2) - 2 / math.sqrt(5)))
    assert BackwardCompatibleLoss(temp=0.5)(batch_of(Q, [0])).item() == pytest.approx(expected, abs=1e-12)
    # image 2 (class 1), same descriptor: logits (2 / sqrt 5, sqrt 2), class 1
    expected = math.log(1 + math.exp(2 / math.sqrt(5) - math.sqrt(2)))
    assert BackwardCompatibleLoss(temp=0.5)(batch_of(Q, [2])).item() == pytest.approx(expected, abs=1e-12)


def test_hvs_adds_the_arcface_margin_to_the_own_class_only():
    own = 2 * math.cos(math.acos(1 / math.sqrt(5)) + 0.15)
    expected = math.log(1 + math.exp(math.sqrt(2) - own))
    assert HeterogeneousCompatibilityLoss(temp=0.5)(batch_of(Q, [0])).item() == pytest.approx(expected, abs=1e-9)
    assert prototype_logits(torch.tensor([[0.0, 1.0]], dtype=torch.float64), CONTEXT.prototypes, torch.tensor([0]),
                            2.0, 0.15)[0, 1].item() == pytest.approx(math.sqrt(2), abs=1e-12)


def test_the_margin_is_not_applied_past_pi():
    """An anchor opposite its prototype keeps cos(theta): theta + m would pass pi (SSP's ArcFace)."""
    opposite = (-2 / math.sqrt(5), -1 / math.sqrt(5))
    bct = BackwardCompatibleLoss(temp=0.5)(batch_of(opposite, [0])).item()
    assert HeterogeneousCompatibilityLoss(temp=0.5)(batch_of(opposite, [0])).item() == pytest.approx(bct, abs=1e-5)


def test_lce_is_arcface_plus_the_boundary_loss():
    own = 2 * math.cos(math.acos(1 / math.sqrt(5)) + 0.1)
    ce = math.log(1 + math.exp(math.sqrt(2) - own))
    boundary = 2 / math.sqrt(5) - 1 / math.sqrt(5)  # b_0 - cos(q, p_0)
    assert CompatibleEmbeddingLoss(temp=0.5)(batch_of(Q, [0])).item() == pytest.approx(ce + boundary, abs=1e-9)
    inside = torch.tensor([[0.9, 0.45]], dtype=torch.float64)  # on the prototype: no boundary loss
    assert boundary_losses(inside, CONTEXT.prototypes, CONTEXT.boundaries, torch.tensor([0])).item() == 0.0


def test_csd_is_the_kl_divergence_over_the_teachers_neighbours():
    # g = (1, 0): cosines to the context (1, 0.6, 0, -1); k = 2 keeps images 0 and 1
    p_t = torch.softmax(torch.tensor([1.0, 0.6], dtype=torch.float64) / 0.5, 0)
    p_s = torch.softmax(torch.tensor([0.0, 0.8], dtype=torch.float64) / 0.5, 0)  # q = (0, 1)
    expected = float((p_t * (p_t / p_s).log()).sum())
    assert ContextualSimilarityLoss(temp=0.5, k=2)(batch_of(Q, [0])).item() == pytest.approx(expected, abs=1e-12)
    p_t = torch.softmax(torch.tensor([1.0, 0.6, 0.0, -1.0], dtype=torch.float64) / 0.5, 0)
    p_s = torch.softmax(torch.tensor([0.0, 0.8, 1.0, 0.0], dtype=torch.float64) / 0.5, 0)
    expected = float((p_t * (p_t / p_s).log()).sum())  # k past N: the whole context
    assert ContextualSimilarityLoss(temp=0.5, k=256)(batch_of(Q, [0])).item() == pytest.approx(expected, abs=1e-12)
    assert ContextualSimilarityLoss(temp=0.5)(batch_of((2.0, 0.0), [0])).item() == pytest.approx(0.0, abs=1e-12)
    assert contextual_similarity_losses(TEACHER, TEACHER, TEACHER, 3, 0.1).abs().max().item() < 1e-12


@pytest.mark.parametrize("name", NEW)
def test_a_batch_is_each_tuple_alone_with_finite_gradients_and_none_for_the_teacher(name):
    loss = LOSSES[name].build(0.7, 0.5)
    anchors = torch.tensor([Q, (0.6, 0.8), (-2 / math.sqrt(5), -1 / math.sqrt(5))], dtype=torch.float64)
    teacher = TEACHER.clone().requires_grad_(True)
    context = TeacherContext.of(teacher, [5, 5, 9, 9])
    x = anchors.clone().requires_grad_(True)
    values = loss(batch_of(x, [0, 3, 1], context))
    assert values.shape == (3,)
    values.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert teacher.grad is None  # the teacher side learns nothing
    for k, query in enumerate([0, 3, 1]):
        alone = loss(batch_of(anchors[k], [query])).item()
        assert values[k].item() == pytest.approx(alone, abs=1e-12)
    exact = loss(batch_of(CONTEXT.prototypes[0], [0]))  # on the prototype: acos at its clamp
    anchor = CONTEXT.prototypes[:1].clone().requires_grad_(True)
    loss(batch_of(anchor, [0])).sum().backward()
    assert torch.isfinite(exact).all() and torch.isfinite(anchor.grad).all()


@pytest.mark.parametrize("name", NEW)
def test_minimising_each_loss_makes_student_queries_find_their_teacher_class(name):
    """Free student descriptors of 12 images of 3 landmarks, from random, trained by the loss
    alone: afterwards every student query's nearest teacher descriptor (asymmetric search) is of
    its own landmark; at the start 5 are not."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator, dtype=torch.float64), dim=1)
    clusters = [c for c in range(3) for _ in range(4)]
    teacher = torch.nn.functional.normalize(centres[clusters] + 0.3 * torch.randn(12, 8, generator=generator,
                                                                                  dtype=torch.float64), dim=1)
    context = TeacherContext.of(teacher, clusters)
    student = torch.randn(12, 8, generator=generator, dtype=torch.float64).requires_grad_(True)
    loss = LOSSES[name].build(0.7, 0.1)

    def hits():
        nearest = (torch.nn.functional.normalize(student, dim=1) @ teacher.t()).argmax(dim=1)
        return sum(clusters[n] == c for n, c in zip(nearest.tolist(), clusters))

    before = hits()
    optimizer = torch.optim.Adam([student], lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        loss(batch_of(student, list(range(12)), context)).sum().backward()
        optimizer.step()
    assert before == 7 and hits() == 12, (before, hits())


def test_they_need_the_context_and_train_in_the_image_modes():
    plain = TupleBatch.single(torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    for name in NEW:
        loss = LOSSES[name].build(0.7, 0.1)
        assert loss.needs_context and not loss.needs_target
        with pytest.raises(ValueError, match="needs the teacher's view of the split"):
            loss(plain)
        assert sorted(m for m, mode in MODES.items() if LOSSES[name].accepts(mode)) == ["reg", "reg_only_pos"]
        check_loss_mode(name, "reg")
        with pytest.raises(ValueError, match=f"--loss {name} cannot be used with --mode ts: it trains on single "
                                             "images against the teacher's view of the whole split"):
            check_loss_mode(name, "ts")
    with pytest.raises(ValueError, match="queries and context come together"):
        replace(plain, queries=torch.tensor([0]))
    with pytest.raises(ValueError, match="queries must be B = 1 row indices"):
        replace(plain, queries=torch.tensor([0, 1]), context=CONTEXT)


def test_the_contextual_similarity_loss_stays_finite_at_a_low_temperature():
    """At temp 0.01 the far neighbours' teacher probabilities underflowed to 0 and 0 * log(0) made
    the first batch's loss NaN: the run stopped as diverged, never trained."""
    generator = torch.Generator().manual_seed(0)
    context = torch.nn.functional.normalize(torch.randn(300, 16, generator=generator), dim=1)
    anchors = torch.nn.functional.normalize(torch.randn(4, 16, generator=generator), dim=1)
    for temp in (0.1, 0.01, 0.001):
        losses = contextual_similarity_losses(anchors, context[:4], context, 256, temp)
        assert torch.isfinite(losses).all() and (losses >= -1e-6).all()
