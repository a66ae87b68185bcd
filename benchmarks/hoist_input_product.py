"""Would it pay to take the input-to-state product out of the scan, as one large matrix product?

Inside the fused scan each cell multiplies its row of the encoded map (Cin values) by the
input-to-state weights along with the two state taps. Taken out, the forward pass would compute
``e @ W_in`` for every cell first (a (cells*batch, Cin) x (Cin, 4h) product per direction) and
the backward pass would store every cell's gate gradients and compute ``dP @ W_in^T`` and
``e^T @ dP`` after the scan. This script measures both sides at batch 200, hidden 16: the scan
with Cin 16 against Cin 1 (the cost of the product inside the scan), and those matrix products
in fp32 and bf16 (the cost outside, before the scan reads their 4h-wide output).

    python benchmarks/hoist_input_product.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attentionrnn.engine.memory import retain_freed_memory
from attentionrnn.layers.scan import DiagonalLSTMScan


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[49, 23])
    args = parser.parse_args()
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, hidden, gates = 200, 16, 64
    print(f"batch {batch}, hidden {hidden}, {args.threads} threads, median of {args.repeats}")
    print()
    print("| map | scan fwd+bwd, Cin 16 | Cin 1 | product inside | outside fp32 | outside bf16 |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        scan_ms = {}
        for cin in (16, 1):
            scan = DiagonalLSTMScan(cin, hidden)
            e = torch.randn(batch, cin, size, size, requires_grad=True)
            readout = torch.randn(2, hidden)
            scan_ms[cin] = median_ms(
                lambda scan=scan, e=e, readout=readout: (
                    scan.hidden_readout(e, readout).sum().backward()
                ),
                args.repeats,
            )
        rows = size * size * batch
        outside = {}
        for dtype in (torch.float32, torch.bfloat16):
            e = torch.randn(rows, 16, dtype=dtype)
            w = torch.randn(2, 16, gates, dtype=dtype)
            d_p = torch.randn(2, rows, gates, dtype=dtype)
            forward = median_ms(lambda e=e, w=w: torch.matmul(e, w), args.repeats)
            backward = median_ms(
                lambda e=e, w=w, d_p=d_p: (
                    torch.bmm(d_p, w.transpose(1, 2)).sum(0),
                    torch.matmul(e.t(), d_p),
                ),
                args.repeats,
            )
            outside[dtype] = forward + backward
        inside = scan_ms[16] - scan_ms[1]
        print(
            f"| {size}² | {scan_ms[16]:.0f} | {scan_ms[1]:.0f} | {inside:.0f} | "
            f"{outside[torch.float32]:.0f} | {outside[torch.bfloat16]:.0f} |"
        )


if __name__ == "__main__":
    main()
