"""Sweeps: grid expansion, failing early, resuming after a kill without redoing cells, mean ± std, pool and Ray."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_config import tiny_npz
from typer.testing import CliRunner

from poisonlab.cli.app import app
from poisonlab.core import PoisonlabError
from poisonlab.experiment.sweep import cell_id, plan, run_sweep

runner = CliRunner()


def sweep_toml(path: Path, data: Path, rates: str = "[0.05, 0.2]", seeds: str = "[0, 1]", epochs: int = 2) -> Path:
    path.write_text(f"""
name = "tiny-sweep"
dataset = "npz:{data}"
model = "small-cnn"
seed = {seeds}
[training]
epochs = {epochs}
batch_size = 32
lr = 0.01
[attack]
name = "badnets"
target = 1
rate = {rates}
trigger = "patch:size=3"
""")
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tiny_npz(tmp_path / "tiny.npz")


def test_grid_expands_with_seed_fastest_and_readable_cell_ids(tmp_path, data):
    p = plan(sweep_toml(tmp_path / "s.toml", data, rates="[0.05, 0.1, 0.2]", seeds="[0, 1, 2]"))
    assert len(p.cells) == 9
    ids = ["rate=0.05_seed=0", "rate=0.05_seed=1", "rate=0.05_seed=2", "rate=0.1_seed=0"]
    assert [c.id for c in p.cells[:4]] == ids
    assert p.cells[4].config.config.attack.params["rate"] == 0.1 and p.cells[4].config.config.seed == 1
    assert p.axes == {"attack.rate": [0.05, 0.1, 0.2], "seed": [0, 1, 2]}
    assert cell_id({}) == "run" and cell_id({"deployments": ["int8", "fp16"]}) == "deployments=int8+fp16"


def test_a_bad_cell_fails_the_whole_sweep_before_training(tmp_path, data):
    path = sweep_toml(tmp_path / "s.toml", data, rates="[0.05, 1.5]")
    message = r"cell rate=1\.5_seed=0\): attack: poison rate 1\.5: expected a fraction"
    with pytest.raises(PoisonlabError, match=message):
        plan(path)
    result = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "poison rate 1.5" in result.output and not (tmp_path / "out").exists()
    empty = sweep_toml(tmp_path / "e.toml", data, seeds="[]")
    with pytest.raises(PoisonlabError, match="seed: an empty list"):
        plan(empty)


def _reports(out: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted((out / "cells").glob("*/report.json"))}


def test_killed_sweep_resumes_without_redoing_finished_cells(tmp_path, data):
    config = sweep_toml(tmp_path / "s.toml", data)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-c", "from poisonlab.cli.app import main; main()", "sweep", str(config), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600  # generous: a loaded machine can take minutes to start torch
    while not _reports(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _reports(out)
    assert 1 <= len(before) < 4, "the kill should land after the first cell and before the last"
    assert all(json.loads(b)["kind"] == "pipeline" for b in before.values())  # no half-written report
    assert not (out / "summary.json").exists()

    ran: list[str] = []
    summary = run_sweep(plan(config), out, on_cell=lambda cell, error: ran.append(cell.id))
    every = {"rate=0.05_seed=0", "rate=0.05_seed=1", "rate=0.2_seed=0", "rate=0.2_seed=1"}
    assert sorted(ran) == sorted(every - set(before))
    assert summary["ran"] == 4 - len(before) and summary["skipped"] == len(before) and summary["done"] == 4
    after = _reports(out)
    assert all(after[k] == v for k, v in before.items())  # finished cells untouched

    again = run_sweep(plan(config), out, on_cell=lambda cell, error: pytest.fail("a done cell ran again"))
    assert again["ran"] == 0 and again["skipped"] == 4 and _reports(out) == after

    for group in summary["groups"]:
        rate = group["overrides"]["attack.rate"]
        reports = [json.loads(after[f"rate={rate}_seed={s}"]) for s in (0, 1)]
        values = [r["metrics"]["backdoored"]["attack_success_rate"] for r in reports]
        stat = group["metrics"]["backdoored.attack_success_rate"]
        assert stat["n"] == 2 and stat["mean"] == pytest.approx(statistics.fmean(values))
        assert stat["std"] == pytest.approx(statistics.stdev(values))
    assert json.loads((out / "summary.json").read_text())["groups"] == summary["groups"]

    result = runner.invoke(app, ["sweep", str(config), "--out", str(out)])
    assert result.exit_code == 0 and "skipped 4 already done" in result.output and "±" in result.output


def test_another_sweep_is_refused_in_a_used_folder(tmp_path, data):
    out = tmp_path / "sweep"
    run_sweep(plan(sweep_toml(tmp_path / "a.toml", data, rates="[0.1]", seeds="[0]", epochs=1)), out)
    with pytest.raises(PoisonlabError, match="holds a different sweep"):
        run_sweep(plan(sweep_toml(tmp_path / "b.toml", data, rates="[0.2]", seeds="[0]", epochs=1)), out)


def test_local_process_pool_runs_cells_in_parallel_workers(tmp_path, data):
    out = tmp_path / "pool"
    summary = run_sweep(plan(sweep_toml(tmp_path / "s.toml", data, rates="[0.1]", epochs=1)), out, jobs=2)
    assert summary["done"] == 2 and summary["errors"] == {}
    threads = {json.loads(b)["environment"]["torch_threads"] for b in _reports(out).values()}
    assert threads == {max(1, (os.cpu_count() or 1) // 2)}


def test_ray_backend_on_a_local_ray(tmp_path, data):
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'poisonlab[ray]' to test --backend ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = tmp_path / "ray"
        config = sweep_toml(tmp_path / "s.toml", data, rates="[0.1]", epochs=1)
        summary = run_sweep(plan(config), out, backend="ray")
        assert summary["done"] == 2 and summary["ran"] == 2 and summary["errors"] == {}
        assert run_sweep(plan(config), out, backend="ray")["ran"] == 0
    finally:
        ray.shutdown()


def test_a_paper_experiment_sweeps_like_the_pipeline(tmp_path):
    config = tmp_path / "bg.toml"
    config.write_text('experiment = "backgradient"\ndataset = "synthetic"\ntrain_size = 60\nval_size = 30\n'
                      'test_size = 60\nrates = [0.05]\nsteps = 3\niterations = 1\ntransfer = []\n'
                      'learner = ["logreg", "adaline"]\nseed = [0, 1]\n')
    p = plan(config)
    assert [c.id for c in p.cells] == ["learner=logreg_seed=0", "learner=logreg_seed=1", "learner=adaline_seed=0",
                                       "learner=adaline_seed=1"]
    assert {c.config.experiment for c in p.cells} == {"backgradient"}
    summary = run_sweep(p, tmp_path / "out")
    assert summary["done"] == 4 and not summary["errors"]
    reports = [json.loads((tmp_path / "out" / "cells" / c.id / "report.json").read_text()) for c in p.cells]
    assert [r["config"]["learner"] for r in reports] == ["logreg", "logreg", "adaline", "adaline"]
    assert all(0.0 <= r["metrics"]["clean_error"] <= 1.0 for r in reports)
