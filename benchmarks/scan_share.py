"""How much of a PAN ARNN training step the fused scan kernels take, per attention layer.

One training step as ``bench_epoch.py`` times it (its ``step_seconds``: batch 200 of 100x100
images, the precision as there, RMSprop), with the kernels' forward and backward
calls timed where the autograd node makes them: a wrapper around the loaded kernel module, so the
layer itself is unchanged. Mean of the timed steps after one warm-up step.

    python benchmarks/scan_share.py --threads 1              # bf16 autocast + channels_last
"""

from __future__ import annotations

import argparse
import collections
import time
from types import SimpleNamespace

import torch
from bench_epoch import PRECISIONS, step_seconds  # this folder's training-step benchmark

from attentionrnn.engine.memory import retain_freed_memory
from attentionrnn.experiments.e1.model import PAN
from attentionrnn.layers import _extension


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
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16-cl")
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

    cl = args.precision.endswith("-cl")
    memory_format = torch.channels_last if cl else torch.contiguous_format
    model = PAN(attention="arnn").to(memory_format=memory_format)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    images = torch.rand(args.batch, 3, 100, 100).contiguous(memory_format=memory_format)
    queries = torch.randint(0, 10, (args.batch,))
    targets = torch.randint(0, 5, (args.batch,))
    steps = []
    for step in range(args.steps + 1):  # the first step warms up
        if step == 1:
            record.clear()
        seconds = step_seconds(model, optimizer, images, queries, targets, args.precision)
        if step:
            steps.append(seconds)
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
