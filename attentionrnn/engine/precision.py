"""Numeric precision of training: bf16 autocast where the CPU computes bf16 natively.

``--precision auto`` resolves to ``bf16`` on CPUs with AMX or AVX-512 BF16 instructions (there
autocast roughly halves a PAN training step) and to ``fp32`` elsewhere, where emulated bf16 is
slower than float32. The conv backbone runs channels_last in both; AttentionRNN's scan keeps its
cell state in float32 under autocast (the layer casts its input up).
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16")

__all__ = ["PRECISIONS", "autocast", "cpu_name", "native_bf16", "resolve_precision"]


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AMX-BF16 or AVX-512 BF16)."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:  # pragma: no cover - probe unavailable in this build
                pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((ln for ln in f if ln.startswith("flags")), "").split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what :mod:`platform` knows.

    Recorded in every run's ``metrics.json``: how long a run takes depends on the machine far more
    than on anything in its config, so time estimates compare runs of the same CPU.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"`` for a requested ``precision`` in :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_bf16() else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """Autocast to bf16 for a resolved ``precision`` of ``"bf16"``; a no-op for ``"fp32"``."""
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
