"""Builds and loads the fused C++ kernels of the scan (``attentionrnn/csrc``) on first use.

The build is cached by torch.utils.cpp_extension (``TORCH_EXTENSIONS_DIR``, by default under
``~/.cache/torch_extensions``), so only the first use on a machine pays for it (about a minute).
Without a C++ compiler, or with ``ATTENTIONRNN_NO_EXTENSION=1``, :func:`load` returns ``None`` and
the layer uses the pure-PyTorch implementation, which gives the same results more slowly.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from types import ModuleType

logger = logging.getLogger("attentionrnn")

SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "diagonal_lstm.cpp"


@functools.cache
def load() -> ModuleType | None:
    """The compiled kernels, or ``None`` where they cannot be built here."""
    if os.environ.get("ATTENTIONRNN_NO_EXTENSION", "") not in ("", "0"):
        return None
    try:
        from torch.utils import cpp_extension

        return cpp_extension.load(
            name="attentionrnn_diagonal_lstm",
            sources=[str(SOURCE)],
            # OpenMP: ATen's parallel_for in the kernels is serial without it.
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-mrecip", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, unsupported platform...
        logger.warning(
            "attentionrnn: fused C++ scan kernels unavailable (%s); using the PyTorch "
            "implementation (same results, slower)",
            str(error).splitlines()[0] if str(error) else type(error).__name__,
        )
        return None
