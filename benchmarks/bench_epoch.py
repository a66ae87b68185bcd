"""Cost of a training step of the E1 network (PAN backbone) per attention method and precision.

One step is what an epoch repeats: forward, loss, backward, gradient clipping and an RMSprop update
on a batch of 100x100 RGB images with their queries (random data of the real shapes: the cost does
not depend on the pixel values). Every (method, precision) contender is interleaved within each
repeat, and ratios are computed from medians of the same run.

Precisions: ``fp32`` (NCHW), ``fp32-cl`` (channels_last), ``bf16`` (autocast, NCHW) and
``bf16-cl`` (autocast + channels_last, what ``--precision bf16`` trains with).

Like a training run, the benchmark keeps freed memory in the process
(:func:`~attentionrnn.engine.memory.retain_freed_memory`); ``--malloc system`` measures glibc's
default, which returns large blocks to the kernel and page-faults them back in every step.

    python benchmarks/bench_epoch.py                       # batch 200 (PAN's), ctx vs arnn
    python benchmarks/bench_epoch.py --methods none ctx arnn brnn --precisions bf16-cl
    python benchmarks/bench_epoch.py --precisions bf16-cl --malloc system
    python benchmarks/bench_epoch.py --methods ctx arnn --precisions bf16-cl --scan-products both

``--scan-products both`` adds, for every bf16 contender, one whose fused scans keep float32
matrix products (``ATTENTIONRNN_SCAN_PRODUCTS=fp32``, set around its steps), labelled
``bf16-cl/fp32-products``; methods without a scan run the same code in both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch

from attentionrnn.engine.memory import retain_freed_memory
from attentionrnn.engine.precision import autocast, native_bf16
from attentionrnn.engine.provenance import provenance_line, run_provenance
from attentionrnn.experiments.e1.model import PAN
from attentionrnn.layers.fused import SCAN_PRODUCTS_ENV

PRECISIONS = ("fp32", "fp32-cl", "bf16", "bf16-cl")


FP32_PRODUCTS = "/fp32-products"  # suffix of a contender whose scans keep float32 products


def step_seconds(model, optimizer, images, queries, targets, precision: str) -> float:
    if precision.endswith(FP32_PRODUCTS):
        os.environ[SCAN_PRODUCTS_ENV] = "fp32"
        try:
            return step_seconds(
                model, optimizer, images, queries, targets, precision[: -len(FP32_PRODUCTS)]
            )
        finally:
            del os.environ[SCAN_PRODUCTS_ENV]
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with autocast("bf16" if precision.startswith("bf16") else "fp32"):
        loss = torch.nn.functional.cross_entropy(model(images, queries), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["ctx", "arnn"])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--malloc", choices=("retain", "system"), default="retain")
    parser.add_argument("--scan-products", choices=("default", "both"), default="default")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    retained = args.malloc == "retain" and retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, 100, 100)
    queries = torch.randint(0, 10, (args.batch,))
    targets = torch.randint(0, 5, (args.batch,))
    precisions = list(args.precisions)
    if args.scan_products == "both":
        precisions += [p + FP32_PRODUCTS for p in args.precisions if p.startswith("bf16")]
    contenders = [(m, p) for m in args.methods for p in precisions]
    models, optimizers, inputs = {}, {}, {}
    for m, p in contenders:
        cl = p.removesuffix(FP32_PRODUCTS).endswith("-cl")
        model = PAN(attention=m)
        models[m, p] = model.to(memory_format=torch.channels_last) if cl else model
        optimizers[m, p] = torch.optim.RMSprop(model.parameters(), lr=3e-3)
        fmt = torch.channels_last if cl else torch.contiguous_format
        inputs[m, p] = images.contiguous(memory_format=fmt)
    times: dict[tuple[str, str], list[float]] = {c: [] for c in contenders}
    for r in range(args.repeats + 1):  # the first round warms up (and builds the C++ kernels)
        for c in contenders:
            t = step_seconds(models[c], optimizers[c], inputs[c], queries, targets, c[1])
            if r:
                times[c].append(t)
    med = {c: statistics.median(v) for c, v in times.items()}
    lines = [
        f"PAN training step, batch {args.batch}, {torch.get_num_threads()} threads, native bf16: "
        f"{native_bf16()}, freed memory {'retained' if retained else 'returned to the system'} "
        f"(median of {args.repeats}, contenders interleaved)",
        "",
        "| attention | precision | step s | × same method fp32 | × ctx same precision "
        "| epoch of 30,000 samples, min |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m, p in contenders:
        t = med[m, p]
        vs_fp32 = f"{t / med[m, 'fp32']:.2f}" if (m, "fp32") in med else "-"
        vs_ctx = f"{t / med['ctx', p]:.2f}" if ("ctx", p) in med else "-"
        lines.append(
            f"| {m} | {p} | {t:.3f} | {vs_fp32} | {vs_ctx} | {t * 30000 / args.batch / 60:.1f} |"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    lines += ["", f"Peak memory of the process: {peak_mb:.0f} MB"]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = run_provenance()
    (args.out / "bench_epoch.md").write_text(provenance_line(meta) + "\n\n" + text + "\n")
    (args.out / "bench_epoch.json").write_text(
        json.dumps(
            {
                **meta,
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "native_bf16": native_bf16(),
                "malloc": "retain" if retained else "system",
                "peak_mb": peak_mb,
                "times": {f"{m}/{p}": v for (m, p), v in times.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
