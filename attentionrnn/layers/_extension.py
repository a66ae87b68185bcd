"""Builds and loads the fused C++ kernels of the scan (``attentionrnn/csrc``) on first use.

The build is cached by torch.utils.cpp_extension (``TORCH_EXTENSIONS_DIR``, by default under
``~/.cache/torch_extensions``), so only the first use on a machine pays for it (about a minute).
Without a C++ compiler, or with ``ATTENTIONRNN_NO_EXTENSION=1``, :func:`load` returns ``None`` and
the layer uses the pure-PyTorch implementation, which gives the same results more slowly.
The kernels are compiled for the building CPU (``-march=native``), so the cache entry is named
after the CPU's model and instruction-set flags as well as the extra compiler flags
``ATTENTIONRNN_EXTENSION_CFLAGS`` adds: a cache shared by machines with different CPUs (a home
directory on a cluster) holds one build per kind of CPU instead of handing one CPU's build to
another. The name also carries a digest of every file in ``csrc`` (sources and headers), so an
edited kernel never loads an older build.

The sources, by concern: ``simd.h`` (vector exp/sigmoid/tanh, clamps), ``products.h`` (the small
matrix products, ``pair_products.h`` their bf16 form), ``cells.h`` (one LSTM cell forward and
backward), ``scan_params.h`` (the scan's parameter struct and the layout, as
:mod:`attentionrnn.layers.diagonal` defines it), ``scans.h`` (the entry points and their
arguments), ``scan_dispatch.h`` (what both passes share: argument checks, dispatch on the gate
width), ``scan_forward.cpp`` / ``scan_backward.cpp`` (the scans through time) and ``bindings.cpp``
(the Python module). The three translation units are compiled in parallel: ninja runs as many
compile jobs as the CPU count allows (``MAX_JOBS`` caps them).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path
from types import ModuleType

logger = logging.getLogger("attentionrnn")

CSRC = Path(__file__).resolve().parents[1] / "csrc"
# The translation units; the headers they include are in CSRC too.
SOURCES = (CSRC / "scan_forward.cpp", CSRC / "scan_backward.cpp", CSRC / "bindings.cpp")


# Why the last call of load() returned None.
_unavailable = "not loaded yet"


@functools.cache
def load() -> ModuleType | None:
    """The compiled kernels, or ``None`` where they cannot be built here
    (:func:`unavailable_reason` says why)."""
    global _unavailable
    if os.environ.get("ATTENTIONRNN_NO_EXTENSION", "") not in ("", "0"):
        _unavailable = "ATTENTIONRNN_NO_EXTENSION is set"
        return None
    try:
        from torch.utils import cpp_extension

        extra = _extra_cflags()
        return cpp_extension.load(
            name=build_name(),
            sources=[str(path) for path in SOURCES],
            # OpenMP: ATen's parallel_for in the kernels is serial without it.
            # -fno-finite-math-only: NaN and inf pass through the gates as in PyTorch
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only",
                          "-mrecip", "-fopenmp", *extra],  # fmt: skip
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, unsupported platform...
        _unavailable = "building them failed: " + (
            str(error).splitlines()[0] if str(error) else type(error).__name__
        )
        logger.warning(
            "attentionrnn: fused C++ scan kernels unavailable (%s); using the PyTorch "
            "implementation (same results, slower)",
            _unavailable,
        )
        return None


def unavailable_reason() -> str | None:
    """Why :func:`load` returns ``None`` (``None`` where the kernels load)."""
    return None if load() is not None else _unavailable


def _extra_cflags() -> list[str]:
    return os.environ.get("ATTENTIONRNN_EXTENSION_CFLAGS", "").split()


def build_name() -> str:
    """The extension's cache entry: one per kind of CPU, set of extra compiler flags and version
    of the sources."""
    build = "\n".join([_cpu_description(), *_extra_cflags(), _source_digest()])
    return "attentionrnn_diagonal_lstm_" + hashlib.sha1(build.encode()).hexdigest()[:10]


def _source_digest() -> str:
    """A digest of every source and header of the kernels (names and contents)."""
    digest = hashlib.sha1()
    for path in sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _cpu_description() -> str:
    """The CPU model and instruction-set flags (Linux), else what the platform module knows."""
    wanted = ("model name", "flags", "features", "cpu part", "cpu implementer")
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="ignore").splitlines()
    except OSError:
        lines = []
    seen = {}
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in wanted and key not in seen:
            seen[key] = " ".join(sorted(value.split())) if key in ("flags", "features") else value
    described = [f"{key}: {seen[key].strip()}" for key in wanted if key in seen]
    return "\n".join(described) or f"{platform.machine()} {platform.processor()}"
