"""The Progressive Attention Networks (PAN) backbone of the attribute-prediction experiment (E1).

Four blocks ``conv 3×3 valid (32) → BN → ReLU → max-pool 2 → attention`` take the 100×100 image to
maps of 49, 23, 10 and 4 pixels a side; every block's features are multiplied by an attention mask
conditioned on the query. The classifier sees the average-pooled last map (after batch norm)
joined with the query embedding, then dropout 0.5 and a linear layer.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

import attentionrnn.layers.factory  # noqa: F401  (registers the library's methods)
from attentionrnn.layers.registry import attention_methods, attention_names, build_attention

__all__ = ["DEFAULT_ATTENTION_LAYERS", "MASK_GEOMETRY", "PAN", "TASKS", "own_layer4_gate"]


#: task -> (number of query values, number of classes). ``color``: query a digit class, predict its
#: colour; ``digit`` (inverse attribute prediction): query a colour, predict the digit class.
TASKS: dict[str, tuple[int, int]] = {"color": (10, 5), "digit": (5, 10)}

#: For each attention layer, ``(stride, offset)`` in image pixels: the receptive field of mask cell
#: ``i`` is centred on image pixel ``offset + stride * i`` (valid 3×3 convs, floor pooling). Used to
#: project masks back onto the image for attention correctness.
MASK_GEOMETRY: tuple[tuple[float, float], ...] = ((2, 1.5), (4, 4.5), (8, 10.5), (16, 22.5))

#: The attention layers (1-based) a method attends at when ``PAN(attention_layers=None)``: all four,
#: except SAN, which attends once over the last map as in Stacked Attention Networks. A softmax mask
#: at layer 1 has mean ``1/2401``: the next conv's output then varies ~60x less than its bias, and
#: the BN after it, in eval mode, amplifies the error of its running mean into a broken network
#: (a SAN trained with it at every layer: 0.91 train accuracy, 0.32 in eval mode, 0.89 with batch
#: statistics; ``docs/experiments.md``).
DEFAULT_ATTENTION_LAYERS: dict[str, tuple[int, ...]] = {"san": (4,)}


class PAN(nn.Module):
    r"""PAN attribute-prediction network with a pluggable attention module at each of 4 blocks.

    Args:
        attention: attention name for all four layers (see
            :func:`~attentionrnn.layers.registry.attention_names`). ``"ctx"`` is PAN itself: 3×3
            context with a sigmoid at layers 1–3 and a 1×1 context with a softmax at layer 4.
            Every method ends in PAN's softmax at layer 4, so that rows differ only in the
            estimator.
        task: ``"color"`` (query a digit class 0–9, predict its colour, 5 classes) or ``"digit"``
            (inverse: query a colour 0–4, predict the digit class).
        channels: filters of each conv block (32 in PAN).
        query_dim: width of the learned query embedding (PAN: 10 → 32).
        attention_hidden: hidden width of the attention modules; ``None`` uses the method's
            own (:func:`~attentionrnn.layers.registry.attention_methods`: PAN's 32 for the
            PAN-style modules, 16 for the recurrent family).
        layer4_gate: gate of the last attention layer; ``None`` is PAN's ``"softmax"``. (With a
            sigmoid there ARNN's last mask did not concentrate on the queried digit:
            ``docs/results/cpu``.)
        dropout: dropout before the classifier.
        attention_layers: the layers (1–4) that attend; the others pass their features on
            (a mask of ones). ``None``: all four, or layer 4 alone for ``"san"``
            (:data:`DEFAULT_ATTENTION_LAYERS`).
        attention_kwargs: further keyword arguments for :func:`~attentionrnn.build_attention`
            (e.g. ``block_size``, ``feedback``, ``kernel_size``).

    Shape:
        - image: :math:`(B, 3, 100, 100)` float in ``[0, 1]``; query: :math:`(B,)` integer
        - output: logits :math:`(B, K)`; with ``return_masks=True`` also the list of the four
          masks of shapes :math:`(B, 1, 49, 49)`, :math:`(B, 1, 23, 23)`,
          :math:`(B, 1, 10, 10)` and :math:`(B, 1, 4, 4)`

    Example::

        >>> model = PAN("ctx")
        >>> logits, masks = model(torch.rand(2, 3, 100, 100), torch.tensor([3, 7]),
        ...                       return_masks=True)
        >>> logits.shape, [m.shape[-1] for m in masks]
        (torch.Size([2, 5]), [49, 23, 10, 4])
    """

    def __init__(
        self,
        attention: str = "ctx",
        task: str = "color",
        channels: int = 32,
        query_dim: int = 32,
        attention_hidden: int | None = None,
        layer4_gate: str | None = None,
        dropout: float = 0.5,
        attention_kwargs: dict[str, Any] | None = None,
        attention_layers: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        valid = attention_names(general=True)
        if attention not in valid:
            raise ValueError(
                f"unknown attention {attention!r}; valid names are: {', '.join(valid)}"
            )
        if task not in TASKS:
            raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
        self.attention = attention
        self.task = task
        if attention_layers is None:
            attention_layers = DEFAULT_ATTENTION_LAYERS.get(attention, (1, 2, 3, 4))
        self.attention_layers = tuple(sorted(set(attention_layers)))
        if not self.attention_layers or not set(self.attention_layers) <= {1, 2, 3, 4}:
            raise ValueError(
                "attention_layers must be a non-empty subset of (1, 2, 3, 4), "
                f"got {attention_layers!r}"
            )
        self.num_queries, self.num_classes = TASKS[task]
        hidden = attention_hidden or attention_methods()[attention].hidden_channels
        kwargs = dict(attention_kwargs or {})
        kwargs.setdefault("hidden_channels", hidden)

        self.query_embedding = nn.Embedding(self.num_queries, query_dim)
        blocks = []
        attentions = []
        in_ch = 3
        for layer in range(4):
            # conv → BN → ReLU → pool, with the ReLU after the pooling: max and ReLU commute, so
            # the output and gradients are the same, and the ReLU runs on a quarter of the values
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, channels, 3),
                    nn.BatchNorm2d(channels),
                    nn.MaxPool2d(2),
                    nn.ReLU(inplace=True),
                )
            )
            layer_kwargs = dict(kwargs)
            if layer == 3 and attention != "none":
                if attention == "ctx":
                    layer_kwargs["kernel_size"] = 1
                layer_kwargs["gate"] = layer4_gate or "softmax"
            name = attention if layer + 1 in self.attention_layers else "none"
            attentions.append(
                build_attention(name, channels, query_channels=query_dim, **layer_kwargs)
            )
            in_ch = channels
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.BatchNorm1d(channels)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels + query_dim, self.num_classes)

    def forward(
        self, image: torch.Tensor, query: torch.Tensor, return_masks: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        q = self.query_embedding(query)
        x = image
        masks = []
        for i, block in enumerate(self.blocks):
            x, mask = self.attentions[i](block(x), q.to(x.dtype), return_mask=True)
            masks.append(mask)
        features = self.norm(self.pool(x).flatten(1))
        logits = self.classifier(self.dropout(torch.cat([features, q.to(features.dtype)], 1)))
        if return_masks:
            return logits, masks
        return logits

    @property
    def layer4_gate(self) -> str | None:
        """The gate of the last attention layer (``None`` for ``"none"``)."""
        return getattr(self.attentions[3], "gate", None)

    def extra_repr(self) -> str:
        return (
            f"attention={self.attention!r}, task={self.task!r}, "
            f"attention_layers={self.attention_layers}"
        )


@functools.cache
def own_layer4_gate(attention: str) -> str | None:
    """The last attention layer's gate of ``PAN(attention)`` without an override."""
    return PAN(attention).layer4_gate
