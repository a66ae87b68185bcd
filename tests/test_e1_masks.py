"""`attentionrnn e1 masks`: every finished run measured again, layer by layer, and tested against
the reference row on the validation split."""

from __future__ import annotations

import json
from pathlib import Path

from attentionrnn.cli import main
from attentionrnn.experiments.e1.diagnose import below_uniform_from


def _train(data: Path, out: Path, attention: str, seed: int) -> None:
    run = out / "runs" / "mref" / attention / f"seed{seed}"
    cmd = ["e1", "train", "--data", str(data), "--dataset", "mref", "--attention", attention,
           "--epochs", "1", "--batch-size", "32", "--seed", str(seed), "--precision", "fp32",
           "--threads", "1", "--no-progress", "--out", str(run)]  # fmt: skip
    assert main(cmd) == 0


def test_below_uniform_from_is_the_start_of_the_final_run_below():
    assert below_uniform_from([0.2, 0.1, 0.1], 0.137) == 2
    assert below_uniform_from([0.1, 0.2, 0.1], 0.137) == 3
    assert below_uniform_from([0.1, 0.1, 0.2], 0.137) is None
    assert below_uniform_from([0.137, 0.13699999], 0.137) is None  # a mask of ones, rounded


def test_masks_measures_every_run_and_tests_against_ctx(tiny, tmp_path, capsys):
    out = tmp_path / "results"
    for attention in ("ctx", "arnn"):
        for seed in (0, 1):
            _train(tiny, out, attention, seed)
    capsys.readouterr()
    assert main(["e1", "masks", str(out), "--limit", "30", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "mask_diagnosis.json").read_text())
    entry = summary["datasets"]["mref"]
    assert set(entry["rows"]) == {"ctx", "arnn"} and entry["reference"] == "ctx"
    arnn = entry["rows"]["arnn"]
    assert arnn["seeds"] == [0, 1] and len(arnn["val_accuracy"]["values"]) == 2
    for k in (1, 2, 3, 4):
        m = arnn["masks"][f"layer{k}"]
        total = m["queried"]["mean"] + m["others"]["mean"] + m["background"]["mean"]
        assert abs(total - 1) < 1e-6
        assert -1 <= arnn["query_dependence"][f"layer{k}"]["mean"] <= 1
    tests = entry["against"]["arnn"]
    assert set(tests) >= {"val_accuracy", "val_layer4_box", "layer3_box"}
    assert tests["val_accuracy"]["n"] == 2 and tests["val_accuracy"]["n_reference"] == 2
    assert "Against CTX (PAN) on the validation split" in printed
    assert (out / "mask_diagnosis.md").read_text().startswith("# E1 masks, layer by layer")
    assert main(["e1", "masks", str(out), "--limit", "10"]) == 0  # with the figures
    assert (out / "diagnosis_curves_mref.png").is_file() and (
        out / "diagnosis_masks_mref.png"
    ).is_file()
