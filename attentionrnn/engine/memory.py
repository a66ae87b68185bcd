"""Keeping freed memory in the process, so that a training step does not page-fault its way
through buffers the previous step just returned.

PyTorch's CPU allocator takes its memory from ``malloc``. glibc's ``malloc`` serves every block of
32 MiB and more (and, by its dynamic threshold, many smaller ones) with a fresh ``mmap`` and hands
it back to the kernel on ``free``; it also trims the top of the heap once 128 KiB there are free.
A training step allocates and frees the same activations and gradients every time, so each step
touches new pages again and pays a page fault (and the kernel's zeroing) for every 4 KiB of them.
Measured by ``benchmarks/bench_epoch.py --malloc`` on this project's 2-core machine, that was a
third of a bf16 PAN step (README, "Speed").

:func:`retain_freed_memory` turns both off (``mallopt(M_MMAP_MAX, 0)`` and a trim threshold of
2 GiB), the effect of the environment variables ``MALLOC_MMAP_MAX_=0`` and
``MALLOC_TRIM_THRESHOLD_``: freed blocks stay in the heap and are reused. The process keeps its
peak memory until it exits, which suits a training process. Every training run calls it
(:func:`attentionrnn.engine.trainer.launch`); ``ATTENTIONRNN_MALLOC=system`` leaves ``malloc`` as
it is. Elsewhere than glibc (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MALLOC_ENV", "retain_freed_memory"]

#: Environment variable: ``system`` leaves glibc's malloc settings alone.
MALLOC_ENV = "ATTENTIONRNN_MALLOC"

# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # the largest value an int parameter takes


def retain_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse; return whether it now does.

    Process-wide and not undone (idempotent). ``False`` where ``$ATTENTIONRNN_MALLOC`` is
    ``system`` or the C library is not glibc.
    """
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it; musl has mallopt as a stub)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
