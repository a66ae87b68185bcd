"""Run the E3 attention variants and assemble the results table (VQA accuracy by question type).

``reproduce(out, budget, ...)`` trains each (dataset, method, seed) run that is not finished yet
into ``OUT/runs/DATASET/METHOD/seedS``, so a reproduction can be run in pieces and resumed.
:func:`assemble` builds the table from **every** finished ``metrics.json`` under ``OUT/runs`` —
mean ± standard deviation over seeds — and writes ``OUT/results.md``, ``OUT/results.json``, the
learning curves ``OUT/curves_DATASET.png`` and, where the weights and data are present, the
attention figure ``OUT/masks_DATASET.png``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attentionrnn.engine import results
from attentionrnn.engine.errors import UserError
from attentionrnn.engine.experiment import Experiment, Row, config_budget, register_experiment
from attentionrnn.engine.reproduce import reproduce as engine_reproduce
from attentionrnn.engine.runs import format_stats, seed_stats
from attentionrnn.experiments.e3.config import E3Config
from attentionrnn.experiments.e3.data import QUESTION_TYPES
from attentionrnn.experiments.e3.evaluate import answer_prior
from attentionrnn.experiments.e3.figures import curve_figure, mask_figure
from attentionrnn.experiments.e3.model import REFERENCE_ATTENTIONS
from attentionrnn.experiments.e3.rundata import load_data
from attentionrnn.experiments.e3.train import train

logger = logging.getLogger("attentionrnn.e3.reproduce")

__all__ = ["BUDGETS", "EXPERIMENT", "Budget", "assemble", "reproduce", "results_markdown"]


#: What a budget sets besides its epochs: network size, data size and training length, and the
#: first epochs on the non-relational questions only (:attr:`E3Config.curriculum_epochs`; a
#: budget with a curriculum runs only on the datasets with relational labels).
BUDGET_FIELDS = ("lr_step", "patience", "mcb_dim", "image_size", "blocks", "val_images",
                 "train_questions", "test_questions", "generated_train_images",
                 "generated_test_images", "curriculum_epochs")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Budget(config_budget(E3Config, *BUDGET_FIELDS, spread_seeds=(0, 1, 2))):
    """One budget: :data:`BUDGET_FIELDS` (defaults: E3Config's); 3 seeds for the rows whose
    spread the comparison needs (MCB attention and ARNN)."""

    #: ``(dataset, epochs)`` pairs that override ``epochs`` for a dataset
    dataset_epochs: tuple[tuple[str, int], ...] = ()

    def epochs_for(self, dataset: str) -> int:
        """The number of epochs of ``dataset``'s runs."""
        return dict(self.dataset_epochs).get(dataset, self.epochs)


#: The rows of the table: label, relative training cost (one thread, batch 64, 64 px, a 2-core
#: machine shared with other jobs: 0.27 / 0.54 / 0.19 / 0.20 s per step; noisy), so that parallel
#: jobs finish together, and spread seeds.
ROW_TABLE = {
    "none": Row("no attention (mean pool)", cost=0.6),
    "mcb": Row("MCB attention (conv)", cost=1.0, spread=True),
    "arnn": Row("ARNN (bi)", cost=0.8, spread=True),
    "brnn": Row("BRNN", cost=0.7),
    "oracle": Row("oracle mask (named objects)", cost=0.6),
}
#: The datasets with object boxes (the oracle row needs them).
BOXED = ("sort_of_clevr",)
#: The datasets whose questions are labelled relational or not (a curriculum needs them).
RELATIONAL = ("sort_of_clevr",)

BUDGETS: dict[str, Budget] = {
    # easy-VQA's ~34,700 training questions are 542 steps of 64. Measured (8-epoch trial, one
    # thread per run, two runs on the two cores): ARNN's validation accuracy was 0.900 / 0.992 /
    # 0.9995 after epochs 1 / 2 / 3, MCB's 0.872 after epoch 1, so 4 epochs (lr constant: the
    # first halving would come after epoch 4) are past the knee. The generated set (4,000 images
    # x 10 questions: 625 steps) is harder (relational questions) and gets 6 epochs, the last two
    # at half the lr, so that both datasets' 16 runs fit one sitting with 2 jobs (measured:
    # 1 h 47 min; an epoch 2.7-3.4 min per MCB run, 1.2 min per ARNN run on free cores). The
    # learned rows' curves there swing by +-5 points and still crept up at epoch 6, but twice
    # the length did not help: 12 epochs (lr halved after 8) gave ARNN 66.9 % and MCB 65.5 %
    # test, as 6 epochs do, with masks still at the uniform level (docs/results/e3-cpu/longer).
    # The oracle row is past its knee by epoch 4 (val .80 .85 .87 .88 .87 .88).
    "cpu": Budget(
        epochs=6, lr_step=4, dataset_epochs=(("easy_vqa", 4),),
        description="CNN 64 px -> 8x8x64 grid, GRU 64, MCB d=1024, 2 glimpses; Adam 1e-3 halved "
        "every 4 epochs, batch 64; easy-VQA (all questions, 4 epochs) and the generated set "
        "(4,000 / 1,000 images, 10 questions each, 6 epochs); bf16 where native",
    ),
    # The cpu budget's generated-set runs after a curriculum of non-relational questions: mixed
    # from the start, every learned row kept its masks at the uniform level (mean pooling serves
    # the counting and relational questions); in an exploratory loop on the non-relational
    # questions alone ARNN's glimpses moved onto the named object by ~4,000 steps of 64 (16
    # epochs of this set's ~16,000 non-relational training questions), MCB's by ~2,000. Then
    # the cpu budget's 6 epochs on all questions, lr halved after 4.
    "cpu-curriculum": Budget(
        epochs=22, lr_step=4, curriculum_epochs=16,
        description="the cpu budget's generated set, after 16 epochs on its non-relational "
        "questions only: CNN 64 px -> 8x8x64 grid, GRU 64, MCB d=1024, 2 glimpses; Adam 1e-3, "
        "then 6 epochs on all questions, lr halved after 4; batch 64; bf16 where native",
    ),
    # The curriculum sized from the validation curves of cpu-curriculum's seed 0 (code d2b5a7b):
    # ARNN's non-relational validation accuracy was .94 .98 .98 .997 .995 .998 after epochs
    # 8-13, the least-squares slope over the last five epochs first under 0.005 at epoch 13; MCB's
    # was flat (.71-.75) from epoch 3. So 13 curriculum epochs for every row. On all questions
    # ARNN was still rising after 6 epochs (.77 .75 .83 .85 .86), so up to 18 epochs there, lr
    # halved every 4, and early stopping after 6 epochs without a better validation accuracy
    # (counted from the end of the curriculum) ends each run where its curve is flat.
    "curriculum": Budget(
        epochs=31, lr_step=4, curriculum_epochs=13, patience=6, seeds=(0, 1),
        spread_seeds=(0, 1, 2, 3, 4),
        description="the cpu budget's generated set, after 13 epochs on its non-relational "
        "questions only: CNN 64 px -> 8x8x64 grid, GRU 64, MCB d=1024, 2 glimpses; Adam 1e-3, "
        "then up to 18 epochs on all questions, lr halved every 4, early stop after 6 without a "
        "better validation accuracy; MCB and ARNN 5 seeds, the other rows 2; bf16 where native",
    ),
    # A pipeline check: every step of the reproduction in a few minutes; the numbers mean nothing.
    "tiny": Budget(
        epochs=2, lr_step=1, dataset_epochs=(("sort_of_clevr", 1),), mcb_dim=256, image_size=32,
        blocks=2, val_images=20, train_questions=1000, test_questions=300,
        generated_train_images=120, generated_test_images=30, spread_seeds=(0,),
        description="pipeline check only (numbers mean nothing): 32 px images, MCB d=256, "
        "1,000 training questions, 2 epochs (the generated set: 1)",
    ),
}  # fmt: skip


def reproduce(out: str | Path, budget: str | Budget = "cpu", **kwargs: Any) -> dict[str, Any]:
    """Train the runs that are missing, then :func:`assemble` the table from all finished runs
    (:func:`attentionrnn.engine.reproduce.reproduce` of :data:`EXPERIMENT`; ``oracle`` only on
    the datasets with boxes; default datasets: both offline ones, or only the relational set
    for a budget with a curriculum; data options ``vqa_dir``, ``easy_vqa_dir``, ``data_dir``)."""
    return engine_reproduce(EXPERIMENT, out, budget, **kwargs)


def _check(name: str, b: Budget, datasets: Any) -> None:
    if b.curriculum_epochs and set(datasets) - set(RELATIONAL):
        raise UserError(
            f"budget {name} trains a curriculum of non-relational questions, which only "
            f"{', '.join(RELATIONAL)} has; pass --datasets {' '.join(RELATIONAL)}"
        )


def _base_config(b: Budget, dataset: str, o: dict[str, Any]) -> E3Config:
    return EXPERIMENT.budget_config(b, dataset, o, epochs=b.epochs_for(dataset))


def _prepare(dataset: str, configs: list[E3Config], jobs: int, o: dict[str, Any]) -> list:
    """Fill easy-VQA's cache once, before parallel runs read it."""
    if dataset == "easy_vqa" and jobs > 1:
        from attentionrnn.experiments.e3.data import read_easy_vqa

        read_easy_vqa(o.get("easy_vqa_dir"), o.get("data_dir"))
    return configs


# ------------------------------------------------------------------------------------------
# the table, from finished runs


def _columns(ms: list[dict[str, Any]]) -> dict[str, Any]:
    """A method's entries of the table: mean ± std over its seeds."""

    def correctness(m: dict[str, Any]) -> float | None:
        values = m.get("test_attention_correctness")
        return sum(values) / len(values) if values else None

    glimpses = max(len(m.get("test_attention_correctness") or []) for m in ms)
    return {
        "test_accuracy": seed_stats([m["test_accuracy"] for m in ms]),
        "val_accuracy": seed_stats([m["val_accuracy"] for m in ms]),
        "by_type": {
            t: seed_stats([m["test_by_type"].get(t) for m in ms])
            for t in QUESTION_TYPES
            if any(t in m["test_by_type"] for m in ms)
        },
        "relational": seed_stats([m.get("test_relational") for m in ms]),
        "non_relational": seed_stats([m.get("test_non_relational") for m in ms]),
        "attention_correctness": seed_stats([correctness(m) for m in ms]),
        "correctness_by_glimpse": {
            f"glimpse{g + 1}": seed_stats([_glimpse(m, g) for m in ms]) for g in range(glimpses)
        },
        "attention_chance": seed_stats([m.get("test_attention_chance") for m in ms]),
    }


def _glimpse(m: dict[str, Any], g: int) -> float | None:
    values = m.get("test_attention_correctness") or []
    return values[g] if g < len(values) else None


def _answer_priors(found: dict[str, dict[str, dict[int, dict[str, Any]]]]) -> dict[str, Any]:
    """``{"answer_prior": {dataset: scores}}``: the question-only baseline of each dataset, as
    its runs recorded it or, for runs recorded before it was, computed from their data."""
    priors: dict[str, Any] = {}
    for d, rows in found.items():
        first = next(iter(rows[min(rows, key=EXPERIMENT.order)].values()))
        prior = first.get("test_answer_prior")
        if prior is None:
            try:
                config = E3Config(**first["config"])
                prior = answer_prior(load_data(dataclasses.replace(config, progress=False)))
            except (UserError, OSError, TypeError) as e:  # the data are not here
                logger.warning("%s: no question-only baseline (%s)", d, e)
                continue
        priors[d] = prior
    return {"answer_prior": priors}


def _point(value: float | None) -> dict[str, Any]:
    """One value as the statistics of a single seed (for :func:`_fmt`)."""
    return seed_stats([value])


def _fmt(stats: dict[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    return format_stats(stats, digits, scale)


def _section(summary: dict[str, Any], d: str, rows: dict[str, Any]) -> list[str]:
    """A dataset's table (by the question types it has), the question-only baseline and a
    uniform mask's attention correctness below it, and its figures."""
    types = [t for t in QUESTION_TYPES if any(t in r["by_type"] for r in rows.values())]
    relational = any(r["relational"]["mean"] is not None for r in rows.values())
    glimpses = sorted({g for r in rows.values() for g in r.get("correctness_by_glimpse", {})})
    extra = ["relational", "non-relational"] if relational else []
    if relational:
        extra += [f"att. corr. {g.replace('glimpse', 'glimpse ')} %" for g in glimpses] or [
            "att. correctness %"]  # fmt: skip
    table = []
    for r in rows.values():
        cells = [_fmt(r["test_accuracy"]), *(_fmt(r["by_type"].get(t)) for t in types)]
        if relational:
            cells += [_fmt(r["relational"]), _fmt(r["non_relational"])]
            by_glimpse = r.get("correctness_by_glimpse", {})
            cells += ([_fmt(by_glimpse.get(g)) for g in glimpses] if glimpses
                      else [_fmt(r["attention_correctness"])])  # fmt: skip
        table.append(results.row_cells(r, cells))
    prior = summary.get("answer_prior", {}).get(d)
    if prior:
        cells = ["question only (prior)", "–", _fmt(_point(prior["accuracy"]))]
        cells += [_fmt(_point(prior["by_type"].get(t))) for t in types]
        if relational:
            cells += [_fmt(_point(prior.get("relational"))),
                      _fmt(_point(prior.get("non_relational"))), "–"]  # fmt: skip
        table.append(cells + ["–"] * len(results.COST_COLUMNS))
    header = ["method", "seeds", "test acc %", *types, *extra, *results.COST_COLUMNS]
    lines = [f"## {d}", "", *results.markdown_table(header, table), ""]
    chance = next((r["attention_chance"] for r in rows.values()
                   if r["attention_chance"]["mean"] is not None), None)  # fmt: skip
    if relational and chance:
        lines += [f"A uniform mask's attention correctness: {_fmt(chance)} %.", ""]
    lines += results.comparison_section(
        summary, d, rows, reference=REFERENCE, compared=COMPARED, short="MCB",
        units="percentage points", scale=SCALE, digits=DIGITS,
    )  # fmt: skip
    return lines + results.markdown_figures(summary, d)


#: The row every other is tested against: MCB's own attention (the paper's baseline).
REFERENCE = "mcb"
#: The quantities tested against :data:`REFERENCE` (label, path in a summarised row).
COMPARED: results.Compared = {
    "test_accuracy": ("test acc", ("test_accuracy",)),
    "relational": ("relational", ("relational",)),
    "non_relational": ("non-relational", ("non_relational",)),
    **{f"glimpse{g}": (f"att. corr. glimpse {g}", ("correctness_by_glimpse", f"glimpse{g}"))
       for g in (1, 2)},
}  # fmt: skip
#: how the comparisons and the runs section show them: in percent, one decimal
SCALE, DIGITS = 100.0, 1
#: the validation curve whose final slope says whether a run has settled (the budgets' rule)
CURVES = {"val_accuracy": ("val acc", ("val_accuracy",))}

#: The title of :func:`results_markdown` and the text above its tables.
TITLE = "E3 visual question answering (MCB with swappable attention)"
CAPTION = (
    "Test accuracy (%) at the best validation epoch, overall and by question type (VQA v2: "
    "the VQA accuracy min(#humans/3, 1)); attention correctness: the share of the mask's "
    "mass inside the boxes of the objects the question is about (generated set, per glimpse; "
    "a uniform mask scores the boxes' share of the image, given below the table). Mean ± "
    "sample standard deviation over the seeds listed (one seed has no ±). "
    "'question only (prior)': each test question answered with the training set's most "
    "frequent answer to the same question, no image. 'oracle mask': not an estimator but "
    "a bound: the same network with each glimpse spread over the grid cells the question's "
    "object boxes overlap (the generated set). "
    "min/run: training minutes per run; wall: hours of all runs of the row."
)


EXPERIMENT = register_experiment(Experiment(
    name="e3",
    help="experiment E3: visual question answering (MCB, question-conditioned attention)",
    description="Experiment E3: VQA with MCB fusion and its spatial attention replaced by "
    "AttentionRNN conditioned on the question; easy-VQA, a generated relational set, VQA v2.",
    config=E3Config,
    train=train,
    budgets=BUDGETS,
    base_config=_base_config,
    default_datasets=lambda b: RELATIONAL if b.curriculum_epochs else ("easy_vqa", "sort_of_clevr"),
    skip=lambda method, dataset: method in REFERENCE_ATTENTIONS and dataset not in BOXED,
    check=_check,
    prepare=_prepare,
    columns=_columns, curve_figure=curve_figure, run_figure=mask_figure, totals=_answer_priors,
    reference=REFERENCE, compared=COMPARED, scale=SCALE, digits=DIGITS, curves=CURVES,
    table_title=TITLE, table_caption=CAPTION, table_section=_section,
    rows=ROW_TABLE,
    train_keys=("test_accuracy", "test_by_type", "test_relational", "test_non_relational",
                "test_attention_correctness", "val_accuracy", "epochs", "best_epoch",
                "precision", "training_time_s"),
    datasets_help="datasets to add runs of (default: easy_vqa and sort_of_clevr; with a "
    "curriculum budget, sort_of_clevr)",
    methods_help="rows to add (oracle: on the generated set only)",
    seeds_help="training seeds of every row (default: the budget's; 3 for MCB attention and ARNN)",
    config_flags=("vqa_dir", "easy_vqa_dir", "data_dir"),
))  # fmt: skip

#: Write ``results.{json,md}`` and the figures from every finished run under ``OUT/runs``
#: (:meth:`~attentionrnn.engine.experiment.Experiment.assemble_table`).
assemble = EXPERIMENT.assemble
#: The results of :func:`assemble` as Markdown
#: (:meth:`~attentionrnn.engine.experiment.Experiment.markdown_document`).
results_markdown = EXPERIMENT.markdown
