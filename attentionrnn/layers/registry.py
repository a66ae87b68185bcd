"""The open attention registry: one :class:`Attention` contract, one :func:`register_attention`.

Every attention method the experiments use is a name here. The library's own modules
(:mod:`attentionrnn.layers.factory`) register on import; an experiment registers its own estimator
from its own package (E2's LTPA compatibility, E3's MCB conv attention and oracle). An experiment's
rows are names from this registry; their table labels and run costs are the experiment's metadata,
not the registry's.

The library's methods are registered when ``attentionrnn`` is imported (its ``__init__`` imports
:mod:`~attentionrnn.layers.factory`, which imports this module, never the reverse).

Adding a method is one call::

    register_attention("mine", MyAttention, hidden_channels=16)

``MyAttention(in_channels, query_channels=None, **options)`` derives from :class:`Attention`.
A *general* method (the default) works wherever the library's modules do: E1 trains it as a row,
and E2–E4 accept it as ``--attention`` / ``--mask`` / ``--methods``. ``general=False`` marks an
experiment's own estimator (it is a valid name, but only the experiment that lists it uses it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = [
    "Attention",
    "AttentionMethod",
    "attention_methods",
    "attention_names",
    "build_attention",
    "experiment_rows",
    "register_attention",
]


class Attention(nn.Module):
    """The contract of every attention module: ``forward(x, query=None, return_mask=False)``.

    ``x`` is a feature map ``(B, C, H, W)`` and ``query`` an optional conditioning ``(B, Q)``.
    The module returns ``x`` weighted by its mask, and with ``return_mask=True`` also the mask
    ``(B, K, H, W)`` (``K`` masks, usually one). Constructors take ``in_channels`` first and
    ``query_channels`` as a keyword, so that :func:`build_attention` can build any of them.
    """

    def forward(
        self, x: Tensor, query: Tensor | None = None, return_mask: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class AttentionMethod:
    """One registered method.

    Attributes:
        name: the name :func:`build_attention` and the command line take.
        module: the class (or builder ``(in_channels, query_channels=..., **options)``) built.
        fixed: constructor arguments implied by the name (``arnn`` is ``directions="bi"``).
        hidden_channels: hidden width in the experiments when none is given.
        general: usable by every experiment (not one experiment's own estimator).
    """

    name: str
    module: Callable[..., nn.Module]
    fixed: dict[str, Any] = field(default_factory=dict)
    hidden_channels: int = 16
    general: bool = True


#: Every registered method, in registration order (the library's first, in the paper's order).
_METHODS: dict[str, AttentionMethod] = {}


def register_attention(
    name: str,
    module_or_builder: Callable[..., nn.Module],
    *,
    fixed: dict[str, Any] | None = None,
    hidden_channels: int = 16,
    general: bool = True,
) -> AttentionMethod:
    """Register ``module_or_builder`` as the attention method ``name`` and return its entry.

    Registering a name again replaces its entry (a module reloaded registers itself again).
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"an attention method needs a non-empty name, got {name!r}")
    method = AttentionMethod(name, module_or_builder, dict(fixed or {}), hidden_channels, general)
    _METHODS[name] = method
    return method


def attention_methods() -> dict[str, AttentionMethod]:
    """``{name: AttentionMethod}`` of every registered method (a live view: do not modify)."""
    return _METHODS


def attention_names(general: bool | None = None) -> tuple[str, ...]:
    """The registered names in registration order; ``general=True`` only the general ones."""
    return tuple(n for n, m in _METHODS.items() if general is None or m.general == general)


def experiment_rows(own: tuple[str, ...]) -> tuple[str, ...]:
    """An experiment's valid rows: its own (its table's, in order), then every other general
    method registered so far (so that a new general method is a row of every experiment).

    Raises:
        ValueError: one of ``own`` is not registered.
    """
    missing = [n for n in own if n not in _METHODS]
    if missing:
        raise ValueError(f"rows {missing} are not registered attention methods")
    return tuple(own) + tuple(n for n in attention_names(general=True) if n not in own)


def _parameters(module: Callable[..., nn.Module]) -> set[str]:
    target = module.__init__ if isinstance(module, type) else module
    params = inspect.signature(target).parameters
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
        name: a registered name (:func:`attention_names`).
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
    if name not in _METHODS:
        raise ValueError(
            f"unknown attention {name!r}; valid names are: {', '.join(attention_names())}"
        )
    method = _METHODS[name]
    known = set().union(*(_parameters(m.module) for m in _METHODS.values()))
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"build_attention got unexpected keyword argument(s) {unknown}; attention modules "
            f"accept: {sorted(known - {'in_channels', 'query_channels'})}"
        )
    for key, value in method.fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f"attention {name!r} has {key}={value!r}; got {key}={kwargs[key]!r} "
                f"(use another name, e.g. 'arnn' for 'bi' or 'arnn_quad' for 'quad')"
            )
    accepted = _parameters(method.module)
    args = {k: v for k, v in {**kwargs, **method.fixed}.items() if k in accepted}
    return method.module(in_channels, query_channels=query_channels, **args)
