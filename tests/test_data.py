"""Tests of the MREF / MDIST / MBG generators and the dataset reader (the MNIST sources:
test_mnist.py).

Unit tests use small synthetic digit pools; only the integration test touches full MNIST, and
only when ``ATTENTIONRNN_MNIST`` points at it. The network is never used (downloads are mocked).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from attentionrnn.data.attribute import AttributeDataset
from attentionrnn.data.draw import PALETTE, resize_bilinear, scaled_alpha
from attentionrnn.data.generate import DATASETS, generate_arrays, split_images, write_npz
from attentionrnn.data.mnist import load_mnist

N_IMAGES = 30


@pytest.fixture(scope="module")
def generated(digits) -> dict:
    return {ds: generate_arrays(ds, N_IMAGES, seed=7, digits=digits, workers=1) for ds in DATASETS}


# ------------------------------------------------------------------------------------------
# generator: schema and recipe


def test_schema_and_dtypes(generated):
    for ds, a in generated.items():
        n_img = N_IMAGES
        assert a["images"].shape == (n_img, 100, 100, 3) and a["images"].dtype == np.uint8
        assert a["instances"].shape == (n_img, 100, 100) and a["instances"].dtype == np.uint8
        n = len(a["query"])
        for key in ("image_index", "query", "color", "instance"):
            assert a[key].shape == (n,) and a[key].dtype == np.int64, key
        assert a["scale"].shape == (n,) and a["scale"].dtype == np.float32
        assert a["box"].shape == (n, 4) and a["box"].dtype == np.int64
        assert a["split"].shape == (n,) and a["split"].dtype == np.int8
        assert str(a["dataset"]) == ds and str(a["digit_source"]) == "synthetic"
        assert int(a["seed"]) == 7 and str(a["generator_version"])
        assert a["query"].min() >= 0 and a["query"].max() <= 9
        assert a["color"].min() >= 0 and a["color"].max() <= 4
        assert (a["scale"] >= 0.5).all() and (a["scale"] <= 3.0).all()
        side = a["box"][:, 2] - a["box"][:, 0]
        assert (side == a["box"][:, 3] - a["box"][:, 1]).all()
        assert (side == np.floor(28 * a["scale"].astype(np.float64) + 0.5)).all()
        assert (a["box"][:, :2] >= 0).all() and (a["box"][:, 2:] <= 100).all()
        assert (np.asarray(a["palette"]) == PALETTE).all()


def test_digits_per_image_distinct_classes(generated):
    for a in generated.values():
        counts = np.bincount(a["image_index"], minlength=N_IMAGES)
        assert counts.min() >= 5 and counts.max() <= 9
        for i in range(N_IMAGES):
            rows = a["image_index"] == i
            q = a["query"][rows]
            assert len(set(q.tolist())) == len(q)
            k = len(q)
            assert sorted(a["instance"][rows].tolist()) == list(range(1, k + 1))
            assert set(np.unique(a["instances"][i]).tolist()) == set(range(k + 1))


def test_strokes_nonempty_inside_box_and_exact(generated, digits):
    """Each digit's stroke pixels are non-empty, inside its box, and exactly its alpha > 0."""
    for a in generated.values():
        for s in range(len(a["query"])):
            x0, y0, x1, y1 = a["box"][s]
            mask = a["instances"][a["image_index"][s]] == a["instance"][s]
            assert mask.any()
            inside = np.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            assert not (mask & ~inside).any()
            # the stored stroke pixels are exactly the resized digit's alpha > 0: no later digit
            # overwrote any of them (no overlaps)
            src = digits.images[a["mnist_index"][s]]
            assert digits.labels[a["mnist_index"][s]] == a["query"][s]
            expected = scaled_alpha(src, x1 - x0) > 0
            assert (mask[y0:y1, x0:x1] == expected).all()


def test_no_overlap_box_rule(generated):
    """The box of every digit holds no stroke pixel of a digit placed before it."""
    for a in generated.values():
        for s in range(len(a["query"])):
            x0, y0, x1, y1 = a["box"][s]
            inst = a["instances"][a["image_index"][s]][y0:y1, x0:x1]
            assert not ((inst > 0) & (inst < a["instance"][s])).any()


def _opaque_colours(a, digits):
    """Per sample: the colours of its opaque pixels (alpha = 1; the synthetic digits have a
    255 core), which show the digit's noisy colour whatever lies below."""
    out = []
    for s in range(len(a["query"])):
        x0, y0, x1, y1 = a["box"][s]
        alpha = scaled_alpha(digits.images[a["mnist_index"][s]], x1 - x0)
        region = a["images"][a["image_index"][s]][y0:y1, x0:x1].astype(np.int64)
        out.append(region[alpha == 1.0])
    return out


def test_colours_from_palette_with_noise(generated, digits):
    palette = PALETTE.astype(np.int64)
    for ds, a in generated.items():
        for s, pixels in enumerate(_opaque_colours(a, digits)):
            assert len(pixels) > 0
            assert (pixels == pixels[0]).all()  # one colour per digit
            top = pixels[0]
            nearest = int(np.argmin(((palette - top) ** 2).sum(axis=1)))
            assert nearest == a["color"][s], (ds, s, top)
            diff = top - palette[a["color"][s]]
            unclipped = (top > 0) & (top < 255)
            if unclipped.sum() >= 2:  # one scalar noise on all three channels
                d = diff[unclipped]
                assert d.max() - d.min() <= 1, (ds, s, top)
            assert np.abs(diff).max() <= 60  # 6 sigma of N(0, 10)


def test_colour_noise_statistics(generated, digits):
    """The noise is one N(0, 10) scalar per digit: its spread over digits is about 10."""
    a = generated["mref"]
    noises = []
    for s, pixels in enumerate(_opaque_colours(a, digits)):
        top = pixels[0]
        ok = (top > 0) & (top < 255)
        if ok.any():
            noises.append((top - PALETTE[a["color"][s]].astype(np.int64))[ok].mean())
    assert len(noises) > 50 and 5.0 < np.std(noises) < 15.0


def test_distractors_only_in_mdist(generated):
    mref, mdist, mbg = generated["mref"], generated["mdist"], generated["mbg"]
    outside = mref["instances"] == 0
    assert (mref["images"][outside] == 0).all()  # MREF: black background, nothing else
    outside = mdist["instances"] == 0
    lit = (mdist["images"][outside] > 0).any(axis=-1)
    assert lit.mean() > 0.01  # distractors outside the digits
    assert int(mdist["num_distractors"]) == 17 and int(mref["num_distractors"]) == 0
    # MBG: textured background everywhere, no distractors recorded
    assert int(mbg["num_distractors"]) == 0 and len(mbg["backgrounds"]) >= 1
    bg = mbg["images"][mbg["instances"] == 0]
    assert (bg.sum(axis=-1) > 0).mean() > 0.9


def test_mdist_distractors_saturate_not_wrap(digits, monkeypatch):
    """Distractors add up and saturate at 255 (no uint8 wrap-around)."""
    import attentionrnn.data.draw as draw_mod

    monkeypatch.setattr(draw_mod, "NUM_DISTRACTORS", 400)
    a = generate_arrays("mdist", 3, seed=3, digits=digits, workers=1)
    bg = a["images"][a["instances"] == 0].astype(np.int64)
    # with 400 overlapping fragments plenty of channels saturate; wrapping would leave dark
    # pixels inside bright areas, saturation leaves exact 255s
    assert (bg == 255).any()


def test_resize_matches_skimage():
    from skimage.transform import resize

    img = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)
    for side in (14, 17, 28, 45, 84):
        ours = resize_bilinear(img, side)
        ref = resize(
            img, (side, side), order=1, mode="edge", anti_aliasing=False, preserve_range=True
        )
        np.testing.assert_allclose(ours, ref, atol=1e-9)


# ------------------------------------------------------------------------------------------
# determinism and splits


def test_same_seed_byte_identical_file(tmp_path, digits):
    paths = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        arrays = generate_arrays("mdist", 12, seed=seed, digits=digits, workers=1)
        paths.append(write_npz(tmp_path / f"{name}.npz", arrays))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with np.load(paths[0]) as za, np.load(paths[2]) as zc:
        assert not np.array_equal(za["images"], zc["images"])


def test_workers_do_not_change_output(digits, monkeypatch):
    import attentionrnn.data.generate as gen_mod

    monkeypatch.setattr(gen_mod, "CHUNK_IMAGES", 4)
    one = generate_arrays("mref", 10, seed=2, digits=digits, workers=1)
    two = generate_arrays("mref", 10, seed=2, digits=digits, workers=2)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)


def test_split_by_image_and_proportions(generated):
    for a in generated.values():
        per_image = {}
        for i, s in np.stack([a["image_index"], a["split"]], axis=1).tolist():
            assert per_image.setdefault(i, s) == s  # an image never spans two splits
    rng = np.random.default_rng(0)
    for n_img in (10, 57, 3000):
        counts = rng.integers(5, 10, size=n_img)
        split = split_images(counts, seed=1)
        samples = np.bincount(np.repeat(split, counts), minlength=3)
        total = counts.sum()
        target = np.array([0.6, 0.2, 0.2]) * total
        assert (np.abs(samples - target) <= 9).all(), (samples, target)
        assert set(np.unique(split).tolist()) <= {0, 1, 2}
    assert not np.array_equal(split_images(counts, 1), split_images(counts, 2))


# ------------------------------------------------------------------------------------------
# dataset reader and CLI


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory, generated):
    return write_npz(tmp_path_factory.mktemp("ds") / "mdist.npz", generated["mdist"])


def test_attribute_dataset(npz_file, generated):
    a = generated["mdist"]
    sizes = 0
    for split in ("train", "val", "test"):
        ds = AttributeDataset(npz_file, split=split)
        sizes += len(ds)
        image, query, target, s = ds[0]
        assert image.dtype == torch.float32 and image.shape == (3, 100, 100)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert query == a["query"][s] and target == a["color"][s]
        assert ds.num_queries == 10 and ds.num_classes == 5
        np.testing.assert_array_equal(
            (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
            a["images"][a["image_index"][s]],
        )
        assert ds.box(s) == tuple(int(v) for v in a["box"][s])
        mask = ds.stroke_mask(s)
        assert mask.dtype == bool and mask.shape == (100, 100) and mask.any()
        assert ds.scale(s) == pytest.approx(float(a["scale"][s]))
        assert (a["split"][ds.indices] == {"train": 0, "val": 1, "test": 2}[split]).all()
    assert sizes == len(a["query"])
    assert ds.metadata["dataset"] == "mdist" and ds.metadata["digit_source"] == "synthetic"

    inv = AttributeDataset(npz_file, split="all", task="digit")
    assert inv.num_queries == 5 and inv.num_classes == 10
    _, query, target, s = inv[3]
    assert query == a["color"][s] and target == a["query"][s]
    # ambiguous samples (colour shared in the image) are dropped for the inverse task
    for s in inv.indices:
        same = (a["image_index"] == a["image_index"][s]) & (a["color"] == a["color"][s])
        assert same.sum() == 1
    loader = torch.utils.data.DataLoader(AttributeDataset(npz_file), batch_size=8)
    images, queries, targets, idx = next(iter(loader))
    assert images.shape == (8, 3, 100, 100) and queries.dtype == torch.int64
    with pytest.raises(ValueError, match="split"):
        AttributeDataset(npz_file, split="bogus")


def test_cli_generate_and_show(idx_folder, tmp_path, monkeypatch):
    from attentionrnn.cli import main

    out = tmp_path / "m.npz"
    rc = main(
        ["e1", "generate", "mref", "--images", "6", "--seed", "3", "--out", str(out), "--mnist",
         str(idx_folder), "--no-progress", "--workers", "1"]
    )  # fmt: skip
    assert rc == 0
    with np.load(out) as z:
        assert z["images"].shape == (6, 100, 100, 3) and str(z["digit_source"]) == "mnist-full"
    png = tmp_path / "grid.png"
    assert main(["e1", "show", str(out), "--out", str(png), "--n", "4", "--split", "all"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------
# full MNIST (only when the environment points at it)


@pytest.mark.integration
@pytest.mark.skipif(not os.environ.get("ATTENTIONRNN_MNIST"), reason="ATTENTIONRNN_MNIST not set")
def test_full_mnist_integration(tmp_path):
    digits = load_mnist()
    assert digits.source == "mnist-full" and digits.images.shape == (70000, 28, 28)
    assert np.bincount(digits.labels).min() > 6000
    from attentionrnn.data.generate import generate_dataset

    path = generate_dataset("mdist", 20, seed=0, out=tmp_path / "x.npz", progress=False, workers=1)
    ds = AttributeDataset(path, split="all")
    assert ds.metadata["digit_source"] == "mnist-full" and len(ds) >= 100


@pytest.mark.parametrize("dataset", DATASETS)
def test_smaller_canvas_scales_every_length(digits, dataset):
    a = generate_arrays(dataset, 6, seed=1, digits=digits, workers=1, canvas=64)
    assert a["images"].shape == (6, 64, 64, 3) and a["instances"].shape == (6, 64, 64)
    box = a["box"]
    side = box[:, 2] - box[:, 0]
    assert np.array_equal(side, box[:, 3] - box[:, 1])
    assert box.min() >= 0 and box[:, 2:].max() <= 64
    # a digit of PAN scale s is 28 * s * 64 / 100 pixels; the recorded scale stays PAN's s
    expected = np.maximum(1, np.floor(28 * a["scale"].astype(np.float64) * 0.64 + 0.5))
    assert np.array_equal(side, expected.astype(np.int64))
    assert a["scale"].min() >= 0.5 and a["scale"].max() <= 3.0
    # the strokes of each sample's digit lie in its box, as on the full canvas
    for s in range(len(box)):
        ys, xs = np.nonzero(a["instances"][a["image_index"][s]] == a["instance"][s])
        x0, y0, x1, y1 = box[s]
        assert len(ys) and ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1


def test_canvas_checked(digits):
    with pytest.raises(ValueError, match="canvas must be >= 46"):
        generate_arrays("mref", 2, seed=0, digits=digits, workers=1, canvas=45)
    with pytest.raises(TypeError, match="canvas must be an int"):
        generate_arrays("mref", 2, seed=0, digits=digits, workers=1, canvas=64.0)
