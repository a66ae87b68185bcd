"""Mask coverage and consistency measures of E1 (attentionrnn.experiments.e1.mask_stats)."""

import numpy as np
import pytest
import torch

from attentionrnn.experiments.e1.mask_stats import (
    area_shares,
    border_share,
    layer_agreement,
    mask_statistic_names,
    mask_statistics,
    peak_region_share,
    region_shares,
    relative_entropy,
    tv_per_mass,
)

GEOMETRY = ((2, 1.5), (4, 4.5), (8, 10.5), (16, 22.5))


def _labels(b=2, size=40):
    labels = torch.zeros(b, size, size, dtype=torch.long)
    labels[:, 4:14, 4:14] = 1  # the queried digit
    labels[:, 20:30, 24:36] = 2  # another digit
    return labels


def test_a_uniform_mask_scores_the_area_shares():
    labels = _labels()
    shares = region_shares(torch.ones(2, 1, 9, 9), labels, 4, 4.5)
    assert torch.allclose(shares, area_shares(labels))
    assert torch.allclose(shares.sum(1), torch.ones(2, dtype=torch.float64))


def test_a_mask_on_the_queried_digit_puts_its_mass_there():
    labels = _labels(1, 40)
    mask = torch.zeros(1, 1, 20, 20)  # stride 2, offset 0.5: cell (i, j) at pixel 2i + 0.5
    mask[0, 0, 3:6, 3:6] = 1.0  # pixels 6.5 .. 10.5, inside the box 4..13
    shares = region_shares(mask, labels, 2, 0.5)[0]
    assert shares[0] > 0.9 and shares.sum() == pytest.approx(1.0)


def test_entropy_tv_and_peak_region_of_simple_masks():
    uniform = torch.ones(1, 1, 6, 6)
    spike = torch.zeros(1, 1, 6, 6)
    spike[0, 0, 2, 3] = 1
    assert relative_entropy(uniform).item() == pytest.approx(1.0)
    assert relative_entropy(spike).item() == pytest.approx(0.0, abs=1e-12)
    assert tv_per_mass(uniform).item() == 0
    assert tv_per_mass(spike).item() == pytest.approx(4.0)
    assert tv_per_mass(3 * spike).item() == pytest.approx(4.0)  # scale-free
    assert peak_region_share(uniform).item() == 1.0
    assert peak_region_share(spike).item() == 1.0


def test_peak_region_share_counts_only_the_peak_island():
    two = torch.zeros(1, 1, 8, 8)
    two[0, 0, 0:2, 0:2] = 2.0  # the peak's island: mass 8
    two[0, 0, 5:7, 5:7] = 1.0  # a separate island: mass 4
    assert peak_region_share(two).item() == pytest.approx(8 / 12)


def test_layer_agreement_is_a_correlation_of_the_projected_masks():
    a = torch.rand(3, 1, 9, 9)
    same = layer_agreement(a, (4, 4.5), a, (4, 4.5), (40, 40))
    assert torch.allclose(same, torch.ones(3, dtype=torch.float64))
    opposite = layer_agreement(a, (4, 4.5), -a + 2, (4, 4.5), (40, 40))
    assert torch.allclose(opposite, -torch.ones(3, dtype=torch.float64))
    flat = layer_agreement(a, (4, 4.5), torch.ones(3, 1, 9, 9), (4, 4.5), (40, 40))
    assert torch.isnan(flat).all()


def test_mask_statistics_names_and_shapes():
    torch.manual_seed(0)
    masks = [torch.rand(2, 1, s, s) for s in (19, 9, 4, 2)]
    stats = mask_statistics(masks, GEOMETRY, _labels())
    assert list(stats) == mask_statistic_names(4)
    assert all(v.shape == (2,) for v in stats.values())
    total = stats["layer2/queried"] + stats["layer2/others"] + stats["layer2/background"]
    np.testing.assert_allclose(total, 1.0)


def test_border_share_of_a_uniform_mask_is_the_ring_share():
    share, ring = border_share(torch.ones(2, 1, 10, 10))
    assert ring == pytest.approx(36 / 100)
    assert torch.allclose(share, torch.full((2,), 0.36, dtype=torch.float64))
    frame = torch.zeros(1, 1, 4, 4)
    frame[0, 0, 0] = 1
    assert border_share(frame)[0].item() == 1.0
