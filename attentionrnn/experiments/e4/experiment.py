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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attentionrnn.engine import results
from attentionrnn.engine.experiment import Experiment, config_budget, register_experiment
from attentionrnn.engine.reproduce import reproduce as engine_reproduce
from attentionrnn.engine.runs import format_stats, seed_stats
from attentionrnn.engine.trainer import METRICS
from attentionrnn.experiments.e4.config import E4Config
from attentionrnn.experiments.e4.figures import curve_figure
from attentionrnn.experiments.e4.metrics import measures
from attentionrnn.experiments.e4.model import ROW_TABLE
from attentionrnn.experiments.e4.train import train

__all__ = ["BUDGETS", "EXPERIMENT", "Budget", "assemble", "reproduce", "results_markdown"]

#: the metrics of the table: (key in metrics.json without "test_", header, scale, digits)
COLUMNS = measures(
    "edit_success", "preservation_l1", "truth_l1", "mask_correctness", "mask_correctness_box",
    "mask_others", "mask_query_ratio", "leak_l1", "kid",
)  # fmt: skip

#: The row every other is tested against (the conv head, ModularGAN's own kind of mask) and
#: the quantities tested: edit success, where the mask lies, what the edit leaks and costs.
REFERENCE = "ctx"
TESTED = ("edit_success", "mask_correctness", "mask_query_ratio", "leak_l1", "preservation_l1",
          "kid")  # fmt: skip
COMPARED: results.Compared = {key: (label.replace(" %", "").replace(" ×100", ""), (key,))
                              for key, label, _, _ in measures(*TESTED)}  # fmt: skip
#: how the comparisons and the runs section show them: ×100, each with the table's decimals
SCALE = 100.0
DIGITS = {key: places for key, _, _, places in measures(*TESTED)}
#: the validation curves that must be flat (issue 34): edit success, the mask's share on the
#: queried digit and its query ratio
CURVES = {key: (label.replace(" %", ""), (f"val_{key}",)) for key, label, _, _ in
          measures("edit_success", "mask_correctness", "mask_query_ratio")}  # fmt: skip


#: What a budget sets besides its epochs: data size, network size and training length, and
#: the screening candidates' design options.
BUDGET_FIELDS = ("images", "canvas", "batch_size", "lr_step", "channels", "d_channels",
                 "mask_hidden", "judge_epochs", "judge_channels", "train_samples", "val_samples",
                 "test_samples", "query_fusion", "w_teacher", "w_keep",
                 "edit_query", "w_apart", "w_identify", "locate_steps")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Budget(config_budget(E4Config, *BUDGET_FIELDS, judge_epochs=15)):
    """One budget: :data:`BUDGET_FIELDS` (defaults: E4Config's, but the judge trains 15
    epochs)."""


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
    # Sized from the cpu budget's validation curves: at epoch 12 ARNN seed 1's edit success was
    # still rising (0.61, 0.76, 0.87, 0.89 over epochs 9-12), CTX seed 1 had just left chance
    # (0.05, 0.25, 0.24 over 10-12) and the masks' share on the digit still rose by ~0.001 an
    # epoch. A third learning-rate step (epochs 13-18 at a quarter of the rate) to let them
    # settle; the table's final slopes say whether they did. Today's design: none of the
    # screening's candidates moved the query ratio off its query-blind level (docs/e4.md).
    # Grown to 24 epochs (a fourth step, epochs 19-24 at an eighth of the rate) when the first
    # two 18-epoch runs (seed 0, code 05587bd) ended flat in mask share and query ratio but not
    # in validation edit success (final slopes +0.010 ARNN, +0.026 CTX per epoch, CTX at 0.84,
    # 0.87, 0.89 over epochs 16-18); E4 runs are EXTENDABLE, so the 18-epoch runs go on from
    # their checkpoints to what a 24-epoch run gives.
    "plateau": Budget(
        epochs=24, spread_seeds=(0, 1, 2),
        description="as cpu, 24 epochs (lr 2e-4 halved at epochs 7, 13 and 19); CTX and ARNN "
        "seeds 0-2, BRNN seed 0; bf16 where native",
    ),
    # The screening of issue 34 (what makes a mask head pick the queried digit): the first 6
    # epochs of the cpu budget (same data, networks, schedule and validation edits), one budget
    # per candidate so that each has its results folder (results/e4-screen-mul ...); the choice
    # is made on the validation curves only (docs/e4.md, "Screening").
    "screen": (screen := Budget(
        epochs=6,
        description="screening (decide on the validation split only): the cpu budget's first "
        "6 epochs, today's design (additive query fusion, no teacher)",
    )),
    "screen-mul": dataclasses.replace(
        screen, query_fusion="mul", description="screening: as screen, with the condition "
        "multiplying the mask head's encoding (conv(f) * Uc, E3's fusion)",
    ),
    "screen-teacher": dataclasses.replace(
        screen, w_teacher=1.0, description="screening: as screen, plus the classification of "
        "the edits by a frozen classifier of real images (its own seed, not the judge), weight 1",
    ),
    # Added after the first two candidates: ModularGAN's classification asks for every
    # attribute of an edited image, the changed one as the target and the others as they were;
    # with one attribute per (image, digit) sample the others — the colours of the image's other
    # digits — were left out, so nothing asked the edit to leave them. With the teacher, whose
    # classifier reads colours where D's stays near chance.
    "screen-keep": dataclasses.replace(
        screen, w_teacher=1.0, w_keep=1.0, description="screening: as screen-teacher, plus "
        "another digit of each edited image classified as its unchanged colour (by D and the "
        "teacher), weight 1",
    ),
    # Added after screen-teacher and screen-keep's first run: the teacher raised edit success
    # while the masks moved off the digits. The edit body reads the query too and can edit the
    # queried digit by itself; the mask then only scales the edit. Here the body reads the
    # target colour alone, so that telling the queried digit from the others is left to the mask.
    "screen-qmask": dataclasses.replace(
        screen, w_teacher=1.0, w_keep=1.0, edit_query="mask", description="screening: as "
        "screen-keep, with the query reaching the edit through the mask head only (the edit body "
        "reads the target colour alone)",
    ),
    # Added after screen-qmask's first runs and the supervised probe (scripts/e4_mask_probe.py):
    # ARNN's head learns to pick the queried digit when told where it is, so the blind masks
    # come from the training signal. Here two queries of one image are asked for the same edit
    # and their masks' overlap is penalised: a query-blind mask overlaps itself fully.
    "screen-apart": dataclasses.replace(
        screen, w_teacher=1.0, w_keep=1.0, edit_query="mask", w_apart=1.0,
        description="screening: as screen-qmask, plus the overlap of the masks that the queried "
        "digit and another digit of the image give for the same edit (cosine), weight 1",
    ),
    # The probe's frozen encoder did not tell the digits apart: here the features pooled by the
    # mask must name the queried digit's class (E1's setting: a query-conditioned attention
    # learning from a classification), which only a mask on that digit can pool.
    "screen-identify": dataclasses.replace(
        screen, w_teacher=1.0, w_keep=1.0, edit_query="mask", w_identify=1.0,
        description="screening: as screen-qmask, plus the query's class classified from the "
        "encoder's features pooled by the mask, weight 1",
    ),
    # Added after screen-apart and screen-identify's first epochs left the masks blind: a
    # curriculum, as E3's masks only localised after one. Before the GAN, the encoder and the
    # mask heads train alone for 3,000 steps supervised on the queried digit's strokes (the
    # probe's stage, scripts/e4_mask_probe.py: ARNN's head reached a 60 % query ratio there);
    # the GAN's 6 epochs then show whether its terms keep a query-using mask. The stage uses
    # the edit region, which the unsupervised design never sees: a mask kept here says the
    # training signal can keep the selection, not that it finds it.
    "screen-locate": dataclasses.replace(
        screen, w_teacher=1.0, w_keep=1.0, edit_query="mask", locate_steps=3000,
        description="screening: as screen-qmask, after a first stage of 3,000 steps that trains "
        "the encoder and mask heads alone on the queried digit's strokes",
    ),
    # A pipeline check: every step of the reproduction in well under a minute; numbers mean
    # nothing.
    "tiny": Budget(
        epochs=2, lr_step=1, images=24, canvas=48, batch_size=8, channels=4, d_channels=4,
        mask_hidden=4, judge_epochs=1, judge_channels=4, val_samples=16, test_samples=16,
        description="pipeline check only (numbers mean nothing): 24 images of 48 px, tiny "
        "networks, 2 epochs",
    ),
}  # fmt: skip


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
    """The budget's config, checked before any run starts."""
    base = EXPERIMENT.budget_config(b, dataset, o)
    base.check()
    return base


def _prepare(dataset: str, configs: list[E4Config], jobs: int, o: dict[str, Any]) -> list:
    """Generate the data once, before parallel runs read it."""
    if jobs > 1:
        from attentionrnn.experiments.e4.train import load_data

        load_data(configs[0])
    return configs


def _columns(ms: list[dict[str, Any]]) -> dict[str, Any]:
    """A mask head's entries of the table: mean ± std over its seeds of :data:`COLUMNS`, and the
    references (the exact edit, a uniform mask, the judge) of its first seed."""
    first = ms[0]
    exact = first.get("exact_edit") or {}
    return {
        **{key: seed_stats([m.get(f"test_{key}") for m in ms]) for key, *_ in COLUMNS},
        "exact_edit": {key: exact.get(key) for key, *_ in COLUMNS},
        "uniform_mask": _uniform_mask(first),
        "judge_accuracy": first.get("judge", {}).get("test_accuracy"),
    }


def _reference_row(label: str, values: dict[str, float | None]) -> list[list[str]]:
    """The cells of a table row of a reference that has no seeds or cost (the exact edit, a
    uniform mask); none when it has no value at all (runs recorded before the reference was
    measured)."""
    if all(v is None for v in values.values()):
        return []
    cells = [label, "–"] + [
        "–" if values.get(key) is None else f"{values[key] * scale:.{digits}f}"
        for key, _, scale, digits in COLUMNS
    ] + ["–"] * len(results.COST_COLUMNS)  # fmt: skip
    return [cells]


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


def _sample_grid(runs: dict[str, Path], path: Path, title: str, count: int = 6) -> Path:
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
    return sample_grid(editors, task, idx[pick], targets[pick], path, title=title)


def _section(summary: dict[str, Any], d: str, rows: dict[str, Any]) -> list[str]:
    """A dataset's table with the references below its rows, the judge's accuracy and its
    figures."""
    table = [
        results.row_cells(r, [format_stats(r[k], digits, scale) for k, _, scale, digits in COLUMNS])
        for r in rows.values()
    ]
    first = next(iter(rows.values()))
    table += _reference_row("exact edit", first["exact_edit"])
    table += _reference_row("uniform mask (chance)", first.get("uniform_mask") or {})
    header = ["mask", "seeds", *[c[1] for c in COLUMNS], *results.COST_COLUMNS]
    lines = [f"## {d}", "", *results.markdown_table(header, table), ""]
    if first.get("judge_accuracy") is not None:
        lines += [f"Judge accuracy on real test images: {100 * first['judge_accuracy']:.1f} %.",
                  ""]  # fmt: skip
    lines += results.comparison_section(
        summary, d, rows, reference=REFERENCE, compared=COMPARED, short="CTX",
        units="in the table's units", interval="edit_success", scale=SCALE, digits=DIGITS,
    )  # fmt: skip
    return lines + results.markdown_figures(summary, d, ("curves", "samples"))


#: The title of :func:`results_markdown` and the text above its tables.
TITLE = "E4 image editing (ModularGAN-style, swappable mask heads)"
CAPTION = (
    "Test edits of the last epoch's weights (the default; `--select edit_success` of "
    "`e4 train` picks the best validation epoch instead). Edit "
    "success: share of edits whose new colour the separately trained judge reads; "
    "preservation L1: mean absolute change (RGB in [0, 1]) outside the edited digit's "
    "strokes; L1 to exact: against the exactly rendered edit; mask on digit / in box: share "
    "of the edit module's mask mass on the digit's strokes / box; KID against the exact "
    "edits, with the judge's penultimate features. Mean ± sample standard deviation over "
    "the seeds listed (one seed has no ±). The row 'exact edit' is what the perfect edit "
    "scores (its mask is the stroke region)."
)


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
    row_field="mask",
    base_config=_base_config,
    prepare=_prepare,
    columns=_columns, curve_figure=curve_figure, run_figure=_sample_grid, figure="samples",
    figure_title="edits",
    table_title=TITLE, table_caption=CAPTION, table_section=_section,
    rows=ROW_TABLE, reference=REFERENCE, compared=COMPARED, scale=SCALE, digits=DIGITS,
    curves=CURVES,
    train_keys=("test_edit_success", "test_preservation_l1", "test_truth_l1",
                "test_mask_correctness", "test_mask_correctness_box", "test_kid",
                "val_edit_success", "epochs", "best_epoch", "precision", "training_time_s"),
    config_flags=("mnist", "celeba_dir", "data_dir"),
    commands="attentionrnn.experiments.e4.commands",
))  # fmt: skip

#: Write ``results.{json,md}`` and the figures from every finished run under ``OUT/runs``
#: (:meth:`~attentionrnn.engine.experiment.Experiment.assemble_table`).
assemble = EXPERIMENT.assemble
#: The results of :func:`assemble` as Markdown
#: (:meth:`~attentionrnn.engine.experiment.Experiment.markdown_document`).
results_markdown = EXPERIMENT.markdown
