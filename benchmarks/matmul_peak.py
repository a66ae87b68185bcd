"""This CPU's practical multiply-add rate: a 2048 x 2048 matrix product in fp32 and bf16.

The floor that ``benchmarks/results/scan_share.md`` measures the scan against: multiply-adds
divided by this rate. Median of 7 products after 3 warm-ups.

    python benchmarks/matmul_peak.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.size
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(7):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        print(f"{dtype}: median {t * 1e3:.1f} ms, {n**3 / t / 1e9:.0f} G multiply-adds/s")


if __name__ == "__main__":
    main()
