"""Build any attention module of the experiments by name.

============  ==================================================================
name          module
============  ==================================================================
``none``      :class:`~attentionrnn.layers.baselines.NoAttention`
``local``     :class:`~attentionrnn.layers.baselines.LocalAttention` (``¬CTX``)
``ctx``       :class:`~attentionrnn.layers.baselines.ContextAttention` (PAN)
``san``       :class:`~attentionrnn.layers.baselines.GlobalAttention`
``arnn_ind``  :class:`~attentionrnn.layers.baselines.IndependentAttention`
``arnn``      :class:`~attentionrnn.AttentionRNN` with ``directions="bi"``
``arnn_quad`` :class:`~attentionrnn.AttentionRNN` with ``directions="quad"``
``brnn``      :class:`~attentionrnn.BlockAttentionRNN`
============  ==================================================================
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from attentionrnn.layers.attention_rnn import AttentionRNN, BlockAttentionRNN
from attentionrnn.layers.baselines import (
    ContextAttention,
    GlobalAttention,
    IndependentAttention,
    LocalAttention,
    NoAttention,
)

__all__ = ["ATTENTION_NAMES", "build_attention"]

# name -> (class, arguments fixed by the name)
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "none": (NoAttention, {}),
    "local": (LocalAttention, {}),
    "ctx": (ContextAttention, {}),
    "san": (GlobalAttention, {}),
    "arnn_ind": (IndependentAttention, {}),
    "arnn": (AttentionRNN, {"directions": "bi"}),
    "arnn_quad": (AttentionRNN, {"directions": "quad"}),
    "brnn": (BlockAttentionRNN, {}),
}

ATTENTION_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""The names :func:`build_attention` accepts, in the order of the experiments' table."""


def _parameters(cls: type[nn.Module]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD}


def build_attention(
    name: str, in_channels: int, query_channels: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build the attention module called ``name``.

    All modules share the forward ``(x, query=None, return_mask=False)``. So that one set of
    options can be used for every name (as the experiments do), a keyword argument that some
    attention module takes but this one does not is dropped silently: ``hidden_channels`` is
    ignored by ``"none"``, ``kernel_size`` by ``"local"`` and ``"san"``, ``block_size`` by all but
    ``"brnn"``. A keyword that no attention module takes is an error.

    Args:
        name: one of :data:`ATTENTION_NAMES`.
        in_channels: channels of the feature map the module attends over.
        query_channels: width of the float query, or ``None`` for an unconditioned module.
        **kwargs: further constructor arguments (``hidden_channels``, ``kernel_size``, ``gate``,
            ``block_size``, ``feedback``, ``directions`` ...).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones), or a ``directions``
            that contradicts the name (``"arnn"`` is ``"bi"``, ``"arnn_quad"`` is ``"quad"``).
        TypeError: a keyword argument that no attention module accepts.

    Example::

        >>> att = build_attention("ctx", 32, query_channels=32, hidden_channels=32)
        >>> type(att).__name__
        'ContextAttention'
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown attention {name!r}; valid names are: {', '.join(ATTENTION_NAMES)}"
        )
    cls, fixed = _REGISTRY[name]
    known = set().union(*(_parameters(c) for c, _ in _REGISTRY.values()))
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"build_attention got unexpected keyword argument(s) {unknown}; attention modules "
            f"accept: {sorted(known - {'in_channels', 'query_channels'})}"
        )
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f"attention {name!r} has {key}={value!r}; got {key}={kwargs[key]!r} "
                f"(use another name, e.g. 'arnn' for 'bi' or 'arnn_quad' for 'quad')"
            )
    accepted = _parameters(cls)
    args = {k: v for k, v in {**kwargs, **fixed}.items() if k in accepted}
    return cls(in_channels, query_channels=query_channels, **args)
