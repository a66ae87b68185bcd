"""The generated relational set, in the style of Sort-of-CLEVR (Santoro et al., 2017):
deterministic by seed; the boxes of the objects a question is about are kept."""

from __future__ import annotations

import numpy as np

from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e3.data.base import VQASet, VQASplit, answer_type

#: Object colours (RGB), one object of each colour per image at most.
CLEVR_COLOURS = {
    "red": (220, 30, 30), "green": (30, 180, 30), "blue": (40, 60, 230),
    "orange": (245, 140, 20), "gray": (128, 128, 128), "yellow": (235, 220, 30),
}  # fmt: skip
#: Question kinds: (template, relational).
CLEVR_KINDS = {
    "shape": ("what is the shape of the {c} object?", False),
    "horizontal": ("is the {c} object on the left or on the right?", False),
    "vertical": ("is the {c} object at the top or at the bottom?", False),
    "nearest": ("what is the shape of the object nearest to the {c} object?", True),
    "farthest": ("what is the shape of the object farthest from the {c} object?", True),
    "count": ("how many objects have the same shape as the {c} object?", True),
}


def _draw(canvas: np.ndarray, shape: str, x0: int, y0: int, size: int, rgb) -> None:
    if shape == "square":
        canvas[y0 : y0 + size, x0 : x0 + size] = rgb
        return
    yy, xx = np.mgrid[0:size, 0:size]
    r = (size - 1) / 2
    disc = (yy - r) ** 2 + (xx - r) ** 2 <= (r + 0.25) ** 2
    canvas[y0 : y0 + size, x0 : x0 + size][disc] = rgb


def generate_sort_of_clevr(
    train_images: int = 4000,
    test_images: int = 1000,
    *,
    seed: int = 0,
    image_size: int = 64,
    objects: int = 6,
    questions_per_image: int = 10,
) -> VQASet:
    """A Sort-of-CLEVR-style relational VQA set, the same for the same arguments.

    Each image holds ``objects`` non-overlapping squares / circles of distinct colours (side
    ``image_size // 8``) on a black canvas. Each image gets ``questions_per_image`` questions
    about an object named by its colour, half non-relational (its shape; left or right; top or
    bottom half) and half relational (the shape of the object nearest to it / farthest from it;
    how many objects share its shape — a ``number`` question). ``boxes`` holds the named
    object's box and, for nearest / farthest, the other object's.

    Raises:
        UserError: more objects than colours, or the objects do not fit the canvas.
    """
    colours = list(CLEVR_COLOURS)
    if not 2 <= objects <= len(colours):
        raise UserError(f"objects must be between 2 and {len(colours)}, got {objects}")
    size = max(2, image_size // 8)
    if (image_size // size) ** 2 < 2 * objects:
        raise UserError(f"{objects} objects of side {size} do not fit a {image_size}px image")
    rng = np.random.default_rng([seed, image_size, objects])
    kinds = list(CLEVR_KINDS)
    non_rel = [k for k in kinds if not CLEVR_KINDS[k][1]]
    rel = [k for k in kinds if CLEVR_KINDS[k][1]]

    def split(n_images: int) -> VQASplit:
        images = np.zeros((n_images, image_size, image_size, 3), dtype=np.uint8)
        index, questions, answers, qtypes, relational, boxes = [], [], [], [], [], []
        for n in range(n_images):
            placed: list[tuple[int, int]] = []
            while len(placed) < objects:  # rejection sampling on a grid-free canvas
                x0, y0 = (int(v) for v in rng.integers(0, image_size - size + 1, 2))
                if all(abs(x0 - a) > size or abs(y0 - b) > size for a, b in placed):
                    placed.append((x0, y0))
            names = [colours[int(i)] for i in rng.permutation(len(colours))[:objects]]
            shapes = [("square", "circle")[int(s)] for s in rng.integers(0, 2, objects)]
            for (x0, y0), c, s in zip(placed, names, shapes, strict=True):
                _draw(images[n], s, x0, y0, size, CLEVR_COLOURS[c])
            centres = np.array([(x0 + size / 2, y0 + size / 2) for x0, y0 in placed])
            box = [(x0, y0, x0 + size, y0 + size) for x0, y0 in placed]
            for q in range(questions_per_image):
                o = int(rng.integers(objects))
                kind = (non_rel if q % 2 == 0 else rel)[int(rng.integers(3))]
                dist = np.hypot(*(centres - centres[o]).T)
                other = -1
                if kind == "shape":
                    answer = shapes[o]
                elif kind == "horizontal":
                    answer = "left" if centres[o, 0] < image_size / 2 else "right"
                elif kind == "vertical":
                    answer = "top" if centres[o, 1] < image_size / 2 else "bottom"
                elif kind in ("nearest", "farthest"):
                    dist[o] = np.inf if kind == "nearest" else -np.inf
                    other = int(dist.argmin() if kind == "nearest" else dist.argmax())
                    answer = shapes[other]
                else:
                    answer = str(sum(s == shapes[o] for s in shapes))
                index.append(n)
                questions.append(CLEVR_KINDS[kind][0].format(c=names[o]))
                answers.append(answer)
                qtypes.append(answer_type(answer))
                relational.append(CLEVR_KINDS[kind][1])
                boxes.append([box[o], box[other] if other >= 0 else (-1, -1, -1, -1)])
        return VQASplit(
            images, np.array(index, dtype=np.int64), questions, answers, np.array(qtypes),
            relational=np.array(relational, dtype=bool),
            boxes=np.array(boxes, dtype=np.int64).reshape(-1, 2, 4),
        )  # fmt: skip

    settings = (
        f"seed={seed},train={train_images},test={test_images},size={image_size},"
        f"objects={objects},questions={questions_per_image}"
    )
    train = split(train_images)
    test = split(test_images)
    return VQASet("sort_of_clevr", train, test, "generated", settings, f"generated:{settings}")
