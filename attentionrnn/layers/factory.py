"""Build any attention module of the experiments by name.

============  ==================================================================
name          module
============  ==================================================================
``none``      :class:`~attentionrnn.layers.baselines.NoAttention`
``san``       :class:`~attentionrnn.layers.baselines.GlobalAttention`
``local``     :class:`~attentionrnn.layers.baselines.LocalAttention` (``¬CTX``)
``ctx``       :class:`~attentionrnn.layers.baselines.ContextAttention` (PAN)
``arnn_ind``  :class:`~attentionrnn.layers.baselines.IndependentAttention`
``arnn``      :class:`~attentionrnn.AttentionRNN` with ``directions="bi"``
``arnn_quad`` :class:`~attentionrnn.AttentionRNN` with ``directions="quad"``
``brnn``      :class:`~attentionrnn.BlockAttentionRNN`
============  ==================================================================
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
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

__all__ = ["ATTENTION_METHODS", "ATTENTION_NAMES", "AttentionMethod", "build_attention"]


@dataclass(frozen=True)
class AttentionMethod:
    """One attention method of the experiments: how to build it and how to show it.

    Attributes:
        name: the name :func:`build_attention` and the command line take.
        module: the class built.
        fixed: constructor arguments implied by the name (``arnn`` is ``directions="bi"``).
        label: the row label of the results tables.
        hidden_channels: hidden width in the experiments when none is given.
        cost: rough training cost relative to CTX (after ``benchmarks/bench_epoch.py``);
            parallel runs start with the most expensive so they finish together.
    """

    name: str
    module: type[nn.Module]
    fixed: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    hidden_channels: int = 16
    cost: float = 1.0


#: Every attention method, in the order of the paper's tables (baselines first). Adding a method
#: is adding one entry here: the factory, the command line, the tables and the schedulers read it.
ATTENTION_METHODS: dict[str, AttentionMethod] = {
    m.name: m
    for m in (
        AttentionMethod("none", NoAttention, label="no attention", hidden_channels=32, cost=0.8),
        AttentionMethod(
            "san", GlobalAttention, label="SAN (global softmax)", hidden_channels=32, cost=1.05
        ),
        AttentionMethod(
            "local", LocalAttention, label="¬CTX (1×1 local)", hidden_channels=32, cost=0.9
        ),
        AttentionMethod("ctx", ContextAttention, label="CTX (PAN)", hidden_channels=32),
        AttentionMethod(
            "arnn_ind", IndependentAttention, label="ARNN_ind (no recurrence)", cost=1.2
        ),
        AttentionMethod("arnn", AttentionRNN, {"directions": "bi"}, "ARNN (bi)", cost=1.4),
        AttentionMethod("arnn_quad", AttentionRNN, {"directions": "quad"}, "ARNN (quad)", cost=1.9),
        AttentionMethod("brnn", BlockAttentionRNN, label="BRNN", cost=1.1),
    )
}

ATTENTION_NAMES: tuple[str, ...] = tuple(ATTENTION_METHODS)
"""The names :func:`build_attention` accepts, in the order of the experiments' tables."""


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
    if name not in ATTENTION_METHODS:
        raise ValueError(
            f"unknown attention {name!r}; valid names are: {', '.join(ATTENTION_NAMES)}"
        )
    cls, fixed = ATTENTION_METHODS[name].module, ATTENTION_METHODS[name].fixed
    known = set().union(*(_parameters(m.module) for m in ATTENTION_METHODS.values()))
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
