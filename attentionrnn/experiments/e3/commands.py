"""``attentionrnn e3 ...``: the commands of experiment E3 (VQA with MCB and AttentionRNN).

``train`` runs one attention variant; ``reproduce`` adds runs to a budget's folder and rebuilds
its table and figures; ``table`` rebuilds them from the finished runs alone.
"""

from __future__ import annotations

import argparse
import json
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


def _tty() -> bool:
    return sys.stderr.isatty()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``e3`` and its sub-commands to the ``attentionrnn`` CLI."""
    from attentionrnn.experiments.e3.data import DATASETS
    from attentionrnn.experiments.e3.reproduce import BUDGETS, METHODS
    from attentionrnn.experiments.e3.train import E3Config

    e3 = subparsers.add_parser(
        "e3",
        help="experiment E3: visual question answering (MCB, question-conditioned attention)",
        description="Experiment E3: VQA with MCB fusion and its spatial attention replaced by "
        "AttentionRNN conditioned on the question; easy-VQA, a generated relational set, VQA v2.",
    )
    sub = e3.add_subparsers(dest="e3_command", metavar="COMMAND", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser(
        "train",
        help="train one attention variant",
        description="Train the VQA network with one attention variant, keep the best-validation "
        "checkpoint, test it and write RUN_DIR/metrics.json (accuracy overall and by question "
        "type, attention correctness on the generated set, learning curve). Rerunning the same "
        "command resumes an interrupted run. Works under torchrun (gloo).",
        formatter_class=fmt,
    )
    add_config_arguments(t, E3Config, {"out": {"required": True}})
    t.set_defaults(func=_train)

    r = add_reproduce_parser(sub, BUDGETS, "cpu", "results/e3-BUDGET")
    r.add_argument("--datasets", nargs="+", choices=DATASETS,
                   help="datasets to add runs of (default: easy_vqa and sort_of_clevr; with "
                   "a curriculum budget, sort_of_clevr)")  # fmt: skip
    r.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="rows to add (oracle: on the generated set only)")  # fmt: skip
    r.add_argument("--seeds", nargs="+", type=seed_type, help="training seeds of every row "
                   "(default: the budget's; 3 for MCB attention and ARNN)")  # fmt: skip
    r.add_argument("--vqa-dir", metavar="DIR", help="VQA v2 folder (default $ATTENTIONRNN_VQA_DIR)")
    r.add_argument("--easy-vqa-dir", metavar="DIR", help="easy-VQA data folder "
                   "(default: the installed easy-vqa package)")  # fmt: skip
    r.add_argument("--data-dir", metavar="DIR", help="cache of decoded images")
    add_run_options(r)
    r.set_defaults(func=_reproduce)

    add_table_parser(sub, _table)


def _train(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e3.train import E3Config, train

    config = config_from_args(E3Config, args)
    config.progress = config.progress and _tty()
    metrics = train(config)
    keys = ("test_accuracy", "test_by_type", "test_relational", "test_non_relational",
            "test_attention_correctness", "val_accuracy", "epochs", "best_epoch", "precision",
            "training_time_s")  # fmt: skip
    print(json.dumps({k: metrics.get(k) for k in keys}, indent=2))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e3.reproduce import reproduce, results_markdown

    summary = reproduce(
        args.out or f"results/e3-{args.budget}", budget=args.budget,
        datasets=tuple(args.datasets) if args.datasets else None, methods=tuple(args.methods),
        seeds=tuple(args.seeds) if args.seeds else None, vqa_dir=args.vqa_dir,
        easy_vqa_dir=args.easy_vqa_dir, data_dir=args.data_dir, precision=args.precision,
        jobs=args.jobs, threads=args.threads, progress=not args.no_progress and _tty(),
        dry_run=args.dry_run,
        figure=not args.no_figures,
    )  # fmt: skip
    return print_reproduced(summary, results_markdown)


def _table(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e3.reproduce import assemble, results_markdown

    from attentionrnn.experiments.e3.train import E3Config

    return table(args, assemble, results_markdown, "e3-", config=E3Config)
