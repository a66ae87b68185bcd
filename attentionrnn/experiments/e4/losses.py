"""The losses of experiment E4 (ModularGAN's terms, Zhao et al., ECCV 2018): adversarial,
attribute classification (real images for ``D``, edited ones for the generator), reconstruction
``R(E(x)) ≈ x``, cycle ``edit(edit(x, t), labels) ≈ x`` and mask sparsity ``mean(A)``; and the
terms the screening of the mask heads added (teacher, keep, apart, identify, locate).

The adversarial loss is the **hinge** loss with **no gradient penalty**: a penalty on ``D``'s
input gradient needs double backward through the generator's masks, which the scan's fused CPU
kernels do not support, and ``D`` alone needs none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentionrnn.experiments.e4.model import Discriminator, Editor

__all__ = [
    "LossWeights",
    "attribute_loss",
    "discriminator_loss",
    "generator_loss",
    "identity_logits",
    "locate_loss",
    "mask_overlap",
    "split_logits",
]


def split_logits(logits: Tensor, classes: tuple[int, ...]) -> list[Tensor]:
    """The logits of each attribute from their concatenation ``(B, sum(classes))``."""
    return list(torch.split(logits, list(classes), dim=1))


def attribute_loss(logits: Tensor, labels: Tensor, classes: tuple[int, ...]) -> Tensor:
    """Cross-entropy summed over the attributes (each a softmax over its classes)."""
    parts = split_logits(logits.float(), classes)
    return sum(F.cross_entropy(p, labels[:, m]) for m, p in enumerate(parts))  # type: ignore[return-value]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator's loss terms (ModularGAN: cls 1, rec / cycle 10; the mask
    sparsity weight is our choice; ``teacher``: the classification of the edits by a frozen
    classifier of real images, 0 in ModularGAN; ``keep``: the classification of another digit of
    the edited image as its unchanged colour — ModularGAN classifies every attribute of an edit,
    the unchanged ones as they were, and the other digits' colours are those here — 0 by
    default; ``apart``: the overlap of the masks that two queries of the same image give, 0 by
    default; ``identify``: the query's class named from the features the mask pools, 0 by
    default)."""

    cls: float = 1.0
    rec: float = 10.0
    cycle: float = 10.0
    mask: float = 0.1
    teacher: float = 0.0
    keep: float = 0.0
    apart: float = 0.0
    identify: float = 0.0


def discriminator_loss(
    d: Discriminator, real: Tensor, fake: Tensor, labels: Tensor, query: Tensor | None,
    weights: LossWeights = LossWeights(),
) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """Hinge loss on real / edited images plus the attribute loss on real ones.

    Returns ``(loss, terms)``; ``terms`` also holds ``d_accuracy`` (attributes of real images)."""
    real_score, real_logits = d(real, query)
    fake_score, _ = d(fake.detach(), query)
    adv = F.relu(1 - real_score.float()).mean() + F.relu(1 + fake_score.float()).mean()
    cls = attribute_loss(real_logits, labels, d.classes)
    with torch.no_grad():  # how well D tells the real attributes (the learning curve's accuracy)
        hits = [(p.argmax(1) == labels[:, m]).float().mean()
                for m, p in enumerate(split_logits(real_logits.float(), d.classes))]  # fmt: skip
    parts = {"d_adv": adv, "d_cls": cls, "d_accuracy": torch.stack(hits).mean()}
    return adv + weights.cls * cls, parts


def generator_loss(
    g: Editor, d: Discriminator, x: Tensor, labels: Tensor, targets: Tensor,
    query: Tensor | None, weights: LossWeights = LossWeights(),
    teacher: nn.Module | None = None,
    kept: tuple[Tensor, Tensor, Tensor] | None = None,
    edit: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:  # fmt: skip
    """ModularGAN's generator loss: adversarial (hinge), classification of the edited image,
    reconstruction, cycle and mask sparsity; with a ``teacher`` (a frozen
    :class:`AttributeClassifier` of real images) and ``weights.teacher > 0`` also the teacher's
    classification of the edited image (``g_teacher``: the gradient reaches the editor through
    the teacher, whose own parameters stay as they are). With ``kept`` — another digit of each
    image: its query, its labels and whether it exists — and ``weights.keep > 0``, the edited
    image's other digit classified as its unchanged colour, by D's classifier (``g_keep``,
    weighted as the classification) and by the teacher where there is one (``g_teacher_keep``,
    weighted as the teacher's term). With ``kept`` and ``weights.apart > 0``, the same edit asked
    with the other digit's query, and the cosine similarity of the two edits' masks per image
    (``g_apart``): a query-blind mask gives 1, masks on two different digits 0. Only which
    digits an image holds is used, never where they are. With ``weights.identify > 0`` (an
    editor built with ``identify=True``), the cross-entropy of :func:`identity_logits` against
    the query's class (``g_identify``): the query's label only. ``edit``: ``g(x, targets,
    query)`` where the caller has it already (with its graph; a training step edits once for
    both updates). Returns ``(loss, terms, edited, masks)``."""
    edited, masks = g(x, targets, query) if edit is None else edit
    score, logits = d(edited, query)
    adv = -score.float().mean()
    cls = attribute_loss(logits, targets, g.classes)
    rec = (g.reconstruct(x).float() - x).abs().mean()
    back, _ = g(edited, labels, query)
    cycle = (back.float() - x).abs().mean()
    sparsity = masks.float().mean()
    loss = (adv + weights.cls * cls + weights.rec * rec + weights.cycle * cycle
            + weights.mask * sparsity)  # fmt: skip
    parts = {"g_adv": adv, "g_cls": cls, "rec": rec, "cycle": cycle, "mask": sparsity}
    if teacher is not None and weights.teacher <= 0:
        teacher = None  # weight 0: the teacher is not asked
    if teacher is not None:
        parts["g_teacher"] = attribute_loss(teacher(edited, query), targets, g.classes)
        loss = loss + weights.teacher * parts["g_teacher"]
    if kept is not None and weights.keep > 0 and bool(kept[2].any()):
        valid = kept[2]
        other, other_query, other_labels = edited[valid], kept[0][valid], kept[1][valid]
        _, other_logits = d(other, other_query)
        parts["g_keep"] = attribute_loss(other_logits, other_labels, g.classes)
        keep = weights.cls * parts["g_keep"]
        if teacher is not None:
            parts["g_teacher_keep"] = attribute_loss(teacher(other, other_query), other_labels,
                                                     g.classes)  # fmt: skip
            keep = keep + weights.teacher * parts["g_teacher_keep"]
        loss = loss + weights.keep * keep
    if kept is not None and weights.apart > 0 and bool(kept[2].any()):
        valid = kept[2]
        _, other_masks = g(x[valid], targets[valid], kept[0][valid])
        parts["g_apart"] = mask_overlap(masks[valid], other_masks)
        loss = loss + weights.apart * parts["g_apart"]
    if weights.identify > 0 and query is not None:
        logits = identity_logits(g, x, masks)
        parts["g_identify"] = F.cross_entropy(logits.float(), query.argmax(1))
        loss = loss + weights.identify * parts["g_identify"]
    return loss, parts, edited, masks


def identity_logits(g: Editor, x: Tensor, masks: Tensor, eps: float = 1e-6) -> Tensor:
    """The query's class as :attr:`Editor.identifier` reads it from the encoder's features
    pooled by the first module's mask: ``W · Σ A f / Σ A``. A mask spread over every digit pools
    a mix of them; only a mask on the queried digit pools features of its class alone."""
    if g.identifier is None:
        raise ValueError("the editor was built without identify=True")
    f = g.encoder(x).float()
    a = masks[:, :1].float()  # the first module's mask lies on the encoder's grid
    pooled = (a * f).sum((2, 3)) / (a.sum((2, 3)) + eps)
    return g.identifier(pooled)


def locate_loss(masks: Tensor, region: Tensor) -> Tensor:
    """Binary cross-entropy of each module's mask ``(B, M, h, w)`` against the queried digit's
    stroke pixels ``region`` ``(B, H, W)``, average-pooled to the mask's grid."""
    target = F.adaptive_avg_pool2d(region.float()[:, None], masks.shape[-2:])
    return F.binary_cross_entropy(masks.float().clamp(1e-6, 1 - 1e-6),
                                  target.expand_as(masks))  # fmt: skip


def mask_overlap(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over samples of the cosine similarity of two mask stacks ``(B, M, h, w)``: 1 for
    masks of the same shape up to scale, 0 for masks with no common support."""
    a, b = a.float().flatten(1), b.float().flatten(1)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)).mean()
