"""The detection matrix: every attack x rate x scanner scored from continuous scores, a clean reference, retraining,
the long-tailed training set, and the TPR at a 5% false-positive rate."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from poisonlab.cli.app import app
from poisonlab.core import PoisonlabError, Verdict
from poisonlab.data import make_synthetic
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.experiment.detection_matrix import best_scanner, imbalanced
from poisonlab.experiment.run import resolve


def test_tpr_at_5fpr_reads_the_roc_curve_from_scores():
    truth = torch.arange(10)  # rows 0-9 poisoned, 10-109 clean
    scores = torch.cat([torch.linspace(5, 14, 10), torch.linspace(0, 9.9, 100)])  # clean rows reach 9.9
    m = detection_metrics(Verdict(scores=scores, flagged=torch.empty(0, dtype=torch.long)), truth, 110)
    # at FPR <= 5% the threshold sits above the 5th-highest clean score (9.5): poison scores 10-14 pass
    assert m["tpr_at_5fpr"] == pytest.approx(0.5) and 0.5 < m["auroc"] < 1.0 and m["flagged"] == 0


def test_the_best_scanner_caught_poison_then_has_the_highest_tpr_then_auroc_and_nan_ranks_last():
    scans = {"label-consistency": {"f1": 0.6, "tpr_at_5fpr": 0.93, "auroc": 0.984},
             "out-of-fold": {"f1": 0.99, "tpr_at_5fpr": 0.97, "auroc": 0.983},
             "spectral": {"f1": 0.5, "tpr_at_5fpr": float("nan"), "auroc": 0.99}}
    assert best_scanner(scans) == "out-of-fold"
    scans["spectral"]["tpr_at_5fpr"] = 0.97
    assert best_scanner(scans) == "spectral"
    scans["spectral"]["f1"] = 0.0  # the better ranking, but its gate flagged nothing
    assert best_scanner(scans) == "out-of-fold"
    assert best_scanner({"a": {"f1": float("nan"), "tpr_at_5fpr": float("nan"), "auroc": float("nan")},
                         "b": {"f1": 0.0, "tpr_at_5fpr": 0.0, "auroc": 0.5}}) == "b"


def test_imbalanced_subsets_fall_geometrically_to_one_tenth():
    data = make_synthetic(4000, num_classes=4, size=8, seed=0)
    counts = torch.bincount(imbalanced(data, 10.0, seed=0).y, minlength=4)
    top = int(torch.bincount(data.y).max())
    assert counts.tolist() == [min(round(top * 10 ** (-k / 3)), int((data.y == k).sum())) for k in range(4)]
    assert counts[0] / counts[3] == pytest.approx(10, rel=0.05)
    assert imbalanced(data, 1.0, seed=0) is data


def test_config_refuses_a_rate_in_an_attack_table_and_a_scanner_that_is_not_one():
    with pytest.raises(PoisonlabError, match=r"attacks\[0\]: sets a rate or count"):
        resolve({"experiment": "detection-matrix", "attacks": [{"name": "badnets", "rate": 0.1}]})
    with pytest.raises(PoisonlabError, match=r"detectors\[0\]: 'strip'; expected a data scanner"):
        resolve({"experiment": "detection-matrix", "detectors": ["strip"]})
    with pytest.raises(PoisonlabError, match="imbalance: 0.5; expected a ratio >= 1"):
        resolve({"experiment": "detection-matrix", "imbalance": 0.5})


def test_a_tiny_matrix_sweep_scores_retrains_draws_and_reports_mean_and_spread(tmp_path):
    (tmp_path / "m.toml").write_text(
        'experiment = "detection-matrix"\ndataset = "synthetic"\nmodel = "small-cnn"\nrates = [0.2]\n'
        'detectors = ["spectral", "label-consistency"]\nimbalance = 2.0\nseed = [0, 1]\n[training]\nepochs = 3\n'
        '[[attacks]]\nname = "badnets"\ntarget = 0\n')
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", str(tmp_path / "m.toml"), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    cell = next((tmp_path / "s" / "cells").iterdir())
    m = json.loads((cell / "report.json").read_text())["metrics"]
    sizes = m["class_sizes"]
    assert sizes[0] == pytest.approx(2 * sizes[-1], rel=0.05) and m["train_size"] == sum(sizes)
    strong = m["cells"]["badnets target=0"]["0.2"]
    assert strong["asr"] > 0.9 and strong["poisoned"] == round(0.2 * m["train_size"])
    assert strong["best"] in ("spectral", "label-consistency") and strong["best_auroc"] > 0.9
    assert strong["asr_after"] < strong["asr"]  # retraining without the best scanner's flags
    for d in strong["detectors"].values():
        assert {"auroc", "tpr_at_5fpr", "flagged", "precision", "recall"} <= set(d)
    assert set(m["clean_reference"]["detectors"]) == {"spectral", "label-consistency"}
    assert (cell / "detection.png").stat().st_size > 10_000
    res = runner.invoke(app, ["report", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "s" / "report.html").read_text()
    assert "Detection matrix (mean ± std over seeds)" in page and page.count('class="heatmap"') == 1
    assert '<td class="">2</td>' in page  # the cell averages both seeds
