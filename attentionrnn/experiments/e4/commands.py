"""``attentionrnn e4 ...``: the commands of experiment E4 (image editing with attention masks).

``train`` runs one mask head; ``reproduce`` adds runs to a budget's folder and rebuilds its
table and figures; ``table`` rebuilds them from the finished runs alone.
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
    """Add ``e4`` and its sub-commands to the ``attentionrnn`` CLI."""
    from attentionrnn.experiments.e4.data import DATASETS
    from attentionrnn.experiments.e4.model import E4_MASKS
    from attentionrnn.experiments.e4.reproduce import BUDGETS
    from attentionrnn.experiments.e4.train import E4Config

    e4 = subparsers.add_parser(
        "e4",
        help="experiment E4: image editing (ModularGAN-style) with AttentionRNN masks",
        description="Experiment E4: a ModularGAN-style editor whose transformer modules blend "
        "their edit through a mask from a conv head, AttentionRNN or Block AttentionRNN; "
        "recolouring the queried digit of generated MREF / MDIST images (exact edits known), "
        "or CelebA from a folder.",
    )
    sub = e4.add_subparsers(dest="e4_command", metavar="COMMAND", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser(
        "train",
        help="train one mask head",
        description="Train the judge (an attribute classifier of real images), then the editor "
        "and discriminator (hinge loss, no gradient penalty); keep the best-validation weights, "
        "test them and write RUN_DIR/metrics.json (edit success, preservation L1, mask "
        "correctness, KID, learning curve) and RUN_DIR/samples.png. Rerunning the same command "
        "resumes an interrupted run.",
        formatter_class=fmt,
    )
    add_config_arguments(t, E4Config, {"out": {"required": True}})
    t.set_defaults(func=_train)

    r = add_reproduce_parser(sub, BUDGETS, "cpu", "results/e4-BUDGET", row="mask", figure="samples")
    r.add_argument("--datasets", nargs="+", choices=DATASETS, default=["mref"])
    r.add_argument("--masks", nargs="+", choices=E4_MASKS, default=list(E4_MASKS))
    r.add_argument("--seeds", nargs="+", type=seed_type, help="training seeds of every row "
                   "(default: the budget's)")  # fmt: skip
    r.add_argument("--mnist", metavar="DIR", help="MNIST folder")
    r.add_argument("--celeba-dir", metavar="DIR", help="CelebA folder "
                   "(default $ATTENTIONRNN_CELEBA_DIR)")  # fmt: skip
    r.add_argument("--data-dir", metavar="DIR", help="cache of generated data")
    add_run_options(r)
    r.set_defaults(func=_reproduce)

    add_table_parser(sub, _table)


def _train(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e4.train import E4Config, train

    config = config_from_args(E4Config, args)
    config.progress = config.progress and _tty()
    metrics = train(config)
    keys = ("test_edit_success", "test_preservation_l1", "test_truth_l1", "test_mask_correctness",
            "test_mask_correctness_box", "test_kid", "val_edit_success", "epochs", "best_epoch",
            "precision", "training_time_s")  # fmt: skip
    print(json.dumps({k: metrics.get(k) for k in keys}, indent=2))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e4.reproduce import reproduce, results_markdown

    summary = reproduce(
        args.out or f"results/e4-{args.budget}", budget=args.budget,
        datasets=tuple(args.datasets), masks=tuple(args.masks),
        seeds=tuple(args.seeds) if args.seeds else None, mnist=args.mnist,
        celeba_dir=args.celeba_dir, data_dir=args.data_dir, precision=args.precision,
        jobs=args.jobs, threads=args.threads, progress=not args.no_progress and _tty(),
        dry_run=args.dry_run,
        figure=not args.no_figures,
    )  # fmt: skip
    return print_reproduced(summary, results_markdown)


def _table(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e4.reproduce import assemble, results_markdown

    from attentionrnn.experiments.e4.train import E4Config

    return table(args, assemble, results_markdown, "e4-", config=E4Config)
