"""CLI commands of the experiments: ``attentionrnn train``, ``reproduce`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys

from attentionrnn.layers.factory import ATTENTION_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this sub-package's commands to the ``attentionrnn`` CLI."""
    from attentionrnn.engine.precision import PRECISIONS
    from attentionrnn.experiments.train import DATASETS, TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help="train one attention method on MREF / MDIST / MBG (experiment E1)",
        description=(
            "Train the PAN network with one attention method on an attribute-prediction dataset, "
            "keep the best-validation checkpoint and write RUN_DIR/metrics.json. Rerunning the "
            "same command resumes an interrupted run. Works under torchrun (gloo)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset)
    p.add_argument("--attention", choices=ATTENTION_NAMES, default=d.attention)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument(
        "--samples",
        type=int,
        default=d.samples,
        help="(image, query) samples to generate (split 60/20/20; PAN: 50000)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs")
    p.add_argument("--seed", type=int, default=d.seed, help="training seed")
    p.add_argument(
        "--task",
        choices=("color", "digit"),
        default=d.task,
        help="color: query a digit, predict its colour; digit: the inverse",
    )
    p.add_argument("--data", metavar="FILE.npz", help="use this dataset file")
    p.add_argument("--data-seed", type=int, default=d.data_seed, help="seed of the generated data")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="cache folder of generated datasets (default $ATTENTIONRNN_DATA_DIR or "
        "~/.cache/attentionrnn/e1)",
    )
    p.add_argument("--mnist", metavar="DIR", help="folder of the MNIST IDX files")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--clip-norm", type=float, default=d.clip_norm)
    p.add_argument("--patience", type=int, default=d.patience, help="early-stopping patience")
    p.add_argument("--attention-hidden", type=int, help="hidden width of the attention modules")
    p.add_argument(
        "--layer4-gate",
        choices=("sigmoid", "softmax"),
        help="gate of the last attention layer (default: each method's own)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="auto: bf16 autocast where the CPU has native bf16 (AMX / AVX-512 BF16), else fp32",
    )
    p.add_argument(
        "--no-channels-last", action="store_true", help="keep the backbone in NCHW memory order"
    )
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--threads", type=int, help="torch threads per process")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train)

    from attentionrnn.experiments.reproduce import BUDGETS, METHODS

    r = subparsers.add_parser(
        "reproduce",
        help="run every attention method on MREF, MDIST and MBG; write results.md/.json + figures",
        description=(
            "Train every method (" + ", ".join(METHODS) + ") on each dataset and write "
            "OUT/results.md, OUT/results.json and OUT/masks_DATASET.png. Budgets: "
            + "; ".join(f"{k}: {v.description}" for k, v in BUDGETS.items())
            + ". Rerunning resumes and reuses finished runs."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("--budget", choices=tuple(BUDGETS), default="quick")
    r.add_argument("--out", default="results", help="output folder")
    r.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    r.add_argument("--methods", nargs="+", choices=ATTENTION_NAMES, default=list(METHODS))
    r.add_argument("--task", choices=("color", "digit"), default="color")
    r.add_argument("--mnist", metavar="DIR", help="folder of the MNIST IDX files")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--jobs", type=int, help="runs in parallel (default: min(2, cores))")
    r.add_argument("--threads", type=int, help="torch threads per run (default: cores // jobs)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_run_reproduce)

    m = subparsers.add_parser(
        "demo",
        help="small offline CTX vs ARNN comparison on MREF (minutes), with the mask figure",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m.add_argument("--out", default="attentionrnn-demo", help="output folder")
    m.add_argument("--mnist", metavar="DIR", help="folder of the MNIST IDX files (optional)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=_run_demo)


def _run_train(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.train import TrainConfig, train

    config = TrainConfig(
        dataset=args.dataset,
        attention=args.attention,
        out=args.out,
        samples=args.samples,
        epochs=args.epochs,
        seed=args.seed,
        task=args.task,
        data=args.data,
        data_seed=args.data_seed,
        data_dir=args.data_dir,
        mnist=args.mnist,
        batch_size=args.batch_size,
        lr=args.lr,
        clip_norm=args.clip_norm,
        patience=args.patience,
        attention_hidden=args.attention_hidden,
        layer4_gate=args.layer4_gate,
        precision=args.precision,
        channels_last=not args.no_channels_last,
        eval_batch_size=args.eval_batch_size,
        threads=args.threads,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    metrics = train(config)
    summary = {k: metrics[k] for k in ("test_accuracy", "val_accuracy", "epochs", "best_epoch")}
    summary["attention_correctness"] = metrics["attention_correctness"]
    print(json.dumps(summary, indent=2))
    return 0


def _run_reproduce(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.reproduce import reproduce, results_markdown

    summary = reproduce(
        args.out,
        budget=args.budget,
        datasets=tuple(args.datasets),
        methods=tuple(args.methods),
        mnist=args.mnist,
        seed=args.seed,
        task=args.task,
        jobs=args.jobs,
        threads=args.threads,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(results_markdown(summary))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.demo import demo
    from attentionrnn.experiments.reproduce import results_markdown

    summary = demo(
        args.out,
        mnist=args.mnist,
        seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(results_markdown(summary).split("## Attention correctness per layer")[0])
    print(f"mask figure: {args.out}/masks_mref.png; full table: {args.out}/results.md")
    return 0
