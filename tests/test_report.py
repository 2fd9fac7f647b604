"""The HTML report: tables, curves and images of a run and of a sweep, self-contained, rendered by headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_config import tiny_npz
from test_sweep import sweep_toml
from typer.testing import CliRunner

from poisonlab.cli.app import app
from poisonlab.experiment.sweep import plan, run_sweep
from poisonlab.report.html import render_run, write_report

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "headless Chromium is not installed (Debian: apt-get install -y chromium); browser check skipped"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-rate x 1-seed sweep of tiny runs, shared by the tests here."""
    base = tmp_path_factory.mktemp("report")
    config = sweep_toml(base / "s.toml", tiny_npz(base / "tiny.npz"), rates="[0.05, 0.2]", seeds="[0]", epochs=1)
    out = base / "sweep"
    run_sweep(plan(config), out)
    return out


def _external_references(page: str) -> list[str]:
    """Anything the page would fetch from elsewhere (XML namespace URIs inside SVG are names, not fetches)."""
    return re.findall(r"""(?:src|href)\s*=\s*["'](?!data:|#)[^"']*|url\((?!data:|#)[^)]*\)|<link\b|<script\b""", page)


def _rows(page: str, table_id: str) -> list[str]:
    match = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert match, f"no table {table_id}"
    return re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)


def test_run_report_shows_the_measured_numbers_and_is_self_contained(sweep_dir):
    cell = sweep_dir / "cells" / "rate=0.2_seed=0"
    body = json.loads((cell / "report.json").read_text())
    page = write_report(cell).read_text()
    assert _external_references(page) == []
    rows = _rows(page, "headline")
    assert len(rows) == 2
    asr = body["metrics"]["backdoored"]["attack_success_rate"]
    assert f"{100 * asr:.2f}%" in rows[1]
    assert len(_rows(page, "per-class-asr")) == 4
    assert page.count("data:image/png;base64,") == 1  # examples.png
    assert 'rate = 0.2' in page and "torch" in page  # the resolved config and the environment


def test_sweep_report_has_mean_std_table_curves_and_cells(sweep_dir):
    page = write_report(sweep_dir).read_text()
    assert _external_references(page) == []
    summary = json.loads((sweep_dir / "summary.json").read_text())
    rows = _rows(page, "summary")
    assert len(rows) == 2 and all("±" in r for r in rows)
    stat = summary["groups"][1]["metrics"]["backdoored.attack_success_rate"]
    assert f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}" in rows[1]
    assert page.count("<svg") == 2  # ASR vs rate and CA vs rate
    assert len(_rows(page, "cells")) == 2


def test_deployment_and_defense_results_become_tables(sweep_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sweep_dir / "cells" / "rate=0.05_seed=0", run)
    body = json.loads((run / "report.json").read_text())
    metrics = body["metrics"]
    metrics["deployments"] = {"int8-fbgemm": {"clean": metrics["clean"], "backdoored": metrics["backdoored"]}}
    metrics["defenses"] = {"spectral": {"precision": 0.91, "recall": 0.97}, "strip": {"precision": 0.5, "recall": 0.6}}
    (run / "report.json").write_text(json.dumps(body))
    page = render_run(run)
    assert len(_rows(page, "headline")) == 4 and "int8-fbgemm" in page
    defenses = _rows(page, "defenses")
    assert len(defenses) == 2 and "0.91" in defenses[0] and "0.97" in defenses[0]


def test_report_cli(sweep_dir, tmp_path):
    result = runner.invoke(app, ["report", str(sweep_dir), "--out", str(tmp_path / "page.html"), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["report"].endswith("page.html")
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = runner.invoke(app, ["report", str(empty)])
    assert bad.exit_code == 2 and "neither a run folder" in bad.output
    assert runner.invoke(app, ["report", str(tmp_path / "missing")]).exit_code == 2


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_sweep_report_renders_in_headless_chromium(sweep_dir, tmp_path):
    page = write_report(sweep_dir)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert len(_rows(dom.stdout, "summary")) == 2 and len(_rows(dom.stdout, "cells")) == 2
    assert dom.stdout.count("<svg") == 2
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 1600)
    low, high = image.getextrema()
    assert high - low > 100  # text, tables and figures drew something on the page


def test_sweep_report_aggregates_defense_results_per_setting(sweep_dir, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    for i, path in enumerate(sorted(copy.glob("cells/*/report.json"))):
        body = json.loads(path.read_text())
        body["metrics"]["defenses"] = {"spectral": {"recall": 0.5 + 0.25 * i, "seconds": 3.0}}
        path.write_text(json.dumps(body))
    page = write_report(copy).read_text()
    rows = _rows(page, "stages")
    assert len(rows) == 1 and "defenses.spectral.recall" in rows[0]  # timings are not results
    assert "0.5 ± 0" in rows[0] and "0.75 ± 0" in rows[0]


def test_audit_table_reads_an_exact_attack_back_from_strict_json():
    from poisonlab.report.store import to_json
    from poisonlab.report.tables import audit_tables

    row = {"resizer": "opencv-nearest", "ratio": 4, "coverage": 0.06, "success_rate": 1.0, "psnr_source": 30.0,
           "psnr_target": float("inf"), "vulnerable": True}
    body = json.loads(to_json({"metrics": {"pairs": 1, "rows": [row]}, "config": {"size": 64, "eps": 1.0}}))
    assert body["metrics"]["rows"][0]["psnr_target"] is None
    assert audit_tables(body)[0].rows[0][4:6] == ["30.0", "inf"]
