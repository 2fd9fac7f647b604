"""Paper experiments as config files: `experiment = NAME`, field validation, and bit-exact re-runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from poisonlab.cli.app import app
from poisonlab.core import PoisonlabError
from poisonlab.experiment.config import read_toml
from poisonlab.experiment.run import resolve

runner = CliRunner()

TINY = {
    "universal": 'experiment = "universal"\ndataset = "synthetic"\nbits = 2\nrates = [0.02]\n[training]\nepochs = 1\n',
    "backgradient": ('experiment = "backgradient"\ndataset = "synthetic"\ntrain_size = 60\nval_size = 30\n'
                     'test_size = 100\nrates = [0.05]\nsteps = 5\nwarm_start = 5\niterations = 1\n'
                     'transfer = ["mlp"]\n'),
    "compression-artifact": ('experiment = "compression-artifact"\ndataset = "synthetic"\nmodel = "small-cnn"\n'
                             'deployments = ["fp16"]\n[training]\nepochs = 2\n[attack]\nname = "compression-artifact"\n'
                             'deployment = "prune-l1:0.5"\ntrigger = "patch:size=3"\ntarget = 1\n'),
    "scaling-camouflage": ('experiment = "scaling-camouflage"\ndataset = "digits"\ntrain_size = 600\n'
                           'test_size = 200\ncount = 30\n[training]\nepochs = 3\n'),
    "scaling-audit": ('experiment = "scaling-audit"\nresizers = ["opencv-linear", "opencv-area"]\nratios = [4]\n'
                      'size = 64\n'),
}


def without_seconds(obj: Any) -> Any:
    """Metrics minus wall-clock times, the one part of a report a re-run cannot repeat."""
    if isinstance(obj, dict):
        return {k: without_seconds(v) for k, v in obj.items() if not k.endswith("seconds")}
    if isinstance(obj, list):
        return [without_seconds(v) for v in obj]
    return obj


def run(path: Path, out: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("experiment", sorted(TINY))
def test_paper_config_runs_and_its_saved_config_reproduces_the_metrics(tmp_path: Path, experiment: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(TINY[experiment])
    first = run(path, tmp_path / "first")
    saved = tmp_path / "first" / "config.toml"
    assert f'experiment = "{experiment}"' in saved.read_text()
    second = run(saved, tmp_path / "second")
    assert without_seconds(second["metrics"]) == without_seconds(first["metrics"])
    assert second["config"] == first["config"]
    if experiment == "scaling-camouflage":  # the hidden trigger works and the poison kept its label budget
        runs = first["metrics"]["runs"]
        assert runs["camouflage"]["asr_camouflaged"] > 0.8 > runs["clean"]["asr_visible"]
        assert runs["camouflage"]["labels_changed"] == 30 and runs["clean-label"]["labels_changed"] == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('experiment = "imagenet-sweep"\n', r"experiment: unknown experiment 'imagenet-sweep'; expected one of: "
                                            r"backgradient, badnets, compression-artifact, defense-matrix, "
                                            r"detection-matrix, pipeline, scaling-audit, scaling-camouflage, train, "
                                            r"universal"),
        ('experiment = "universal"\nbitz = 3\n', r"bitz: unknown key; expected one of: .*bits"),
        ('experiment = "universal"\nbits = "many"\n', r"bits: expected an integer, got 'many' \(str\)"),
        ('experiment = "universal"\nrates = 0.1\n', r"rates: expected a list, got 0.1"),
        ('experiment = "universal"\ntrigger = "patch"\nstrips = 2\n', r"universal strips 2: .*blend"),
        ('experiment = "universal"\ntransfer_rate = -0.1\n', r"transfer_rate: -0.1; expected a fraction, or 0 to skip"),
        ('experiment = "universal"\nepochs = 3\n', r"epochs: unknown key; expected one of: .*training"),
        ('experiment = "universal"\ncode_threshold = "median"\n', r"code_threshold: 'median' is not allowed"),
        ('experiment = "backgradient"\ngoal = "chaos"\n', r"goal: 'chaos' is not allowed; expected 'availability'"),
        ('experiment = "backgradient"\nrates = [1.5]\n', r"poison rate 1.5: expected a fraction in \(0, 1\)"),
        ('experiment = "compression-artifact"\n[attack]\ndeployment = "int4-magic"\n',
         r"attack: unknown deployment 'int4-magic'"),
        ('experiment = "compression-artifact"\ndeployments = ["int4-magic"]\n',
         r"deployments\[0\]: unknown deployment 'int4-magic'"),
        ('experiment = "scaling-audit"\nratios = [1]\n', r"ratios: \[1\]; expected one or more integers"),
        ('experiment = "scaling-audit"\nresizers = ["gimp-cubic"]\n', r"unknown resizer 'gimp-cubic'"),
    ],
)
def test_bad_paper_config_fails_before_any_work_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PoisonlabError, match=message):
        resolve(read_toml(path), str(path))
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and str(path) in result.output and "Traceback" not in result.output
    assert not (tmp_path / "never").exists()



@pytest.mark.parametrize(("args", "message"), [
    (["scaling-camouflage", "--dataset", "digits", "--train-size", "50", "--count", "60"], "count 60"),
    (["badnets", "--rate", "1.5"], "poison rate 1.5"),
    (["universal", "--rates", "0.1,x"], "--rates"),
    (["scaling-camouflage", "--resizer", "gimp-cubic"], "unknown resizer 'gimp-cubic'"),
    (["defense-matrix", "--train-size", "0"], "train_size: 0; expected an integer >= 1"),
    (["defense-matrix", "--model", "resnet-9000"], "unknown model 'resnet-9000'"),
])
def test_experiment_commands_refuse_bad_input_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["run", *args, "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "never").exists()


def test_scaling_camouflage_command_writes_a_rerunnable_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "scaling-camouflage", "--dataset", "digits", "--train-size", "300",
                                 "--count", "15", "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "camouflage+median" in result.output and "activation-clustering on camouflage data" in result.output
    for name in ("report.json", "config.toml", "camouflage.png"):
        assert (out / name).is_file()
    assert 'experiment = "scaling-camouflage"' in (out / "config.toml").read_text()


def test_skipped_transfer_run_stays_skipped_in_the_saved_config(tmp_path: Path) -> None:
    path = tmp_path / "u.toml"
    path.write_text('experiment = "universal"\ntransfer_rate = 0.0\n')
    saved = resolve(read_toml(path)).as_dict()
    assert saved["transfer_rate"] == 0.0 and saved["strips"] == 2
