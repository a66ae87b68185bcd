"""The one statistical rule of the results tables (attentionrnn.engine.stats)."""

import math

import pytest

from attentionrnn.engine.runs import seed_stats
from attentionrnn.engine.stats import compare, describe, format_comparison


def test_describe_gives_mean_std_and_t_interval():
    d = describe([0.80, 0.90, 1.00])
    assert d["mean"] == pytest.approx(0.9)
    assert d["std"] == pytest.approx(0.1)
    # t(0.975, 2) = 4.3027; sem = 0.1 / sqrt(3)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert d["ci95"] == pytest.approx([0.9 - half, 0.9 + half], rel=1e-5)
    assert d["n"] == 3 and d["values"] == [0.8, 0.9, 1.0]
    assert seed_stats([0.8, 0.9, 1.0]) == d


def test_one_seed_has_no_spread_and_none_is_left_out():
    d = describe([0.7, None])
    assert d["mean"] == 0.7 and d["std"] is None and d["ci95"] is None and d["n"] == 1
    assert describe([])["mean"] is None


def test_welch_matches_the_textbook_values():
    # Welch: t = (mean_a - mean_b) / sqrt(va/na + vb/nb); here va = vb = 1e-4, na = nb = 3
    c = compare([0.90, 0.91, 0.92], [0.85, 0.86, 0.87])
    assert c["difference"] == pytest.approx(0.05)
    assert c["t"] == pytest.approx(0.05 / math.sqrt(2e-4 / 3))
    assert c["p"] < 0.05 and c["called"]


def test_a_difference_within_the_spread_is_not_called():
    c = compare([0.90, 0.80, 0.95], [0.85, 0.88, 0.78])
    assert c["p"] > 0.05 and not c["called"]
    assert format_comparison(c).startswith("+0.047 (p ")


def test_one_seed_on_either_side_is_never_called():
    for a, b in (([0.9], [0.1, 0.2]), ([0.9, 0.95], [0.1])):
        c = compare(a, b)
        assert c["p"] is None and not c["called"]
        assert format_comparison(c).endswith("(n/a)")
    assert format_comparison(None) == "ref"


def test_called_differences_are_bold():
    c = compare([0.90, 0.91, 0.92], [0.80, 0.81, 0.82])
    assert format_comparison(c).startswith("**+0.100**")
