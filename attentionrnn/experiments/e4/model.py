"""The networks of experiment E4: a ModularGAN-style editor (Zhao et al., ECCV 2018).

``image → encoder E → features f``; each attribute has a transformer module ``T_m`` that, given
the target label (and the query), computes an edited feature map ``t`` and a mask ``A`` and
blends them, ``f ← A⊙t + (1−A)⊙f``; the reconstructor ``R`` decodes the features to an image.
The discriminator ``D`` scores realism per patch and classifies the attributes (of the queried
digit, through a query-conditioned pooling). The mask head (``mask``):

* ``ctx`` — a conv head (3×3 conv with the condition added, ReLU, 1×1 conv, sigmoid): the
  baseline, :class:`~attentionrnn.layers.baselines.ContextAttention`;
* ``arnn`` — :class:`~attentionrnn.AttentionRNN` (bi-directional scan) on the same input;
* ``brnn`` — :class:`~attentionrnn.BlockAttentionRNN`.

The losses that train them lie in :mod:`~.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentionrnn.engine.experiment import Row
from attentionrnn.layers.registry import build_attention, experiment_rows

__all__ = [
    "E4_MASKS",
    "E4_ROWS",
    "EDIT_QUERY",
    "ROW_TABLE",
    "AttributeClassifier",
    "Discriminator",
    "Editor",
]

#: The rows of E4's table (its figures label the runs of training too): label and relative cost
#: of a training step (one D and one G update), measured with one thread, batch 32, 64 px, bf16
#: on a 2-core machine shared with another job: 0.58 / 0.65 / 0.62 s per step (noisy).
#: CTX and ARNN are the compared pair: a budget's ``spread_seeds`` train them.
ROW_TABLE = {
    "ctx": Row("conv mask (CTX)", cost=0.9, spread=True),
    "arnn": Row("ARNN (bi)", cost=1.0, spread=True),
    "brnn": Row("BRNN", cost=0.95),
}
#: The mask heads of E4, in the order of its table.
E4_MASKS: tuple[str, ...] = tuple(ROW_TABLE)
#: Every valid mask head: the table's, then any other general registered attention method.
E4_ROWS: tuple[str, ...] = experiment_rows(E4_MASKS)
#: Where the query reaches an edit (:class:`Editor`'s ``edit_query``).
EDIT_QUERY = ("both", "mask")


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


def _down(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1)]
    if norm:
        layers.append(_norm(cout))
    layers.append(nn.LeakyReLU(0.2) if not norm else nn.ReLU())
    return nn.Sequential(*layers)


class Transformer(nn.Module):
    """One attribute's module: edited features and the mask that blends them in.

    Args:
        channels: feature channels.
        condition: width of the condition (target one-hot, plus the query).
        mask: ``"ctx"``, ``"arnn"`` or ``"brnn"`` (built by
            :func:`~attentionrnn.build_attention` with a sigmoid gate).
        mask_hidden: hidden width of the mask head.
        block_size: BRNN block size.
        query_fusion: how the condition enters the mask head's encoder, ``"add"``
            (``conv(f) + U c``) or ``"mul"`` (``conv(f) ⊙ U c``).
        body_condition: how many leading entries of the condition the edit body reads
            (``None``: all of it; the target one-hot's width: the query reaches the edit only
            through the mask).

    Shape:
        - f: ``(B, C, h, w)``, condition: ``(B, K)``
        - output: ``(B, C, h, w)`` and the mask ``(B, 1, h, w)`` in [0, 1]
    """

    def __init__(
        self, channels: int, condition: int, mask: str, mask_hidden: int = 16, block_size: int = 2,
        query_fusion: str = "add", body_condition: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if body_condition is not None and not 0 < body_condition <= condition:
            raise ValueError(f"body_condition must be in 1..{condition}, got {body_condition}")
        self.body_condition = condition if body_condition is None else body_condition
        self.body = nn.Sequential(
            nn.Conv2d(channels + self.body_condition, channels, 3, padding=1), _norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), _norm(channels),
        )  # fmt: skip
        self.mask = build_attention(
            mask, channels, query_channels=condition, gate="sigmoid",
            hidden_channels=mask_hidden, block_size=block_size, query_fusion=query_fusion,
        )  # fmt: skip

    def forward(self, f: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
        body = condition[:, : self.body_condition]
        tiled = body[:, :, None, None].expand(-1, -1, *f.shape[-2:]).to(f.dtype)
        t = f + self.body(torch.cat([f, tiled], 1))
        _, a = self.mask(f, query=condition.to(f.dtype), return_mask=True)
        a = a.to(f.dtype)
        return a * t + (1 - a) * f, a


class Editor(nn.Module):
    """The generator: encoder, one :class:`Transformer` per attribute, reconstructor.

    Args:
        classes: number of classes of each attribute (one module each).
        query_channels: width of the query (the digit class one-hot) or ``None``.
        mask: the mask head of every module (:data:`E4_MASKS`).
        channels: width of the first encoder layer (doubled at each of the two downsamplings).
        mask_hidden, block_size, query_fusion: of the mask head (:class:`Transformer`).
        edit_query: where the query reaches the edit: ``"both"`` the edit body and the mask
            head, ``"mask"`` the mask head only (the body reads the target one-hot alone, so
            only the mask can tell the queried digit from the others).
        identify: add :attr:`identifier`, a linear classifier of the query's class from the
            encoder's features pooled by the first module's mask (:func:`identity_logits`;
            needs ``query_channels``).

    Shape:
        - x: ``(B, 3, H, W)`` in [0, 1] (``H, W`` divisible by 4), targets ``(B, M)`` int64,
          query ``(B, Q)`` or ``None``
        - output: edited ``(B, 3, H, W)`` in [0, 1] and the masks ``(B, M, H/4, W/4)``
    """

    def __init__(
        self,
        classes: tuple[int, ...],
        query_channels: int | None,
        mask: str = "arnn",
        channels: int = 16,
        mask_hidden: int = 16,
        block_size: int = 2,
        query_fusion: str = "add",
        edit_query: str = "both",
        identify: bool = False,
    ) -> None:
        super().__init__()
        if mask not in E4_ROWS:
            raise ValueError(f"mask must be one of {E4_ROWS}, got {mask!r}")
        if edit_query not in EDIT_QUERY:
            raise ValueError(f"edit_query must be one of {EDIT_QUERY}, got {edit_query!r}")
        self.edit_query = edit_query
        self.classes, self.query_channels, self.mask_name = tuple(classes), query_channels, mask
        c = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), _norm(c), nn.ReLU(), _down(c, 2 * c), _down(2 * c, 4 * c)
        )
        self.transformers = nn.ModuleList(
            Transformer(
                4 * c,
                n + (query_channels or 0),
                mask,
                mask_hidden,
                block_size,
                query_fusion,
                body_condition=n if edit_query == "mask" else None,
            )
            for n in self.classes
        )
        self.reconstructor = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1), _norm(2 * c), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), _norm(c), nn.ReLU(),
            nn.Conv2d(c, 3, 3, padding=1),
        )  # fmt: skip
        if identify and not query_channels:
            raise ValueError("identify needs a query (query_channels)")
        # built last and only when asked: the other parameters start as without it
        self.identifier = nn.Linear(4 * c, query_channels) if identify else None

    def condition(self, m: int, targets: Tensor, query: Tensor | None) -> Tensor:
        onehot = F.one_hot(targets[:, m], self.classes[m]).float()
        return onehot if query is None else torch.cat([onehot, query.float()], 1)

    def reconstruct(self, x: Tensor) -> Tensor:
        """``R(E(x))``: the image through the autoencoder without any module."""
        return torch.sigmoid(self.reconstructor(self.encoder(x)))

    def forward(
        self, x: Tensor, targets: Tensor, query: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        f, masks = self.edit_features(x, targets, query)
        return torch.sigmoid(self.reconstructor(f)), masks

    def edit_features(
        self, x: Tensor, targets: Tensor, query: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The edited features (before the reconstructor) and the modules' masks
        ``(B, M, h, w)``."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"x must be (B, 3, H, W) with H, W divisible by 4, got "
                             f"{tuple(x.shape)}")  # fmt: skip
        if targets.shape != (len(x), len(self.classes)):
            raise ValueError(f"targets must be (B, {len(self.classes)}), got "
                             f"{tuple(targets.shape)}")  # fmt: skip
        if (query is None) != (self.query_channels is None):
            raise ValueError("query must be given exactly when the editor has query_channels")
        f = self.encoder(x)
        masks = []
        for m, module in enumerate(self.transformers):
            f, a = module(f, self.condition(m, targets, query))
            masks.append(a)
        return f, torch.cat(masks, 1)


class _QueryPool(nn.Module):
    """Pool a feature map to one vector: the mean, plus (with a query) a softmax-weighted sum
    whose weights come from the features' match with the query embedding, so that a classifier
    of "the colour of digit k" can find digit k."""

    def __init__(self, channels: int, query_channels: int | None) -> None:
        super().__init__()
        self.embed = nn.Linear(query_channels, channels) if query_channels else None
        self.out_channels = channels * (2 if query_channels else 1)

    def forward(self, h: Tensor, query: Tensor | None) -> Tensor:
        mean = h.mean((2, 3))
        if self.embed is None:
            return mean
        score = (h * self.embed(query.to(h.dtype))[:, :, None, None]).sum(1).flatten(1)
        weights = torch.softmax(score.float() / h.shape[1] ** 0.5, 1).to(h.dtype)
        return torch.cat([mean, (h.flatten(2) * weights[:, None]).sum(-1)], 1)


class Discriminator(nn.Module):
    """Patch discriminator with an attribute classifier (ModularGAN's ``D``).

    Args:
        classes: classes of each attribute.
        query_channels: width of the query or ``None``.
        channels: width of the first layer (doubled at each of three downsamplings).

    Shape:
        - x: ``(B, 3, H, W)``, query ``(B, Q)`` or ``None``
        - output: realism scores ``(B, 1, H/8, W/8)`` and attribute logits
          ``(B, sum(classes))``
    """

    def __init__(
        self, classes: tuple[int, ...], query_channels: int | None, channels: int = 16
    ) -> None:
        super().__init__()
        c = channels
        self.classes = tuple(classes)
        self.trunk = nn.Sequential(_down(3, c, False), _down(c, 2 * c, False),
                                   _down(2 * c, 4 * c, False))  # fmt: skip
        self.adversarial = nn.Conv2d(4 * c, 1, 3, padding=1)
        self.pool = _QueryPool(4 * c, query_channels)
        self.classifier = nn.Linear(self.pool.out_channels, sum(self.classes))

    def forward(self, x: Tensor, query: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.trunk(x * 2 - 1)
        return self.adversarial(h), self.classifier(self.pool(h, query))


class AttributeClassifier(nn.Module):
    """The judge of edit success and the feature network of KID, trained on real images only.

    Args:
        classes: classes of each attribute.
        query_channels: width of the query or ``None``.
        channels: width of the first layer.

    Shape:
        - x: ``(B, 3, H, W)`` in [0, 1], query ``(B, Q)`` or ``None``
        - output: attribute logits ``(B, sum(classes))``; :meth:`features`: ``(B, F)``
    """

    def __init__(
        self, classes: tuple[int, ...], query_channels: int | None, channels: int = 32
    ) -> None:
        super().__init__()
        c = channels
        self.classes = tuple(classes)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.trunk = nn.Sequential(*block(3, c), nn.MaxPool2d(2), *block(c, c), nn.MaxPool2d(2),
                                   *block(c, 2 * c))  # fmt: skip
        self.pool = _QueryPool(2 * c, query_channels)
        self.head = nn.Linear(self.pool.out_channels, sum(self.classes))

    def features(self, x: Tensor, query: Tensor | None = None) -> Tensor:
        """The penultimate features (what KID compares)."""
        return self.pool(self.trunk(x * 2 - 1), query)

    def forward(self, x: Tensor, query: Tensor | None = None) -> Tensor:
        return self.head(self.features(x, query))
