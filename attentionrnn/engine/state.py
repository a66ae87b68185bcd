"""Seeds, RNG state and files that are never half-written (checkpoints, ``metrics.json``)."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_save",
    "atomic_write_json",
    "json_safe",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename (never half-written)."""
    tmp = _temporary(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float replaced by ``None`` (standard JSON: null)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON to a temporary file beside ``path``, then rename."""
    tmp = _temporary(path)
    tmp.write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
