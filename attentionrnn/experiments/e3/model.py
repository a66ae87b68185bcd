"""The network of experiment E3: MCB (Fukui et al., 2016) with its spatial attention swappable.

``image → CNN grid (B, C, h, w)``, ``question → GRU / LSTM (B, Q)``; the attention predicts
``glimpses`` masks over the grid from both, each mask pools the grid to one vector, and compact
bilinear pooling of the concatenated glimpse vectors with the question feeds the answer
classifier. Attention (``attention``):

* ``mcb`` — MCB's own: MCB of every grid cell with the question, 1×1 conv, ReLU, 1×1 conv to one
  logit map per glimpse, softmax over positions;
* ``arnn`` — one :class:`~attentionrnn.AttentionRNN` per glimpse, conditioned on the question
  (softmax gate, so a mask is a distribution over positions; multiplicative image-question fusion
  in its encoder by default);
* ``brnn`` — the same with :class:`~attentionrnn.BlockAttentionRNN`;
* ``none`` — the mean over positions (one "glimpse" of uniform weight);
* ``oracle`` — a reference row, not an estimator: every glimpse is spread evenly over the grid
  cells that the question's object boxes overlap (data with boxes only: the generated set), so it
  measures what attention on the right objects is worth to this network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from attentionrnn.layers.registry import (
    Attention,
    build_attention,
    experiment_rows,
    register_attention,
)

__all__ = [
    "E3_ATTENTIONS",
    "E3_ROWS",
    "MCBAttention",
    "OracleAttention",
    "CompactBilinearPooling",
    "ImageEncoder",
    "QuestionEncoder",
    "REFERENCE_ATTENTIONS",
    "VQANet",
    "box_masks",
    "count_sketch",
]

E3_ATTENTIONS = ("none", "mcb", "arnn", "brnn")
#: Rows that learn no attention but bound it: they need the data's object boxes.
REFERENCE_ATTENTIONS = ("oracle",)


def box_masks(boxes: Tensor, grid_size: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """Masks spread evenly over the grid cells that each question's boxes overlap.

    Args:
        boxes: ``(B, K, 4)`` pixel boxes ``(x0, y0, x1, y1)`` (end exclusive); rows of ``-1`` are
            absent boxes.
        grid_size: ``(h, w)`` of the grid; image_size: ``(H, W)`` of the image the boxes are in.

    Returns:
        ``(B, 1, h, w)``, each summing to 1 (uniform where a question has no box).
    """
    (h, w), (height, width) = grid_size, image_size
    ys = torch.arange(h, device=boxes.device) * height / h  # top edge of each cell row
    xs = torch.arange(w, device=boxes.device) * width / w
    x0, y0, x1, y1 = (boxes[..., k, None].float() for k in range(4))  # (B, K, 1)
    present = (boxes[..., 0] >= 0)[..., None]
    rows = (ys + height / h > y0) & (ys < y1) & present  # (B, K, h): the row overlaps the box
    cols = (xs + width / w > x0) & (xs < x1) & present
    cells = (rows[..., :, None] & cols[..., None, :]).any(1).float()  # (B, h, w)
    cells[cells.flatten(1).sum(1) == 0] = 1
    return (cells / cells.flatten(1).sum(1)[:, None, None])[:, None]


def count_sketch(x: Tensor, index: Tensor, sign: Tensor, dim: int) -> Tensor:
    """The count sketch ``Ψ(x)`` of the last axis of ``x``: ``y[h[i]] += s[i] x[i]``.

    Args:
        x: ``(..., n)``.
        index: ``(n,)`` int64 hash ``h`` into ``[0, dim)``.
        sign: ``(n,)`` signs ``s`` in ``{-1, +1}`` (same dtype as ``x``).
        dim: sketch size ``d``.

    Returns:
        ``(..., d)``.
    """
    out = x.new_zeros(*x.shape[:-1], dim)
    return out.index_add_(-1, index, x * sign)


class CompactBilinearPooling(nn.Module):
    r"""Multimodal compact bilinear pooling (Fukui et al., 2016; Gao et al., 2016).

    Approximates the outer product :math:`x \otimes y` projected to ``out_dim`` by the count
    sketch of the outer product, which equals the circular convolution of the two count
    sketches, computed as
    :math:`\mathrm{FFT}^{-1}(\mathrm{FFT}(\Psi(x)) \odot \mathrm{FFT}(\Psi(y)))`.
    The hashes and signs are drawn once from ``seed`` and stored as buffers (not trained). The
    FFT runs in float32 whatever the autocast (bf16 has no FFT on the CPU).

    Args:
        in1, in2: widths of ``x`` and ``y``.
        out_dim: sketch size ``d`` (MCB: 16,000).
        seed: seed of the hash functions.
        normalize: signed square root then L2 normalisation of the result (as MCB).

    Shape:
        - x: ``(..., in1)``, y: ``(..., in2)`` (broadcast over the leading axes).
        - Output: ``(..., out_dim)``.
    """

    def __init__(self, in1: int, in2: int, out_dim: int, seed: int = 0, normalize: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.out_dim, self.normalize = out_dim, normalize
        self.register_buffer("h1", torch.randint(out_dim, (in1,), generator=g))
        self.register_buffer("h2", torch.randint(out_dim, (in2,), generator=g))
        self.register_buffer("s1", torch.randint(2, (in1,), generator=g).float() * 2 - 1)
        self.register_buffer("s2", torch.randint(2, (in2,), generator=g).float() * 2 - 1)

    def extra_repr(self) -> str:
        return f"{len(self.h1)}, {len(self.h2)}, out_dim={self.out_dim}, normalize={self.normalize}"

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x, y = x.float(), y.float()
            px = count_sketch(x, self.h1, self.s1.to(x.dtype), self.out_dim)
            py = count_sketch(y, self.h2, self.s2.to(y.dtype), self.out_dim)
            z = torch.fft.irfft(
                torch.fft.rfft(px, dim=-1) * torch.fft.rfft(py, dim=-1), n=self.out_dim, dim=-1
            )
            if self.normalize:
                z = torch.sign(z) * torch.sqrt(z.abs() + 1e-8)  # +eps: finite gradient at 0
                z = F.normalize(z, dim=-1)
        return z


class ImageEncoder(nn.Module):
    """A small CNN to a grid of features: ``blocks`` × [conv 3×3, BN, ReLU, max-pool 2].

    With ``features=True`` the input is already a grid of features (e.g. VQA v2's precomputed
    ResNet maps) and only a 1×1 conv projects it to ``channels``.

    Args:
        in_channels: 3 for images, the feature width for precomputed grids.
        channels: output width ``C``.
        blocks: conv blocks (a 64×64 image with 3 blocks gives an 8×8 grid).
        features: the input is a feature grid.

    Shape:
        - Input: ``(B, in_channels, H, W)``; output ``(B, C, H / 2^blocks, W / 2^blocks)``
          (``(B, C, H, W)`` for features).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, blocks: int = 3,
                 features: bool = False) -> None:  # fmt: skip
        super().__init__()
        if features:
            self.body = nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ReLU())
            return
        layers: list[nn.Module] = []
        width = max(16, channels // 2)
        for b in range(blocks):
            out = channels if b == blocks - 1 else width
            layers += [nn.Conv2d(in_channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(), nn.MaxPool2d(2)]  # fmt: skip
            in_channels = out
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class QuestionEncoder(nn.Module):
    """Word embedding (``tanh``, as MCB) and a one-layer GRU or LSTM; the last state of each
    question (padding skipped).

    Shape:
        - ids: ``(B, L)`` int64, lengths: ``(B,)``; output ``(B, hidden)``.
    """

    def __init__(self, vocabulary: int, embed: int = 32, hidden: int = 64, rnn: str = "gru"):
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', got {rnn!r}")
        self.embed = nn.Embedding(vocabulary, embed, padding_idx=0)
        self.rnn = (nn.GRU if rnn == "gru" else nn.LSTM)(embed, hidden, batch_first=True)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        with torch.autocast(ids.device.type, enabled=False):  # the recurrence in float32
            words = torch.tanh(self.embed(ids)).float()
            packed = pack_padded_sequence(
                words, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            _, state = self.rnn(packed)
        h = state[0] if isinstance(state, tuple) else state
        return h[-1]


class MCBAttention(Attention):
    """MCB's attention: per-position MCB with the question, conv 1×1, ReLU, conv 1×1 → glimpses.

    ``forward(x, query, return_mask=True)`` returns the glimpses' attended maps, concatenated
    ``(B, glimpses x C, h, w)``, and the masks ``(B, glimpses, h, w)`` (each sums to 1).
    """

    def __init__(
        self, in_channels: int, query_channels: int | None = None, mcb_dim: int = 1024,
        hidden_channels: int = 256, glimpses: int = 2,
    ) -> None:  # fmt: skip
        super().__init__()
        if query_channels is None:
            raise ValueError("MCB attention needs the question: give query_channels")
        self.mcb = CompactBilinearPooling(in_channels, query_channels, mcb_dim, seed=1)
        self.conv1 = nn.Conv2d(mcb_dim, hidden_channels, 1)
        self.conv2 = nn.Conv2d(hidden_channels, glimpses, 1)

    def forward(
        self, x: Tensor, query: Tensor | None = None, return_mask: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        if query is None:
            raise ValueError("MCB attention needs the question (query=...)")
        b, c, h, w = x.shape
        cells = x.permute(0, 2, 3, 1)  # (B, h, w, C)
        z = self.mcb(cells, query[:, None, None, :]).permute(0, 3, 1, 2)  # (B, d, h, w)
        logits = self.conv2(F.relu(self.conv1(z.to(x.dtype))))
        mask = torch.softmax(logits.float().flatten(2), -1).view(b, -1, h, w)
        y = (x[:, None] * mask[:, :, None].to(x.dtype)).flatten(1, 2)
        return (y, mask) if return_mask else y


class OracleAttention(Attention):
    """The oracle row: every glimpse spread evenly over the cells of the question's objects.

    Not learnt; :meth:`forward` takes the object ``boxes`` ``(B, K, 4)`` and the ``image_size``
    they are in besides the usual arguments (the query is ignored).
    """

    def __init__(self, in_channels: int, query_channels: int | None = None, glimpses: int = 2):
        super().__init__()
        self.glimpses = glimpses

    def forward(
        self, x: Tensor, query: Tensor | None = None, return_mask: bool = False, *,
        boxes: Tensor | None = None, image_size: tuple[int, int] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:  # fmt: skip
        if boxes is None or image_size is None:
            raise ValueError("the oracle row needs the questions' object boxes (boxes=...)")
        mask = box_masks(boxes, x.shape[-2:], image_size)
        mask = mask.to(x.dtype).expand(-1, self.glimpses, -1, -1)
        y = (x[:, None] * mask[:, :, None]).flatten(1, 2)
        return (y, mask) if return_mask else y


register_attention("mcb", MCBAttention, general=False)
register_attention("oracle", OracleAttention, general=False)
#: Every valid row: the table's (estimators, then the reference rows), then any other general
#: registered method.
E3_ROWS: tuple[str, ...] = experiment_rows(E3_ATTENTIONS + REFERENCE_ATTENTIONS)


class VQANet(nn.Module):
    """Image + question → answer logits, with one of :data:`E3_ATTENTIONS`.

    Args:
        attention: ``"none"``, ``"mcb"``, ``"arnn"``, ``"brnn"`` or the reference ``"oracle"``
            (needs ``boxes`` in :meth:`forward`).
        vocabulary: number of word ids (with padding and unknown).
        answers: number of answer classes.
        in_channels: 3 for images, the width of precomputed features.
        features: the input is a precomputed feature grid (see :class:`ImageEncoder`).
        channels: width ``C`` of the image grid.
        blocks: CNN blocks.
        embed, question_hidden, rnn: the question encoder.
        mcb_dim: sketch size of both MCB poolings.
        glimpses: attention masks (MCB: 2).
        attention_hidden: hidden width of the ARNN / BRNN scan and of MCB attention's conv
            (``16 x`` that).
        query_fusion: ``"mul"`` or ``"add"``: the image-question fusion inside ARNN / BRNN.
        block_size: BRNN's pooling factor.
        coords: append two coordinate maps (x and y in [-1, 1]) to the image grid (our choice,
            as Sort-of-CLEVR's relation networks tag objects with coordinates): the pooled
            glimpse then says *where* it looked, which position questions need.

    Shape:
        - image: ``(B, in_channels, H, W)``; ids ``(B, L)``; lengths ``(B,)``.
        - boxes (``"oracle"`` only): ``(B, K, 4)`` pixel boxes of the question's objects.
        - Output: logits ``(B, answers)``; with ``return_masks=True`` also the masks
          ``(B, glimpses, h, w)`` (each sums to 1 over positions), ``None`` for ``"none"``.
    """

    def __init__(
        self,
        attention: str,
        vocabulary: int,
        answers: int,
        *,
        in_channels: int = 3,
        features: bool = False,
        channels: int = 64,
        blocks: int = 3,
        embed: int = 32,
        question_hidden: int = 64,
        rnn: str = "gru",
        mcb_dim: int = 1024,
        glimpses: int = 2,
        attention_hidden: int = 16,
        query_fusion: str = "mul",
        block_size: int = 2,
        coords: bool = True,
    ) -> None:
        super().__init__()
        if attention not in E3_ROWS:
            raise ValueError(f"attention must be one of {E3_ROWS}, got {attention!r}")
        self.attention = attention
        self.glimpses = glimpses if attention != "none" else 1
        self.coords = coords
        self.image = ImageEncoder(in_channels, channels, blocks, features)
        channels += 2 if coords else 0
        self.question = QuestionEncoder(vocabulary, embed, question_hidden, rnn)
        self.estimators = nn.ModuleList()
        if attention == "mcb":  # one module for every glimpse
            self.estimators.append(build_attention(
                "mcb", channels, query_channels=question_hidden, mcb_dim=mcb_dim,
                hidden_channels=16 * attention_hidden, glimpses=glimpses,
            ))  # fmt: skip
        elif attention == "oracle":
            self.estimators.append(build_attention("oracle", channels, glimpses=glimpses))
        elif attention != "none":  # one single-mask module per glimpse
            for _ in range(glimpses):
                self.estimators.append(build_attention(
                    attention, channels, query_channels=question_hidden,
                    hidden_channels=attention_hidden, gate="softmax", query_fusion=query_fusion,
                    block_size=block_size,
                ))  # fmt: skip
        self.fusion = CompactBilinearPooling(self.glimpses * channels, question_hidden, mcb_dim)
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(mcb_dim, answers)

    def masks(
        self, grid: Tensor, q: Tensor, boxes: Tensor | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> Tensor | None:  # fmt: skip
        """The ``(B, glimpses, h, w)`` attention masks over ``grid``, or ``None``."""
        if self.attention == "none":
            return None
        if self.attention == "oracle":
            return self.estimators[0](grid, return_mask=True, boxes=boxes, image_size=image_size)[1]
        if self.attention == "mcb":
            return self.estimators[0](grid, query=q, return_mask=True)[1]
        return torch.cat([est(grid, query=q, return_mask=True)[1] for est in self.estimators], 1)

    def encode_image(self, image: Tensor) -> Tensor:
        """The grid ``(B, C (+2), h, w)`` the attention looks at."""
        grid = self.image(image)
        if not self.coords:
            return grid
        b, _, h, w = grid.shape
        ys = torch.linspace(-1, 1, h, dtype=grid.dtype, device=grid.device)
        xs = torch.linspace(-1, 1, w, dtype=grid.dtype, device=grid.device)
        yx = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))  # (2, h, w)
        return torch.cat([grid, yx.flip(0).expand(b, 2, h, w)], 1)

    def forward(
        self,
        image: Tensor,
        ids: Tensor,
        lengths: Tensor,
        return_masks: bool = False,
        boxes: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        grid = self.encode_image(image)
        q = self.question(ids, lengths)
        masks = self.masks(grid, q, boxes, image.shape[-2:])
        if masks is None:
            pooled = grid.float().mean((2, 3))
        else:  # (B, G, C): one weighted sum of the grid per glimpse
            pooled = torch.einsum("bghw,bchw->bgc", masks.float(), grid.float()).flatten(1)
        z = self.fusion(F.normalize(pooled, dim=-1), q)
        logits = self.classifier(self.dropout(z) * math.sqrt(z.shape[-1]))
        return (logits, masks) if return_masks else logits
