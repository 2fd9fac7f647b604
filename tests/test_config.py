"""Typed experiment configs: validation before training, `poisonlab run CONFIG.toml`, bit-exact re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from poisonlab.cli.app import app
from poisonlab.core import PoisonlabError
from poisonlab.data import make_synthetic
from poisonlab.experiment import run as runmod
from poisonlab.experiment.run import execute, resolve

runner = CliRunner()


def tiny_npz(path: Path, n_train: int = 240, n_test: int = 80) -> Path:
    """A small seeded synthetic dataset as an npz, so a run trains in well under a second."""
    full = make_synthetic(n_train + n_test, num_classes=4, size=12, seed=0)
    x, y = full.x.numpy(), full.y.numpy()
    np.savez(path, x=x[:n_train], y=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    return path


def tiny_config(data: Path, **attack: object) -> dict:
    return {
        "name": "tiny",
        "dataset": f"npz:{data}",
        "model": "small-cnn",
        "seed": 3,
        "training": {"epochs": 2, "batch_size": 32, "lr": 0.01},
        "attack": {"name": "badnets", "target": 1, "rate": 0.1, "trigger": "patch:size=3", **attack},
    }


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD = """
dataset = "synthetic"
[attack]
name = "badnets"
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model = "small-cnn"\n[attack]\nname = "badnets"\n', r"dataset: missing; expected one of: .*mnist"),
        ('dataset = "imagenet"\n[attack]\nname = "badnets"\n', r"dataset: unknown dataset 'imagenet'; expected one of"),
        ('dataset = "synthetic"\n[attack]\nname = "badnetz"\n',
         r"attack\.name: unknown attack 'badnetz'; expected one of: .*badnets"),
        (GOOD + 'rate = "ten percent"\n', r"attack\.rate: expected a number, got 'ten percent' \(str\)"),
        (GOOD + "rate = 1.5\n", r"attack: poison rate 1\.5: expected a fraction in \(0, 1\)"),
        (GOOD + "rate = 0.0\n", r"attack: poison rate 0\.0: expected a fraction in \(0, 1\)"),
        (GOOD + "target = 2.5\n", r"attack\.target: expected an integer, got 2\.5"),
        (GOOD + "target = true\n", r"attack\.target: expected an integer, got True"),
        (GOOD + 'mode = "one-to-one"\n',
         r"attack\.mode: 'one-to-one' is not allowed; expected 'all-to-one' or 'all-to-all'"),
        (GOOD + "ratee = 0.1\n", r"attack\.ratee: unknown key; expected one of: count, mode, rate, target, trigger"),
        (GOOD + 'trigger = "star:size=3"\n', r"attack\.trigger: unknown trigger 'star'"),
        ('dataset = "synthetic"\n[attack]\nrate = 0.1\n', r"attack\.name: missing; expected one of"),
        ('dataset = "synthetic"\n', r"attack: missing \[attack\] table"),
        ('dataset = "synthetic"\nseeds = [1]\n' + GOOD.split("\n", 2)[2],
         r"seeds: unknown key; expected one of: .*seed"),
        ('dataset = "synthetic"\nmodel = "resnet-1000"\n[attack]\nname = "badnets"\n',
         r"model: unknown model 'resnet-1000'"),
        ('dataset = "synthetic"\n[training]\nepochs = 0\n[attack]\nname = "badnets"\n',
         r"training\.epochs: 0; expected an integer in \[1, 10000\]"),
        ('dataset = "synthetic"\n[training]\nepoch = 2\n[attack]\nname = "badnets"\n',
         r"training\.epoch: unknown key; expected one of: batch_size, device, epochs, lr, weight_decay"),
        ('dataset = "synthetic"\nseed = -1\n[attack]\nname = "badnets"\n',
         r"seed: -1; expected an integer in \[0, 2\*\*63\)"),
        ('dataset = "synthetic"\ndefenses = ["spectrum"]\n[attack]\nname = "badnets"\n',
         r"defenses\[0\]: unknown defense 'spectrum'"),
        ('dataset = "synthetic"\ndefenses = ["retrain"]\n[attack]\nname = "badnets"\n',
         r"defenses\[0\]: retrain works on what data-scanner found; list one before it"),
        ('dataset = "synthetic"\ndeployments = ["int9"]\n[attack]\nname = "badnets"\n',
         r"deployments\[0\]: unknown deployment 'int9'"),
        ('dataset = "synthetic"\npreprocessing = ["opencv-linear"]\n[attack]\nname = "badnets"\n',
         r"preprocessing\[0\]: .*expected RESIZER:WIDTHxHEIGHT"),
        ('dataset = "synthetic"\ndefender = "everything"\n[attack]\nname = "badnets"\n',
         r"defender data 'everything': expected test-half or reserve:N"),
        ('dataset = 7\n[attack]\nname = "badnets"\n', r"dataset: expected a string, got 7 \(int\)"),
        (GOOD + "rate = [0.1, 0.2]\n", r"attack\.rate: a list makes a sweep; run it with `poisonlab sweep"),
        ('dataset = "synthetic"\n[attack\nname = 1', r"not valid TOML"),
    ],
)
def test_bad_config_fails_before_training_naming_the_field(tmp_path, monkeypatch, text, message):
    def no_training(*args, **kwargs):
        raise AssertionError("training started on a bad config")

    monkeypatch.setattr("poisonlab.cli.run.execute", no_training)  # imported first, so it binds the real one
    monkeypatch.setattr(runmod, "execute", no_training)
    path = write_toml(tmp_path / "bad.toml", text)
    with pytest.raises(PoisonlabError, match=message):
        runmod.load(path)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "bad.toml" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_defaults_are_filled_and_resolved_config_round_trips(tmp_path):
    resolved = runmod.load(write_toml(tmp_path / "c.toml", GOOD + "rate = 0.05\n"))
    cfg = resolved.config
    assert cfg.model == "badnets-cnn" and cfg.seed == 0 and cfg.training.epochs == 2 and cfg.calibration == 512
    assert dict(cfg.attack.params) == {"trigger": "patch:size=3,position=bottom-right,color=1.0,margin=1",
                                       "mode": "all-to-one", "target": 8, "rate": 0.05, "count": None}
    assert "count" not in resolved.to_toml()  # TOML has no null: None defaults are left out and filled in again
    again = runmod.load(write_toml(tmp_path / "again.toml", resolved.to_toml()))
    assert again == resolved


def test_integer_rate_is_accepted_as_a_number_but_bools_are_not_numbers(tmp_path):
    with pytest.raises(PoisonlabError, match=r"attack\.rate: expected a number, got True"):
        resolve({"dataset": "synthetic", "attack": {"name": "badnets", "rate": True}})
    cfg = resolve({"dataset": "synthetic", "training": {"weight_decay": 0}, "attack": {"name": "badnets"}}).config
    assert isinstance(cfg.training.weight_decay, float)


def test_config_run_and_its_saved_config_reproduce_bit_for_bit(tmp_path):
    """The resolved config.toml in a run folder re-runs to the same weights and metrics (same seed, same machine)."""
    data = tiny_npz(tmp_path / "tiny.npz")
    first = tmp_path / "first"
    first.mkdir()
    body = execute(resolve(tiny_config(data)), first, progress=False)
    assert body["schema"] == "poisonlab.report/1" and body["kind"] == "pipeline"
    assert body["metrics"]["poisoned_samples"] == 24  # 10% of 240
    assert body["metrics"]["backdoored"]["attack_success_rate"] > body["metrics"]["clean"]["attack_success_rate"]

    result = runner.invoke(app, ["run", str(first / "config.toml"), "--out", str(tmp_path / "second"), "--json"])
    assert result.exit_code == 0, result.output
    second = json.loads(result.output)
    assert second["metrics"] == body["metrics"] and second["config"] == body["config"]
    for name in ("clean", "backdoored"):
        a = load_file(str(first / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "second" / f"{name}.safetensors"))
        assert all(a[k].equal(b[k]) for k in a)

    preset = tmp_path / "preset"  # `poisonlab run badnets` with the same values is the same run
    args = ["run", "badnets", "--dataset", f"npz:{data}", "--model", "small-cnn", "--seed", "3", "--epochs", "2",
            "--batch-size", "32", "--lr", "0.01", "--target", "1", "--rate", "0.1", "--trigger", "patch:size=3",
            "--out", str(preset), "--json", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["metrics"] == body["metrics"]

    other = tmp_path / "other-seed"
    other.mkdir()
    execute(resolve({**tiny_config(data), "seed": 4}), other, progress=False)
    a, b = load_file(str(first / "backdoored.safetensors")), load_file(str(other / "backdoored.safetensors"))
    assert not all(a[k].equal(b[k]) for k in a)  # the seed matters, so equal weights above are not a given


def test_run_badnets_command_is_still_routed_and_toml_goes_to_the_config_command(tmp_path):
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0 and "badnets" in result.output and "CONFIG.toml" in result.output
    assert runner.invoke(app, ["run", "badnets", "--help"]).exit_code == 0
    missing = runner.invoke(app, ["run", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "no such config file" in missing.output
    assert runner.invoke(app, ["run", "no-such-experiment"]).exit_code != 0


def test_example_configs_all_validate():
    examples = sorted(Path(__file__).parents[1].glob("examples/*.toml"))
    assert examples
    from poisonlab.experiment.sweep import plan

    for path in examples:
        assert plan(path).cells  # a single run is a one-cell plan; every cell resolves


def test_scaling_camouflage_runs_as_a_plain_pipeline_config(tmp_path):
    """High-resolution images, the camouflage attack, and the pipeline's own downscale as a preprocess stage."""
    full = make_synthetic(700, num_classes=4, size=24, seed=0)
    path = tmp_path / "big.npz"
    np.savez(path, x=full.x[:600].numpy(), y=full.y[:600].numpy(), x_test=full.x[600:].numpy(),
             y_test=full.y[600:].numpy())
    raw = {"dataset": f"npz:{path}", "model": "small-cnn", "preprocessing": ["opencv-linear:12x12"],
           "training": {"epochs": 6, "batch_size": 32, "lr": 0.01},
           "attack": {"name": "scaling-camouflage", "resizer": "opencv-linear", "size": [12, 12], "target": 1,
                      "count": 60, "trigger": "patch:size=3"}}
    out = tmp_path / "run"
    out.mkdir()
    body = execute(resolve(raw), out, progress=False)
    m = body["metrics"]
    assert m["backdoored"]["attack_success_rate"] > 0.8 > m["clean"]["attack_success_rate"]
    assert json.loads((out / "models.json").read_text())["input_shape"] == [1, 12, 12]  # what the model sees


def test_a_datasets_suggested_defaults_apply_unless_set(tmp_path):
    cfg = resolve({"experiment": "badnets", "dataset": "digits"}).config
    assert cfg.training.epochs == 20 and cfg.attack.params["rate"] == 0.1
    cfg = resolve({"experiment": "badnets", "dataset": "digits", "training": {"epochs": 3}}).config
    assert cfg.training.epochs == 3 and cfg.attack.params["rate"] == 0.1  # what the user sets wins
    assert resolve({"experiment": "badnets"}).config.training.epochs == 2  # MNIST keeps the experiment's own
    result = runner.invoke(app, ["run", "badnets", "--dataset", "digits", "--out", str(tmp_path / "d"), "--json",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.output)["metrics"]
    assert m["backdoored"]["attack_success_rate"] > 0.9 and m["backdoored"]["clean_accuracy"] > 0.95
