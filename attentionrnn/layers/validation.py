"""Input checks shared by every attention module (AttentionRNN and the baselines).

Each check raises a :class:`TypeError` (wrong kind of object or dtype) or a :class:`ValueError`
(wrong shape or size) whose message names the argument, what was expected and what was given, so a
mistake in user code is found from the message alone.
"""

from __future__ import annotations

import torch

GATES = ("sigmoid", "softmax")


def check_attention_input(
    x: torch.Tensor,
    query: torch.Tensor | None,
    in_channels: int,
    query_channels: int | None,
) -> None:
    """Check the arguments of an attention module's ``forward(x, query)``.

    Args:
        x: the feature map, expected floating point of shape ``(B, in_channels, H, W)`` with
            ``H, W >= 1``.
        query: ``None`` when the module was built without ``query_channels``, otherwise a floating
            point tensor of shape ``(B, query_channels)``.
        in_channels: the channel count the module was built for.
        query_channels: the query width the module was built for, or ``None`` (no query).

    Raises:
        TypeError: ``x`` or ``query`` is not a tensor or not floating point.
        ValueError: wrong rank, channel count, empty map, missing or unexpected query, or a query
            whose batch size or width does not match.

    Example::

        >>> check_attention_input(torch.zeros(2, 8, 5, 5), None, in_channels=8, query_channels=None)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"x must be a 4-D tensor of shape (B, C, H, W), got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"x has {x.shape[1]} channels but the module was built with in_channels={in_channels} "
            f"(x shape {tuple(x.shape)})"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x has an empty spatial map: shape {tuple(x.shape)}; need H, W >= 1")
    if query_channels is None:
        if query is not None:
            raise ValueError(
                "unexpected query: the module was built without query_channels; build it with "
                "query_channels=Q to condition on a (B, Q) query, or pass query=None"
            )
        return
    if query is None:
        raise ValueError(
            f"missing query: the module was built with query_channels={query_channels}, so forward "
            f"needs a query tensor of shape (B, {query_channels})"
        )
    if not isinstance(query, torch.Tensor):
        raise TypeError(
            f"query must be a torch.Tensor of shape (B, {query_channels}), got "
            f"{type(query).__name__}"
        )
    if query.dim() != 2:
        raise ValueError(
            f"query must be a 2-D tensor of shape (B, {query_channels}), got a {query.dim()}-D "
            f"tensor of shape {tuple(query.shape)}"
        )
    if not query.is_floating_point():
        raise TypeError(
            f"query must be a floating-point tensor, got dtype {query.dtype} (embed or one-hot "
            "encode integer queries first)"
        )
    if query.shape[0] != x.shape[0]:
        raise ValueError(
            f"query batch size {query.shape[0]} does not match x batch size {x.shape[0]}"
        )
    if query.shape[1] != query_channels:
        raise ValueError(
            f"query has width {query.shape[1]} but the module was built with "
            f"query_channels={query_channels}"
        )


def check_input_dtype(x: torch.Tensor, module: torch.nn.Module) -> None:
    """Raise :class:`TypeError` naming both dtypes where ``x``'s dtype is not that of
    ``module``'s floating-point parameters (a float64 or half input to a float32 layer), instead
    of the convolution's message. Under ``torch.autocast`` for ``x``'s device the layers cast
    their inputs themselves, so any floating dtype passes."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None or x.dtype == dtype or torch.is_autocast_enabled(x.device.type):
        return
    raise TypeError(
        f"x has dtype {x.dtype} but the module's parameters are {dtype}: convert one to the "
        f"other (module.to({x.dtype}) or x.to({dtype})), or run under torch.autocast"
    )


def check_gate(gate: str) -> str:
    """Return ``gate`` if it names a known gate (``"sigmoid"`` or ``"softmax"``), else raise."""
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    return gate


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is a positive ``int`` (not a bool), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def apply_gate(logits: torch.Tensor, gate: str) -> torch.Tensor:
    """Turn per-position logits ``(B, 1, H, W)`` into a mask with the given gate.

    ``"sigmoid"`` squashes each position to ``(0, 1)`` independently; ``"softmax"`` normalises over
    all ``H*W`` positions of each sample, so every mask sums to 1. The softmax is computed in at
    least float32 and cast back, so half-precision masks still sum to 1 within their precision.
    """
    if gate == "sigmoid":
        return torch.sigmoid(logits)
    if gate == "softmax":
        b, c, h, w = logits.shape
        flat = logits.reshape(b, c, h * w)
        compute = torch.promote_types(flat.dtype, torch.float32)
        return torch.softmax(flat.to(compute), dim=-1).to(logits.dtype).reshape(b, c, h, w)
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
