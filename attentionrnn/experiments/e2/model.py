"""LTPA's VGG-att3 for 32×32 images, with a choice of attention estimator (experiment E2).

The network of "Learn to Pay Attention" (Jetley et al., ICLR 2018) with attention before max
pooling, as in its CIFAR models: six VGG blocks of 3×3 conv + batch norm + ReLU (VGG-16 widths
64, 128, 256, 512, 512, 512 and 2, 2, 3, 3, 3, 2 convs), max pooling after blocks 3, 4, 5 and
after each of the first two convs of block 6, and a "dense" conv that maps what is left to the
global feature ``g`` (512-d). The outputs of blocks 3, 4 and 5 are the local features
``l¹, l², l³`` (32×32, 16×16 and 8×8); a 1×1 projector maps a local feature to ``g``'s width
where they differ (block 3: 256 → 512).

At each of the three layers an estimator conditioned on ``g`` predicts a mask ``A`` over the
positions (softmax: it sums to 1), the layer's attended feature is ``g_a = Σ_i A_i l_i``, and the
three ``g_a`` are concatenated into the linear classifier (LTPA's *concat-pc*). Estimators:

``ltpa``  LTPA's parametrised compatibility ``c_i = <u, l_i + g>``, softmax over positions;
``arnn``  AttentionRNN (:func:`~attentionrnn.layers.factory.build_attention` ``"arnn"``, gate
          softmax, query ``g``);
``brnn``  Block AttentionRNN, with the block size that makes the coarse grid at most 8×8;
``none``  plain VGG: ``g`` straight into the classifier, no attention.

``width`` multiplies every channel count (1.0 is VGG-16; the CPU budget uses a narrower net) and
``depth`` (if set) replaces the number of convs of every block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentionrnn.layers.registry import (
    Attention,
    attention_methods,
    build_attention,
    experiment_rows,
    register_attention,
)

__all__ = [
    "E2_ATTENTIONS",
    "E2_ROWS",
    "VGG_CHANNELS",
    "VGG_CONVS",
    "AttnVGG",
    "CompatibilityAttention",
]

#: The attention estimators of E2, in the order of its tables.
E2_ATTENTIONS: tuple[str, ...] = ("none", "ltpa", "arnn", "brnn")
VGG_CHANNELS = (64, 128, 256, 512, 512, 512)
VGG_CONVS = (2, 2, 3, 3, 3, 2)
#: The blocks whose outputs are attended (0-based): blocks 3, 4 and 5.
LOCAL_BLOCKS = (2, 3, 4)
#: Largest side of BRNN's coarse grid.
BRNN_MAX_GRID = 8


class CompatibilityAttention(Attention):
    """LTPA's parametrised compatibility: ``c_i = <u, l_i + g>``, ``A = softmax_i(c)``.

    The same forward as the library's attention modules: ``(x, query, return_mask)`` returns
    ``x ⊙ A`` (and ``A``, ``(B, 1, H, W)``); ``query`` is ``g``, ``(B, C)``.
    """

    def __init__(self, in_channels: int, query_channels: int | None = None) -> None:
        super().__init__()
        if query_channels not in (None, in_channels):
            raise ValueError(
                f"the query g has the {in_channels} channels of x, got {query_channels}"
            )
        self.in_channels = in_channels
        self.u = nn.Conv2d(in_channels, 1, kernel_size=1, bias=False)

    def forward(
        self, x: Tensor, query: Tensor | None = None, return_mask: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        if query is None or query.shape[-1] != self.in_channels:
            raise ValueError(
                f"CompatibilityAttention needs a query g of shape (B, {self.in_channels})"
            )
        c = self.u(x + query[:, :, None, None].to(x.dtype))
        mask = F.softmax(c.flatten(1).float(), dim=1).view_as(c).to(x.dtype)
        y = x * mask
        return (y, mask) if return_mask else y


register_attention("ltpa", CompatibilityAttention, general=False)
#: Every valid estimator: the table's rows, then any other general registered method.
E2_ROWS: tuple[str, ...] = experiment_rows(E2_ATTENTIONS)


def _conv_block(c_in: int, c_out: int, convs: int, pool_first: int = 0) -> nn.Sequential:
    """``convs`` × (3×3 conv, batch norm, ReLU); a 2×2 max pool after each of the first
    ``pool_first`` of them."""
    layers: list[nn.Module] = []
    for k in range(convs):
        layers += [
            nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
        if k < pool_first:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def scaled_channels(width: float) -> tuple[int, ...]:
    """VGG-16's channel counts times ``width`` (at least 8, multiples of 8 where ≥ 8)."""
    return tuple(max(8, int(round(c * width / 8)) * 8) for c in VGG_CHANNELS)


def brnn_block_size(size: int, max_grid: int = BRNN_MAX_GRID) -> int:
    """The smallest block size that makes a ``size``-wide map's coarse grid ≤ ``max_grid``."""
    return max(1, math.ceil(size / max_grid))


class AttnVGG(nn.Module):
    """VGG-att3 for 32×32 images (LTPA, attention before pooling) with a chosen estimator.

    Args:
        attention: one of :data:`E2_ATTENTIONS`.
        num_classes: classifier outputs.
        image_size: input side (32 for CIFAR; a multiple of 32).
        width: multiplies VGG-16's channel counts (1.0: 64 … 512); keyword-only, as are the
            other architecture options below.
        depth: convs per block (``None``: VGG-16's 2, 2, 3, 3, 3, 2).
        attention_hidden: hidden width of the ARNN / BRNN estimators (default: the registry's).

    ``forward(x)`` returns the logits; ``forward(x, return_masks=True)`` returns
    ``(logits, masks)`` with the three masks ``(B, 1, H, W)`` at 32×32, 16×16 and 8×8 (an empty
    tuple for ``"none"``).
    """

    def __init__(
        self,
        attention: str = "ltpa",
        num_classes: int = 10,
        image_size: int = 32,
        *,
        width: float = 1.0,
        depth: int | None = None,
        attention_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if attention not in E2_ROWS:
            raise ValueError(f"attention must be one of {E2_ROWS}, got {attention!r}")
        if not (width > 0):
            raise ValueError(f"width must be positive, got {width}")
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        self.attention = attention
        self.width = width
        self.depth = depth
        channels = scaled_channels(width)
        convs = VGG_CONVS if depth is None else (depth,) * len(VGG_CHANNELS)
        self.channels = channels
        blocks = []
        c_in = 3
        for k, (c, n) in enumerate(zip(channels, convs, strict=True)):
            blocks.append(_conv_block(c_in, c, n, pool_first=2 if k == 5 else 0))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        # block 6 pools 8x (3 pools before it, at most 2 inside it); the dense conv covers the rest
        remaining = image_size // 8 // 2 ** min(convs[5], 2)
        self.dense = nn.Conv2d(channels[5], channels[5], kernel_size=remaining)
        g_dim = channels[5]
        self.g_dim = g_dim
        sizes = [image_size // 2**j for j in range(len(LOCAL_BLOCKS))]  # 32, 16, 8
        self.mask_sizes = tuple(sizes)
        if attention == "none":
            self.projectors = nn.ModuleList()
            self.estimators = nn.ModuleList()
            self.classify = nn.Linear(g_dim, num_classes)
        else:
            self.projectors = nn.ModuleList(
                nn.Conv2d(channels[b], g_dim, 1, bias=False)
                if channels[b] != g_dim
                else nn.Identity()
                for b in LOCAL_BLOCKS
            )
            hidden = attention_hidden or attention_methods()["arnn"].hidden_channels
            self.estimators = nn.ModuleList(
                self._estimator(attention, g_dim, hidden, size) for size in sizes
            )
            self.classify = nn.Linear(g_dim * len(LOCAL_BLOCKS), num_classes)

    @staticmethod
    def _estimator(attention: str, channels: int, hidden: int, size: int) -> nn.Module:
        kwargs = {"block_size": brnn_block_size(size)} if attention == "brnn" else {}
        return build_attention(
            attention, channels, query_channels=channels, hidden_channels=hidden, gate="softmax",
            **kwargs,
        )  # fmt: skip

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The local features ``l¹, l², l³`` and the global feature ``g`` ``(B, C)``."""
        local: list[Tensor] = []
        for k, block in enumerate(self.blocks):
            x = block(x)
            if k in LOCAL_BLOCKS:
                local.append(x)
                x = F.max_pool2d(x, 2)
        g = self.dense(x).flatten(1)
        return local, g

    def forward(
        self, x: Tensor, return_masks: bool = False
    ) -> Tensor | tuple[Tensor, Sequence[Tensor]]:
        local, g = self.features(x)
        if self.attention == "none":
            logits = self.classify(g)
            return (logits, ()) if return_masks else logits
        attended, masks = [], []
        for l, project, estimate in zip(local, self.projectors, self.estimators, strict=True):
            y, mask = estimate(project(l), query=g, return_mask=True)
            attended.append(y.sum(dim=(2, 3)))  # Σ_i A_i l_i
            masks.append(mask)
        logits = self.classify(torch.cat(attended, dim=1))
        return (logits, tuple(masks)) if return_masks else logits
