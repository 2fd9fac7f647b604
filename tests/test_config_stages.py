"""Config runs with deployments and defenses: each is applied once to the trained models and lands in report.json."""

from __future__ import annotations

from test_config import tiny_config, tiny_npz

from poisonlab.attacks.badnets import BadNets
from poisonlab.experiment.pipeline import pipeline_tables
from poisonlab.experiment.run import execute, resolve


def test_deployments_and_defenses_are_measured_and_the_data_poisoned_once(tmp_path, monkeypatch):
    calls = []
    poison = BadNets.poison

    def counted(self, train, rng):
        calls.append(1)
        return poison(self, train, rng)

    monkeypatch.setattr(BadNets, "poison", counted)
    data = tiny_npz(tmp_path / "tiny.npz")
    raw = {**tiny_config(data), "deployments": ["fp16", "prune-l1:0.3"],  # 40 defender images: NC batches of 32
           "defenses": ["spectral", "strip", "neural-cleanse:batch_size=32", "retrain"]}
    out = tmp_path / "run"
    out.mkdir()
    body = execute(resolve(raw), out, progress=False)
    assert len(calls) == 1  # one poisoning for training, deployments and every defense
    m = body["metrics"]
    assert set(m["deployments"]) == {"fp16", "prune-l1:0.3"}
    fp16 = m["deployments"]["fp16"]["backdoored"]
    assert abs(fp16["clean_accuracy"] - m["backdoored"]["clean_accuracy"]) <= 0.05  # half precision barely moves CA
    assert 0.0 <= m["deployments"]["prune-l1:0.3"]["clean"]["clean_accuracy"] <= 1.0
    spectral = m["defenses"]["spectral"]
    assert spectral["poisoned"] == m["poisoned_samples"] and 0.0 <= spectral["auroc"] <= 1.0
    strip = m["defenses"]["strip"]
    assert 0.0 <= strip["detection_rate"] <= 1.0 and 0.0 <= strip["false_rejection_rate"] <= 1.0
    nc = m["defenses"]["neural-cleanse:batch_size=32"]
    assert nc["flagged_count"] == len(nc["flagged_classes"])
    retrain = m["defenses"]["retrain"]
    assert set(retrain) >= {"ca_before", "asr_before", "ca_after", "asr_after"}
    assert retrain["removed"] == spectral["flagged"]

    tables = pipeline_tables(body)
    cells = [c for t in tables for row in t.rows for c in row]
    assert any("prune-l1:0.3" in c for c in cells) and any("retrain" in c for c in cells)
