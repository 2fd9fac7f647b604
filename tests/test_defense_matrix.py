"""The defense matrix: every defense against each configured attack, a clean reference, and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poisonlab.cli.app import app
from poisonlab.core import PoisonlabError
from poisonlab.experiment.run import resolve

runner = CliRunner()

CONFIG = """experiment = "defense-matrix"
dataset = "synthetic"
model = "small-cnn"
reserve = 200
[training]
epochs = 3
[[attacks]]
name = "badnets"
rate = 0.1
target = 1
trigger = "patch:size=3"
[[attacks]]
name = "badnets"
target = 9
"""


@pytest.fixture(scope="module")
def body(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("matrix")
    (folder / "m.toml").write_text(CONFIG)
    result = runner.invoke(app, ["run", str(folder / "m.toml"), "--out", str(folder / "run"), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_matrix_scores_every_defense_against_the_planted_backdoor(body: dict) -> None:
    rows = body["metrics"]["results"]["badnets rate=0.1 target=1 trigger=patch:size=3"]
    assert set(rows) == {"none", "spectral", "retrain:scanner=spectral", "activation-clustering",
                         "retrain:scanner=activation-clustering", "strip:frr=0.01", "neural-cleanse", "fine-pruning",
                         "unlearning"}
    assert rows["none"]["asr"] > 0.9
    assert rows["spectral"]["recall"] > 0.9 and rows["spectral"]["precision"] > 0.9
    assert rows["retrain:scanner=spectral"]["asr_after"] < 0.1  # retrained without what it flagged
    assert rows["retrain:scanner=spectral"]["asr_before"] == rows["none"]["asr"]  # scored on the same test set
    assert 1 in rows["neural-cleanse"]["flagged_classes"] and rows["neural-cleanse"]["target_flagged"] == 1.0
    assert all(r["seconds"] >= 0 for name, r in rows.items() if name != "none")


def test_matrix_reports_false_alarms_and_attacks_that_cannot_run(body: dict) -> None:
    clean = body["metrics"]["results"]["clean (no attack)"]
    assert clean["spectral"]["flagged"] == 0 and clean["activation-clustering"]["flagged"] == 0
    assert "target 9" in body["metrics"]["errors"]["badnets target=9"]


def test_matrix_report_renders_the_table(body: dict) -> None:
    run_dir = Path(body["run_dir"])
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    page = (run_dir / "report.html").read_text()
    assert 'id="defense-matrix"' in page and "neural-cleanse" in page and "not run" in page


def test_bad_matrix_config_names_the_attack() -> None:
    raw = {"experiment": "defense-matrix", "attacks": [{"name": "badnets"}, {"name": "trojannn"}]}
    with pytest.raises(PoisonlabError, match=r"attacks\[1\]\.name: unknown attack 'trojannn'"):
        resolve(raw)
    with pytest.raises(PoisonlabError, match=r"reserve: 10; expected at least 128"):
        resolve({"experiment": "defense-matrix", "reserve": 10})
