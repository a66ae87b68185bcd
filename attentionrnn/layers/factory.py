"""The library's attention methods, registered by name (:mod:`attentionrnn.layers.registry`).

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

from attentionrnn.layers.attention_rnn import AttentionRNN, BlockAttentionRNN
from attentionrnn.layers.baselines import (
    ContextAttention,
    GlobalAttention,
    IndependentAttention,
    LocalAttention,
    NoAttention,
)
from attentionrnn.layers.registry import (
    AttentionMethod,
    attention_methods,
    build_attention,
    register_attention,
)

__all__ = ["ATTENTION_METHODS", "ATTENTION_NAMES", "AttentionMethod", "build_attention"]

register_attention("none", NoAttention, hidden_channels=32)
register_attention("san", GlobalAttention, hidden_channels=32)
register_attention("local", LocalAttention, hidden_channels=32)
register_attention("ctx", ContextAttention, hidden_channels=32)
register_attention("arnn_ind", IndependentAttention)
register_attention("arnn", AttentionRNN, fixed={"directions": "bi"})
register_attention("arnn_quad", AttentionRNN, fixed={"directions": "quad"})
register_attention("brnn", BlockAttentionRNN)

#: Every registered attention method (a live view of :mod:`attentionrnn.layers.registry`: the
#: library's, then those experiments register).
ATTENTION_METHODS: dict[str, AttentionMethod] = attention_methods()

ATTENTION_NAMES: tuple[str, ...] = tuple(ATTENTION_METHODS)
"""The library's own names (registered above), in the order of the paper's tables."""
