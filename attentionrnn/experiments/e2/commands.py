"""``attentionrnn e2 ...``: the commands of experiment E2 (CIFAR classification with LTPA).

``train`` runs one attention estimator; ``reproduce`` adds runs to a budget's folder and rebuilds
its table and figures; ``table`` rebuilds them from the finished runs alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from attentionrnn.engine.config import add_config_arguments, config_from_args

logger = logging.getLogger("attentionrnn.e2")


def _tty() -> bool:
    return sys.stderr.isatty()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``e2`` and its sub-commands to the ``attentionrnn`` CLI."""
    from attentionrnn.engine.precision import PRECISIONS
    from attentionrnn.experiments.e2.data import CIFAR10_TAR_MD5, DATASETS
    from attentionrnn.experiments.e2.model import E2_ATTENTIONS
    from attentionrnn.experiments.e2.reproduce import BUDGETS
    from attentionrnn.experiments.e2.train import E2Config

    e2 = subparsers.add_parser(
        "e2",
        help="experiment E2: CIFAR-10 / CIFAR-100 classification (LTPA VGG-att3)",
        description="Experiment E2: image classification with Learn to Pay Attention's VGG-att3 "
        "and AttentionRNN as its attention estimator.",
    )
    sub = e2.add_subparsers(dest="e2_command", metavar="COMMAND", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser(
        "train",
        help="train one attention estimator on CIFAR",
        description="Train VGG-att3 with one attention estimator, keep the best-validation "
        "checkpoint, test it and write RUN_DIR/metrics.json (top-1 error, per-class accuracy, "
        "learning curve). Rerunning the same command resumes an interrupted run. Works under "
        "torchrun (gloo).",
        formatter_class=fmt,
    )
    add_config_arguments(t, E2Config, {"out": {"required": True}})
    t.set_defaults(func=_train)

    r = sub.add_parser(
        "reproduce",
        help="add runs to a budget's results folder and rebuild its table and figures",
        description="Train the missing (dataset, method, seed) runs of a budget into "
        "OUT/runs/DATASET/METHOD/seedS, then write OUT/results.md, OUT/results.json, "
        "OUT/curves_DATASET.png and OUT/masks_DATASET.png from every finished run. Budgets: "
        + "; ".join(f"{k}: {v.description}" for k, v in BUDGETS.items()),
        formatter_class=fmt,
    )
    r.add_argument("--budget", choices=tuple(BUDGETS), default="cpu")
    r.add_argument("--out", default=None, help="output folder (default results/e2-BUDGET)")
    r.add_argument("--datasets", nargs="+", choices=DATASETS, default=["cifar10"])
    r.add_argument("--methods", nargs="+", choices=E2_ATTENTIONS, default=list(E2_ATTENTIONS))
    r.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: the budget's)")
    r.add_argument("--cifar10-tar", metavar="PATH", help="CIFAR-10 JPEG tar "
                   "(default $ATTENTIONRNN_CIFAR10_TAR)")  # fmt: skip
    r.add_argument("--cifar10-md5", default=CIFAR10_TAR_MD5, help="expected md5 of the tar")
    r.add_argument("--cifar-dir", metavar="DIR", help="folder of the CIFAR python pickles")
    r.add_argument("--data-dir", metavar="DIR", help="cache of decoded images")
    r.add_argument("--precision", choices=PRECISIONS, default="auto")
    r.add_argument("--jobs", type=int, help="runs in parallel (default: min(2, cores))")
    r.add_argument("--threads", type=int, help="torch threads per run (default: cores // jobs)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_reproduce)

    tb = sub.add_parser(
        "table",
        help="rebuild a results folder's table and figures from its finished runs",
        formatter_class=fmt,
    )
    tb.add_argument("out", type=Path, help="results folder (holds runs/)")
    tb.add_argument("--budget", default=None, help="budget name (default: the folder's name)")
    tb.add_argument("--no-figures", action="store_true", help="only the table")
    tb.set_defaults(func=_table)


def _train(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e2.train import E2Config, train

    config = config_from_args(E2Config, args)
    config.progress = config.progress and _tty()
    metrics = train(config)
    keys = ("test_error", "val_error", "epochs", "best_epoch", "precision", "training_time_s")
    print(json.dumps({k: metrics[k] for k in keys}, indent=2))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e2.reproduce import reproduce, results_markdown

    summary = reproduce(
        args.out or f"results/e2-{args.budget}", budget=args.budget,
        datasets=tuple(args.datasets), methods=tuple(args.methods),
        seeds=tuple(args.seeds) if args.seeds else None, cifar10_tar=args.cifar10_tar,
        cifar10_md5=args.cifar10_md5, cifar_dir=args.cifar_dir, data_dir=args.data_dir,
        precision=args.precision, jobs=args.jobs, threads=args.threads,
        progress=not args.no_progress and _tty(),
    )  # fmt: skip
    print(results_markdown(summary))
    return 0


def _table(args: argparse.Namespace) -> int:
    from attentionrnn.engine.errors import UserError
    from attentionrnn.experiments.e2.reproduce import assemble, results_markdown

    if not (args.out / "runs").is_dir():
        raise UserError(f"{args.out}: no runs/ folder of finished runs")
    budget = args.budget or args.out.name.removeprefix("e2-")
    summary = assemble(args.out, budget, figure=not args.no_figures)
    print(results_markdown(summary))
    return 0
