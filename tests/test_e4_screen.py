"""``attentionrnn e4 screen``: the screening of issue 34 decided from the validation split only.

Synthetic results folders in the layout ``e4 reproduce`` writes (``OUT/runs/DATASET/MASK/seedS/
metrics.json``) with made-up histories: the numbers of the table against numpy / scipy, no test
number ever in the output, and the bad inputs (one line, exit status 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from attentionrnn.cli import main
from attentionrnn.engine.convergence import FLAT_SLOPE, final_slope
from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e4.screen import candidate_name, screen

#: what every test_* number of the synthetic runs is: it must never reach the output
TEST_MARK = 7777.25
EPOCHS = 6
KEYS = ("edit_success", "mask_correctness", "mask_others", "mask_background",
        "mask_query_ratio", "leak_l1", "truth_l1")  # fmt: skip


def _value(candidate: str, mask: str, seed: int, key: str, epoch: int) -> float:
    """A made-up validation value: distinct per candidate, head, seed and measure, linear in the
    epoch with a slope of 0.01 per epoch for the query ratio of screen-mul (not flat), 0.001
    otherwise."""
    base = {"screen": 0.30, "screen-mul": 0.40, "screen-teacher": 0.31}[candidate]
    base += {"ctx": 0.0, "arnn": 0.05}[mask] + 0.02 * seed + 0.001 * KEYS.index(key)
    rate = 0.01 if (candidate, key) == ("screen-mul", "mask_query_ratio") else 0.001
    return round(base + rate * epoch, 6)


def _write_run(folder: Path, candidate: str, mask: str, seed: int, uniform: bool = True) -> None:
    history = []
    for epoch in range(1, EPOCHS + 1):
        entry = {"epoch": epoch, "train_loss": 1.0 / epoch}
        entry.update({f"val_{k}": _value(candidate, mask, seed, k, epoch) for k in KEYS})
        if uniform:
            entry["val_uniform_query_ratio"] = 0.2468
        entry["test_mask_query_ratio"] = TEST_MARK  # a stray test number in the history
        history.append(entry)
    config = {"dataset": "mref", "mask": mask, "seed": seed, "epochs": EPOCHS, "select": "last",
              "query_fusion": "mul" if candidate == "screen-mul" else "add",
              "w_teacher": 1.0 if candidate == "screen-teacher" else 0.0}  # fmt: skip
    metrics = {
        "dataset": "mref", "mask": mask, "seed": seed, "config": config, "history": history,
        "epochs": EPOCHS, "best_epoch": EPOCHS, "precision": "fp32" if seed else "bf16",
        "val_edit_success": 0.97531,  # the best epoch's: not what the screening reports
        **{f"test_{k}": TEST_MARK for k in (*KEYS, "kid", "uniform_query_ratio")},
        "exact_edit": {k: TEST_MARK for k in KEYS},
    }  # fmt: skip
    run = folder / "runs" / "mref" / mask / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))


def _candidate(tmp_path: Path, name: str, seeds=(0, 1), masks=("ctx", "arnn"), **kw) -> Path:
    folder = tmp_path / f"e4-{name}"
    for mask in masks:
        for seed in seeds:
            _write_run(folder, name, mask, seed, **kw)
    return folder


@pytest.fixture
def folders(tmp_path) -> list[Path]:
    return [_candidate(tmp_path, n) for n in ("screen", "screen-mul", "screen-teacher")]


def _row(summary, candidate: str, mask: str) -> dict:
    (row,) = [r for r in summary["datasets"]["mref"]["rows"]
              if r["candidate"] == candidate and r["mask"] == mask]  # fmt: skip
    return row


def test_candidate_names_are_the_folders_less_e4(tmp_path):
    assert candidate_name(tmp_path / "e4-screen-mul") == "screen-mul"
    assert candidate_name(tmp_path / "screen") == "screen"


def test_last_epoch_means_slopes_and_welch_against_the_reference(folders, tmp_path):
    summary = screen(folders, reference="screen", out=tmp_path / "report", figure=False)
    assert summary["split"] == "val" and summary["reference"] == "screen"
    assert [r["candidate"] for r in summary["datasets"]["mref"]["rows"]] == [
        "screen",
        "screen",
        "screen-mul",
        "screen-mul",
        "screen-teacher",
        "screen-teacher",
    ]
    for candidate in ("screen", "screen-mul", "screen-teacher"):
        for mask in ("ctx", "arnn"):
            row = _row(summary, candidate, mask)
            assert row["seeds"] == [0, 1] and row["epochs"] == [EPOCHS, EPOCHS]
            for key in KEYS:  # the last epoch's validation value, mean and std over the seeds
                values = [_value(candidate, mask, s, key, EPOCHS) for s in (0, 1)]
                got = row["values"][key]
                assert got["mean"] == pytest.approx(np.mean(values))
                assert got["std"] == pytest.approx(np.std(values, ddof=1))
            assert row["uniform_query_ratio"]["mean"] == pytest.approx(0.2468)
    assert _row(summary, "screen-mul", "ctx")["design"] == "mul fusion"
    assert _row(summary, "screen", "arnn")["precision"] == ["bf16", "fp32"]  # as each seed ran
    assert _row(summary, "screen-teacher", "arnn")["design"].startswith("add fusion, teacher ×1")

    # the final slope: least squares over the last five epochs
    mul = _row(summary, "screen-mul", "arnn")
    assert mul["final_slope"]["mask_query_ratio"]["mean"] == pytest.approx(0.01)
    assert mul["final_slope"]["edit_success"]["mean"] == pytest.approx(0.001)
    history = [{"epoch": e, "v": e**2} for e in range(1, 8)]
    tail = stats.linregress(range(3, 8), [e**2 for e in range(3, 8)])
    assert final_slope(history, "v") == pytest.approx(tail.slope)
    assert final_slope(history[:4], "v") is None

    # Welch's t-test against the reference candidate with the same head, as scipy gives it
    for candidate in ("screen-mul", "screen-teacher"):
        for mask in ("ctx", "arnn"):
            row = _row(summary, candidate, mask)
            for key in KEYS:
                a = [_value(candidate, mask, s, key, EPOCHS) for s in (0, 1)]
                b = [_value("screen", mask, s, key, EPOCHS) for s in (0, 1)]
                test = stats.ttest_ind(a, b, equal_var=False)
                c = row["against"][key]
                assert c["difference"] == pytest.approx(np.mean(a) - np.mean(b))
                assert c["p"] == pytest.approx(test.pvalue)
                assert c["called"] == (test.pvalue < 0.05)
    assert "against" not in _row(summary, "screen", "ctx")

    md = (tmp_path / "report" / "screening.md").read_text()
    saved = json.loads((tmp_path / "report" / "screening.json").read_text())
    assert saved["reference"] == "screen"
    assert saved["datasets"]["mref"]["rows"][0]["seeds"] == [0, 1]
    assert "(blind 24.7)" in md and f"+{0.01:.4f} ↗" in md and "+0.0010 / " in md
    assert "| precision |" in md and "| 6,6 | bf16,fp32 |" in md
    assert FLAT_SLOPE == 0.005
    # the arnn value of screen-mul for the edit success, as the table prints it
    es = np.mean([_value("screen-mul", "arnn", s, "edit_success", EPOCHS) for s in (0, 1)])
    assert f"{100 * es:.1f} ± " in md


def test_no_test_number_is_read(folders, tmp_path, capsys):
    report = tmp_path / "report"
    assert main(["e4", "screen", *map(str, folders), "--reference", "screen",
                 "--out", str(report)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    outputs = [printed, (report / "screening.md").read_text(),
               (report / "screening.json").read_text()]  # fmt: skip
    assert (report / "screening_curves_mref.png").stat().st_size > 0
    for text in outputs:  # neither a test number nor the best epoch's validation value
        for mark in ("7777.2", "777725", "97531"):
            assert mark not in text
    assert "97.5" not in outputs[0] and "97.5" not in outputs[1]
    assert printed.startswith("# E4 screening on the validation split — reference `screen`")


def test_one_seed_is_not_tested_and_blind_level_may_be_missing(tmp_path):
    ref = _candidate(tmp_path, "screen", seeds=(0,), uniform=False)
    mul = _candidate(tmp_path, "screen-mul", masks=("arnn",))
    summary = screen([mul, ref], reference="screen", figure=False)
    assert (mul / "screening.md").is_file()  # the first folder by default
    row = _row(summary, "screen-mul", "arnn")
    assert row["against"]["edit_success"]["p"] is None
    md = (mul / "screening.md").read_text()
    assert "(n/a)" in md and "blind not recorded" in md
    # a head with no reference run
    other = _candidate(tmp_path / "x", "screen-teacher", masks=("ctx",))
    summary = screen([ref, other], masks=("ctx",), figure=False)  # reference: the first
    assert summary["reference"] == "screen" and "against" in _row(summary, "screen-teacher", "ctx")
    screen([mul, ref.parent / "x" / "e4-screen-teacher"], reference="screen-mul", figure=False)
    assert "no reference run" in (mul / "screening.md").read_text()


def test_bad_inputs_are_one_line_and_status_2(folders, tmp_path, capsys):
    empty = tmp_path / "e4-empty"
    (empty / "runs" / "mref" / "arnn" / "seed0").mkdir(parents=True)  # started, not finished
    nothing = tmp_path / "e4-nothing"
    nothing.mkdir()
    for args, message in (
        ([*folders, "--reference", "screen-wide"], "--reference screen-wide: not among"),
        ([folders[0], empty], "e4-empty: no finished run"),
        ([nothing], "e4-nothing: no runs/ folder"),
        ([folders[0], folders[0]], "same candidate name (screen)"),
        ([folders[0], "--methods", "brnn"], "no finished run of brnn"),
        ([folders[0], "--masks", "brnn"], "no finished run of brnn"),  # the older name
    ):
        assert main(["e4", "screen", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    bad = tmp_path / "e4-other"
    _write_run(bad, "screen", "arnn", 0)
    path = bad / "runs" / "mref" / "arnn" / "seed0" / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "config": {"attention": "x"}}))
    with pytest.raises(UserError, match="not a run of e4"):
        screen([bad], figure=False)
    path.write_text(json.dumps({"config": {"mask": "arnn"}, "history": []}))
    with pytest.raises(UserError, match="no validation history"):
        screen([bad], figure=False)


def test_locate_stage_is_epoch_0_of_the_curves(tmp_path):
    ref = _candidate(tmp_path, "screen")
    staged = _candidate(tmp_path, "screen-teacher", masks=("arnn",))
    for seed in (0, 1):  # as --locate-steps records it
        path = staged / "runs" / "mref" / "arnn" / f"seed{seed}" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["locate"] = {"steps": 30, "val_mask_query_ratio": 0.612 - 0.1 * seed,
                             "val_edit_success": 0.05, "test_edit_success": TEST_MARK}
        path.write_text(json.dumps(metrics))
    summary = screen([ref, staged], figure=False)
    row = _row(summary, "screen-teacher", "arnn")
    assert [c[0]["epoch"] for c in row["curves"]] == [0, 0]
    assert [c[0]["val_mask_query_ratio"] for c in row["curves"]] == [0.612, 0.512]
    assert [len(c) for c in row["curves"]] == [EPOCHS + 1] * 2
    assert row["values"]["mask_query_ratio"]["values"] == [  # the table: still the last epoch
        _value("screen-teacher", "arnn", s, "mask_query_ratio", EPOCHS) for s in (0, 1)]
    assert all(c[0]["epoch"] == 1 for c in _row(summary, "screen", "arnn")["curves"])
    md = (ref / "screening.md").read_text()
    assert "after the locate stage" in md and "seed 0: 61.2 %; screen-teacher" in md
    assert "7777" not in md
