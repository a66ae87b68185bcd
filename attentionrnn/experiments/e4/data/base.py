"""What every E4 task serves: :class:`EditBatch` es."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["EditBatch"]


@dataclass
class EditBatch:
    """One batch of edits.

    Attributes:
        x: source images ``(B, 3, H, W)`` in [0, 1].
        query: float query ``(B, Q)`` (one-hot digit class) or ``None``.
        labels: attribute labels of the source ``(B, M)`` int64.
        targets: attribute labels the edit asks for ``(B, M)``.
        changed: ``(B,)`` the attribute each edit changes (the others keep their label).
        truth: the exact edited images ``(B, 3, H, W)`` or ``None``.
        region: bool ``(B, H, W)`` pixels the edit may change (the digit's strokes) or ``None``.
        box: bool ``(B, H, W)`` the edited digit's box or ``None``.
        others: bool ``(B, H, W)`` the stroke pixels of the image's other digits (the edit must
            leave them; a query-blind mask spreads over them too) or ``None``.
        kept_query, kept_labels, kept_valid: another digit of the same image, whose attribute the
            edit must keep — its query ``(B, Q)``, its labels ``(B, M)`` and ``(B,)`` whether the
            image has another digit at all (``--w-keep``); ``None`` where a task's labels already
            hold every attribute (CelebA).
    """

    x: torch.Tensor
    query: torch.Tensor | None
    labels: torch.Tensor
    targets: torch.Tensor
    changed: torch.Tensor
    truth: torch.Tensor | None = None
    region: torch.Tensor | None = None
    box: torch.Tensor | None = None
    others: torch.Tensor | None = None
    kept_query: torch.Tensor | None = None
    kept_labels: torch.Tensor | None = None
    kept_valid: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)
