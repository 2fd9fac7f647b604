import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from poisonlab.cli.app import app
from poisonlab.models import load_model

runner = CliRunner()
FAST = ["--dataset", "synthetic", "--model", "small-cnn", "--epochs", "2", "--target", "1", "--rate", "0.05", "--quiet"]


def test_list_shows_every_kind():
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.output)
    assert "mnist" in listed["datasets"] and "badnets" in listed["attacks"]
    assert {"patch", "checkerboard", "pixel", "blend"} <= set(listed["triggers"]) and "badnets-cnn" in listed["models"]


def test_run_badnets_prints_the_table_and_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "badnets", *FAST, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "clean accuracy" in result.output and "ASR = share of triggered test images" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "backdoored.safetensors",
        "clean.safetensors",
        "config.toml",
        "examples.png",
        "models.json",
        "poisoned_indices.safetensors",
        "report.json",
    ]
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "poisonlab.report/1" and report["config"]["attack"]["rate"] == 0.05
    assert (
        report["metrics"]["poisoned_samples"] == 100
        and len(load_file(out / "poisoned_indices.safetensors")["indices"]) == 100
    )
    assert 0 <= report["metrics"]["backdoored"]["attack_success_rate"] <= 1
    assert (out / "examples.png").read_bytes()[:4] == b"\x89PNG"
    model = load_model("small-cnn", (1, 12, 12), 4, out / "backdoored.safetensors")
    assert model(torch.zeros(2, 1, 12, 12)).shape == (2, 4)
    assert json.loads((out / "models.json").read_text())["architecture"] == "small-cnn"
    assert 'experiment = "badnets"' in (out / "config.toml").read_text()

    weights = (out / "backdoored.safetensors").read_bytes()
    again = runner.invoke(app, ["run", "badnets", *FAST, "--out", str(out)])  # the same config: shown, not re-run
    assert again.exit_code == 0 and "clean accuracy" in again.output
    other = runner.invoke(app, ["run", "badnets", *FAST, "--seed", "1", "--out", str(out)])
    assert other.exit_code == 2 and "already holds a finished run" in other.stderr
    assert (out / "backdoored.safetensors").read_bytes() == weights


def test_run_badnets_json_is_machine_readable(tmp_path):
    result = runner.invoke(
        app, ["run", "badnets", *[a for a in FAST if a not in ("--target", "1")], "--mode", "all-to-all", "--json",
              "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["kind"] == "badnets" and body["config"]["attack"]["mode"] == "all-to-all"
    assert "target" not in body["config"]["attack"], "all-to-all has no target to save"
    assert body["run_dir"].endswith("r")
    again = runner.invoke(app, ["run", str(tmp_path / "r" / "config.toml"), "--json", "--out", str(tmp_path / "r")])
    assert again.exit_code == 0, again.output  # its own saved config reloads (shown, not re-run)


def test_bad_input_fails_fast_with_one_line(tmp_path):
    cases = [
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--rate", "1.5"], "poison rate 1.5"),
        (["--trigger", "patch:position=middle"], "trigger position 'middle'"),
        (["--model", "resnet"], "unknown model 'resnet'"),
        (["--mode", "some"], "attack.mode: 'some' is not allowed"),
        (["--dataset", f"npz:{tmp_path / 'none.npz'}"], "no such npz file"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["run", "badnets", *FAST, *args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x" / "report.json").exists()


def test_triggers_figure(tmp_path):
    out = tmp_path / "t.png"
    result = runner.invoke(app, ["triggers", "--dataset", "digits", "--trigger", "patch:size=2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_version_from_the_command_and_python_m():
    from importlib.metadata import version

    import poisonlab

    assert runner.invoke(app, ["--version"]).output.strip() == f"poisonlab {poisonlab.__version__}"
    assert version("poisonlab") == poisonlab.__version__
    result = subprocess.run([sys.executable, "-m", "poisonlab", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"poisonlab {poisonlab.__version__}"


def test_top_level_help_imports_no_torch_sklearn_matplotlib_or_the_rich_help_renderer():
    code = ("import sys\nfrom poisonlab.cli.app import main\nsys.argv = ['poisonlab', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'matplotlib', 'typer.rich_utils') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "deploy-check" in result.stdout and result.stdout.strip().endswith("[]"), result.stdout[-300:]


def test_poisonlab_alone_shows_the_command_list_not_an_error_line():
    result = subprocess.run([sys.executable, "-m", "poisonlab"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not result.stderr.startswith("error:"), result.stderr[:200]
    assert "Commands:" in result.stderr and "deploy-check" in result.stderr


def test_the_listed_short_help_is_each_commands_own():
    from poisonlab.cli.app import COMMANDS, LazyGroup, load_command

    for name in COMMANDS:
        listed, command = LazyGroup().get_command(None, name), load_command(name)
        assert command.name == name and len(command.help) > 20
        assert listed.get_short_help_str(limit=500) == command.get_short_help_str(limit=500), name


def test_defend_and_scan_refuse_a_run_that_is_not_a_pipeline_run(tmp_path):
    config = tmp_path / "audit.toml"
    config.write_text('experiment = "scaling-audit"\nresizers = ["opencv-linear"]\nratios = [2]\nsize = 32\n')
    assert runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "audit"), "--quiet"]).exit_code == 0
    for command in (["defend", "--run"], ["scan", "data", "--run"]):
        result = runner.invoke(app, [*command, str(tmp_path / "audit")])
        assert result.exit_code == 2 and "a scaling-audit run; expected a pipeline run folder" in result.output
    result = runner.invoke(app, ["deploy-check", str(tmp_path / "audit")])
    assert result.exit_code == 2 and "a scaling-audit run; expected a pipeline run folder" in result.output


def test_loading_every_registry_imports_no_sklearn_or_matplotlib():
    code = ("import sys\nfrom poisonlab.registry import registries\n"
            "[reg.names() for reg in registries().values()]\n"
            "print(sorted(m for m in ('sklearn', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr[-300:]


def test_examples_ships_the_configs_and_copies_them_without_clobbering(tmp_path):
    listed = runner.invoke(app, ["examples", "--json"])
    assert listed.exit_code == 0, listed.output
    names = {e["name"]: e for e in json.loads(listed.output)}
    assert "badnets-mnist" in names and "BadNets" in names["badnets-mnist"]["summary"]
    out = tmp_path / "ex"
    copied = runner.invoke(app, ["examples", "--copy", str(out)])
    assert copied.exit_code == 0, copied.output
    assert sorted(p.stem for p in out.glob("*.toml")) == sorted(names)
    for name, entry in names.items():
        assert (out / f"{name}.toml").read_bytes() == Path(entry["file"]).read_bytes()
    (out / "badnets-mnist.toml").write_text("# my edits\n")
    again = runner.invoke(app, ["examples", "--copy", str(out)])
    assert again.exit_code == 2 and "already holds" in again.output
    assert (out / "badnets-mnist.toml").read_text() == "# my edits\n"
    assert runner.invoke(app, ["examples", "--copy", str(out), "--force"]).exit_code == 0
    assert (out / "badnets-mnist.toml").read_bytes() == Path(names["badnets-mnist"]["file"]).read_bytes()
