"""Config runs with deployments and defenses: each is applied to the trained models and lands in report.json."""

from __future__ import annotations

import pytest
from test_config import tiny_config, tiny_npz

from poisonlab.cli.common import console
from poisonlab.cli.run import experiment_table
from poisonlab.core import PoisonlabError
from poisonlab.experiment import config as cfgmod
from poisonlab.experiment.runner import check_runnable, run_experiment


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"deployments": ["int9"]}, r"deployments\[0\]: unknown deployment 'int9'; expected one of: .*fp16"),
        ({"deployments": ["fp16", "prune-l1:1.5"]}, r"deployments\[1\]: .*prune-l1:1\.5"),
        ({"deployments": "fp16"}, r"deployments: expected a list, got 'fp16'"),
        ({"defenses": ["spectre"]}, r"defenses\[0\]: unknown defense 'spectre'; expected one of: .*spectral"),
        ({"defenses": ["retrain"]}, r"defenses\[0\]: retrain removes what a data scanner flagged"),
        ({"preprocessing": ["opencv-linear"]}, r"preprocessing"),
    ],
)
def test_bad_stage_lists_fail_before_training(tmp_path, extra, message):
    with pytest.raises(PoisonlabError, match=message):
        check_runnable(cfgmod.resolve({**tiny_config(tmp_path / "x.npz"), **extra}))


def test_deployments_and_defenses_are_measured_and_reported(tmp_path):
    data = tiny_npz(tmp_path / "tiny.npz")
    raw = {**tiny_config(data), "deployments": ["fp16", "prune-l1:0.3"], "defenses": ["spectral", "strip", "retrain"]}
    out = tmp_path / "run"
    out.mkdir()
    body = run_experiment(cfgmod.resolve(raw), out, progress=False)
    m = body["metrics"]
    assert set(m["deployments"]) == {"fp16", "prune-l1:0.3"}
    fp16 = m["deployments"]["fp16"]["backdoored"]
    assert abs(fp16["clean_accuracy"] - m["backdoored"]["clean_accuracy"]) <= 0.05  # half precision barely moves CA
    assert 0.0 <= m["deployments"]["prune-l1:0.3"]["clean"]["clean_accuracy"] <= 1.0
    spectral = m["defenses"]["spectral"]
    assert spectral["poisoned"] == m["poisoned_samples"] and 0.0 <= spectral["auroc"] <= 1.0
    strip = m["defenses"]["strip"]
    assert 0.0 <= strip["detection_rate"] <= 1.0 and 0.0 <= strip["false_rejection_rate"] <= 1.0
    retrain = m["defenses"]["retrain"]
    assert set(retrain) >= {"ca_before", "asr_before", "ca_after", "asr_after"}

    with console.capture() as captured:
        console.print(experiment_table(body))
    assert "prune-l1:0.3" in captured.get() and "fp16" in captured.get()
