"""Forward and backward time of the fused scan alone, at the E1 network's four attention maps.

The scan of :class:`~attentionrnn.layers.scan.DiagonalLSTMScan` (two directions, feedback, the 1x1
readout; hidden 16, input 16 channels, the ARNN layers of PAN) on random maps of 49², 23², 10² and
4² at batch 200, under bf16 autocast like a training step, with freed memory retained. Each
variant is a build of the kernels with extra compiler flags (``ATTENTIONRNN_EXTENSION_CFLAGS``),
run in its own process; the variants take turns, round after round, so that a drift in the
machine's speed hits them alike, and the table gives per-variant medians and their ratio to the
first variant. A variant is NAME=FLAGS.

    python benchmarks/bench_scan.py                      # this build, 2 threads
    python benchmarks/bench_scan.py --variants no-prefetch=-DATTENTIONRNN_NO_PREFETCH default= \
        --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = (49, 23, 10, 4)


def measure(threads: int, repeats: int, batch: int, precision: str) -> dict[str, list[float]]:
    """One process's timings: per size, ``repeats`` forward and backward times in ms."""
    import torch

    from attentionrnn.engine.memory import retain_freed_memory
    from attentionrnn.layers.scan import DiagonalLSTMScan

    retain_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out: dict[str, list[float]] = {}
    for size in SIZES:
        scan = DiagonalLSTMScan(16, 16)
        e = torch.randn(batch, 16, size, size, requires_grad=True)
        readout = torch.randn(2, 16)
        for r in range(repeats + 1):  # the first call warms up
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                y = scan.hidden_readout(e, readout)
            mid = time.perf_counter()
            y.float().sum().backward()
            end = time.perf_counter()
            if r:
                out.setdefault(f"{size}/fwd", []).append((mid - start) * 1e3)
                out.setdefault(f"{size}/bwd", []).append((end - mid) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variants", nargs="+", default=["default="], help="NAME=FLAGS: extra compiler flags"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per round")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast (default, as a training step on a CPU with native "
                        "bf16) or fp32")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.threads, args.repeats, args.batch, args.precision)))
        return
    flags = dict(v.partition("=")[::2] for v in args.variants)
    times: dict[str, dict[str, list[float]]] = {v: {} for v in flags}
    for variant in flags:  # build each variant once, outside the timed rounds
        env = dict(os.environ, ATTENTIONRNN_EXTENSION_CFLAGS=flags[variant])
        code = "from attentionrnn.layers import _extension as x; assert x.load() is not None"
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    for _ in range(args.rounds):
        for variant in flags:
            env = dict(os.environ, ATTENTIONRNN_EXTENSION_CFLAGS=flags[variant])
            worker = [sys.executable, __file__, "--worker", "--repeats", str(args.repeats)]
            worker += ["--batch", str(args.batch), "--threads", str(args.threads)]
            worker += ["--precision", args.precision]
            result = subprocess.run(worker, env=env, check=True, capture_output=True, text=True)
            for key, values in json.loads(result.stdout.splitlines()[-1]).items():
                times[variant].setdefault(key, []).extend(values)
    names = list(flags)
    print(
        f"Fused scan, batch {args.batch}, hidden 16, "
        f"{'bf16 autocast' if args.precision == 'bf16' else 'fp32'}, {args.threads} threads; "
        f"median ms over {args.rounds} rounds x {args.repeats} calls, variants alternating"
    )
    print()
    columns = names + [f"{n} / {names[0]}" for n in names[1:]]
    print("| map | pass | " + " | ".join(columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for size in SIZES:
        for part in ("fwd", "bwd", "total"):
            row = []
            for variant in flags:
                t = times[variant]
                if part == "total":
                    vals = [a + b for a, b in zip(t[f"{size}/fwd"], t[f"{size}/bwd"], strict=True)]
                else:
                    vals = t[f"{size}/{part}"]
                row.append(statistics.median(vals))
            ratios = [f"{x / row[0]:.2f}" for x in row[1:]]
            cells = [f"{x:.1f}" for x in row] + ratios
            print(f"| {size}² | {part} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
