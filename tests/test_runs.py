"""engine.runs: parallel jobs end with the process that started them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

# The parent trains two "runs" on two spawned jobs; each run records its pid and then sleeps far
# longer than the test waits.
PARENT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from attentionrnn.engine.runs import train_runs
    import tests.test_runs as here

    if __name__ == "__main__":
        train_runs([sys.argv[1] + "/a", sys.argv[1] + "/b"], here.sleepy_run, jobs=2)
    """
)


def sleepy_run(out: str) -> None:
    Path(out).write_text(str(os.getpid()))
    time.sleep(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited but may not be reaped yet (its parent is gone: init reaps it)
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_killed_parent_takes_its_jobs_with_it(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=root, env=env)
    files = [tmp_path / "a", tmp_path / "b"]
    deadline = time.monotonic() + 60
    while not all(f.exists() and f.read_text() for f in files):
        assert parent.poll() is None, "the parent ended before its jobs started"
        assert time.monotonic() < deadline, "the jobs did not start within 60 s"
        time.sleep(0.2)
    jobs = [int(f.read_text()) for f in files]
    assert all(_alive(pid) for pid in jobs)

    parent.send_signal(signal.SIGKILL)  # no handler can run: the jobs must notice by themselves
    parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in jobs) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in jobs if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"jobs {left} kept running after their parent was killed"


@pytest.mark.parametrize(("patience_from", "epochs_run"), [(0, 2), (3, 4)])
def test_fit_counts_patience_from_the_given_epoch(tmp_path, patience_from, epochs_run):
    """With a score that never improves after the first epoch, ``patience=1`` stops after two
    epochs — or, where the first epochs are a warm-up, one epoch after the warm-up's end."""
    import torch

    from attentionrnn.engine.distributed import DistContext
    from attentionrnn.engine.trainer import fit

    model = torch.nn.Linear(2, 1)
    state = fit(
        model, torch.optim.SGD(model.parameters(), lr=0.1), out=tmp_path,
        fingerprint={"x": 1}, ctx=DistContext(), epochs=10, patience=1, lr_at=lambda e: 0.1,
        train_one_epoch=lambda e: {"steps": 1}, evaluate=lambda: {"accuracy": 0.5},
        patience_from=patience_from,
    )  # fmt: skip
    assert state.epoch == epochs_run and state.best_epoch == 0


def test_a_resumed_run_counts_the_epochs_of_the_processes_before_it_in_its_wall_time(tmp_path):
    """``wall_time_s`` is the recipe's clock of this process; a run resumed from a checkpoint
    adds the epochs trained before (the table's wall hours and the time estimates read it)."""
    import dataclasses
    import time as clock

    import torch

    from attentionrnn.engine.distributed import DistContext
    from attentionrnn.engine.trainer import fit, write_metrics

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def run(epochs: int, pause: float):
        def one_epoch(e: int) -> dict:
            clock.sleep(pause)
            return {"steps": 1}

        return fit(
            model, optimizer, out=tmp_path, fingerprint={"x": 1}, ctx=DistContext(),
            epochs=epochs, patience=5, lr_at=lambda e: 0.1, train_one_epoch=one_epoch,
            evaluate=lambda: {"accuracy": 0.5},
        )  # fmt: skip

    first = run(1, 0.3)  # one slow epoch, checkpointed; then the process "stops"
    assert first.resumed_at == 0.0 and first.elapsed >= 0.3
    state = run(2, 0.0)  # another process resumes and trains epoch 2
    assert state.resumed_at == pytest.approx(first.elapsed)

    @dataclasses.dataclass
    class Config:
        epochs: int = 2
        channels_last: bool = False

    metrics = write_metrics(
        tmp_path, {"wall_time_s": 0.05}, state, config=Config(), precision="fp32",
        fingerprint={"x": 1}, model=model, optimizer=optimizer, ctx=DistContext(),
    )  # fmt: skip
    assert metrics["wall_time_s"] == pytest.approx(0.05 + first.elapsed)
    assert metrics["wall_time_s"] >= metrics["training_time_s"] - 0.05


def _finished(out: Path, run: str, **metrics: float) -> None:
    folder = out / "runs" / run
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_plan_times_each_run_by_its_rows_finished_runs(tmp_path):
    from attentionrnn.engine.runs import plan_markdown, plan_runs

    _finished(tmp_path, "a/slow/seed0", wall_time_s=3 * 3600)
    _finished(tmp_path, "a/slow/seed1", wall_time_s=5 * 3600)
    _finished(tmp_path, "a/slow/seed2", wall_time_s=4.5 * 3600)
    _finished(tmp_path, "b/fast/seed0", training_time_s=3600)  # older runs: training time only
    todo = [SimpleNamespace(out=str(tmp_path / "runs" / r)) for r in
            ("a/slow/seed3", "a/fast/seed0", "b/fast/seed1", "a/new/seed0")]  # fmt: skip
    costs = {"slow": 4.0, "fast": 1.0, "new": 2.0}
    plan = plan_runs(todo, jobs=2, cost=lambda c: costs[Path(c.out).parent.name])
    hours = {Path(r["out"]).relative_to(tmp_path / "runs").as_posix(): r["hours"]
             for r in plan["runs"]}  # fmt: skip
    # the same row's median; then the row on the other datasets; a row never run: its cost
    # times the median hours per cost of the timed runs (4.5/4, 1/1, 1/1 -> 1.0)
    assert hours == {"a/slow/seed3": 4.5, "a/fast/seed0": 1.0, "b/fast/seed1": 1.0,
                     "a/new/seed0": 2.0}  # fmt: skip
    assert plan["job_hours"] == pytest.approx(8.5) and plan["unknown"] == 0
    assert plan["wall_hours"] == pytest.approx(4.5)  # 4.5 on one job; 2 + 1 + 1 on the other
    text = plan_markdown(plan)
    assert "4 run(s) to train with 2 job(s)" in text and "~4.50 h" in text
    assert "other datasets" in text and "8.5 job-hours, ~4.5 h wall" in text
    assert "(1 of the runs from relative costs alone)" in text
    assert "Nothing to train" in plan_markdown(plan_runs([], jobs=2))
    alone = plan_runs(todo[-1:], jobs=2)  # nothing in the plan can be timed
    assert alone["unknown"] == 1 and "No estimate" in plan_markdown(alone)


def test_plan_counts_only_the_epochs_an_interrupted_run_has_left(tmp_path):
    import torch

    from attentionrnn.engine.runs import plan_markdown, plan_runs

    _finished(tmp_path, "a/row/seed0", wall_time_s=4 * 3600)
    todo = [SimpleNamespace(out=str(tmp_path / "runs" / f"a/row/seed{s}"), epochs=8)
            for s in (1, 2, 3)]  # fmt: skip
    saved = [Path(c.out) / "checkpoint.pt" for c in todo[:2]]
    for path in saved:
        path.parent.mkdir(parents=True)
    torch.save({"config": {}, "model": {}, "state": {"epoch": 6}}, saved[0])
    saved[1].write_bytes(b"truncated")
    plan = plan_runs(todo, jobs=1)
    hours = {Path(r["out"]).name: r["hours"] for r in plan["runs"]}
    # 6 of 8 epochs done: a quarter of the row's 4 h; an unreadable checkpoint or none: all of it
    assert hours == {"seed1": pytest.approx(1.0), "seed2": 4.0, "seed3": 4.0}
    assert plan["job_hours"] == pytest.approx(9.0)
    assert "resumes after epoch 6 of 8" in plan_markdown(plan)
    assert all("progress" not in r for r in plan["runs"])


def test_plan_prefers_runs_timed_on_this_cpu_and_totals_the_whole_request(tmp_path, monkeypatch):
    from attentionrnn.engine import runs
    from attentionrnn.engine.precision import resolve_precision

    monkeypatch.setattr(runs, "cpu_name", lambda: "CPU A")
    here = resolve_precision("auto")
    _finished(tmp_path, "a/row/seed0", wall_time_s=4 * 3600, precision=here, cpu="CPU B")
    _finished(tmp_path, "b/row/seed0", wall_time_s=3600, precision=here, cpu="CPU A")
    _finished(tmp_path, "a/old/seed0", wall_time_s=2 * 3600, precision=here)  # no CPU recorded
    config = lambda r: SimpleNamespace(out=str(tmp_path / "runs" / r), precision="auto")  # noqa: E731
    todo = [config("a/row/seed1"), config("a/old/seed1")]
    every = [*todo, config("a/row/seed0"), config("b/row/seed0"), config("a/old/seed0")]
    plan = runs.plan_runs(todo, jobs=2, every=every)
    by_row = {Path(r["out"]).parent.name: r for r in plan["runs"]}
    # a run on this CPU on another dataset beats one on another CPU on the same dataset
    assert by_row["row"]["hours"] == pytest.approx(1.0) and by_row["row"]["this_cpu"]
    assert "timed on this CPU" in by_row["row"]["source"]
    assert by_row["old"]["hours"] == pytest.approx(2.0) and not by_row["old"]["this_cpu"]
    assert plan["other_cpu"] == 1 and plan["cpu"] == "CPU A"
    # the whole request: three runs of "row" at 1 h (this CPU), two of "old" at 2 h
    whole = plan["whole"]
    assert whole["runs"] == 5 and whole["this_cpu"] == 3 and whole["unknown"] == 0
    assert whole["job_hours"] == pytest.approx(7.0)
    assert whole["wall_hours"] == pytest.approx(4.0)  # 2 + 1 + 1 on one job, 2 + 1 on the other
    text = runs.plan_markdown(plan)
    assert "1 come from runs timed on other CPUs" in text
    assert "The whole request on this machine (CPU A): 5 runs" in text
    assert "~7.0 job-hours, ~4.0 h wall with 2 job(s); 3 of the 5 estimates" in text
    # every run finished: nothing to train, and the whole request is still told
    done = runs.plan_markdown(runs.plan_runs([], jobs=2, every=every))
    assert done.startswith("Nothing to train") and "5 runs, finished ones included" in done


def test_plan_prefers_runs_timed_in_the_precision_this_machine_trains_in(tmp_path):
    from attentionrnn.engine.precision import resolve_precision
    from attentionrnn.engine.runs import plan_markdown, plan_runs

    here = resolve_precision("auto")
    other = "fp32" if here == "bf16" else "bf16"
    _finished(tmp_path, "a/row/seed0", wall_time_s=3600, precision=other)
    _finished(tmp_path, "b/row/seed0", wall_time_s=3 * 3600, precision=here)
    _finished(tmp_path, "a/old/seed0", wall_time_s=2 * 3600, precision=other)
    todo = [SimpleNamespace(out=str(tmp_path / "runs" / r), precision="auto")
            for r in ("a/row/seed1", "a/old/seed1")]  # fmt: skip
    plan = plan_runs(todo, jobs=1)
    by_row = {Path(r["out"]).parent.name: r for r in plan["runs"]}
    # a run in this machine's precision on another dataset beats one in another precision here
    assert by_row["row"]["hours"] == pytest.approx(3.0) and not by_row["row"]["other"]
    # with none in this machine's precision, the others still give an estimate, marked as such
    assert by_row["old"]["hours"] == pytest.approx(2.0) and by_row["old"]["other"]
    assert f"timed in {other}: this machine trains in {here}" in by_row["old"]["source"]
    assert plan["other_precision"] == 1
    assert "1 of the estimates come from runs timed in another precision" in plan_markdown(plan)
