"""AttentionRNN and Block AttentionRNN: structured spatial attention layers."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentionrnn.layers.diagonal import state_dtype_for
from attentionrnn.layers.fused import raster_rows_view
from attentionrnn.layers.query_term import QUERY_FUSIONS, fuse
from attentionrnn.layers.registry import Attention
from attentionrnn.layers.scan import DiagonalLSTMScan, graph_capture_active, resolve_directions
from attentionrnn.layers.validation import (
    apply_gate,
    check_attention_input,
    check_gate,
    check_input_dtype,
    check_positive_int,
)


class ScanAttention(Attention):
    """What AttentionRNN and BlockAttentionRNN share: encoder, query term, scan, head, gate."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int,
        query_channels: int | None,
        directions: str,
        gate: str,
        feedback: bool,
        implementation: str,
        query_fusion: str = "add",
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("hidden_channels", hidden_channels)
        if check_positive_int("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd (the encoder keeps H x W), got {kernel_size}"
            )
        if query_channels is not None:
            check_positive_int("query_channels", query_channels)
        if query_fusion not in QUERY_FUSIONS:
            raise ValueError(f"query_fusion must be one of {QUERY_FUSIONS}, got {query_fusion!r}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.query_channels = query_channels
        self.directions = directions
        self.gate = check_gate(gate)
        self.feedback = feedback
        self.query_fusion = query_fusion
        corners = resolve_directions(directions)

        self.encoder = nn.Conv2d(
            in_channels, hidden_channels, kernel_size, padding=kernel_size // 2
        )
        if query_channels is not None:
            self.query_proj: nn.Linear | None = nn.Linear(
                query_channels, hidden_channels, bias=False
            )
        else:
            self.register_module("query_proj", None)
        self.scan = DiagonalLSTMScan(
            hidden_channels, hidden_channels, corners, feedback, implementation=implementation
        )
        self.head = nn.Conv2d(len(corners) * hidden_channels, 1, kernel_size=1)

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        if self.query_proj is not None:
            self.query_proj.reset_parameters()
        self.scan.reset_parameters()
        self.head.reset_parameters()

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer (e.g. ``type(layer)(**config)``)."""
        return {
            "in_channels": self.in_channels,
            "hidden_channels": self.hidden_channels,
            "kernel_size": self.kernel_size,
            "query_channels": self.query_channels,
            "directions": self.directions,
            "gate": self.gate,
            "feedback": self.feedback,
            "implementation": self.implementation,
            "query_fusion": self.query_fusion,
        }

    @property
    def implementation(self) -> str:
        """How the scan runs: ``"auto"``, ``"fused"``, ``"bptt"``, ``"autograd"`` or ``"triton"``
        (see :class:`~attentionrnn.layers.scan.DiagonalLSTMScan`)."""
        return self.scan.implementation

    def extra_repr(self) -> str:
        extra = f", query_channels={self.query_channels}" if self.query_channels else ""
        if self.query_fusion != "add":
            extra += f", query_fusion={self.query_fusion!r}"
        return (
            f"{self.in_channels}, hidden_channels={self.hidden_channels}, "
            f"kernel_size={self.kernel_size}{extra}, directions={self.directions!r}, "
            f"gate={self.gate!r}, feedback={self.feedback}"
            + (f", implementation={self.implementation!r}" if self.implementation != "auto" else "")
        )

    def encode(self, x: Tensor, query: Tensor | None) -> Tensor:
        """``e = relu(conv(x) + U q)`` (or ``relu(conv(x) ⊙ U q)`` with ``query_fusion="mul"``):
        the local evidence every attention value starts from.

        Where the fused scan reads ``e`` directly (:meth:`scan_reads_rows`), ``e`` comes out in the
        scan's dtype as a view of the scan's row layout (the same values), so that the ReLU and the
        scan keep one tensor for backward instead of two."""
        e = self.encoder(x)
        if self.query_proj is not None and query is not None:
            u = self.query_proj(query.to(self.query_proj.weight.dtype))
            # "mul": a low-rank bilinear (Hadamard) fusion, so the question can switch image
            # channels off, which a sum can only do by outweighing them
            e = fuse(e, u, self.query_fusion)
        if self.scan_reads_rows(e):
            e = raster_rows_view(e, state_dtype_for(e.dtype))
        return F.relu(e)

    def scan_reads_rows(self, e: Tensor) -> bool:
        """Whether the scan reads the encoded map ``e`` itself in the fused kernels' row layout
        (AttentionRNN on the fused path; BlockAttentionRNN scans a pooled map)."""
        return False

    def scan_logits(self, e: Tensor) -> Tensor:
        """One logit per position from the scan's hidden states: ``(B, 1, H, W)``.

        The 1x1 head over the concatenated directions, applied per cell inside the scan (the
        hidden maps are then never stored); the per-pixel reference overrides this.
        """
        batch, _, height, width = e.shape
        weight = self.head.weight.view(len(self.scan.directions), self.hidden_channels)
        logits = self.scan.hidden_readout(e, weight) + self.head.bias  # (H*W, B)
        return logits.t().reshape(batch, 1, height, width)

    def mask_logits(self, e: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(
        self, x: Tensor, query: Tensor | None = None, return_mask: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_attention_input(x, query, self.in_channels, self.query_channels)
        check_input_dtype(x, self)
        logits = self.mask_logits(self.encode(x, query))
        mask = apply_gate(logits, self.gate).to(x.dtype)
        y = masked_product(x, mask)
        return (y, mask) if return_mask else y


def masked_product(x: Tensor, mask: Tensor) -> Tensor:
    """``x * mask`` (``mask`` broadcast over the channels), with the bits, memory format and
    gradients of ``x * mask`` itself, computed on a dense copy of ``mask`` where that is faster.

    The scan's logits leave the kernels batch-innermost (``(H*W, B)`` row-major), so the gate's
    mask is a strided view, and the product and its backward ran ~16x slower on it than on a dense
    map at 28² (contiguous ``x``). The gate itself still runs on the view: on a dense copy of the
    logits its vectorised loop would leave other elements to its scalar tail and change their
    last bits. A copy of the gated mask changes no value of the product (each element is one
    rounded multiplication, whatever the layout), and only its layout could change: TensorIterator
    orders the product's dimensions by the first operand's strides and lets the second's break
    ties. So the dense copy is used only where the first operand's strides are nonzero and
    distinct (:func:`_strides_decide`): ``x`` in the forward (a dense map in any memory format),
    the incoming gradient for ``grad x = grad * mask`` in the backward (an expanded gradient, as
    from ``y.sum()``, keeps the view). Like ``x * mask``, the backward keeps ``x`` and the mask
    (the view) and gives ``grad mask = grad * x``, reduced over the channels by autograd.
    """
    if graph_capture_active():  # a plain product is what tracing, export and compile capture
        return x * mask
    if torch.is_grad_enabled() and (x.requires_grad or mask.requires_grad):
        return _MaskedProduct.apply(x, mask)
    return x * _dense_operand(mask, x)


def _strides_decide(first: Tensor) -> bool:
    """Whether an elementwise ``first * other`` takes its memory layout from ``first`` alone:
    every stride of ``first`` nonzero and no two equal (else ``other``'s strides break ties)."""
    strides = first.stride()
    return all(
        strides[i] != 0 and all(strides[i] != strides[j] for j in range(i))
        for i in range(len(strides))
    )


def _dense_operand(mask: Tensor, first: Tensor) -> Tensor:
    return mask.contiguous() if _strides_decide(first) else mask


class _MaskedProduct(torch.autograd.Function):
    """``x * mask`` with MulBackward0's results, each product on a dense mask where allowed."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(x, mask)  # what MulBackward0 keeps: no extra copy of the mask
        return x * _dense_operand(mask, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, mask = ctx.saved_tensors
        grad_x = grad * _dense_operand(mask, grad) if ctx.needs_input_grad[0] else None
        grad_mask = grad * x if ctx.needs_input_grad[1] else None  # autograd sums the channels
        return grad_x, grad_mask


class AttentionRNN(ScanAttention):
    r"""Structured spatial attention predicted by a bi-directional diagonal LSTM.

    Every attention value is predicted from local evidence and from the attention values predicted
    before it in raster-scan (and inverse raster-scan) order (Khandelwal & Sigal, ICCV 2019):

    1. encode: :math:`e = \mathrm{relu}(\mathrm{conv}_{k\times k}(x) + U q)` (or
       :math:`\odot\, U q` with ``query_fusion="mul"``),
    2. scan ``e`` with a diagonal LSTM from each corner in ``directions``; each cell reads the
       hidden state and the predicted attention value of the cell above and of the cell to the
       left (``H + W - 1`` sequential steps, a whole anti-diagonal per step),
    3. combine: concatenate the directions' hidden maps, 1x1 conv to one logit per position, gate,
    4. output :math:`y = x \odot A`.

    Args:
        in_channels: channels ``C`` of the input feature map.
        hidden_channels: width of the encoder and of each direction's LSTM state. Default: 16.
        kernel_size: odd size of the local encoder's convolution. Default: 3.
        query_channels: width of the optional query vector (e.g. a question embedding); when set,
            ``forward`` requires a query. Default: ``None``.
        directions: ``"raster"`` (one scan from the top-left), ``"bi"`` (raster and inverse raster,
            the paper's) or ``"quad"`` (all four corners). Default: ``"bi"``.
        gate: ``"sigmoid"`` (each value in [0, 1]) or ``"softmax"`` (over all ``H*W`` positions).
            Default: ``"sigmoid"``.
        feedback: feed each direction's predicted attention values into the next diagonal (the
            paper's structure); ``False`` is the ablation without it. Default: ``True``.
        implementation: how the scan runs, all with the same results: ``"fused"`` (C++ CPU
            kernels), ``"bptt"`` (PyTorch ops with a hand-written backward), ``"autograd"`` (a
            loop of differentiable ops, what tracing, export and ``torch.compile`` capture),
            ``"triton"`` (Triton kernels for CUDA devices, the ``gpu`` extra; docs/gpu.md) or
            ``"auto"``: ``"autograd"`` while capturing a graph, else ``"triton"`` on CUDA devices
            where it can run, ``"fused"`` on the CPU where the kernels build, else ``"bptt"``.
            ``"fused"`` or ``"triton"`` where it cannot run raises ``RuntimeError``. Default:
            ``"auto"``.
        query_fusion: how the encoder joins image and query: ``"add"`` (``conv(x) + U q``) or
            ``"mul"`` (``conv(x) ⊙ U q``, multiplicative, as in low-rank bilinear VQA models).
            Without a query it has no effect. Default: ``"add"``.

    Shape:
        - x: ``(B, C, H, W)``, any ``H, W >= 1``.
        - query: ``(B, query_channels)`` when ``query_channels`` is set, else ``None``.
        - Output: ``(B, C, H, W)``; with ``return_mask=True`` also the mask ``(B, 1, H, W)``.

    Example::

        >>> layer = AttentionRNN(32, hidden_channels=16, query_channels=10)
        >>> x, q = torch.randn(4, 32, 28, 28), torch.randn(4, 10)
        >>> y, mask = layer(x, query=q, return_mask=True)
        >>> y.shape, mask.shape
        (torch.Size([4, 32, 28, 28]), torch.Size([4, 1, 28, 28]))
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 16,
        kernel_size: int = 3,
        query_channels: int | None = None,
        directions: str = "bi",
        gate: str = "sigmoid",
        feedback: bool = True,
        implementation: str = "auto",
        query_fusion: str = "add",
    ) -> None:
        super().__init__(
            in_channels,
            hidden_channels,
            kernel_size,
            query_channels,
            directions,
            gate,
            feedback,
            implementation,
            query_fusion,
        )

    def mask_logits(self, e: Tensor) -> Tensor:
        return self.scan_logits(e)

    def scan_reads_rows(self, e: Tensor) -> bool:
        return type(self).scan_logits is ScanAttention.scan_logits and (
            self.scan.resolved_implementation(e) == "fused"
        )


class BlockAttentionRNN(ScanAttention):
    r"""Block AttentionRNN (BRNN): the scan runs on a coarse grid, a conv refines the result.

    For large maps: the encoded map ``e`` is average-pooled by ``block_size`` (a partial block at
    the bottom/right edge averages the positions it has), scanned like :class:`AttentionRNN` in
    ``ceil(H/γ) + ceil(W/γ) - 1`` steps, the coarse logits are upsampled bilinearly to ``H x W``
    and a 3x3 conv over ``[upsampled logits, e]`` refines them before the gate.

    Args:
        in_channels: channels ``C`` of the input feature map.
        block_size: pooling factor ``γ`` of the coarse grid. Default: 2.
        hidden_channels, kernel_size, query_channels, directions, gate, feedback, implementation,
        query_fusion: as in :class:`AttentionRNN`.

    Shape:
        As :class:`AttentionRNN`.

    Example::

        >>> block = BlockAttentionRNN(32, block_size=4, hidden_channels=16)
        >>> block(torch.randn(2, 32, 50, 37)).shape
        torch.Size([2, 32, 50, 37])
    """

    def __init__(
        self,
        in_channels: int,
        block_size: int = 2,
        hidden_channels: int = 16,
        kernel_size: int = 3,
        query_channels: int | None = None,
        directions: str = "bi",
        gate: str = "sigmoid",
        feedback: bool = True,
        implementation: str = "auto",
        query_fusion: str = "add",
    ) -> None:
        super().__init__(
            in_channels,
            hidden_channels,
            kernel_size,
            query_channels,
            directions,
            gate,
            feedback,
            implementation,
            query_fusion,
        )
        self.block_size = check_positive_int("block_size", block_size)
        self.refine = nn.Conv2d(1 + hidden_channels, 1, kernel_size=3, padding=1)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.refine.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "block_size": self.block_size}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}"

    def mask_logits(self, e: Tensor) -> Tensor:
        coarse = F.avg_pool2d(e, self.block_size, ceil_mode=True) if self.block_size > 1 else e
        coarse_logits = self.scan_logits(coarse)
        upsampled = F.interpolate(
            coarse_logits, size=e.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.refine(torch.cat([upsampled.to(e.dtype), e], dim=1))
