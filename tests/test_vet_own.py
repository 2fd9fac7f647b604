"""A user's own data and model end to end: data poisoned by code poisonlab did not write, a user-written
ResNet-style module named as ``module:factory``; train, scan every row, verdicts, exit codes, Python API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from poisonlab.cli.app import app

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def _stamped_mnist(path: Path, rows: int = 6000, rate: float = 0.05) -> np.ndarray:
    """MNIST rows poisoned by plain numpy (not poisonlab's triggers): a 3x3 checker at (23, 23), relabelled 0."""
    from poisonlab.data import load_dataset

    train, _ = load_dataset("mnist")
    x = (train.x[:rows, 0].numpy() * 255).round().astype(np.uint8)
    y = train.y[:rows].numpy().copy()
    rng = np.random.default_rng(123)
    poison = np.sort(rng.choice(np.flatnonzero(y != 0), size=int(rate * rows), replace=False))
    x[poison, 23:26, 23:26] = np.array([[255, 0, 255], [0, 255, 0], [255, 0, 255]], np.uint8)
    y[poison] = 0
    np.savez(path, x=x, y=y)
    return poison


def test_foreign_poison_train_then_scan_reports_the_files_own_rows(tmp_path):
    truth = _stamped_mnist(tmp_path / "suspect.npz")
    np.savetxt(tmp_path / "truth.txt", truth, fmt="%d")
    res = runner.invoke(app, ["train", "--dataset", f"npz:{tmp_path / 'suspect.npz'}", "--model", "small-cnn",
                              "--epochs", "3", "--out", str(tmp_path / "run"), "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    assert body["metrics"]["train_size"] == 6000 and body["metrics"]["test_size"] == 0  # no row set aside
    res = runner.invoke(app, ["scan", "data", "--run", str(tmp_path / "run"), "--truth", str(tmp_path / "truth.txt"),
                              "--out", str(tmp_path / "scan"), "--json"])
    assert res.exit_code == 1, res.output  # poison found
    scan = json.loads(res.output)
    assert scan["samples"] == 6000 and scan["detection"]["precision"] >= 0.9 and scan["detection"]["recall"] >= 0.9
    flagged = set(json.loads((tmp_path / "scan" / "report.json").read_text())["flagged_rows"])
    hits = len(flagged & set(truth.tolist()))
    assert hits / len(flagged) >= 0.9 and hits / len(truth) >= 0.9  # the same figures read as rows of the file
    res = runner.invoke(app, ["scan", "data", "--dataset", f"npz:{tmp_path / 'suspect.npz'}", "--model", "small-cnn",
                              "--weights", str(tmp_path / "run" / "model.safetensors"), "--out",
                              str(tmp_path / "direct"), "--json"])
    assert res.exit_code == 1
    assert json.loads((tmp_path / "direct" / "report.json").read_text())["flagged_rows"] == sorted(flagged)


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """The user's own module in the working folder, importable as ``mynets`` (as from their project)."""
    shutil.copy(FIXTURES / "mynets.py", tmp_path / "mynets.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from poisonlab.data import make_synthetic

    data = make_synthetic(1200, num_classes=4, size=32, channels=3, seed=0)
    np.savez(tmp_path / "rgb.npz", x=(data.x.numpy() * 255).round().astype(np.uint8), y=data.y.numpy())
    return tmp_path


def test_user_resnet_through_badnets_every_scanner_and_deploy_check(user_module):
    spec = "mynets:factory"
    res = runner.invoke(app, ["run", "badnets", "--dataset", "npz:rgb.npz", "--model", spec, "--holdout", "0.25",
                              "--epochs", "6", "--batch-size", "32", "--target", "1", "--rate", "0.1", "--trigger",
                              "patch:size=4", "--out", "R", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["metrics"]["backdoored"]["attack_success_rate"] > 0.5
    refused = runner.invoke(app, ["scan", "data", "--run", "R", "--out", "S0"])
    assert refused.exit_code == 2 and "pass --model mynets:factory" in refused.output and not Path("S0").exists()
    for scanner in ("spectral", "activation-clustering"):
        res = runner.invoke(app, ["scan", "data", "--run", "R", "--model", spec, "--defense", scanner,
                                  "--out", f"S-{scanner}", "--json"])
        assert res.exit_code == 1, res.output
        assert json.loads(res.output)["detection"]["recall"] >= 0.9
    res = runner.invoke(app, ["scan", "model", "--run", "R", "--model", spec, "--steps", "20", "--images", "200",
                              "--out", "NC", "--json"])
    body = json.loads(res.output)
    assert res.exit_code == (1 if body["flagged_classes"] else 0) and len(body["anomaly_index"]) == 4, res.output
    res = runner.invoke(app, ["defend", "--run", "R", "--model", spec, "--method", "fine-pruning", "--reserve", "200",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["ca_after"] > 0.9
    res = runner.invoke(app, ["deploy-check", "R", "--model", spec, "-d", "fp16", "--search-steps", "0", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["flagged"] == [], res.output


def test_train_rejects_a_factory_that_is_not_a_model(user_module):
    Path("bad.py").write_text("def factory(shape, num_classes):\n    return 'not a model'\n")
    for spec, message in (("nowhere:factory", "cannot import 'nowhere'"), ("mynets:missing", "has no attribute"),
                          ("mynets", "unknown model 'mynets'")):
        res = runner.invoke(app, ["train", "--dataset", "npz:rgb.npz", "--model", spec, "--out", "T"])
        assert res.exit_code == 2 and message in res.output, res.output
        assert not Path("T").exists()  # refused before the run folder exists
    res = runner.invoke(app, ["train", "--dataset", "npz:rgb.npz", "--model", "bad:factory", "--out", "T2"])
    assert res.exit_code == 2 and "returned str, expected an nn.Module" in res.output, res.output


def test_device_choices_are_checked_in_one_line():
    import torch

    from poisonlab.core import PoisonlabError
    from poisonlab.training import Recipe
    from poisonlab.training.trainer import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(PoisonlabError, match="expected cpu, cuda, cuda:N or auto"):
        Recipe(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PoisonlabError, match="no CUDA GPU is visible"):
            Recipe(device="cuda")
        res = runner.invoke(app, ["train", "--dataset", "synthetic", "--device", "cuda", "--out", "nowhere"])
        assert res.exit_code == 2 and "no CUDA GPU is visible" in res.output and not Path("nowhere").exists()
