"""``attentionrnn e2 ...``: the commands of experiment E2 (CIFAR classification with LTPA).

``train`` runs one attention estimator; ``reproduce`` adds runs to a budget's folder and rebuilds
its table and figures; ``table`` rebuilds them from the finished runs alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from attentionrnn.engine.commands import (
    add_reproduce_parser,
    add_run_options,
    add_table_parser,
    print_reproduced,
    seed_type,
    table,
)
from attentionrnn.engine.config import add_config_arguments, config_from_args

logger = logging.getLogger("attentionrnn.e2")


def _tty() -> bool:
    return sys.stderr.isatty()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``e2`` and its sub-commands to the ``attentionrnn`` CLI."""
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

    r = add_reproduce_parser(sub, BUDGETS, "cpu", "results/e2-BUDGET")
    r.add_argument("--datasets", nargs="+", choices=DATASETS, default=["cifar10"])
    r.add_argument("--methods", nargs="+", choices=E2_ATTENTIONS, default=list(E2_ATTENTIONS))
    r.add_argument("--seeds", nargs="+", type=seed_type, help="training seeds of every row "
                   "(default: the budget's; 3 for LTPA and LTPA + ARNN)")  # fmt: skip
    r.add_argument("--cifar10-tar", metavar="PATH", help="CIFAR-10 JPEG tar "
                   "(default $ATTENTIONRNN_CIFAR10_TAR)")  # fmt: skip
    r.add_argument("--cifar10-md5", default=CIFAR10_TAR_MD5, help="expected md5 of the tar")
    r.add_argument("--cifar-dir", metavar="DIR", help="folder of the CIFAR python pickles")
    r.add_argument("--data-dir", metavar="DIR", help="cache of decoded images")
    add_run_options(r, figures=False)
    r.set_defaults(func=_reproduce)

    add_table_parser(sub, _table)


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
        dry_run=args.dry_run,
    )  # fmt: skip
    return print_reproduced(summary, results_markdown)


def _table(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e2.reproduce import assemble, results_markdown

    from attentionrnn.experiments.e2.train import E2Config

    return table(args, assemble, results_markdown, "e2-", config=E2Config)
