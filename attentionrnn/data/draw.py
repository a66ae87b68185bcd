"""Drawing one image of the MREF / MDIST / MBG attribute datasets (recipe of the PAN code).

A 100×100 RGB canvas (PAN's size; ``canvas`` scales every length alike) with 5–9 coloured MNIST
digits of distinct classes, placed without overlapping strokes; MDIST adds coloured distractor
fragments under the digits, MBG puts the digits over crops of natural images / textures
(:func:`load_backgrounds`). :mod:`attentionrnn.data.generate` makes the dataset file of them.
"""

from __future__ import annotations

import logging
from functools import cache

import numpy as np

from attentionrnn.data.mnist import MnistDigits

logger = logging.getLogger("attentionrnn.data")

COLOR_NAMES = ("red", "green", "blue", "yellow", "white")
#: The five colours, in the fixed order red, green, blue, yellow, white.
PALETTE = np.array(
    [
        [0x92, 0x10, 0x10],
        [0x10, 0xA6, 0x51],
        [0x10, 0x62, 0xC0],
        [0xFF, 0xF1, 0x4E],
        [0xE0, 0xE0, 0xE0],
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

#: PAN's canvas side; the scale range below is relative to it.
CANVAS = 100
DIGIT_SIZE = 28
MIN_DIGITS, MAX_DIGITS = 5, 9
SCALE_RANGE = (0.5, 3.0)
COLOR_NOISE_STD = 10.0
NUM_DISTRACTORS = 17
DISTRACTOR_CROP = 5
MAX_IMAGE_ATTEMPTS = 1000
#: scikit-image images used for MBG backgrounds (all bundled in the wheel: no download).
BACKGROUND_IMAGES = (
    "brick",
    "grass",
    "gravel",
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "moon",
)


# --------------------------------------------------------------------------------------------
# helpers


@cache
def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bilinear interpolation, pixel-centre aligned, edge clamped.

    ``M @ img @ M.T`` equals ``skimage.transform.resize(img, ..., order=1, mode="edge",
    anti_aliasing=False)``, computed as two small matrix products (much faster per digit).
    """
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0.0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = x - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w)
    np.add.at(m, (rows, i1), w)
    m.setflags(write=False)
    return m


def resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square 2-D array to (size, size), float64 in the input's range."""
    m = _bilinear_matrix(size, img.shape[0])
    mx = m if img.shape[1] == img.shape[0] else _bilinear_matrix(size, img.shape[1])
    return m @ img.astype(np.float64) @ mx.T


def scaled_alpha(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 digit to (size, size), round to uint8 levels, return alpha in [0, 1]."""
    # bilinear weights are non-negative and sum to 1: the result stays within [0, 255]
    return np.rint(resize_bilinear(img, size)) * (1.0 / 255.0)


def _side(scale: float, base: int) -> int:
    return max(1, int(np.floor(base * scale + 0.5)))


def load_backgrounds(
    names: tuple[str, ...] = BACKGROUND_IMAGES, min_side: int = CANVAS
) -> list[tuple[str, np.ndarray]]:
    """The bundled scikit-image pictures as uint8 (H, W, 3) arrays (grey ones replicated)."""
    import skimage.data

    out = []
    for name in names:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception as exc:  # noqa: BLE001 - e.g. an image that would need a download
            logger.warning("MBG background %r unavailable (%s); skipping it", name, exc)
            continue
        if img.dtype != np.uint8:
            img = (img.astype(np.float64) * (255.0 / max(float(img.max()), 1.0))).astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3]
        if min(img.shape[:2]) < min_side:
            continue
        out.append((name, np.ascontiguousarray(img)))
    if not out:
        raise RuntimeError("no MBG background image available from skimage.data")
    return out


# --------------------------------------------------------------------------------------------
# generation


class _Generator:
    def __init__(
        self,
        dataset: str,
        digits: MnistDigits,
        rng: np.random.Generator,
        backgrounds: list[tuple[str, np.ndarray]] | None = None,
        canvas: int = CANVAS,
    ):
        self.dataset = dataset
        self.canvas = canvas
        # lengths scale with the canvas, so a smaller image keeps PAN's geometry
        self.zoom = canvas / CANVAS
        self.images = digits.images
        self.rng = rng
        self.pools = [np.flatnonzero(digits.labels == c) for c in range(10)]
        empty = [c for c, p in enumerate(self.pools) if len(p) == 0]
        if empty:
            raise ValueError(f"the digit pool has no digit of class(es) {empty}")
        self.palette = PALETTE.astype(np.float64)
        self.backgrounds = backgrounds
        self.resampled = 0

    def _background(self) -> np.ndarray:
        rng = self.rng
        if self.dataset == "mbg":
            _, img = self.backgrounds[rng.integers(len(self.backgrounds))]
            size = self.canvas
            y = rng.integers(img.shape[0] - size + 1)
            x = rng.integers(img.shape[1] - size + 1)
            return img[y : y + size, x : x + size].astype(np.float64)
        canvas = np.zeros((self.canvas, self.canvas, 3), dtype=np.float64)
        if self.dataset == "mdist":
            n = len(self.images)
            lim = DIGIT_SIZE - DISTRACTOR_CROP + 1
            src = rng.integers(n, size=NUM_DISTRACTORS)
            cy = rng.integers(lim, size=NUM_DISTRACTORS)
            cx = rng.integers(lim, size=NUM_DISTRACTORS)
            scales = rng.uniform(*SCALE_RANGE, size=NUM_DISTRACTORS)
            colors = rng.integers(len(PALETTE), size=NUM_DISTRACTORS)
            for j in range(NUM_DISTRACTORS):
                crop = self.images[
                    src[j], cy[j] : cy[j] + DISTRACTOR_CROP, cx[j] : cx[j] + DISTRACTOR_CROP
                ]
                side = _side(scales[j] * self.zoom, DISTRACTOR_CROP)
                alpha = scaled_alpha(crop, side)
                y = rng.integers(self.canvas - side + 1)
                x = rng.integers(self.canvas - side + 1)
                canvas[y : y + side, x : x + side] += alpha[:, :, None] * self.palette[colors[j]]
            np.minimum(canvas, 255.0, out=canvas)  # saturate: never wrap around uint8
        return canvas

    def _try_layout(self):
        """One attempt at placing the digits of an image; None when one found no free position.

        Digits are placed largest first (their classes, colours and scales are drawn
        independently, so the order only changes which layouts fit: far fewer are rejected).
        """
        rng = self.rng
        k = int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
        classes = rng.choice(10, size=k, replace=False)
        colors = rng.integers(len(PALETTE), size=k)
        noise = rng.normal(0.0, COLOR_NOISE_STD, size=k)
        scales = np.sort(rng.uniform(*SCALE_RANGE, size=k))[::-1]
        size = self.canvas
        occupied = np.zeros((size, size), dtype=bool)
        integral = np.zeros((size + 1, size + 1), dtype=np.int32)
        layout = []
        for j in range(k):
            side = _side(scales[j] * self.zoom, DIGIT_SIZE)
            # Placement: uniform over the top-left corners whose box holds no stroke pixel of an
            # earlier digit: the distribution of unlimited rejection sampling, without the loop.
            n = size - side + 1
            s = integral
            box_sums = s[side:, side:] - s[:n, side:] - s[side:, :n] + s[:n, :n]
            free = np.flatnonzero(box_sums.ravel() == 0)
            if free.size == 0:
                return None
            pool = self.pools[classes[j]]
            src = int(pool[rng.integers(len(pool))])
            alpha = scaled_alpha(self.images[src], side)
            y, x = divmod(int(free[rng.integers(free.size)]), n)
            occupied[y : y + side, x : x + side] |= alpha > 0
            if j + 1 < k:
                np.cumsum(np.cumsum(occupied, axis=0, dtype=np.int32), axis=1, out=integral[1:, 1:])
            color = np.clip(self.palette[colors[j]] + noise[j], 0.0, 255.0)
            layout.append(
                (int(classes[j]), int(colors[j]), float(scales[j]), x, y, side, alpha, color, src)
            )
        return layout

    def _render(self, layout):
        canvas = self._background()
        instances = np.zeros((self.canvas, self.canvas), dtype=np.uint8)
        records = []
        for j, (cls, col, scale, x, y, side, alpha, color, src) in enumerate(layout):
            a = alpha[:, :, None]
            region = canvas[y : y + side, x : x + side]
            region *= 1.0 - a
            region += a * color
            instances[y : y + side, x : x + side][alpha > 0] = j + 1
            records.append((cls, col, scale, (x, y, x + side, y + side), j + 1, src))
        image = np.rint(np.clip(canvas, 0.0, 255.0)).astype(np.uint8)
        return image, instances, records

    def image(self):
        for _ in range(MAX_IMAGE_ATTEMPTS):
            layout = self._try_layout()
            if layout is not None:
                return self._render(layout)
            self.resampled += 1
        raise RuntimeError(f"no valid digit layout found in {MAX_IMAGE_ATTEMPTS} attempts")
