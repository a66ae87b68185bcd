"""Run the E4 mask heads and assemble the results table (edit success, preservation, mask
correctness, KID).

``reproduce(out, budget, ...)`` trains each (dataset, mask, seed) run that is not finished yet
into ``OUT/runs/DATASET/MASK/seedS``; :func:`assemble` builds the table from **every** finished
``metrics.json`` under ``OUT/runs`` — mean ± standard deviation over seeds — and writes
``OUT/results.md``, ``OUT/results.json``, the learning curves ``OUT/curves_DATASET.png`` and,
where the weights and data are present, the sample grid ``OUT/samples_DATASET.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attentionrnn.engine import results
from attentionrnn.engine.experiment import Budget as BaseBudget
from attentionrnn.engine.experiment import Experiment, register_experiment
from attentionrnn.engine.reproduce import reproduce as engine_reproduce
from attentionrnn.engine.runs import format_stats, seed_stats
from attentionrnn.engine.trainer import METRICS
from attentionrnn.experiments.e4.config import E4Config
from attentionrnn.experiments.e4.data import DATASETS
from attentionrnn.experiments.e4.model import E4_MASKS, E4_ROWS, LABELS
from attentionrnn.experiments.e4.train import train

logger = logging.getLogger("attentionrnn.e4.reproduce")

__all__ = ["BUDGETS", "EXPERIMENT", "Budget", "assemble", "reproduce", "results_markdown"]

#: the metrics of the table: (key in metrics.json without "test_", header, scale, digits)
COLUMNS = (
    ("edit_success", "edit success %", 100.0, 1),
    ("preservation_l1", "preservation L1 ×100", 100.0, 2),
    ("truth_l1", "L1 to exact ×100", 100.0, 2),
    ("mask_correctness", "mask on digit %", 100.0, 1),
    ("mask_correctness_box", "mask in box %", 100.0, 1),
    ("mask_others", "mask on other digits %", 100.0, 1),
    ("mask_query_ratio", "queried / all digits %", 100.0, 1),
    ("leak_l1", "leak onto others ×100", 100.0, 2),
    ("kid", "KID ×100", 100.0, 3),
)


@dataclass(frozen=True, kw_only=True)
class Budget(BaseBudget):
    """Data size, network size and training length of one budget (other fields: E4Config's
    defaults)."""

    images: int = 3000
    canvas: int = 64
    batch_size: int = 32
    lr_step: int = 6
    channels: int = 16
    d_channels: int = 16
    mask_hidden: int = 16
    judge_epochs: int = 15
    judge_channels: int = 32
    train_samples: int | None = None
    val_samples: int = 500
    test_samples: int = 2000


#: Relative cost of a training step (one D and one G update) per mask head, measured with one
#: thread, batch 32, 64 px, bf16 on a 2-core machine shared with another job: 0.58 / 0.65 /
#: 0.62 s per step (noisy).
COST = {"ctx": 0.9, "arnn": 1.0, "brnn": 0.95}

BUDGETS: dict[str, Budget] = {
    # Measured (seed 0 of the three rows as three one-thread jobs on 2 cores, bf16, full
    # MNIST): 3,000 images of 64 px hold ~12,800 (image, digit) samples, 10,280 of them training
    # edits, i.e. 322 steps of 32 per epoch; the judge (15 epochs) took 6 min and an epoch of the
    # editor ~3.7 min per row with three rows sharing the cores; 0.83-0.86 h per row, 52 min for
    # all three. The curves flatten over epochs 9-12 (validation edit success 0.58-0.68) but the
    # ARNN mask's share on the digit still rises at epoch 12: not every measure is past its knee.
    "cpu": Budget(
        epochs=12,
        description="MREF, 3,000 images of 64 px (10,280 training edits); editor 16-32-64 ch "
        "(16×16 feature map), patch discriminator 16-32-64 ch, mask head width 16; Adam 2e-4 "
        "(β₁ 0.5) halved every 6 epochs, batch 32, 12 epochs; hinge loss, no gradient "
        "penalty; the last epoch's weights; judge: a separately trained colour classifier (15 "
        "epochs); bf16 where native",
    ),
    # A pipeline check: every step of the reproduction in well under a minute; numbers mean
    # nothing.
    "tiny": Budget(
        epochs=2,
        lr_step=1,
        description="pipeline check only (numbers mean nothing): 24 images of 48 px, tiny "
        "networks, 2 epochs",
        images=24,
        canvas=48,
        batch_size=8,
        channels=4,
        d_channels=4,
        mask_hidden=4,
        judge_epochs=1,
        judge_channels=4,
        val_samples=16,
        test_samples=16,
    ),
}


def reproduce(
    out: str | Path,
    budget: str | Budget = "cpu",
    masks: tuple[str, ...] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Train the runs that are missing, then :func:`assemble` the table from all finished runs
    (:func:`attentionrnn.engine.reproduce.reproduce` of :data:`EXPERIMENT`; ``masks``: the
    older name of ``methods``; data options ``mnist``, ``celeba_dir``, ``data_dir``)."""
    if masks is not None:
        kwargs["methods"] = masks
    return engine_reproduce(EXPERIMENT, out, budget, **kwargs)


def _base_config(b: Budget, dataset: str, o: dict[str, Any]) -> E4Config:
    settings = {k: v for k, v in dataclasses.asdict(b).items()
                if k not in ("description", "seeds", "spread_seeds")}  # fmt: skip
    base = E4Config(dataset=dataset, mnist=o.get("mnist"), celeba_dir=o.get("celeba_dir"),
                    data_dir=o.get("data_dir"), precision=o["precision"], threads=o["threads"],
                    progress=o["progress"], **settings)  # fmt: skip
    base.check()
    return base


def _prepare(dataset: str, configs: list[E4Config], jobs: int, o: dict[str, Any]) -> list:
    """Generate the data once, before parallel runs read it."""
    if jobs > 1:
        from attentionrnn.experiments.e4.train import load_data

        load_data(configs[0])
    return configs


def summarize(mask: str, runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over the seeds of one mask head."""
    ms = [runs[s] for s in sorted(runs)]
    first = ms[0]
    exact = first.get("exact_edit") or {}
    return {
        "mask": mask,
        "label": LABELS.get(mask, mask),
        "seeds": sorted(runs),
        "precision": first.get("precision"),
        "parameters": first.get("parameters"),
        **{key: seed_stats([m.get(f"test_{key}") for m in ms]) for key, *_ in COLUMNS},
        "exact_edit": {key: exact.get(key) for key, *_ in COLUMNS},
        "uniform_mask": _uniform_mask(first),
        "judge_accuracy": first.get("judge", {}).get("test_accuracy"),
        "epochs": [m["epochs"] for m in ms],
        "training_time_h": seed_stats([m["training_time_s"] / 3600 for m in ms]),
        "wall_time_h": sum(m.get("wall_time_s", m["training_time_s"]) for m in ms) / 3600,
    }


def _reference_row(label: str, values: dict[str, float | None]) -> list[str]:
    """A table row of a reference that has no seeds or cost (the exact edit, a uniform mask);
    none when it has no value at all (runs recorded before the reference was measured)."""
    if all(v is None for v in values.values()):
        return []
    cells = [label, "–"] + [
        "–" if values.get(key) is None else f"{values[key] * scale:.{digits}f}"
        for key, _, scale, digits in COLUMNS
    ] + ["–"] * 4  # fmt: skip
    return ["| " + " | ".join(cells) + " |"]


def _uniform_mask(metrics: dict[str, Any]) -> dict[str, float | None]:
    """What a uniform mask scores on the mask columns (the regions' share of the image): the
    chance level of mask correctness. Runs recorded before the test measured it directly still
    hold the stroke share as the exact edit's mask mean (its mask is the stroke region)."""
    exact = metrics.get("exact_edit") or {}
    strokes = metrics.get("test_uniform_mask_correctness", exact.get("mask_mean"))
    return {"mask_correctness": strokes,
            "mask_correctness_box": metrics.get("test_uniform_mask_correctness_box"),
            "mask_others": metrics.get("test_uniform_mask_others"),
            "mask_query_ratio": metrics.get("test_uniform_query_ratio")}  # fmt: skip


def _figures(out: Path, d: str, rows: dict[str, dict[int, dict[str, Any]]]) -> dict[str, str]:
    """The learning curves and, where the data and weights are here, the sample grid."""
    from attentionrnn.experiments.e4.figures import curve_figure

    curves = results.learning_curves(rows, lambda m: LABELS.get(m, m), EXPERIMENT.order)
    drawn = {"curves": curve_figure(curves, out / f"curves_{d}.png", f"{d}: learning curves").name}
    runs = {
        m: out / "runs" / d / m / f"seed{min(rows[m])}" for m in sorted(rows, key=EXPERIMENT.order)
    }
    grid = results.optional_figure(
        lambda: _sample_grid(runs, out / f"samples_{d}.png", d), "sample grid", d, logger
    )
    if grid:
        drawn["samples"] = grid.name
    return drawn


def _sample_grid(runs: dict[str, Path], path: Path, dataset: str, count: int = 6) -> Path:
    """Every mask head's edits of the same test samples (the first run's data and targets)."""
    from attentionrnn.experiments.e4.figures import sample_grid
    from attentionrnn.experiments.e4.train import (
        fixed_targets,
        load_data,
        load_editor,
        split_indices,
    )

    first = next(iter(runs.values()))
    config = E4Config(**json.loads((first / METRICS).read_text())["config"])
    task = load_data(dataclasses.replace(config, progress=False))
    idx = split_indices(task, config)["test"]
    targets = fixed_targets(task, idx, "test")
    pick = np.arange(min(count, len(idx)))
    editors = {m: load_editor(run, task) for m, run in runs.items()}
    return sample_grid(editors, task, idx[pick], targets[pick], path, title=f"{dataset}: edits")


def results_markdown(summary: dict[str, Any]) -> str:
    """The results of :func:`assemble` as Markdown."""
    lines = [
        *results.markdown_head(
            summary, "E4 image editing (ModularGAN-style, swappable mask heads)"
        ),
        "Test edits of the last epoch's weights (the default; `--select edit_success` of "
        "`e4 train` picks the best validation epoch instead). Edit "
        "success: share of edits whose new colour the separately trained judge reads; "
        "preservation L1: mean absolute change (RGB in [0, 1]) outside the edited digit's "
        "strokes; L1 to exact: against the exactly rendered edit; mask on digit / in box: share "
        "of the edit module's mask mass on the digit's strokes / box; KID against the exact "
        "edits, with the judge's penultimate features. Mean ± sample standard deviation over "
        "the seeds listed (one seed has no ±). The row 'exact edit' is what the perfect edit "
        "scores (its mask is the stroke region).",
        "",
    ]
    header = ["mask", "seeds", *[c[1] for c in COLUMNS], "params", "epochs", "min/run", "wall"]
    for d, rows in summary["results"].items():
        lines += [f"## {d}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for r in rows.values():
            cells = [r["label"], ",".join(map(str, r["seeds"]))]
            cells += [format_stats(r[key], digits, scale) for key, _, scale, digits in COLUMNS]
            cells += [f"{r['parameters']:,}", ",".join(map(str, r["epochs"]))]
            cells += [format_stats(r["training_time_h"], 1, 60), f"{r['wall_time_h']:.2f} h"]
            lines.append("| " + " | ".join(cells) + " |")
        first = next(iter(rows.values()))
        lines += _reference_row("exact edit", first["exact_edit"])
        lines += _reference_row("uniform mask (chance)", first.get("uniform_mask") or {})
        lines.append("")
        if first.get("judge_accuracy") is not None:
            lines += [f"Judge accuracy on real test images: {100 * first['judge_accuracy']:.1f} %.",
                      ""]  # fmt: skip
        lines += results.markdown_figures(summary, d, ("curves", "samples"))
    return "\n".join(lines)


EXPERIMENT = register_experiment(Experiment(
    name="e4",
    help="experiment E4: image editing (ModularGAN-style) with AttentionRNN masks",
    description="Experiment E4: a ModularGAN-style editor whose transformer modules blend "
    "their edit through a mask from a conv head, AttentionRNN or Block AttentionRNN; "
    "recolouring the queried digit of generated MREF / MDIST images (exact edits known), "
    "or CelebA from a folder.",
    config=E4Config,
    train=train,
    budgets=BUDGETS,
    default_budget="cpu",
    budget_class=Budget,
    datasets=DATASETS,
    methods=E4_ROWS,
    default_methods=lambda b: E4_MASKS,
    row_field="mask",
    figure="samples",
    base_config=_base_config,
    prepare=_prepare,
    summarize=summarize, figures=_figures, log=logger,
    markdown=results_markdown,
    cost=COST,
    labels=LABELS,
    train_help="train one mask head",
    train_description="Train the judge (an attribute classifier of real images), then the "
    "editor and discriminator (hinge loss, no gradient penalty); keep the best-validation "
    "weights, test them and write RUN_DIR/metrics.json (edit success, preservation L1, mask "
    "correctness, KID, learning curve) and RUN_DIR/samples.png. Rerunning the same command "
    "resumes an interrupted run.",
    train_keys=("test_edit_success", "test_preservation_l1", "test_truth_l1",
                "test_mask_correctness", "test_mask_correctness_box", "test_kid",
                "val_edit_success", "epochs", "best_epoch", "precision", "training_time_s"),
    reproduce_flags=(
        ("--mnist", {"metavar": "DIR", "help": "MNIST folder"}),
        ("--celeba-dir", {"metavar": "DIR", "help": "CelebA folder "
                          "(default $ATTENTIONRNN_CELEBA_DIR)"}),
        ("--data-dir", {"metavar": "DIR", "help": "cache of generated data"}),
    ),
))  # fmt: skip

#: Write ``results.{json,md}`` and the figures from every finished run under ``OUT/runs``
#: (:meth:`~attentionrnn.engine.experiment.Experiment.assemble_table`).
assemble = EXPERIMENT.assemble
