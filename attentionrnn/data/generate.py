"""Generators of the MREF / MDIST / MBG attribute datasets (recipe of the PAN code).

Each image is a 100×100 RGB canvas with 5–9 coloured MNIST digits of distinct classes (PAN's
size; ``canvas`` makes a smaller or larger image with every length scaled alike, e.g. for a quick
demo). Every digit is one sample: (image, query = its class) → its colour. MDIST adds 17 coloured
distractor fragments under the digits; MBG puts the digits over crops of natural images /
textures.

The file written is a plain ``.npz`` (see ``docs/data.md`` for the schema), written
deterministically: the same arguments give a byte-identical file.

One image is drawn by :mod:`attentionrnn.data.draw`; this module makes the dataset of them: the
split, the seeded chunks and their worker processes, the file.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from attentionrnn.data.draw import (
    CANVAS,
    COLOR_NAMES,
    NUM_DISTRACTORS,
    PALETTE,
    _Generator,
    load_backgrounds,
)
from attentionrnn.data.mnist import MnistDigits, load_mnist

logger = logging.getLogger("attentionrnn.data")

GENERATOR_VERSION = "1"
DATASETS = ("mref", "mdist", "mbg")
#: PAN's split of (image, query) samples; smaller or larger sets use the same proportions.
SPLIT_SIZES = (30000, 10000, 10000)
SPLIT_NAMES = ("train", "val", "test")

#: The smallest canvas on which every digit scale still gives a digit of at least one pixel and
#: PAN's four valid-conv / pool blocks still leave a map (see attentionrnn.experiments.e1.model).
MIN_CANVAS = 46
#: The largest canvas and number of images asked for in one file: far beyond any experiment's
#: (PAN: 100 pixels, 15,000 images), small enough to be refused before anything is allocated.
MAX_CANVAS = 1024
MAX_IMAGES = 1_000_000


def check_canvas(canvas: int) -> None:
    if isinstance(canvas, bool) or not isinstance(canvas, (int, np.integer)):
        raise TypeError(f"canvas must be an int, got {type(canvas).__name__}")
    if canvas < MIN_CANVAS:
        raise ValueError(f"canvas must be >= {MIN_CANVAS} pixels, got {canvas}")
    if canvas > MAX_CANVAS:
        raise ValueError(f"canvas must be <= {MAX_CANVAS} pixels, got {canvas}")


def _available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (``None`` where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_size(images: int, canvas: int) -> None:
    """Refuse a dataset that cannot be held in memory, before any of it is made: the images and
    instance maps (4 bytes a pixel) and the copy :func:`write_npz` makes of each array."""
    if images < 1 or images > MAX_IMAGES:
        raise ValueError(f"images must be between 1 and {MAX_IMAGES:,}, got {images}")
    check_canvas(canvas)
    needed = images * canvas * canvas * 4 * 2
    available = _available_bytes()
    if available is not None and needed > available:
        from attentionrnn.engine.errors import UserError

        raise UserError(
            f"{images:,} images of {canvas}x{canvas} pixels need about {needed / 2**30:.1f} GiB "
            f"of memory, {available / 2**30:.1f} GiB available; ask for fewer images or samples"
        )


def split_images(samples_per_image: np.ndarray, seed: int) -> np.ndarray:
    """Assign each image to train / val / test (0 / 1 / 2) so samples split 60 / 20 / 20.

    Images are shuffled with their own generator (independent of the drawing stream) and filled
    greedily into the splits in order until each split's share of the samples is reached, so no
    image is ever in two splits and each share is off by less than one image's samples.
    """
    n_img = len(samples_per_image)
    order = np.random.default_rng([seed, 0x5B17]).permutation(n_img)
    total = int(samples_per_image.sum())
    fractions = np.cumsum(SPLIT_SIZES) / sum(SPLIT_SIZES)
    cum = np.cumsum(samples_per_image[order])
    # the image whose samples straddle a boundary goes where the midpoint of its samples lies
    mid = cum - samples_per_image[order] / 2.0
    assignment = np.searchsorted(fractions * total, mid, side="right").astype(np.int8)
    assignment = np.minimum(assignment, len(SPLIT_SIZES) - 1)
    split = np.empty(n_img, dtype=np.int8)
    split[order] = assignment
    return split


#: Images per independently seeded chunk: the output does not depend on the number of workers.
CHUNK_IMAGES = 250

_WORKER_STATE: dict = {}


def _init_worker(dataset, images, labels, source, backgrounds, canvas):
    _WORKER_STATE["args"] = (dataset, MnistDigits(images, labels, source), backgrounds, canvas)


def _chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(chunk,)))


def _generate_chunk(seed: int, chunk: int, count: int, args=None):
    dataset, digits, backgrounds, canvas = args if args is not None else _WORKER_STATE["args"]
    gen = _Generator(dataset, digits, _chunk_rng(seed, chunk), backgrounds, canvas)
    imgs = np.empty((count, canvas, canvas, 3), dtype=np.uint8)
    insts = np.empty((count, canvas, canvas), dtype=np.uint8)
    records = []
    for i in range(count):
        imgs[i], insts[i], recs = gen.image()
        records.append(recs)
    return imgs, insts, records, gen.resampled


def _default_workers() -> int:
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except AttributeError:  # not on Linux
        return max(1, min(os.cpu_count() or 1, 8))


def generate_arrays(
    dataset: str,
    images: int,
    seed: int,
    digits: MnistDigits,
    progress: bool = False,
    workers: int | None = None,
    canvas: int = CANVAS,
) -> dict[str, np.ndarray]:
    """Generate a dataset in memory: the dict of arrays that :func:`generate_dataset` writes.

    Images are made in chunks of ``CHUNK_IMAGES``, each with its own generator spawned from
    ``seed``, so the result is the same for any number of ``workers`` (processes).
    """
    dataset = dataset.lower()
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    check_size(images, canvas)
    backgrounds = load_backgrounds(min_side=canvas) if dataset == "mbg" else None
    chunks = [
        (c, min(CHUNK_IMAGES, images - c * CHUNK_IMAGES)) for c in range(-(-images // CHUNK_IMAGES))
    ]
    workers = _default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, len(chunks))

    out_images = np.empty((images, canvas, canvas, 3), dtype=np.uint8)
    out_instances = np.empty((images, canvas, canvas), dtype=np.uint8)
    per_image: list = [None] * images
    resampled = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=images, desc=f"generate {dataset}", unit="img", mininterval=1.0)

    def store(chunk: int, result) -> None:
        nonlocal resampled
        imgs, insts, recs, res = result
        lo = chunk * CHUNK_IMAGES
        out_images[lo : lo + len(imgs)] = imgs
        out_instances[lo : lo + len(imgs)] = insts
        per_image[lo : lo + len(imgs)] = recs
        resampled += res
        if bar is not None:
            bar.update(len(imgs))

    try:
        if workers == 1:
            args = (dataset, digits, backgrounds, canvas)
            for c, count in chunks:
                store(c, _generate_chunk(seed, c, count, args))
        else:
            from concurrent.futures import ProcessPoolExecutor

            init = (dataset, digits.images, digits.labels, digits.source, backgrounds, canvas)
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init) as pool:
                futures = {pool.submit(_generate_chunk, seed, c, count): c for c, count in chunks}
                for future, c in futures.items():
                    store(c, future.result())
    finally:
        if bar is not None:
            bar.close()

    records = [(i, *r) for i, recs in enumerate(per_image) for r in recs]
    n = len(records)
    image_index = np.fromiter((r[0] for r in records), dtype=np.int64, count=n)
    samples_per_image = np.bincount(image_index, minlength=images)
    split_per_image = split_images(samples_per_image, seed)
    arrays = {
        "images": out_images,
        "instances": out_instances,
        "image_index": image_index,
        "query": np.fromiter((r[1] for r in records), dtype=np.int64, count=n),
        "color": np.fromiter((r[2] for r in records), dtype=np.int64, count=n),
        "scale": np.fromiter((r[3] for r in records), dtype=np.float32, count=n),
        "box": np.array([r[4] for r in records], dtype=np.int64).reshape(n, 4),
        "instance": np.fromiter((r[5] for r in records), dtype=np.int64, count=n),
        "mnist_index": np.fromiter((r[6] for r in records), dtype=np.int64, count=n),
        "split": split_per_image[image_index],
        # metadata
        "dataset": np.array(dataset),
        "seed": np.array(seed, dtype=np.int64),
        "digit_source": np.array(digits.source),
        "digit_pool_size": np.array(len(digits), dtype=np.int64),
        "generator_version": np.array(GENERATOR_VERSION),
        "palette": PALETTE.copy(),
        "color_names": np.array(COLOR_NAMES),
        "split_names": np.array(SPLIT_NAMES),
        "num_distractors": np.array(NUM_DISTRACTORS if dataset == "mdist" else 0, dtype=np.int64),
        "backgrounds": np.array(
            [name for name, _ in backgrounds] if backgrounds else [], dtype=str
        ),
        "resampled_images": np.array(resampled, dtype=np.int64),
    }
    return arrays


def write_npz(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], compresslevel: int = 1
) -> Path:
    """Write ``arrays`` as a deflated ``.npz`` with fixed zip timestamps (byte-reproducible).

    The file is written to a temporary name beside ``path`` and renamed, so a reader never sees
    a half-written file; the temporaries that killed writers left beside it are removed first.
    """
    from attentionrnn.engine.state import clean_stale_temporaries

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                try:
                    info.compress_level = compresslevel  # Python >= 3.13
                except AttributeError:
                    info._compresslevel = compresslevel
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asarray(value), allow_pickle=False)
                with zf.open(info, "w", force_zip64=True) as handle:
                    handle.write(buffer.getbuffer())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def generate_dataset(
    dataset: str,
    images: int,
    seed: int,
    out: str | os.PathLike | None = None,
    mnist: str | None = None,
    progress: bool = True,
    workers: int | None = None,
    canvas: int = CANVAS,
) -> Path:
    """Generate ``images`` images of MREF / MDIST / MBG and write them to ``out`` (.npz).

    Args:
        dataset: ``"mref"``, ``"mdist"`` or ``"mbg"``.
        images: number of images (PAN: 15,000); every digit of an image is one sample.
        seed: seed of the generator; the same arguments give a byte-identical file.
        out: output path; default ``{dataset}_{images}_seed{seed}.npz`` in the working folder.
        mnist: folder of the MNIST IDX files (see :func:`load_mnist` for the fallbacks).
        progress: show a tqdm progress bar.
        workers: processes to use (default: the available cores, at most 8); the output does
            not depend on it.
        canvas: side of the square image in pixels (PAN: 100). Digit and distractor sizes
            scale with it (a digit of scale ``s`` is ``28 * s * canvas / 100`` pixels); the
            recorded ``scale`` stays PAN's ``s``, so accuracy by scale compares across canvases.

    Returns:
        The path written.
    """
    dataset = dataset.lower()
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    out = Path(out) if out is not None else Path(f"{dataset}_{images}_seed{seed}.npz")
    check_size(images, canvas)
    digits = load_mnist(mnist)
    arrays = generate_arrays(
        dataset, images, seed, digits, progress=progress, workers=workers, canvas=canvas
    )
    path = write_npz(out, arrays)
    counts = np.bincount(arrays["split"], minlength=3)
    logger.info(
        "wrote %s: %d images, %d samples (train %d / val %d / test %d), digits from %s",
        path,
        images,
        len(arrays["query"]),
        *counts,
        digits.source,
    )
    return path
