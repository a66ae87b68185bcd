"""The layer needs only torch and numpy: importing and running it must not pull in the
experiments' dependencies (matplotlib, tqdm, scikit-image, mlxtend, easy-vqa), which are an
extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT_ONLY = ("matplotlib", "tqdm", "skimage", "mlxtend", "easy_vqa")


def test_layer_runs_without_the_experiment_dependencies():
    # Each experiment-only module is made unimportable: an import of it raises ImportError.
    code = f"""
import sys
for name in {EXPERIMENT_ONLY!r}:
    sys.modules[name] = None
import torch
from attentionrnn import AttentionRNN, BlockAttentionRNN, build_attention
for name in ("ctx", "arnn", "brnn"):
    y = build_attention(name, 4, query_channels=3)(torch.randn(2, 4, 5, 6), torch.randn(2, 3))
    y.sum().backward()
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_core_dependencies_are_the_layers_and_the_rest_is_an_extra():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0] for d in project["dependencies"]}
    assert core == {"torch", "numpy", "ninja"}
    extra = {d.split(">")[0] for d in project["optional-dependencies"]["experiments"]}
    assert {"matplotlib", "tqdm", "scikit-image", "mlxtend", "easy-vqa"} <= extra
