"""engine.memory: training processes keep freed memory instead of page-faulting it back in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="retain_freed_memory acts on glibc's malloc only"
)

# Repeats a step that allocates and frees buffers of a few sizes, like a forward and backward
# pass, and prints the page faults of the steps after the first (which has to fault its memory in).
STEPS = textwrap.dedent(
    """
    import resource, torch
    from attentionrnn.engine.memory import retain_freed_memory

    print(retain_freed_memory())
    faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(5):
        if i == 1:
            start = faults()
        kept = [torch.ones(mib * 2**20 // 4) for mib in (48, 8, 48, 2, 33, 16)]
        del kept
    print(faults() - start)
    """
)


def _steps(malloc: str) -> tuple[bool, int]:
    env = {**os.environ, "ATTENTIONRNN_MALLOC": malloc}
    out = subprocess.run(
        [sys.executable, "-c", STEPS], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@glibc
def test_retained_memory_is_reused_without_page_faults():
    retained, retained_faults = _steps("retain")
    system, system_faults = _steps("system")
    assert retained and not system
    # Four steps of 155 MiB: ~160k faults of 4 KiB when every buffer is fresh from the kernel.
    assert system_faults > 100_000
    assert retained_faults < system_faults / 5


def test_opt_out_leaves_malloc_alone(monkeypatch):
    from attentionrnn.engine.memory import retain_freed_memory

    monkeypatch.setenv("ATTENTIONRNN_MALLOC", "system")
    assert retain_freed_memory() is False


def test_every_training_run_retains_freed_memory(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from attentionrnn.engine import trainer

    calls = []
    monkeypatch.setattr(trainer, "retain_freed_memory", lambda: calls.append(1))
    config = SimpleNamespace(check=lambda: None, threads=None, out=str(tmp_path / "run"))
    assert trainer.launch(config, lambda cfg, ctx: "trained") == "trained"
    assert calls == [1]
