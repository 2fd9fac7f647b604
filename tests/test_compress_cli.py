"""``poisonlab run compression-artifact`` and ``poisonlab deploy-check`` end to end on the synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poisonlab.cli.app import app

runner = CliRunner()
CHECK = ["-d", "prune-l1:0.5", "-d", "fp16", "--search-steps", "60", "--test-size", "250"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ca") / "run"
    result = runner.invoke(app, [
        "run", "compression-artifact", "--deployment", "prune-l1:0.5", "--dataset", "synthetic", "--model", "small-cnn",
        "--trigger", "patch:size=3", "--target", "1", "--epochs", "4", "--deployments", "prune-l1:0.3",
        "--deployments", "fp16", "--out", str(out), "--json",
    ])
    assert result.exit_code == 0, result.output
    m = json.loads(result.output)["metrics"]
    assert m["backdoored"]["attack_success_rate"] < 0.2
    assert m["deployments"]["prune-l1:0.5"]["backdoored"]["attack_success_rate"] > 0.8
    assert m["deployments"]["prune-l1:0.5"]["clean"]["attack_success_rate"] < 0.2
    assert list(m["deployments"]) == ["prune-l1:0.5", "prune-l1:0.3", "fp16"]  # the attacked deployment first
    assert 'experiment = "compression-artifact"' in (out / "config.toml").read_text()
    return out


def test_deploy_check_flags_the_attacked_model(run_dir: Path) -> None:
    result = runner.invoke(app, ["deploy-check", str(run_dir), *CHECK, "--trigger", "patch:size=3", "--target", "1",
                                 "--json"])
    assert result.exit_code == 1, result.output
    body = json.loads(result.output)
    assert body["flagged"] == ["prune-l1:0.5"]
    row = body["variants"][0]
    assert row["attack_success_rate"] > 0.8 and body["float"]["attack_success_rate"] < 0.2
    # the trigger-agnostic test alone catches it: a found stamp splits the pruned model from float
    assert row["divergence"] > 0.15 and any("universal stamp" in r for r in row["reasons"])


def test_a_scan_of_the_float_model_misses_what_the_pruned_variant_carries(run_dir: Path) -> None:
    """Neural Cleanse on float finds nothing special about the target; on the pruned variant its trigger shrinks."""
    result = runner.invoke(app, ["deploy-check", str(run_dir), "-d", "prune-l1:0.5", "-d", "fp16", "--search-steps",
                                 "0", "--scan", "--scan-steps", "100", "--json"])
    assert result.exit_code in (0, 1), result.output
    body = json.loads(result.output)
    float_scan, (pruned, half) = body["float"]["scan"], body["variants"]
    assert 1 not in float_scan["flagged_classes"]
    smallest = min(range(4), key=lambda k: pruned["scan"]["mask_l1"][k])
    assert smallest == 1 and pruned["scan"]["mask_l1"][1] < 0.5 * float_scan["mask_l1"][1]
    assert half["scan"] == float_scan  # fp16's stand-in is the float model itself


def test_deploy_check_passes_the_clean_reference(run_dir: Path) -> None:
    result = runner.invoke(app, ["deploy-check", str(run_dir), "--which", "clean", "--arch", "small-cnn",
                                 "--dataset", "synthetic", *CHECK, "--trigger", "patch:size=3", "--target", "1"])
    assert result.exit_code == 0, result.output
    assert "FLAGGED" not in result.output


@pytest.mark.parametrize("args, message", [
    (["-d", "int9"], "unknown deployment 'int9'"),
    (["--arch", "badnets-cnn"], "weights do not fit badnets-cnn"),
    (["--trigger", "patch:size=3"], "--trigger and --target go together"),
    (["--arch", "small-cnn", "--dataset", "no-such-data"], "unknown dataset"),
])
def test_deploy_check_bad_input_is_one_line(run_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["deploy-check", str(run_dir / "backdoored.safetensors"), "--dataset", "synthetic",
                                 "--arch", "small-cnn", *args])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1


def test_run_rejects_an_unattackable_deployment(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "compression-artifact", "--deployment", "fp16", "--dataset", "synthetic",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "cannot attack deployment 'fp16'" in result.output
