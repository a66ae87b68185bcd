"""Metrics of experiment E4: edit success, preservation, mask correctness, KID.

All take plain tensors, so they can be checked on hand-made cases (a perfect edit, an edit
everywhere) as well as applied to an editor's output.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from attentionrnn.data.regions import attention_correctness

__all__ = ["MEASURES", "edit_success", "kid", "mask_correctness", "measures", "preservation_l1",
           "target_logits"]  # fmt: skip

#: How each measure of an edit set is shown in a table: key (in ``metrics.json`` without its
#: ``test_`` / ``val_`` prefix) -> (header, scale, digits).
MEASURES: dict[str, tuple[str, float, int]] = {
    "edit_success": ("edit success %", 100.0, 1),
    "preservation_l1": ("preservation L1 ×100", 100.0, 2),
    "truth_l1": ("L1 to exact ×100", 100.0, 2),
    "mask_correctness": ("mask on digit %", 100.0, 1),
    "mask_correctness_box": ("mask in box %", 100.0, 1),
    "mask_others": ("mask on other digits %", 100.0, 1),
    "mask_background": ("mask on background %", 100.0, 1),
    "mask_query_ratio": ("queried / all digits %", 100.0, 1),
    "leak_l1": ("leak onto others ×100", 100.0, 2),
    "kid": ("KID ×100", 100.0, 3),
}


def measures(*keys: str) -> tuple[tuple[str, str, float, int], ...]:
    """The columns of a table of ``keys``: ``(key, header, scale, digits)`` each."""
    return tuple((key, *MEASURES[key]) for key in keys)


def target_logits(logits: Tensor, changed: Tensor, classes: tuple[int, ...]) -> list[Tensor]:
    """The logits of the attribute each sample's edit changed (one tensor per sample)."""
    parts = torch.split(logits, list(classes), dim=1)
    return [parts[int(m)][b] for b, m in enumerate(changed)]


def edit_success(
    logits: Tensor, targets: Tensor, changed: Tensor, classes: tuple[int, ...]
) -> Tensor:
    """Per sample: does the judge's prediction of the changed attribute equal the target?

    Args:
        logits: the judge's logits on the edited images ``(B, sum(classes))``.
        targets: ``(B, M)`` target labels; changed: ``(B,)`` the attribute edited.

    Returns:
        ``(B,)`` float, 1 for a successful edit.
    """
    picked = target_logits(logits, changed, classes)
    pred = torch.stack([p.argmax() for p in picked]) if picked else torch.zeros(0, dtype=torch.long)
    want = targets[torch.arange(len(changed)), changed]
    return (pred == want).float()


def preservation_l1(edited: Tensor, source: Tensor, region: Tensor) -> Tensor:
    """Per sample: mean absolute change (RGB in [0, 1]) over the pixels outside ``region``.

    The exact edit leaves every pixel outside the edited digit as it was, so this is 0 for a
    perfect edit. Shape: images ``(B, 3, H, W)``, region bool ``(B, H, W)``; returns ``(B,)``.
    """
    keep = (~region.bool()).float()[:, None]
    diff = (edited.float() - source.float()).abs() * keep
    return diff.sum((1, 2, 3)) / (3 * keep.sum((1, 2, 3))).clamp_min(1)


def mask_correctness(masks: Tensor, region: Tensor) -> Tensor:
    """Per sample: share of the mask's mass (resized to the image) on ``region``.

    Shape: masks ``(B, 1, h, w)``, region bool ``(B, H, W)``; returns ``(B,)`` (``nan`` for an
    all-zero mask). A uniform mask scores the region's share of the image.
    """
    return attention_correctness(masks.float(), region)


def _polynomial_mmd(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD² with the kernel ``k(a, b) = (a·b / d + 1)³`` (Bińkowski et al., 2018)."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())


def kid(
    features_a: Tensor, features_b: Tensor, subsets: int = 10, subset_size: int = 200, seed: int = 0
) -> float:
    """Kernel Inception Distance between two feature sets ``(N, F)``: the mean unbiased MMD²
    over ``subsets`` random subsets of ``subset_size`` (fewer when a set is smaller). The feature
    network is the project's own attribute classifier, not Inception. ``nan`` below 2 samples."""
    a, b = features_a.double(), features_b.double()
    size = min(subset_size, len(a), len(b))
    if size < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = [
        _polynomial_mmd(a[rng.choice(len(a), size, replace=False)],
                        b[rng.choice(len(b), size, replace=False)])
        for _ in range(subsets)
    ]  # fmt: skip
    return float(np.mean(values))
