"""The SQLite run index behind `poisonlab runs` and `poisonlab compare`."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poisonlab.cli.app import app
from poisonlab.core import PoisonlabError
from poisonlab.report.index import INDEX_FILE, compare, list_runs, load_run
from poisonlab.report.store import atomic_write_json, report

runner = CliRunner()


def _pair(ca: float, asr: float) -> dict:
    return {"clean": {"clean_accuracy": 0.99, "attack_success_rate": 0.01},
            "backdoored": {"clean_accuracy": ca, "attack_success_rate": asr}, "poisoned_samples": 60}


def _write(root: Path, rel: str, body: dict) -> Path:
    folder = root / rel
    folder.mkdir(parents=True)
    atomic_write_json(folder / "report.json", body)
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for rate, seed, asr in ((0.01, 0, 0.95), (0.01, 1, 0.97), (0.1, 0, 1.0)):
        cfg = {"name": "s", "dataset": "mnist", "model": "badnets-cnn", "seed": seed,
               "attack": {"name": "badnets", "rate": rate, "target": 8}, "training": {"epochs": 2}}
        _write(tmp_path, f"sweep-s/cells/rate={rate}_seed={seed}", report("experiment", cfg, _pair(0.98, asr)))
    flat = {"dataset": "digits", "model": "small-cnn", "rate": 0.05, "seed": 2, "target": 3}
    _write(tmp_path, "badnets-1", report("badnets", flat, _pair(0.97, 0.5)))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "report.json").write_text("{}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{not json")
    return tmp_path


def test_lists_every_readable_run_and_filters_by_column_and_config_path(root):
    rows = list_runs(root)
    assert sorted(r["run"] for r in rows) == ["badnets-1", "sweep-s/cells/rate=0.01_seed=0",
                                              "sweep-s/cells/rate=0.01_seed=1", "sweep-s/cells/rate=0.1_seed=0"]
    flat = next(r for r in rows if r["run"] == "badnets-1")
    assert (flat["attack"], flat["rate"], flat["dataset"], flat["asr"]) == ("badnets", 0.05, "digits", 0.5)
    assert len(list_runs(root, {"rate": "0.01"})) == 2
    assert [r["seed"] for r in list_runs(root, {"rate": "0.01", "seed": "1"})] == [1]
    assert len(list_runs(root, {"attack.target": "8"})) == 3
    assert len(list_runs(root, {"training.epochs": "2", "dataset": "mnist"})) == 3
    assert [r["run"] for r in list_runs(root, {"kind": "badnets"})] == ["badnets-1"]
    with pytest.raises(PoisonlabError, match="filter 'x;drop': expected one of"):
        list_runs(root, {"x;drop": "1"})
    with pytest.raises(PoisonlabError, match="no such results folder"):
        list_runs(root / "nope")


def test_index_follows_changed_and_deleted_reports(root):
    list_runs(root)
    with sqlite3.connect(root / INDEX_FILE) as con:
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone() == (4,)
    path = root / "badnets-1" / "report.json"
    body = json.loads(path.read_text())
    body["metrics"]["backdoored"]["attack_success_rate"] = 0.75
    atomic_write_json(path, body)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert next(r for r in list_runs(root) if r["run"] == "badnets-1")["asr"] == 0.75
    (root / "sweep-s" / "cells" / "rate=0.1_seed=0" / "report.json").unlink()
    assert len(list_runs(root)) == 3


def test_compare_shows_differing_config_and_all_metrics(root):
    by_relative_path = load_run("sweep-s/cells/rate=0.01_seed=0", root)
    by_folder = load_run(str(root / "sweep-s/cells/rate=0.1_seed=0"), root)
    runs = [by_relative_path, by_folder]
    result = compare(runs)
    assert result["config"] == {"attack.rate": [0.01, 0.1]}
    assert result["metrics"]["backdoored.attack_success_rate"] == [0.95, 1.0]
    with pytest.raises(PoisonlabError, match="run 'nope': no report.json"):
        load_run("nope", root)


def test_runs_and_compare_cli(root):
    result = runner.invoke(app, ["runs", "--root", str(root), "--where", "rate=0.01", "--json"])
    assert result.exit_code == 0 and len(json.loads(result.output)) == 2
    table = runner.invoke(app, ["runs", "--root", str(root)])
    assert table.exit_code == 0 and "4 runs" in table.output
    assert runner.invoke(app, ["runs", "--root", str(root), "--where", "rate"]).exit_code == 2
    side = runner.invoke(app, ["compare", "--root", str(root), "badnets-1", "sweep-s/cells/rate=0.1_seed=0", "--json"])
    assert side.exit_code == 0
    assert json.loads(side.output)["metrics"]["backdoored.attack_success_rate"] == [0.5, 1.0]
    assert runner.invoke(app, ["compare", "--root", str(root), "badnets-1"]).exit_code == 2
