"""Does bf16 autocast change what E1 learns? fp32 and bf16 learning curves of CTX and ARNN.

Trains (or reuses, when a run folder is finished) every run in both precisions with each seed,
all on one dataset file, and prints per epoch the validation accuracy and the layer-4 box
correctness of each run, then the largest gap between the two precisions' means over seeds next
to the spread between seeds within each precision at that step.

    python benchmarks/precision_curves.py --data DEMO.npz --out /tmp/prec        # demo-sized
    python benchmarks/precision_curves.py --data DEMO.npz --out /tmp/prec --jobs 2
    python benchmarks/precision_curves.py --data DEMO.npz --out P --methods ctx --seeds 0 1 2

The default is the demo's setting (batch 50, 8 epochs, ARNN with a softmax at layer 4); pass the
demo's data file (``attentionrnn-demo/data/*.npz``) or any E1 file. The table is written to
``OUT/precision_curves.md`` as well. Finished runs in OUT are reused, so seeds can be added later
(``--methods`` trains only those; the report shows every method over the seeds finished in both
precisions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from attentionrnn.engine.runs import format_stats, seed_stats, train_runs
from attentionrnn.experiments.e1.config import E1Config
from attentionrnn.experiments.e1.train import train

METHODS = {"ctx": None, "arnn": "softmax"}  # method -> layer-4 gate override


def run_configs(args: argparse.Namespace) -> list[E1Config]:
    base = E1Config(
        dataset=args.dataset, data=str(args.data), epochs=args.epochs, patience=args.epochs,
        batch_size=args.batch_size, threads=args.threads, progress=False,
    )  # fmt: skip
    configs = []
    for method, gate in METHODS.items():
        for precision, seed in [(p, s) for p in ("fp32", "bf16") for s in args.seeds]:
            out = args.out / f"{method}-{precision}-seed{seed}"
            configs.append(
                dataclasses.replace(
                    base,
                    attention=method,
                    layer4_gate=gate,
                    precision=precision,
                    seed=seed,
                    out=str(out),
                )  # fmt: skip
            )
    return configs


def curve(config: E1Config) -> list[tuple[int, float, float]]:
    metrics = json.loads((Path(config.out) / "metrics.json").read_text())
    return [
        (h["step"], h["val_accuracy"], h["val_attention_correctness"]["layer4"]["box"])
        for h in metrics["history"]
    ]


def _compare(runs: dict, seeds: list[int], n: int) -> str:
    """The precisions' gap (mean over seeds) against the seeds' spread within each precision."""
    parts = []
    for j, name in ((1, "val acc"), (2, "L4 box")):
        mean = {
            p: [sum(runs[(p, s)][i][j] for s in seeds) / len(seeds) for i in range(n)]
            for p in ("fp32", "bf16")
        }
        gap = [abs(mean["fp32"][i] - mean["bf16"][i]) for i in range(n)]
        spread = {
            p: [max(runs[(p, s)][i][j] for s in seeds) - min(runs[(p, s)][i][j] for s in seeds)
                for i in range(n)]
            for p in ("fp32", "bf16")
        }  # fmt: skip
        worst = max(range(n), key=lambda i: gap[i])
        last = {p: [runs[(p, s)][-1][j] for s in seeds] for p in ("fp32", "bf16")}
        parts.append(
            f"{name}: largest gap between the precisions' means {gap[worst]:.3f} (step "
            f"{runs[('fp32', seeds[0])][worst][0]}), where the seeds spread by "
            f"{spread['fp32'][worst]:.3f} (fp32) and {spread['bf16'][worst]:.3f} (bf16); at the "
            f"last epoch gap {gap[-1]:.3f}, spreads {spread['fp32'][-1]:.3f} / "
            f"{spread['bf16'][-1]:.3f}, mean ± std fp32 {format_stats(seed_stats(last['fp32']))}, "
            f"bf16 {format_stats(seed_stats(last['bf16']))}"
        )
    return f"Seeds {seeds}. " + "; ".join(parts) + "."


def finished(config: E1Config) -> bool:
    return (Path(config.out) / "metrics.json").is_file()


def report(configs: list[E1Config], seeds: list[int]) -> str:
    """Each method's curves over the seeds whose runs have finished in both precisions."""
    lines = ["# fp32 vs bf16 learning curves (E1)", ""]
    for method in METHODS:
        mine = [c for c in configs if c.attention == method]
        seeds_m = [s for s in seeds if all(finished(c) for c in mine if c.seed == s)]
        if not seeds_m:
            continue
        runs = {(c.precision, c.seed): curve(c) for c in mine if c.seed in seeds_m}
        # a longer run of the same config has the same first epochs: compare the common ones
        n = min(len(r) for r in runs.values())
        runs = {k: r[:n] for k, r in runs.items()}
        keys = list(runs)
        lines += [
            f"## {method}" + (f" (layer-4 gate {METHODS[method]})" if METHODS[method] else ""),
            "",
            "| step | " + " | ".join(f"{p} seed {s}: val acc / L4 box" for p, s in keys) + " |",
            "|---" * (len(keys) + 1) + "|",
        ]
        for i, row in enumerate(runs[keys[0]]):
            cells = [f"{runs[k][i][1]:.3f} / {runs[k][i][2]:.3f}" for k in keys]
            lines.append(f"| {row[0]} | " + " | ".join(cells) + " |")
        lines += ["", _compare(runs, seeds_m, n), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="E1 dataset file (.npz)")
    parser.add_argument("--dataset", default="mref")
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
        help="methods to train (the report shows every method's finished seeds)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    configs = run_configs(args)
    todo = [c for c in configs if c.attention in args.methods and not finished(c)]
    train_runs(todo, train, args.jobs)
    text = report(configs, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision_curves.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
