"""Where a result came from: the code's git commit, the data file's content hash and the CPU.

Every run's ``metrics.json`` carries :func:`provenance` under ``"provenance"`` (written by
:func:`~attentionrnn.engine.trainer.write_metrics`), so a table can say which code, data and
machine each number came from.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attentionrnn.engine.state import file_sha256

__all__ = [
    "cpu_flags", "cpu_label", "git_commit", "provenance", "provenance_line", "run_provenance",
]  # fmt: skip

#: The CPU features that change the kernels' speed or numerics (bf16 products, vector width).
_RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile")
#: The widest of those a CPU has, best first, as a table names it (:func:`cpu_label`).
_CPU_LEVELS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"),
               ("avx2", "AVX2"))  # fmt: skip
_PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout the package runs from, ``+dirty`` when files differ from it;
    ``None`` for an installed copy outside a git checkout."""
    try:
        run = functools.partial(
            subprocess.run, cwd=_PACKAGE, capture_output=True, text=True, timeout=10
        )
        head = run(["git", "rev-parse", "HEAD"])
        if head.returncode != 0:
            return None
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."])
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def cpu_flags() -> list[str]:
    """The CPU's features among :data:`_RELEVANT_FLAGS` (Linux ``/proc/cpuinfo``; else ``[]``)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((ln for ln in f if ln.startswith("flags")), "").split())
    except OSError:
        return []
    return [f for f in _RELEVANT_FLAGS if f in flags]


def cpu_label(cpu: str | None, flags: Sequence[str] | None) -> str:
    """``"AMD EPYC, AVX2"``: a CPU's recorded name and the best of :data:`_CPU_LEVELS` among its
    recorded flags (``""`` where neither is known)."""
    level = next((name for flag, name in _CPU_LEVELS if flag in (flags or ())), None)
    return ", ".join(x for x in (cpu, level) if x)


def provenance(
    data: str | os.PathLike | None = None, data_sha256: str | None = None
) -> dict[str, Any]:
    """``{"git_commit", "cpu_flags", "data_sha256"}`` of this process and the data file
    ``data``, or ``data_sha256`` where the data has no file (e.g.
    :func:`~attentionrnn.engine.state.content_sha256` of data generated in memory)."""
    return {
        "git_commit": git_commit(),
        "cpu_flags": cpu_flags(),
        "data_sha256": data_sha256
        or (file_sha256(data) if data and os.path.isfile(data) else None),
    }


def run_provenance() -> dict[str, Any]:
    """Where a benchmark ran: ``{"git_commit", "date", "cpu", "cpu_flags"}``."""
    import datetime

    from attentionrnn.engine.precision import cpu_name

    return {
        "git_commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
    }


def provenance_line(meta: dict[str, Any]) -> str:
    """``"Measured on DATE at commit C on CPU (flags)."`` for a result file's first line."""
    flags = ", ".join(meta.get("cpu_flags") or []) or "flags unknown"
    return (
        f"Measured on {meta.get('date')} at commit {meta.get('git_commit') or 'unknown'} "
        f"on {meta.get('cpu') or 'an unknown CPU'} ({flags})."
    )
