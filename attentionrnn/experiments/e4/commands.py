"""``attentionrnn e4 ...``: the commands of experiment E4 beyond ``train``, ``reproduce`` and
``table`` (built by the engine from E4's declaration, ``experiment.py``): ``screen`` decides the
screening of issue 34 from the validation split (:mod:`attentionrnn.experiments.e4.screen`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add E4's own sub-commands (``screen``) to ``attentionrnn e4``."""
    from attentionrnn.experiments.e4.model import E4_ROWS

    s = sub.add_parser(
        "screen",
        help="decide the screening on the validation split: one results folder per candidate, "
        "each against --reference",
        description="Read the finished runs of each results folder (one candidate budget per "
        "folder, named by the folder less 'e4-': results/e4-screen-mul is screen-mul) from their "
        "validation history only, never a test number: per candidate and mask head, the last "
        "epoch's validation edit success, mask shares, query ratio, leak and L1 to the exact "
        "edit (mean ± std over seeds), the final slope of edit success and query ratio, and the "
        "difference to the reference candidate with Welch's p. Writes screening.{md,json} and "
        "the validation curves.",
    )
    s.add_argument("folders", nargs="+", type=Path, metavar="OUT_DIR",
                   help="results folders of 'e4 reproduce', one per candidate")  # fmt: skip
    s.add_argument(
        "--reference", metavar="CANDIDATE",
        help="the candidate every other is tested against (default: the first folder's)",
    )  # fmt: skip
    s.add_argument(
        "--out", type=Path, metavar="DIR",
        help="folder for screening.{md,json} and screening_curves_DATASET.png (default: the "
        "first OUT_DIR)",
    )  # fmt: skip
    s.add_argument("--methods", nargs="+", choices=E4_ROWS, metavar="METHOD",
                   help=f"mask heads, of {', '.join(E4_ROWS)} (default: all found)")  # fmt: skip
    s.add_argument("--masks", nargs="+", choices=E4_ROWS, dest="methods",
                   help=argparse.SUPPRESS)  # the older name, as reproduce keeps it  # fmt: skip
    s.add_argument("--no-figures", action="store_true", help="only the tables")
    s.set_defaults(func=_screen)


def _screen(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e4.screen import screen, screening_markdown

    summary = screen(
        args.folders, reference=args.reference, out=args.out,
        masks=tuple(args.methods) if args.methods else None, figure=not args.no_figures,
    )  # fmt: skip
    print(screening_markdown(summary))
    return 0
