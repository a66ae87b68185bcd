"""Experiment E1's metrics, measured on hand-made masks and on the regions of a tiny dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attentionrnn.data.attribute import E1Data
from attentionrnn.data.regions import attention_correctness, box_regions, mask_to_image
from attentionrnn.experiments.e1.config import E1Config
from attentionrnn.experiments.e1.metrics import accuracy, accuracy_by_scale, scale_bin_labels
from attentionrnn.experiments.e1.model import MASK_GEOMETRY
from attentionrnn.experiments.e1.train import images_for_samples, lr_at

# ---------------------------------------------------------------------------------- metrics


def test_correctness_of_a_mask_inside_the_box_is_one():
    boxes = torch.tensor([[10, 20, 40, 60]])
    mask = box_regions(boxes, (100, 100)).float()[:, None] * torch.rand(1, 1, 100, 100)
    region = box_regions(boxes, (100, 100))
    assert torch.allclose(attention_correctness(mask, region), torch.ones(1))


def test_correctness_of_a_uniform_mask_is_the_area_share():
    boxes = torch.tensor([[10, 20, 40, 60], [0, 0, 100, 50], [5, 5, 6, 6]])
    region = box_regions(boxes, (100, 100))
    expected = torch.tensor([30 * 40, 100 * 50, 1]) / 1e4
    for shape, geometry in [((100, 100), (None, 0.0)), ((49, 49), MASK_GEOMETRY[0])]:
        for stride, offset in [geometry, *MASK_GEOMETRY]:
            uniform = torch.full((3, 1, *shape), 0.3)
            got = attention_correctness(uniform, region, stride, offset)
            assert torch.allclose(got, expected.float(), atol=1e-6)


def test_correctness_of_a_mask_outside_is_zero_and_half_is_half():
    region = box_regions(torch.tensor([[0, 0, 50, 100]]), (100, 100))
    mask = torch.zeros(1, 1, 100, 100)
    mask[..., 50:] = 1
    assert float(attention_correctness(mask, region)) == 0.0
    mask[..., 0] = 1  # one column of 100 of 51 now inside
    assert abs(float(attention_correctness(mask, region)) - 100 / 5100) < 1e-6
    assert torch.isnan(attention_correctness(torch.zeros(1, 1, 4, 4), region))[0]


def test_mask_geometry_places_cells_on_their_receptive_field_centres():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1, 2] = 1
    image = mask_to_image(mask, (100, 100), *MASK_GEOMETRY[3])
    peak = divmod(int(image.flatten().argmax()), 100)
    assert abs(peak[0] - 38.5) <= 0.5 and abs(peak[1] - 54.5) <= 0.5
    assert torch.allclose(mask_to_image(mask, (4, 4), 1, 0)[0], mask[0, 0])  # identity
    stroke = torch.zeros(1, 100, 100, dtype=torch.bool)
    stroke[0, 22:56, 38:72] = True  # the cell's support: centre ± one stride
    assert float(attention_correctness(mask, stroke, *MASK_GEOMETRY[3])) == pytest.approx(1)
    assert float(attention_correctness(mask, ~stroke, *MASK_GEOMETRY[3])) == pytest.approx(0)


def test_accuracy_and_scale_bins():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    assert scale_bin_labels() == ["0.5-1.0", "1.0-1.5", "1.5-2.0", "2.0-2.5", "2.5-3.0"]
    bins = accuracy_by_scale([True, False, True, True, False], [0.5, 0.99, 1.0, 3.0, 2.6])
    assert bins["0.5-1.0"] == {"accuracy": 0.5, "count": 2}
    assert bins["1.0-1.5"] == {"accuracy": 1.0, "count": 1}
    assert bins["2.5-3.0"] == {"accuracy": 0.5, "count": 2}
    assert bins["1.5-2.0"]["count"] == 0 and np.isnan(bins["1.5-2.0"]["accuracy"])


def test_schedule_and_sizes():
    c = E1Config()
    assert [lr_at(c, e) for e in (0, 29)] == [0.003, 0.003]
    assert lr_at(c, 30) == pytest.approx(0.002) and lr_at(c, 39) == pytest.approx(0.002)
    assert lr_at(c, 40) == pytest.approx(0.003 / 1.5**2)
    # a linear warm-up over the first epochs, then the rate itself (PAN has none)
    w = E1Config(lr_warmup_epochs=2)
    assert [lr_at(w, e) for e in (0, 1, 2, 29)] == pytest.approx([0.001, 0.002, 0.003, 0.003])
    with pytest.raises(ValueError, match="lr_warmup_epochs"):
        E1Config(lr_warmup_epochs=-1).check()
    assert images_for_samples(50000) == 8850 and images_for_samples(3) == 1
    with pytest.raises(ValueError, match="attention must be one of .*got .pan."):
        E1Config(attention="pan").check()


def test_data_regions_and_inverse_task(tiny):
    data = E1Data(tiny)
    idx = data.indices("test")
    img, query, target = data.batch(idx)
    assert img.shape == (len(idx), 3, 100, 100) and img.dtype == torch.float32
    assert 0 <= float(img.min()) and float(img.max()) <= 1
    boxes, strokes = data.regions(idx)
    assert (strokes & ~boxes).sum() == 0 and strokes.any(dim=(1, 2)).all()
    inverse = E1Data(tiny, task="digit")
    kept = inverse.indices("train")
    assert len(kept) < len(data.indices("train"))  # repeated colours dropped
    _, q, t = inverse.batch(kept)
    assert int(q.max()) < 5 and torch.equal(t, torch.from_numpy(data.digit[kept]))
