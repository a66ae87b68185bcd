"""Cost of a training step of the E1 network (PAN backbone) with each attention method.

One step is what an epoch repeats: forward, loss, backward, gradient clipping and an RMSprop update
on a batch of 100x100 RGB images with their queries (random data of the real shapes: the cost does
not depend on the pixel values). The methods are interleaved within each repeat; the ratio to CTX
(PAN's own attention) is computed from medians of the same run, so it is the ratio of epoch times.

    python benchmarks/bench_epoch.py                       # batch 200 (PAN's), ctx vs arnn
    python benchmarks/bench_epoch.py --methods none ctx arnn brnn --batch 50 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from attentionrnn.models.pan import PAN


def step_seconds(model: PAN, optimizer: torch.optim.Optimizer, images, queries, targets) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(images, queries), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["ctx", "arnn"])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, 100, 100)
    queries = torch.randint(0, 10, (args.batch,))
    targets = torch.randint(0, 5, (args.batch,))
    models = {m: PAN(attention=m) for m in args.methods}
    optimizers = {m: torch.optim.RMSprop(models[m].parameters(), lr=3e-3) for m in args.methods}
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for r in range(args.repeats + 1):  # the first round warms up (and builds the C++ kernels)
        for m in args.methods:
            t = step_seconds(models[m], optimizers[m], images, queries, targets)
            if r:
                times[m].append(t)
    base = statistics.median(times["ctx"]) if "ctx" in times else None
    lines = [
        f"PAN training step, batch {args.batch}, {torch.get_num_threads()} threads "
        f"(median of {args.repeats}, methods interleaved)",
        "",
        "| attention | step s | x ctx | epoch of 30,000 samples, min |",
        "|---|---:|---:|---:|",
    ]
    for m in args.methods:
        t = statistics.median(times[m])
        ratio = f"{t / base:.2f}" if base else "-"
        lines.append(f"| {m} | {t:.3f} | {ratio} | {t * 30000 / args.batch / 60:.1f} |")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_epoch.md").write_text(text + "\n")
    (args.out / "bench_epoch.json").write_text(
        json.dumps(
            {"batch": args.batch, "threads": torch.get_num_threads(), "times": times}, indent=2
        )
    )


if __name__ == "__main__":
    main()
