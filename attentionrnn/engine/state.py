"""Seeds, RNG state and files that are never half-written (checkpoints, ``metrics.json``).

The writers write to ``.NAME.PID.tmp`` beside the file and rename it; a writer killed between the
two leaves the temporary behind, which :func:`clean_stale_temporaries` removes once its process
is gone. The readers (:func:`read_json`, :func:`load_checkpoint`) turn a corrupt or truncated
file into a one-line :class:`UserError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attentionrnn.engine.errors import UserError

__all__ = [
    "atomic_save",
    "atomic_write_json",
    "checkpoint_of",
    "extends",
    "clean_stale_temporaries",
    "content_sha256",
    "file_sha256",
    "json_safe",
    "load_checkpoint",
    "read_json",
    "rng_state",
    "save_checkpoint",
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


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**31  # another user's process (or a number no process can have)
    return True


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.PID.tmp`` files in ``folder`` that a writer killed mid-write left behind
    (those whose process is gone); return them."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _TEMPORARY.match(path.name)
        if match is None or _running(int(match.group(1))):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """The object in the JSON file ``path``; a :class:`UserError` naming the file where it is not
    readable, not JSON (truncated, overwritten) or not an object."""
    try:
        value = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not valid JSON"
        raise UserError(
            f"{path}: corrupt {what} ({reason}); delete it (and rerun) or restore it"
        ) from exc
    if not isinstance(value, dict):
        raise UserError(f"{path}: corrupt {what} (not a JSON object); delete it or restore it")
    return value


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` of a run's checkpoint; a :class:`UserError` naming it where it is truncated
    or not a checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several kinds (RuntimeError, UnpicklingError, EOF...)
        raise UserError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}; truncated or corrupt); "
            "delete it to start the run again"
        ) from exc
    if not isinstance(ckpt, dict) or not {"config", "model", "state"} <= set(ckpt):
        raise UserError(f"{path}: not a checkpoint of this package; delete it or use a new --out")
    return ckpt


_HASHES: dict[tuple[str, int, int], str] = {}


def content_sha256(*parts: Any) -> str:
    """sha256 of data held in memory (data generated or decoded, with no file of its own to
    hash): of each part in turn — a numpy array by its dtype, shape and bytes, a list of strings
    by their text, ``None`` as itself — so the same content gives the same hash whatever file
    it came from."""
    digest = hashlib.sha256()
    for part in parts:
        if part is None:
            digest.update(b"none;")
        elif isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part)
            digest.update(f"{array.dtype.str}{array.shape};".encode())
            digest.update(array.tobytes())
        else:
            items = list(part)
            digest.update(f"list{len(items)};".encode())
            for item in items:
                digest.update(json.dumps(item).encode() + b";")
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's content, remembered in this process by (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


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


#: A fingerprint key added after runs were checkpointed without it (the data file's content
#: hash): a checkpoint that lacks it still resumes.
LATER_KEYS = ("data_sha256",)


def save_checkpoint(
    path: Path,
    fingerprint: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Write a run's checkpoint: its ``fingerprint`` (the configuration that determines the
    result), the model's and optimiser's state, the RNG state and the loop's ``state``."""
    atomic_save(
        {
            "config": fingerprint,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "state": state,
        },
        path,
    )


def checkpoint_of(
    path: Path, fingerprint: dict[str, Any], *, extendable: bool = False
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (``None`` where there is none), when it belongs to the run of
    ``fingerprint`` — or, with ``extendable``, to the same run with fewer epochs
    (:func:`extends`); else a :class:`UserError` naming both configurations."""
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    if not (_same_run(ckpt["config"], fingerprint)
            or extendable and extends(ckpt["config"], fingerprint)):  # fmt: skip
        raise UserError(
            f"{path} belongs to a run with another configuration; use a new --out "
            f"or delete the folder.\n saved: {ckpt['config']}\n now:   {fingerprint}"
        )
    return ckpt


def extends(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether ``now`` is the run ``saved`` asked for more epochs, all else the same."""
    if not isinstance(saved, dict) or not isinstance(saved.get("epochs"), int):
        return False
    return saved["epochs"] < now.get("epochs", 0) and _same_run(
        {**saved, "epochs": now["epochs"]}, now
    )


def _same_run(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    if not isinstance(saved, dict):
        return False
    now = {k: v for k, v in now.items() if k not in LATER_KEYS or k in saved}
    return saved == now
