"""How much of a PAN ARNN training step the fused scan kernels take, per attention layer.

One training step as ``bench_epoch.py`` times it (batch 200 of 100x100 images, bf16 autocast and
channels_last where ``--precision`` says so, RMSprop), with the kernels' forward and backward
calls timed where the autograd node makes them: a wrapper around the loaded kernel module, so the
layer itself is unchanged. Mean of the timed steps after one warm-up step.

    python benchmarks/scan_share.py --threads 1
"""

from __future__ import annotations

import argparse
import collections
import time
from types import SimpleNamespace

import torch

from attentionrnn.engine.memory import retain_freed_memory
from attentionrnn.engine.precision import autocast
from attentionrnn.layers import _extension
from attentionrnn.models.pan import PAN


def timed_kernels(kernels, record: dict) -> SimpleNamespace:
    """``kernels`` with ``forward`` and ``backward`` timed into ``record[(pass, map height)]``."""

    def timed(name):
        def call(args):
            start = time.perf_counter()
            result = getattr(kernels, name)(args)
            record[name, args.height].append(time.perf_counter() - start)
            return result

        return call

    names = {n: getattr(kernels, n) for n in dir(kernels) if not n.startswith("_")}
    return SimpleNamespace(**{**names, "forward": timed("forward"), "backward": timed("backward")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args()
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kernels = _extension.load()
    if kernels is None:
        raise SystemExit(f"the fused kernels are unavailable: {_extension.unavailable_reason()}")
    record: dict = collections.defaultdict(list)
    # The layer asks _extension.load() for the kernels at every call; hand it the timed ones.
    _extension.load = lambda: timed_kernels(kernels, record)

    model = PAN(attention="arnn").to(memory_format=torch.channels_last)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    images = torch.rand(args.batch, 3, 100, 100).contiguous(memory_format=torch.channels_last)
    queries = torch.randint(0, 10, (args.batch,))
    targets = torch.randint(0, 5, (args.batch,))
    steps = []
    for step in range(args.steps + 1):
        if step == 1:
            record.clear()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(args.precision):
            loss = torch.nn.functional.cross_entropy(model(images, queries), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step:
            steps.append(time.perf_counter() - start)
    step_ms = 1e3 * sum(steps) / len(steps)
    print(
        f"PAN ARNN training step, batch {args.batch}, {args.precision}, {args.threads} thread(s): "
        f"{step_ms:.0f} ms (mean of {args.steps})"
    )
    print()
    print("| map | kernel forward ms | kernel backward ms |")
    print("|---|---:|---:|")
    total = 0.0
    for height in sorted({h for _, h in record}, reverse=True):
        fwd, bwd = (1e3 * sum(record[n, height]) / args.steps for n in ("forward", "backward"))
        total += fwd + bwd
        print(f"| {height}² | {fwd:.1f} | {bwd:.1f} |")
    print()
    print(f"Scan kernels: {total:.0f} ms a step, {total / step_ms:.0%} of it")


if __name__ == "__main__":
    main()
