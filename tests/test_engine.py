"""The engine: one-line CLI errors (through E1's train), and the declared-experiment contract of
``docs/adding-an-experiment.md``, whose example is run here as written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from e1_cli import train_args as _cmd

from attentionrnn.cli import main

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------- CLI errors


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    return err[-1]


def test_cli_truncated_data_file_is_one_line(tiny, tmp_path, capsys):
    cut = tmp_path / "cut.npz"
    cut.write_bytes(tiny.read_bytes()[: tiny.stat().st_size // 2])
    assert main(_cmd(cut, tmp_path / "r", 1)) == 2
    line = _error_line(capsys)
    assert line.startswith("attentionrnn: error:") and "cut.npz" in line and "truncated" in line


def test_cli_non_zip_data_file_is_one_line(tmp_path, capsys):
    text = tmp_path / "notes.npz"
    text.write_text("not a dataset\n")
    assert main(_cmd(text, tmp_path / "r", 1)) == 2
    assert "notes.npz: not a complete .npz (zip) file" in _error_line(capsys)


def test_cli_wrong_dataset_in_file(tiny, tmp_path, capsys):
    args = _cmd(tiny, tmp_path / "r", 1)
    args[args.index("mref")] = "mdist"
    assert main(args) == 2
    assert "holds 'mref' data" in _error_line(capsys)


def test_cli_missing_mnist_folder(tmp_path, capsys):
    args = ["e1", "train", "--out", str(tmp_path / "r"), "--samples", "50",
            "--data-dir", str(tmp_path / "data"), "--mnist", str(tmp_path / "nowhere")]  # fmt: skip
    assert main(args) == 2
    line = _error_line(capsys)
    assert "nowhere" in line and "missing MNIST file" in line


def test_cli_corrupt_mnist_file(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # fmt: skip
        (folder / f"{name}.gz").write_bytes(b"\x1f\x8b broken")
    args = ["e1", "generate", "mref", "--images", "2", "--out", str(tmp_path / "m.npz"),
            "--mnist", str(folder), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert str(folder) in _error_line(capsys)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--epochs", "abc", "invalid int value: 'abc'"),
        ("--epochs", "0", "epochs must be >= 1, got 0"),
        ("--lr", "-1", "lr must be a positive number"),
        ("--lr", "nan", "lr must be a positive number"),
    ],
)
def test_cli_bad_numeric_flag(tiny, tmp_path, capsys, flag, value, message):
    args = [*_cmd(tiny, tmp_path / "r", 1), flag, value]  # a repeated flag: the last one wins
    assert main(args) == 2  # checked as the flag is parsed: one line, no usage block
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert message in line


def test_cli_verbose_shows_the_traceback(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("x")
    from attentionrnn.engine.errors import UserError

    with pytest.raises(UserError):
        main(["-v", *_cmd(text, tmp_path / "r", 1)])


# ---------------------------------------------------------------------------------- contract


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The example of docs/adding-an-experiment.md, as a module; unregistered afterwards."""
    from attentionrnn.engine import experiment

    text = (REPO / "docs" / "adding-an-experiment.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "toy_experiment.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__("toy_experiment")
    yield module
    experiment._REGISTRY.pop("toy", None)
    sys.modules.pop("toy_experiment", None)


def test_the_documented_example_runs(toy, tmp_path, capsys):
    from attentionrnn.engine.reproduce import reproduce

    out = tmp_path / "toy-tiny"
    summary = reproduce(toy.EXPERIMENT, out, jobs=1, threads=1, progress=False)
    rows = summary["results"]["mref"]
    assert list(rows) == ["ctx", "arnn"] and rows["arnn"]["seeds"] == [0, 1]
    text = (REPO / "docs" / "adding-an-experiment.md").read_text()
    assert toy.markdown(summary) in text  # the table the document shows
    plan = reproduce(toy.EXPERIMENT, out, jobs=1, threads=1, dry_run=True)
    assert plan["runs"] == [] and plan["whole"]["runs"] == 4  # every run finished
    # the CLI built from the declaration
    assert main(["toy", "train", "--out", str(tmp_path / "one"), "--attention", "ctx"]) == 0
    assert json.loads(capsys.readouterr().out) == {"score": 0.3}
    assert main(["toy", "table", str(out)]) == 0
    assert "ARNN (bi)" in capsys.readouterr().out
    assert main(["toy", "reproduce", "--methods", "none", "--out", str(out)]) == 2


def test_reproduce_passes_the_memory_layout_to_every_run(toy, tmp_path):
    out = tmp_path / "toy"
    assert main(["toy", "reproduce", "--out", str(out / "cl"), "--jobs", "1"]) == 0
    assert main(["toy", "reproduce", "--out", str(out / "contig"), "--jobs", "1",
                 "--no-channels-last"]) == 0  # fmt: skip
    for folder, layout in (("cl", True), ("contig", False)):
        runs = sorted((out / folder / "runs").glob("*/*/seed*/metrics.json"))
        assert len(runs) == 4
        assert {json.loads(r.read_text())["config"]["channels_last"] for r in runs} == {layout}


def test_train_help_is_its_functions_docstring(toy, capsys):
    from attentionrnn.engine.commands import doc_texts

    # the docstring's first paragraph, then the rest up to its "Returns:" section
    description = "Score the run from its seed and method and write RUN_DIR/metrics.json."
    e = toy.EXPERIMENT
    assert (e.train_help, e.train_description) == ("train one toy run", description)
    assert main(["toy", "--help"]) == 0
    assert re.search(r"\n +train +train one toy run\n", capsys.readouterr().out)
    assert main(["toy", "train", "--help"]) == 0
    assert "\n\nScore the run from its seed and method and write" in capsys.readouterr().out

    def acronym():
        """PAN runs.

        One paragraph
        over two lines.

        Another.

        Args:
            none.
        """

    assert doc_texts(acronym) == ("PAN runs", "One paragraph over two lines.\n\nAnother.")
    assert doc_texts(lambda: None) == ("", "")


def test_every_experiment_describes_its_train_command():
    from attentionrnn.engine.experiment import experiments

    declared = experiments()
    for name in ("e1", "e2", "e3", "e4"):
        e = declared[name]
        assert e.train_help and e.train_help[0].islower() and e.train_description, name
        assert not e.train_help.endswith(".") and "Returns" not in e.train_description, name


def test_help_states_each_default_once(capsys, monkeypatch):
    # an option's default is appended to its help unless the help already says it or it is None
    monkeypatch.setenv("COLUMNS", "400")
    for name in ("e1", "e2", "e3", "e4"):
        for command in ("train", "reproduce", "table"):
            assert main([name, command, "--help"]) == 0
            text = capsys.readouterr().out
            assert "(default: None)" not in text, (name, command)
            for line in text.splitlines():
                assert line.count("default") <= 1, (name, command, line)
    assert main(["e1", "train", "--help"]) == 0
    assert re.search(r"--epochs EPOCHS .*\(default: \d+\)", capsys.readouterr().out)


def test_unknown_rows_and_datasets_are_refused(toy, tmp_path):
    from attentionrnn.engine.errors import UserError
    from attentionrnn.engine.reproduce import reproduce

    with pytest.raises(UserError, match="unknown method"):
        reproduce(toy.EXPERIMENT, tmp_path, methods=("brnn",), dry_run=True)
    with pytest.raises(UserError, match="unknown dataset"):
        reproduce(toy.EXPERIMENT, tmp_path, datasets=("mbg",), dry_run=True)
    with pytest.raises(UserError, match="budget must be one of"):
        reproduce(toy.EXPERIMENT, tmp_path, budget="huge", dry_run=True)


def test_a_row_declares_its_label_cost_and_spread(toy, tmp_path):
    import dataclasses
    from types import SimpleNamespace

    from attentionrnn.engine.experiment import Row
    from attentionrnn.engine.reproduce import reproduce

    rows = {"ctx": Row("CTX"), "arnn": Row("ARNN (bi)", cost=2.0, spread=True)}
    e = dataclasses.replace(toy.EXPERIMENT, rows=rows)
    assert e.table_rows == ("ctx", "arnn") and e.spread == ("arnn",)
    assert [e.label(m) for m in ("ctx", "arnn", "mine")] == ["CTX", "ARNN (bi)", "mine"]
    costs = [e.run_cost(SimpleNamespace(attention=m)) for m in ("ctx", "arnn", "mine")]
    assert costs == [1.0, 2.0, 1.0]  # an undeclared method counts 1
    plan = reproduce(e, tmp_path, jobs=1, threads=1, dry_run=True)
    seeds = sorted((Path(r["out"]).parent.name, Path(r["out"]).name) for r in plan["runs"])
    # CTX: the budget's seeds (0, 1); ARNN, a spread row: its spread_seeds (0,)
    assert seeds == [("arnn", "seed0"), ("ctx", "seed0"), ("ctx", "seed1")]
    # only the declared rows are the table's, and trained by default
    assert dataclasses.replace(toy.EXPERIMENT, rows={"arnn": Row("A")}).table_rows == ("arnn",)


def test_every_experiment_is_declared_and_none_imports_another():
    from attentionrnn.engine.experiment import experiments

    declared = experiments()
    assert {"e1", "e2", "e3", "e4"} <= set(declared)
    for name in ("e1", "e2", "e3", "e4"):
        for path in (REPO / "attentionrnn" / "experiments" / name).glob("*.py"):
            others = set(re.findall(r"attentionrnn\.experiments\.(e\d)", path.read_text()))
            assert others <= {name}, f"{path} imports {others - {name}}"


def test_content_sha256_hashes_what_data_holds_not_how():
    import numpy as np

    from attentionrnn.engine.state import content_sha256

    a = np.arange(6, dtype=np.int64)
    assert content_sha256(a, ["x", "y"], None) == content_sha256(a.copy(), ["x", "y"], None)
    assert content_sha256(np.asfortranarray(a.reshape(2, 3))) == content_sha256(a.reshape(2, 3))
    others = [a.reshape(2, 3), a.astype(np.int32), a + 1]  # shape, dtype and values count
    assert len({content_sha256(a), *(content_sha256(b) for b in others)}) == 4
    assert content_sha256(["ab", "c"]) != content_sha256(["a", "bc"])  # items stay apart
    assert content_sha256(None, a) != content_sha256(a)


def test_the_engine_imports_neither_the_layers_nor_an_experiment():
    """The engine records what its callers hand it (e.g. which scan products ran); it finds the
    experiments only through their declarations' module names (``engine.experiment``)."""
    pattern = re.compile(r"^\s*(?:from|import)\s+attentionrnn\.(layers|experiments|models)\b", re.M)
    for path in (REPO / "attentionrnn" / "engine").glob("*.py"):
        found = pattern.findall(path.read_text())
        assert not found, f"{path.name} imports attentionrnn.{found[0]}"


def test_shard_splits_by_rank_and_pads_training_epochs_evenly():
    import numpy as np

    from attentionrnn.engine.distributed import DistContext

    idx = np.arange(7)
    assert DistContext().shard(idx, even=True).tolist() == list(range(7))  # one process: all
    parts = [DistContext(rank=r, world=3).shard(idx) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(7))  # evaluation: each once
    even = [DistContext(rank=r, world=3).shard(idx, even=True) for r in range(3)]
    assert {len(p) for p in even} == {3} and even[1].tolist() == [1, 4, 0]  # padded with the head


def test_table_budget_defaults_to_the_one_its_folder_recorded(tmp_path, capsys):
    """``eN table OUT`` rebuilds with the budget OUT/results.json records (a folder such as
    results/plateau/digit is not named for its budget), else the folder's name less the
    prefix; ``--budget`` wins over both."""
    import argparse

    from attentionrnn.engine.commands import table

    seen = []

    def assemble(out, budget, figure=True):
        seen.append(budget)
        return {}

    out = tmp_path / "digit"
    (out / "runs").mkdir(parents=True)

    def rebuild(budget=None, folder=out):
        table(argparse.Namespace(out=folder, budget=budget), assemble, lambda s: "", "e1-")
        return seen[-1]

    assert rebuild() == "digit"  # no results.json: the folder's name
    (out / "results.json").write_text(json.dumps({"budget": "plateau-digit"}))
    assert rebuild() == "plateau-digit"
    assert rebuild("cpu") == "cpu"
    (out / "results.json").write_text(json.dumps({"budget": "custom"}))  # made in Python
    assert rebuild() == "digit"
    (out / "results.json").write_text("{not json")
    assert rebuild() == "digit"
    other = tmp_path / "e1-quick"
    (other / "runs").mkdir(parents=True)
    assert rebuild(folder=other) == "quick"


def test_curve_figure_tells_rows_apart_past_ten_colours(tmp_path, monkeypatch):
    """Each row its colour; past ten rows the colours repeat with another line style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attentionrnn.engine import figures

    kept = {}

    def keep(fig, out, *args, **kwargs):
        kept["fig"] = fig
        return Path(out)

    monkeypatch.setattr(figures, "save_figure", keep)
    curves = {f"row {k}": [[{"epoch": e, "v": k + e} for e in (1, 2)]] for k in range(12)}
    figures.curve_figure(curves, tmp_path / "c.png", [("v", lambda h: h["v"])], x="epoch")
    lines = kept["fig"].axes[0].get_lines()
    styles = [(ln.get_color(), ln.get_linestyle()) for ln in lines]
    assert len(lines) == 12 and len(set(styles)) == 12
    assert styles[0][0] == styles[10][0] and styles[0][1] != styles[10][1]
    plt.close(kept["fig"])


def test_results_list_every_run_with_its_provenance(tmp_path):
    from attentionrnn.engine.convergence import slope_text
    from attentionrnn.engine.results import assemble
    from attentionrnn.engine.runs import seed_stats
    from attentionrnn.engine.state import atomic_write_json

    flags = ["avx2", "fma", "avx512f", "avx512bw", "avx512_bf16"]
    recorded = {"epochs": 9, "best_epoch": 7, "training_time_s": 600.0, "precision": "bf16",
                "cpu": "AMD EPYC", "scan_products": "bf16",
                "provenance": {"git_commit": "0123456789abcdef", "cpu_flags": flags,
                               "data_sha256": "feedbeef" * 8}}  # fmt: skip
    # validation curves: ctx 0 flat over its last five epochs, arnn 0 rising 0.01 an epoch (the
    # epoch before them does not count), ctx 1 without a history
    flat = [{"epoch": e, "val": {"acc": 0.5 + 0.001 * (e % 2)}} for e in range(1, 10)]
    rising = [{"epoch": e, "val": {"acc": 0.1 * (e == 4) + 0.01 * e}} for e in range(1, 10)]
    runs = {("ctx", 0): {"acc": 0.5, **recorded, "history": flat},
            ("ctx", 1): {"acc": 0.7, "epochs": 4},
            ("arnn", 0): {"acc": 0.9, **recorded, "cpu": "Xeon", "history": rising, "provenance": {
                "git_commit": "0123456789abcdef+dirty", "cpu_flags": ["avx2"]}}}  # fmt: skip
    for (row, seed), m in runs.items():
        folder = tmp_path / "runs" / "mref" / row / f"seed{seed}"
        folder.mkdir(parents=True)
        atomic_write_json(m, folder / "metrics.json")

    def summarize(row, seeds):
        return {"label": row.upper(), "seeds": sorted(seeds),
                "acc": seed_stats([seeds[s]["acc"] for s in sorted(seeds)])}  # fmt: skip

    summary = assemble(tmp_path, "tiny", None, datasets=["mref"], summarize=summarize,
                       order=["ctx", "arnn"].index, markdown=lambda s: "# table\n",
                       reference="ctx", compared={"acc": ("accuracy", ("acc",))}, scale=100.0,
                       digits=1, curves={"acc": ("val acc", ("val", "acc"))})  # fmt: skip
    records = summary["runs"]["mref"]
    assert [(r["row"], r["seed"], r["acc"]) for r in records] == [
        ("ctx", 0, 0.5), ("ctx", 1, 0.7), ("arnn", 0, 0.9)]  # table order, then seed
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# table\n\n### Every run (mref)")
    assert [r["final_slope"]["acc"] for r in records] == [pytest.approx(0.0), None,
                                                          pytest.approx(0.01)]  # fmt: skip
    assert "| final slope (val acc) |" in text
    assert [slope_text(v) for v in (-0.0049, -0.005, None)] == ["-0.0049", "-0.0050 ↘", "–"]
    assert ("| CTX | 0 | 50.0 | 9 (7) | +0.0000 | 10 | bf16 | AMD EPYC, AVX-512 BF16 | 0123456 | "
            "feedbeeffeed | bf16 |") in text  # fmt: skip
    assert "| CTX | 1 | 70.0 | 4 | – | – | – | – | – | – | – |" in text  # predates the fields
    assert ("| ARNN | 0 | 90.0 | 9 (7) | +0.0100 ↗ | 10 | bf16 | Xeon, AVX2 | 0123456+dirty | – "
            "| bf16 |") in text  # fmt: skip
    assert json.loads((tmp_path / "results.json").read_text())["runs"]["mref"][2]["acc"] == 0.9
