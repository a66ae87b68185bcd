"""Bad inputs as a new user tries them (issue 37): each ends in one line and exit 2, or works.

Each case runs the CLI in this process on tiny generated data: ``assert_clean`` wants status 2 and
one ``error:`` line naming the problem (no traceback, nothing recorded). The counts per class are
in ``docs/bad-inputs.md``; the whole probe is ``python -m pytest tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from attentionrnn.cli import main
from attentionrnn.data.generate import generate_arrays, write_npz

BIG_SEED = str(10**24)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    for var in ("ATTENTIONRNN_DATA_DIR", "ATTENTIONRNN_CIFAR10_TAR", "ATTENTIONRNN_CIFAR_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """The exit status and stderr of ``attentionrnn ARGS`` run in this process."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_clean(args: list[str], capsys, *needles: str) -> str:
    """``args`` ends in exit 2 with one ``error:`` line that contains every needle."""
    code, err = run_cli(args, capsys)
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _train(data: Path, out: Path, *extra) -> list[str]:
    return ["e1", "train", "--dataset", "mref", "--attention", "ctx", "--data", data, "--out", out,
            "--epochs", "1", "--batch-size", "8", "--threads", "1", "--no-progress",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny) -> Path:
    """A finished one-epoch E1 run on the tiny data (copied by the cases that break it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([str(a) for a in _train(tiny, out)]) == 0
    return out


def _copy_run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))



# (experiment, command, flag, value, what the line must say): every one ends at the flag
BAD_FLAGS = [
    *[(e, "train", "--seed", s, "seed must be") for e in ("e1", "e2", "e3", "e4")
      for s in ("-1", BIG_SEED)],
    ("e1", "train", "--data-seed", "-1", "data_seed must be >= 0"),
    ("e3", "train", "--generated-seed", BIG_SEED, "generated_seed must be <="),
    ("e4", "train", "--data-seed", "-5", "data_seed must be >= 0"),
    *[("e1", "generate", "--seed", v, "seed must be") for v in ("-1", BIG_SEED)],
    *[(e, "reproduce", "--seeds", "-1", "seed must be >= 0") for e in ("e1", "e2", "e3", "e4")],
    ("e1", "generate", "--images", "0", "images must be >= 1"),
    ("e1", "generate", "--images", "1000000000000", "images must be <="),
    ("e1", "generate", "--canvas", "1000000", "canvas must be <="),
    ("e1", "generate", "--workers", "0", "workers must be >= 1"),
    ("e1", "train", "--rmsprop-alpha", "-1", "rmsprop_alpha must be >= 0"),
    ("e1", "train", "--rmsprop-alpha", "nan", "rmsprop_alpha must be a finite number"),
    ("e1", "train", "--lr-decay-every", "0", "lr_decay_every must be >= 1"),
    ("e1", "train", "--lr-decay-start", "-3", "lr_decay_start must be >= 0"),
    ("e1", "train", "--patience-from", "-1", "patience_from must be >= 0"),
    ("e1", "train", "--threads", "-1", "threads must be >= 1"),
    *[("e1", "train", "--attention-hidden", v, "attention_hidden must be >= 1")
      for v in ("-4", "0")],
    ("e1", "train", "--batch-size", "1", "batch_size must be >= 2"),
    ("e1", "train", "--samples", "10000000000000", "samples must be <="),
    ("e1", "train", "--canvas", "1000000", "canvas must be <="),
    ("e1", "train", "--lr", "inf", "lr must be a positive number"),
    ("e1", "train", "--lr-decay", "-2", "lr_decay must be a positive number"),
    ("e2", "train", "--momentum", "inf", "momentum must be a finite number"),
    ("e2", "train", "--weight-decay", "inf", "weight_decay must be a finite number"),
    ("e2", "train", "--batch-size", "1", "batch_size must be >= 2"),
    ("e3", "train", "--blocks", "10", "blocks must be <= 8"),
    ("e4", "train", "--w-cls", "inf", "w_cls must be a finite number"),
    ("e4", "train", "--samples", "100000", "samples must be <="),
    *[(e, "reproduce", "--jobs", "-1", "jobs must be >= 1") for e in ("e1", "e2", "e3", "e4")],
    ("e2", "reproduce", "--threads", "0", "threads must be >= 1"),
    *[("e1", "show", "--n", v, "n must be >= 1") for v in ("0", "-3")],
    ("e1", "train", "--epochs", "abc", "invalid int value: 'abc'"),
]


@pytest.mark.parametrize(("experiment", "command", "flag", "value", "message"), BAD_FLAGS)
def test_bad_number_or_seed_is_one_line(experiment, command, flag, value, message, tmp_path,
                                        capsys):  # fmt: skip
    args = [experiment, command]
    if command == "generate":
        args += ["mref", "--out", tmp_path / "g.npz"]
    elif command == "show":
        args += [tmp_path / "x.npz", "--out", tmp_path / "s.png"]
    elif command == "train":
        args += ["--out", tmp_path / "run"]
    else:
        args += ["--out", tmp_path / "results", "--dry-run"]
    assert_clean([*args, flag, value], capsys, message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "g.npz").exists()


def test_e3_blocks_that_halve_the_image_to_nothing(tmp_path, capsys):
    assert_clean(["e3", "train", "--out", tmp_path / "r", "--blocks", "7"], capsys,
                 "at most 6 blocks")  # fmt: skip


def test_e1_show_unknown_image_type(tiny, tmp_path, capsys):
    assert_clean(["e1", "show", tiny, "--out", tmp_path / "s.xyz"], capsys, "s.xyz", ".png")


def test_seed_at_its_limit_is_accepted():
    from attentionrnn.experiments.e2.train import E2Config

    E2Config(seed=2**32 - 1).check()  # no error


def _out_cases(tmp_path: Path, tiny: Path, probe: bool = False) -> dict[str, tuple[list, str]]:
    afile, folder = tmp_path / "afile", tmp_path / "folder.npz"
    if not probe:  # (probe: only the case names, for the parametrization)
        afile.write_text("x")
        folder.mkdir()
    base = ["--epochs", "1", "--threads", "1", "--no-progress"]
    return {
        "e1 train --out FILE": (_train(tiny, afile), "a file is in the way"),
        "e1 train --out FILE/run": (_train(tiny, afile / "run"), "is a file"),
        "e2 train --out FILE": (["e2", "train", "--out", afile, *base], "a file is in the way"),
        "e3 train --out FILE": (["e3", "train", "--out", afile, *base], "a file is in the way"),
        "e4 train --out FILE": (["e4", "train", "--out", afile, *base], "a file is in the way"),
        "e1 train --data-dir FILE": (
            ["e1", "train", "--out", tmp_path / "r", "--samples", "40", "--data-dir", afile,
             *base], "--data-dir"),  # fmt: skip
        "e1 generate --out FOLDER": (["e1", "generate", "mref", "--out", folder], "a folder"),
        "e1 show --out FOLDER": (["e1", "show", tiny, "--out", folder], "a folder"),
        "e1 table FILE": (["e1", "table", afile], "no runs/ folder"),
        "e1 reproduce --out FILE": (
            ["e1", "reproduce", "--out", afile, "--budget", "quick", "--datasets", "mref",
             "--methods", "ctx", "--seeds", "0", "--mnist", tmp_path / "none", "--jobs", "1"],
            str(afile)),  # fmt: skip
    }


@pytest.mark.parametrize("case", list(_out_cases(Path("/nonexistent"), Path("x"), probe=True)))
def test_output_path_that_cannot_be_written_is_one_line(case, tiny, tmp_path, capsys):
    args, needle = _out_cases(tmp_path, tiny)[case]
    assert_clean(args, capsys, needle)


def test_read_only_file_system_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert_clean(_train(tiny, tmp_path / "ro" / "run"), capsys, "Read-only file system")
    monkeypatch.undo()
    target = tmp_path / "ro2"
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert_clean(_train(tiny, target), capsys, "cannot write there")


def test_corrupt_checkpoint_is_one_line(finished, tiny, tmp_path, capsys):
    run = _copy_run(finished, tmp_path)
    ckpt = run / "checkpoint.pt"
    whole = ckpt.read_bytes()
    ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_clean(_train(tiny, run), capsys, "checkpoint.pt", "not a readable checkpoint")
    ckpt.write_bytes(whole[: len(whole) // 2])
    assert_clean(_train(tiny, run), capsys, "checkpoint.pt", "not a readable checkpoint")


def _results(tmp_path: Path, finished: Path, seed_folder: str = "seed0") -> Path:
    results = tmp_path / "results"
    run = results / "runs" / "mref" / "ctx" / seed_folder
    shutil.copytree(finished, run)
    return results


def test_corrupt_metrics_json_is_one_line(finished, tiny, tmp_path, capsys):
    run = _copy_run(finished, tmp_path)
    (run / "metrics.json").write_text('{"test_accuracy": 0.')
    assert_clean(_train(tiny, run), capsys, "metrics.json", "corrupt")
    results = _results(tmp_path, finished)
    (results / "runs/mref/ctx/seed0/metrics.json").write_bytes(b"\xff\x00garbage")
    assert_clean(["e1", "table", results], capsys, "metrics.json", "corrupt")
    assert_clean(["e1", "reproduce", "--out", results, "--datasets", "mref", "--methods", "ctx",
                  "--seeds", "1", "--dry-run"], capsys, "metrics.json")  # fmt: skip


def test_seed_folder_without_a_number_is_one_line(finished, tmp_path, capsys):
    results = _results(tmp_path, finished, "seedX")
    assert_clean(["e1", "table", results], capsys, "seedX", "seedN")


def test_another_experiments_run_in_a_table_folder_is_one_line(finished, tmp_path, capsys):
    results = _results(tmp_path, finished)
    for experiment in ("e2", "e3", "e4"):
        assert_clean([experiment, "table", results], capsys, "not a run of " + experiment)
    (results / "runs/mref/ctx/seed0/best.pt").unlink()  # the table needs no weights
    code, _ = run_cli(["e1", "table", results], capsys)
    assert code == 0


def test_npz_with_image_index_out_of_range_is_one_line(tiny, tmp_path, capsys):
    with np.load(tiny) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["image_index"] = arrays["image_index"] + 1000
    bad = write_npz(tmp_path / "bad.npz", arrays)
    assert_clean(_train(bad, tmp_path / "r"), capsys, "bad.npz", "image_index")


def _cifar_tar(path: Path) -> Path:
    from PIL import Image

    from attentionrnn.experiments.e2.data import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for split, n, name in [(s, n, c) for s, n in (("train", 3), ("test", 1))
                               for c in CIFAR10_CLASSES]:  # fmt: skip
            for i in range(n):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(buffer, "JPEG")
                info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                info.size = len(buffer.getvalue())
                tar.addfile(info, io.BytesIO(buffer.getvalue()))
    return path


def test_truncated_image_cache_is_decoded_again(tmp_path):
    from attentionrnn.experiments.e2.data import read_cifar10_tar

    tar = _cifar_tar(tmp_path / "c.tar")
    first = read_cifar10_tar(tar, md5="", cache_dir=tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:1000])
    again = read_cifar10_tar(tar, md5="", cache_dir=tmp_path / "cache")
    assert np.array_equal(first.train_x, again.train_x)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_tar_without_md5_check_is_one_line(keep, tmp_path, capsys):
    tar = _cifar_tar(tmp_path / "c.tar")
    whole = tar.read_bytes()
    end = len(whole.rstrip(b"\0"))  # the data, without the end-of-archive padding
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: int(end * keep)])
    assert_clean(["e2", "train", "--out", tmp_path / "r", "--cifar10-tar", cut, "--cifar10-md5",
                  "", "--data-dir", tmp_path / "cache", "--no-progress"], capsys,
                 "cut.tar", "truncated")  # fmt: skip
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing partial was cached


def test_diverging_run_stops_and_is_not_recorded(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert_clean(_train(tiny, out, "--lr", "1e30"), capsys, "diverged")
    assert not (out / "metrics.json").exists()


def test_non_finite_metrics_are_not_recorded_as_finished(tmp_path):
    from attentionrnn.engine.errors import DivergedError
    from attentionrnn.engine.trainer import check_finite

    with pytest.raises(DivergedError, match="test_loss is inf"):
        check_finite({"test_loss": float("inf"), "per_class": {"cat": None}}, "run")
    check_finite({"test_loss": 0.5, "val_error": None, "kid": float("nan")}, "run")  # no error


def test_replaced_data_file_is_noticed(tiny, digits, tmp_path, capsys):
    data = tmp_path / "data.npz"
    shutil.copy(tiny, data)
    code, _ = run_cli(_train(data, tmp_path / "run"), capsys)
    assert code == 0
    write_npz(data, generate_arrays("mref", 8, seed=1, digits=digits, workers=1))  # same path
    assert_clean(_train(data, tmp_path / "run"), capsys, "another configuration")


def test_second_process_on_the_same_out_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom attentionrnn.engine.lock import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", out],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        line = assert_clean(_train(tiny, out), capsys, "in use by another run")
        assert f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "metrics.json").exists()


def test_stale_temporaries_of_a_killed_writer_are_removed(tiny, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    stale, mine = out / f".checkpoint.pt.{dead.pid}.tmp", out / f".notes.json.{os.getpid()}.tmp"
    for path in (stale, mine):  # a killed writer's, and a live process's (kept)
        path.write_bytes(b"half")
    code, _ = run_cli(_train(tiny, out), capsys)
    assert code == 0 and not stale.exists() and mine.exists()
    big = tmp_path / f".big.npz.{dead.pid}.tmp"
    big.write_bytes(b"half")
    with np.load(tiny) as z:
        write_npz(tmp_path / "big.npz", {k: z[k] for k in z.files})
    assert not big.exists()


def test_verbose_after_the_command_shows_the_traceback(tmp_path):
    from attentionrnn.engine.errors import UserError

    with pytest.raises(UserError):
        main(["e1", "table", str(tmp_path), "-v"])


def _layers():
    from attentionrnn.layers.attention_rnn import AttentionRNN
    from attentionrnn.layers.scan import fused_unavailable_reason

    impls = ["bptt", "autograd"] + ([] if fused_unavailable_reason() else ["fused"])
    torch.manual_seed(0)
    state = AttentionRNN(4, 6, query_channels=3).state_dict()
    layers = {impl: AttentionRNN(4, 6, query_channels=3, implementation=impl) for impl in impls}
    for layer in layers.values():
        layer.load_state_dict(state)
    return layers


@pytest.mark.parametrize("poison", ["nan pixel", "inf pixel", "nan query"])
def test_layer_propagates_nan_and_inf_like_pytorch(poison):
    layers = _layers()
    x, q = torch.randn(2, 4, 7, 9), torch.randn(2, 3)
    where = {"nan pixel": (x, (0, 0, 3, 4)), "inf pixel": (x, (1, 2, 2, 2)), "nan query": (q, 0)}
    tensor, index = where[poison]
    tensor[index] = float("inf" if "inf" in poison else "nan")
    masks = {impl: layer(x, q, return_mask=True)[1] for impl, layer in layers.items()}
    expected = masks["bptt"].isnan()
    assert expected.any()
    for impl, mask in masks.items():
        assert torch.equal(mask.isnan(), expected), impl


def test_layer_handles_an_empty_batch_in_every_implementation():
    from attentionrnn.layers.factory import ATTENTION_NAMES, build_attention

    for impl, layer in _layers().items():
        x = torch.randn(0, 4, 7, 9, requires_grad=True)
        y, mask = layer(x, torch.randn(0, 3), return_mask=True)
        y.sum().backward()
        assert y.shape == x.shape and mask.shape == (0, 1, 7, 9) and x.grad.shape == x.shape, impl
    for name in ATTENTION_NAMES:
        layer = build_attention(name, 4, query_channels=3)
        assert layer(torch.randn(0, 4, 7, 9), torch.randn(0, 3)).shape == (0, 4, 7, 9), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_layer_names_a_dtype_mismatch(dtype):
    for layer in _layers().values():
        with pytest.raises(TypeError, match=f"x has dtype {dtype}.*parameters are torch.float32"):
            layer(torch.randn(1, 4, 7, 9, dtype=dtype), torch.randn(1, 3))
    if dtype is torch.bfloat16:  # under autocast the layer casts its input itself
        layer = _layers()["bptt"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(torch.randn(1, 4, 7, 9, dtype=dtype), torch.randn(1, 3))
        assert y.shape == (1, 4, 7, 9)
