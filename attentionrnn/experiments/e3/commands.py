"""``attentionrnn e3 ...``: the commands of experiment E3 (VQA with MCB and AttentionRNN).

``train`` runs one attention variant; ``reproduce`` adds runs to a budget's folder and rebuilds
its table and figures; ``table`` rebuilds them from the finished runs alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attentionrnn.engine.config import add_config_arguments, config_from_args


def _tty() -> bool:
    return sys.stderr.isatty()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``e3`` and its sub-commands to the ``attentionrnn`` CLI."""
    from attentionrnn.engine.precision import PRECISIONS
    from attentionrnn.experiments.e3.data import DATASETS
    from attentionrnn.experiments.e3.model import E3_ATTENTIONS
    from attentionrnn.experiments.e3.reproduce import BUDGETS
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
    r.add_argument("--out", default=None, help="output folder (default results/e3-BUDGET)")
    r.add_argument("--datasets", nargs="+", choices=DATASETS,
                   default=["easy_vqa", "sort_of_clevr"])  # fmt: skip
    r.add_argument("--methods", nargs="+", choices=E3_ATTENTIONS, default=list(E3_ATTENTIONS))
    r.add_argument("--seeds", nargs="+", type=int, help="training seeds of every row "
                   "(default: the budget's; 3 for MCB attention and ARNN)")  # fmt: skip
    r.add_argument("--vqa-dir", metavar="DIR", help="VQA v2 folder (default $ATTENTIONRNN_VQA_DIR)")
    r.add_argument("--easy-vqa-dir", metavar="DIR", help="easy-VQA data folder "
                   "(default: the installed easy-vqa package)")  # fmt: skip
    r.add_argument("--data-dir", metavar="DIR", help="cache of decoded images")
    r.add_argument("--precision", choices=PRECISIONS, default="auto")
    r.add_argument("--jobs", type=int, help="runs in parallel (default: min(2, cores))")
    r.add_argument("--threads", type=int, help="torch threads per run (default: cores // jobs)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--no-figures", action="store_true", help="only the table")
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
        datasets=tuple(args.datasets), methods=tuple(args.methods),
        seeds=tuple(args.seeds) if args.seeds else None, vqa_dir=args.vqa_dir,
        easy_vqa_dir=args.easy_vqa_dir, data_dir=args.data_dir, precision=args.precision,
        jobs=args.jobs, threads=args.threads, progress=not args.no_progress and _tty(),
        figure=not args.no_figures,
    )  # fmt: skip
    print(results_markdown(summary))
    return 0


def _table(args: argparse.Namespace) -> int:
    from attentionrnn.engine.errors import UserError
    from attentionrnn.experiments.e3.reproduce import assemble, results_markdown

    if not (args.out / "runs").is_dir():
        raise UserError(f"{args.out}: no runs/ folder of finished runs")
    budget = args.budget or args.out.name.removeprefix("e3-")
    summary = assemble(args.out, budget, figure=not args.no_figures)
    print(results_markdown(summary))
    return 0
