"""Builds and loads the fused C++ kernels of the scan (``attentionrnn/csrc``) on first use.

The build is cached by torch.utils.cpp_extension (``TORCH_EXTENSIONS_DIR``, by default under
``~/.cache/torch_extensions``), so only the first use on a machine pays for it (about a minute).
Without a C++ compiler, or with ``ATTENTIONRNN_NO_EXTENSION=1``, :func:`load` returns ``None`` and
the layer uses the pure-PyTorch implementation, which gives the same results more slowly.
``ATTENTIONRNN_EXTENSION_CFLAGS`` adds compiler flags (for instance ``-march=x86-64-v3`` for a
build that also runs on other CPUs than the building one); each set of flags is its own build.
"""

from __future__ import annotations

import functools
import hashlib
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

        extra = os.environ.get("ATTENTIONRNN_EXTENSION_CFLAGS", "").split()
        name = "attentionrnn_diagonal_lstm"
        if extra:  # a cache entry per flag set, so that switching does not rebuild each time
            name += "_" + hashlib.sha1(" ".join(extra).encode()).hexdigest()[:8]
        return cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            # OpenMP: ATen's parallel_for in the kernels is serial without it.
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-mrecip", "-fopenmp", *extra],
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
