"""Baseline spatial attention modules compared with AttentionRNN in the experiments.

Every module here has the constructor style and the forward of :class:`~attentionrnn.AttentionRNN`:
``forward(x, query=None, return_mask=False)`` returns ``y = x * mask`` or ``(y, mask)`` with
``mask`` of shape ``(B, 1, H, W)``, and a module built with ``query_channels=Q`` takes a float query
of shape ``(B, Q)``. They differ in how the mask is predicted:

==========================  =============================================================
:class:`NoAttention`        no attention: a mask of ones (``y = x``)
:class:`LocalAttention`     ``¬CTX``: each position from its own feature vector (1×1)
:class:`ContextAttention`   ``CTX`` of Progressive Attention Networks: a k×k conv context
:class:`GlobalAttention`    SAN-style: ``tanh`` scores normalised by a softmax over all positions
:class:`IndependentAttention`  ``arnn_ind``: AttentionRNN's encoder and head, no recurrence
==========================  =============================================================

All of them use every parameter in every forward (safe under DistributedDataParallel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attentionrnn.layers.query_term import QUERY_FUSIONS, fuse
from attentionrnn.layers.registry import Attention
from attentionrnn.layers.scan import resolve_directions
from attentionrnn.layers.validation import (
    apply_gate,
    check_attention_input,
    check_gate,
    check_input_dtype,
    check_positive_int,
)

__all__ = [
    "NoAttention",
    "LocalAttention",
    "ContextAttention",
    "GlobalAttention",
    "IndependentAttention",
]


def _check_query_channels(query_channels: int | None) -> int | None:
    if query_channels is None:
        return None
    return check_positive_int("query_channels", query_channels)


def _check_odd_kernel(kernel_size: int) -> int:
    check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd so the map keeps its size (padding k // 2), got {kernel_size}"
        )
    return kernel_size


class _AttentionBase(Attention):
    """Shared forward: validate the input, predict the mask, multiply."""

    in_channels: int
    query_channels: int | None

    def mask(self, x: torch.Tensor, query: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, query: torch.Tensor | None = None, return_mask: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_attention_input(x, query, self.in_channels, self.query_channels)
        check_input_dtype(x, self)
        mask = self.mask(x, query)
        y = x * mask
        if return_mask:
            return y, mask
        return y


class NoAttention(_AttentionBase):
    r"""No attention: the mask is all ones and the output equals the input.

    The "no attention" row of the experiments. A query, if the module was built to take one, is
    checked and then ignored (a model without attention uses the query elsewhere, e.g. at its
    classifier).

    Args:
        in_channels: number of channels ``C`` of the input map.
        query_channels: width ``Q`` of the query, or ``None`` for no query.

    Shape:
        - x: :math:`(B, C, H, W)`; query: :math:`(B, Q)` or ``None``
        - output: :math:`(B, C, H, W)`; mask: :math:`(B, 1, H, W)`, all ones

    Example::

        >>> att = NoAttention(32)
        >>> y, mask = att(torch.randn(2, 32, 7, 7), return_mask=True)
        >>> bool((mask == 1).all())
        True
    """

    def __init__(self, in_channels: int, query_channels: int | None = None) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.query_channels = _check_query_channels(query_channels)

    def mask(self, x: torch.Tensor, query: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        return x.new_ones(b, 1, h, w)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, query_channels={self.query_channels}"


class ContextAttention(_AttentionBase):
    r"""Context attention (``CTX``), the attention of Progressive Attention Networks.

    .. math::
        e = \mathrm{act}(\mathrm{conv}_{k\times k}(x) + U q), \qquad
        A = \mathrm{gate}(\mathrm{conv}_{1\times 1}(e))

    Each attention value sees the ``k×k`` neighbourhood of its position (zero padded at the border)
    and the query, but never the other attention values: the values are predicted independently.
    With ``query_fusion="mul"`` the query term multiplies instead, ``conv(x) ⊙ U q``, as in
    :class:`~attentionrnn.AttentionRNN`.

    Args:
        in_channels: number of channels ``C`` of the input map.
        hidden_channels: channels of the context encoding ``e`` (PAN uses 32).
        kernel_size: odd size ``k`` of the context conv (3 in PAN's layers 1–3, 1 in layer 4).
        query_channels: width ``Q`` of the query, or ``None`` for no query.
        gate: ``"sigmoid"`` (each value in ``(0, 1)``) or ``"softmax"`` over all ``H*W`` positions.
        query_fusion: ``"add"`` (PAN's ``conv(x) + U q``) or ``"mul"`` (``conv(x) ⊙ U q``).

    Shape:
        - x: :math:`(B, C, H, W)`; query: :math:`(B, Q)` or ``None``
        - output: :math:`(B, C, H, W)`; mask: :math:`(B, 1, H, W)`

    Example::

        >>> att = ContextAttention(32, hidden_channels=32, query_channels=10)
        >>> y, mask = att(torch.randn(2, 32, 23, 23), torch.randn(2, 10), return_mask=True)
        >>> mask.shape
        torch.Size([2, 1, 23, 23])
    """

    _activation = staticmethod(F.relu)

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 16,
        kernel_size: int = 3,
        query_channels: int | None = None,
        gate: str = "sigmoid",
        query_fusion: str = "add",
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        self.kernel_size = _check_odd_kernel(kernel_size)
        self.query_channels = _check_query_channels(query_channels)
        self.gate = check_gate(gate)
        if query_fusion not in QUERY_FUSIONS:
            raise ValueError(f"query_fusion must be one of {QUERY_FUSIONS}, got {query_fusion!r}")
        self.query_fusion = query_fusion
        self.encoder = nn.Conv2d(
            in_channels, hidden_channels, kernel_size, padding=kernel_size // 2
        )
        self.query_proj = (
            nn.Linear(query_channels, hidden_channels, bias=False) if query_channels else None
        )
        self.head = nn.Conv2d(hidden_channels, 1, 1)

    def encode(self, x: torch.Tensor, query: torch.Tensor | None) -> torch.Tensor:
        """The pre-activation context encoding plus the broadcast query term."""
        e = self.encoder(x)
        if self.query_proj is not None and query is not None:
            e = fuse(e, self.query_proj(query.to(e.dtype)), self.query_fusion)
        return e

    def mask(self, x: torch.Tensor, query: torch.Tensor | None) -> torch.Tensor:
        e = self._activation(self.encode(x, query))
        return apply_gate(self.head(e), self.gate)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, "
            f"kernel_size={self.kernel_size}, query_channels={self.query_channels}, "
            f"gate={self.gate!r}"
            + (f", query_fusion={self.query_fusion!r}" if self.query_fusion != "add" else "")
        )


class LocalAttention(ContextAttention):
    r"""Local attention (``¬CTX``): each attention value from its own position only.

    :class:`ContextAttention` with a ``1×1`` encoder:
    ``A = gate(conv_1x1(relu(conv_1x1(x) + U q)))``.

    Args:
        in_channels: number of channels ``C`` of the input map.
        hidden_channels: channels of the per-position encoding.
        query_channels: width ``Q`` of the query, or ``None`` for no query.
        gate: ``"sigmoid"`` or ``"softmax"`` over all ``H*W`` positions.

    Shape:
        - x: :math:`(B, C, H, W)`; query: :math:`(B, Q)` or ``None``
        - output: :math:`(B, C, H, W)`; mask: :math:`(B, 1, H, W)`

    Example::

        >>> att = LocalAttention(32, query_channels=10)
        >>> att(torch.randn(2, 32, 10, 10), torch.randn(2, 10)).shape
        torch.Size([2, 32, 10, 10])
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 16,
        query_channels: int | None = None,
        gate: str = "sigmoid",
    ) -> None:
        super().__init__(in_channels, hidden_channels, 1, query_channels, gate)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, "
            f"query_channels={self.query_channels}, gate={self.gate!r}"
        )


class GlobalAttention(LocalAttention):
    r"""Global softmax attention in the style of Stacked Attention Networks (SAN).

    .. math::
        s_{ij} = w^\top \tanh(W_x x_{ij} + W_q q) + b, \qquad
        A = \mathrm{softmax}_{(i,j)}(s)

    The scores are computed per position from the feature vector and the query, and the softmax
    normalises them jointly over all ``H*W`` positions, so the mask is a distribution over the map
    (it sums to 1) and the positions compete with each other.

    Args:
        in_channels: number of channels ``C`` of the input map.
        hidden_channels: width of the joint feature/query space (``W_x`` and ``W_q`` outputs).
        query_channels: width ``Q`` of the query, or ``None`` for no query.
        gate: ``"softmax"`` (SAN, default) or ``"sigmoid"``.

    Shape:
        - x: :math:`(B, C, H, W)`; query: :math:`(B, Q)` or ``None``
        - output: :math:`(B, C, H, W)`; mask: :math:`(B, 1, H, W)`, summing to 1 per sample

    Example::

        >>> att = GlobalAttention(32, query_channels=10)
        >>> _, mask = att(torch.randn(2, 32, 8, 8), torch.randn(2, 10), return_mask=True)
        >>> torch.allclose(mask.sum(dim=(1, 2, 3)), torch.ones(2))
        True
    """

    _activation = staticmethod(torch.tanh)

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 16,
        query_channels: int | None = None,
        gate: str = "softmax",
    ) -> None:
        super().__init__(in_channels, hidden_channels, query_channels, gate)


class IndependentAttention(ContextAttention):
    r"""AttentionRNN without recurrence (the ``arnn_ind`` ablation).

    The same local encoder and combination head as :class:`~attentionrnn.AttentionRNN`; in place
    of the directional scans, every position runs the diagonal LSTM's cell **on its own input
    only**, as if all its neighbours (hidden state, cell state and predicted attention) were zero:

    .. math::
        e &= \mathrm{relu}(\mathrm{conv}_{k\times k}(x) + U q) \\
        i, o, g &= \sigma(K_i e),\ \sigma(K_o e),\ \tanh(K_g e) \qquad (1\times 1) \\
        c &= i \odot g, \qquad h = o \odot \tanh(c) \\
        A &= \mathrm{gate}(\mathrm{conv}_{1\times 1}(h))

    With a zero previous cell state the forget gate has nothing to act on, so it is left out (it
    would be a parameter without gradient). There is one such cell per direction of the layer it
    mirrors (``hidden_channels`` each), i.e. the head sees as many channels as AttentionRNN's head;
    since the cells are independent they are computed as one cell of width
    ``len(directions) * hidden_channels``. Each mask value therefore depends only on the ``k×k``
    neighbourhood of its position and the query: the difference to AttentionRNN measures what the
    structured (sequential) prediction adds.

    Args:
        in_channels: number of channels ``C`` of the input map.
        hidden_channels: channels of the encoding and of each direction's cell.
        kernel_size: odd size ``k`` of the encoder conv.
        query_channels: width ``Q`` of the query, or ``None`` for no query.
        directions: ``"raster"``, ``"bi"`` or ``"quad"``: the AttentionRNN configuration whose
            width is matched (1, 2 or 4 cells).
        gate: ``"sigmoid"`` or ``"softmax"`` over all ``H*W`` positions.

    Shape:
        - x: :math:`(B, C, H, W)`; query: :math:`(B, Q)` or ``None``
        - output: :math:`(B, C, H, W)`; mask: :math:`(B, 1, H, W)`

    Example::

        >>> att = IndependentAttention(32, query_channels=10)
        >>> _, mask = att(torch.randn(2, 32, 12, 9), torch.randn(2, 10), return_mask=True)
        >>> mask.shape
        torch.Size([2, 1, 12, 9])
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 16,
        kernel_size: int = 3,
        query_channels: int | None = None,
        directions: str = "bi",
        gate: str = "sigmoid",
    ) -> None:
        super().__init__(in_channels, hidden_channels, kernel_size, query_channels, gate)
        width = len(resolve_directions(directions)) * hidden_channels
        self.directions = directions
        del self.head  # re-created below with the width of the cells, after them
        self.cell = nn.Conv2d(hidden_channels, 3 * width, 1)
        self.head = nn.Conv2d(width, 1, 1)

    def mask(self, x: torch.Tensor, query: torch.Tensor | None) -> torch.Tensor:
        e = F.relu(self.encode(x, query))
        i, o, g = self.cell(e).chunk(3, dim=1)
        c = torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return apply_gate(self.head(h), self.gate)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", directions={self.directions!r}"
