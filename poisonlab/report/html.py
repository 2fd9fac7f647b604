"""A self-contained HTML report of a run folder or a sweep folder: tables, curves, example images, config, environment.

Everything is inline (CSS, figures as SVG or base64 PNG), so the page opens offline, attached to a
mail or a ticket, years later. Numbers come straight from the folder's report.json / summary.json.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from poisonlab.core import PoisonlabError
from poisonlab.report.figures import pyplot
from poisonlab.report.store import atomic_write_bytes, load_report
from poisonlab.report.summary import PLAN_FILE, SOURCE_FILE, SUMMARY_FILE, aggregate, flatten
from poisonlab.report.tables import HEADLINE, TableData, plain, sweep_tables

REPORT_HTML = "report.html"
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1100px;color:#1b1b1b;
padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}pre{background:#f7f7f7;padding:.8rem;overflow-x:auto;font-size:.85rem}
.muted{color:#666;font-size:.9rem}figure{margin:1rem 0}img{max-width:100%}svg{max-width:100%;height:auto}
.curves{display:flex;flex-wrap:wrap;gap:1rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
        return f"{100 * value:.2f}%"
    return "–"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else _e(value)


def table(table_id: str, header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    """An HTML table; cells are already-escaped HTML, the first ``left`` columns left-aligned."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></figure>'


def _page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><h1>{_e(title)}</h1>{"".join(sections)}'
            '<p class="muted">Written by poisonlab report; self-contained, no network assets.</p></body></html>')


def _environment(body: dict[str, Any]) -> str:
    env = body.get("environment") or {}
    rows = [(_e(k), _e(v)) for k, v in env.items() if k != "versions"]
    rows += [(_e(f"version: {k}"), _e(v)) for k, v in (env.get("versions") or {}).items()]
    rows += [(_e(k), f"{v:.1f} s") for k, v in (body.get("timings") or {}).items() if isinstance(v, int | float)]
    rows.append(("created", _e(body.get("created", "–"))))
    return "<h2>Environment</h2>" + table("environment", ["", "value"], rows, left=2)


def _pair_tables(metrics: dict[str, Any]) -> list[str]:
    """Headline CA/ASR of the clean and backdoored model (float and each deployment), and per-class ASR."""
    rows = []
    for name in ("clean", "backdoored"):
        m = metrics[name]
        per_class = [v for v in m.get("per_class_asr") or [] if v is not None]
        rows.append([_e(name), "float", _pct(m.get("clean_accuracy")), _pct(m.get("attack_success_rate")),
                     _pct(min(per_class)) if per_class else "–"])
        for spec, variants in (metrics.get("deployments") or {}).items():
            v = variants.get(name, {})
            rows.append([_e(name), _e(spec), _pct(v.get("clean_accuracy")), _pct(v.get("attack_success_rate")), "–"])
    out = ["<h2>Clean accuracy and attack success rate</h2>",
           table("headline", ["model", "deployment", "clean accuracy", "attack success rate", "worst-class ASR"],
                 rows, left=2)]
    if metrics.get("asr_definition"):
        images = metrics["clean"].get("asr_images", "")
        out.append(f'<p class="muted">{_e(metrics["asr_definition"])} ({_e(images)} images). '
                   f'{_e(metrics.get("poisoned_samples", "?"))} of {_e(metrics.get("train_size", "?"))} training '
                   f'samples poisoned ({_pct(metrics.get("poisoned_fraction"))}).</p>')
    by_model = {n: metrics[n].get("per_class_asr") for n in ("clean", "backdoored")}
    if all(isinstance(v, list) for v in by_model.values()):
        class_rows = [[_e(k), *(_pct(by_model[n][k]) for n in by_model)] for k in range(len(by_model["backdoored"]))]
        out += ["<h2>Per-class ASR (by true class)</h2>", table("per-class-asr", ["class", *by_model], class_rows)]
    return out


def _matrix(table_id: str, title: str, results: dict[str, Any]) -> list[str]:
    """A defenses matrix: one row per defense, one column per numeric result."""
    flat = {name: dict(flatten(r)) if isinstance(r, dict) else {} for name, r in results.items()}
    keys = sorted({k for r in flat.values() for k in r})
    rows = [[_e(name), *(_num(r.get(k)) for k in keys)] for name, r in flat.items()]
    return [f"<h2>{_e(title)}</h2>", table(table_id, ["defense", *keys], rows)]


def _table(data: TableData) -> list[str]:
    rows = [[_e(plain(c)) for c in row] for row in data.rows]
    out = [f"<h2>{_e(data.title)}</h2>", table(data.id, data.columns, rows, left=data.left)]
    return out + ([f'<p class="muted">{_e(data.caption)}</p>'] if data.caption else [])


def render_run(run_dir: Path) -> str:
    """The HTML page of one run folder: the experiment's own tables (as the terminal prints them), then the rest."""
    from poisonlab.registry import EXPERIMENTS

    body = load_report(run_dir / "report.json")
    metrics = body.get("metrics") or {}
    cfg = body.get("config") or {}
    kind = body.get("kind")
    attack = cfg.get("attack", {}).get("name") if isinstance(cfg.get("attack"), dict) else kind
    title = f"{attack} on {cfg.get('dataset', '?')}, seed {cfg.get('seed', '?')}"
    sections = [f'<p class="muted">run folder {_e(run_dir)} · report schema {_e(body.get("schema"))} · '
                f'kind {_e(kind)}</p>']
    if isinstance(metrics.get("clean"), dict) and isinstance(metrics.get("backdoored"), dict):
        sections += _pair_tables(metrics)
        if isinstance(metrics.get("defenses"), dict):
            sections += _matrix("defenses", "Defenses", metrics["defenses"])
    elif isinstance(kind, str) and kind in EXPERIMENTS:
        title = f"{kind} on {cfg.get('dataset', '?')}, seed {cfg.get('seed', '?')}"
        for data in EXPERIMENTS.get(kind).table(body):
            sections += _table(data)
    else:
        rows = [[_e(k), _num(v)] for k, v in flatten(metrics)]
        sections += ["<h2>Metrics</h2>", table("metrics", ["metric", "value"], rows)]
    pngs = sorted(run_dir.glob("*.png"), key=lambda p: (p.name != "examples.png", p.name))
    if pngs:
        sections.append("<h2>Figures</h2>")
        sections += [_png(p, p.stem) for p in pngs]
    toml_file = run_dir / "config.toml"
    config_text = toml_file.read_text() if toml_file.exists() else json.dumps(cfg, indent=2)
    sections += ["<h2>Config</h2>", f'<pre id="config">{_e(config_text)}</pre>', _environment(body)]
    return _page(title, sections)


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _curves(summary: dict[str, Any]) -> list[str]:
    """ASR and CA of the backdoored model against each numeric axis, mean ± std over seeds, one line per setting."""
    out = []
    axes = {k: v for k, v in summary["axes"].items() if k != "seed"}
    for axis, values in axes.items():
        if len(values) < 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            continue
        others = [a for a in axes if a != axis]
        for key, label in HEADLINE[:2]:
            fig, ax = pyplot().subplots(figsize=(5.2, 3.4))
            lines: dict[str, list[tuple[float, float, float]]] = {}
            for group in summary["groups"]:
                stat = group["metrics"].get(key)
                if not stat or stat["mean"] is None:
                    continue
                name = ", ".join(f"{a}={group['overrides'][a]}" for a in others) or "mean ± std over seeds"
                lines.setdefault(name, []).append((group["overrides"][axis], 100 * stat["mean"], 100 * stat["std"]))
            for name, points in lines.items():
                points.sort()
                xs, ys, es = zip(*points, strict=True)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name)
            if min(values) > 0 and max(values) / min(values) >= 20:
                ax.set_xscale("log")
            ax.set_xlabel(axis)
            ax.set_ylabel(f"{label} %")
            ax.set_title(f"{label} vs {axis}")
            ax.grid(alpha=0.3)
            if lines:
                ax.legend(fontsize=7)
            fig.tight_layout()
            out.append(f'<figure class="curve" id="curve-{_e(key)}-{_e(axis)}">{_svg(fig)}</figure>')
    return ['<h2>Curves</h2><div class="curves">' + "".join(out) + "</div>"] if out else []


def _stage_matrix(summary: dict[str, Any], axes: list[str]) -> list[str]:
    """Deployment and defense results per setting, mean ± std over seeds: a row per metric, a column per setting."""
    keys = sorted({k for g in summary["groups"] for k in g["metrics"] if _stage_metric(k)})
    if not keys:
        return []
    header = ["metric", *(", ".join(f"{a}={g['overrides'].get(a)}" for a in axes) or "all" for g in summary["groups"])]
    rows = [[_e(k), *(_stat(g["metrics"].get(k)) for g in summary["groups"])] for k in keys]
    return ["<h2>Deployments and defenses (mean ± std over seeds)</h2>", table("stages", header, rows)]


def _stage_metric(key: str) -> bool:
    if key.startswith("deployments."):
        return key.endswith(("clean_accuracy", "attack_success_rate"))
    return key.startswith("defenses.") and not key.endswith(".seconds")


def _stat(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.4g} ± {stat['std']:.2g}"


def detection_groups(sweep_dir: Path, summary: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """For a sweep of ``detection-matrix`` runs, per setting (every axis but seed) the matrix's cells with each
    number averaged over the finished seeds and its standard deviation beside it (``KEY_std``); empty otherwise."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for cell in summary["cells"]:
        if cell["status"] != "done":
            continue
        body = load_report(sweep_dir / "cells" / cell["id"] / "report.json")
        if body.get("kind") != "detection-matrix":
            return {}
        setting = ", ".join(f"{k}={v}" for k, v in cell["overrides"].items() if k != "seed") or "all"
        runs = out.setdefault(setting, {})
        for attack, rates in body["metrics"]["cells"].items():
            for rate, c in rates.items():
                runs.setdefault(attack, {}).setdefault(rate, []).append(c)
    return {setting: {attack: {rate: _averaged(seen) for rate, seen in rates.items()} for attack, rates in runs.items()}
            for setting, runs in out.items()}


def _averaged(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One matrix cell from several seeds: every number averaged (with ``KEY_std``), per detector too."""

    def mean_std(values: list[Any]) -> tuple[float, float]:
        vals = [float(v) for v in values if isinstance(v, int | float) and not math.isnan(v)]
        if not vals:
            return float("nan"), float("nan")
        m = sum(vals) / len(vals)
        return m, (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0

    def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"seeds": len(parts)}
        for key in parts[0]:
            values: list[Any] = [p.get(key) for p in parts]
            if all(isinstance(v, dict) for v in values):
                out[key] = {name: merge([v[name] for v in values]) for name in values[0]}
            elif any(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                out[key], out[f"{key}_std"] = mean_std(values)
        return out

    return merge(cells)


def _detection_section(sweep_dir: Path, summary: dict[str, Any]) -> list[str]:
    """Heat maps and a table of the detection matrix per setting, mean ± std over seeds."""
    from poisonlab.report.figures import detection_heatmaps

    groups = detection_groups(sweep_dir, summary)
    if not groups:
        return []
    out = ["<h2>Detection matrix (mean ± std over seeds)</h2>"]
    for setting, cells in groups.items():
        detectors = sorted({d for rates in cells.values() for c in rates.values() for d in c["detectors"]})
        out.append(f'<figure class="heatmap">{_svg(detection_heatmaps(cells, detectors, setting))}</figure>')
        rows = []
        for attack, rates in cells.items():
            for rate, c in rates.items():
                rows.append([_e(attack), _e(rate), str(c["seeds"]), f"{_pct(c['asr'])} ± {_pct(c['asr_std'])}",
                             *(f"{c['detectors'][d]['auroc']:.3f} ± {c['detectors'][d]['auroc_std']:.3f} / "
                               f"{c['detectors'][d]['tpr_at_5fpr']:.2f}" for d in detectors),
                             _pct(c.get("asr_after"))])
        out.append(table(f"detection-{len(out)}", ["attack", "rate", "seeds", "ASR", *(f"{d} AUROC / TPR"
                                                                                         for d in detectors),
                                                    "ASR after retraining"], rows, left=2))
    return out


def render_sweep(sweep_dir: Path) -> str:
    """The HTML page of a sweep folder: mean ± std per setting, curves, every cell, examples, config."""
    summary = aggregate(sweep_dir)
    axes = [a for a in summary["axes"] if a != "seed"]
    sections = [f'<p class="muted">sweep folder {_e(sweep_dir)} · {summary["done"]} of {summary["total"]} cells done '
                f'· axes: {_e(", ".join(f"{k} = {v}" for k, v in summary["axes"].items()))}</p>',
                *_table(sweep_tables(summary)[0])]
    sections += _curves(summary)
    sections += _detection_section(sweep_dir, summary)
    sections += _stage_matrix(summary, axes)
    cell_rows = [[_e(c["id"]), _e(c["status"]), *(_pct(c["metrics"].get(k)) for k, _ in HEADLINE)]
                 for c in summary["cells"]]
    sections += ["<h2>Every cell</h2>", table("cells", ["cell", "status", *(lbl for _, lbl in HEADLINE)], cell_rows, 2)]
    done = [c for c in summary["cells"] if c["status"] == "done"]
    shown: dict[str, dict[str, Any]] = {}
    for c in done:
        shown.setdefault(json.dumps({k: v for k, v in c["overrides"].items() if k != "seed"}, sort_keys=True), c)
    examples = [(c, sweep_dir / "cells" / c["id"] / "examples.png") for c in shown.values()]
    if any(p.exists() for _, p in examples):
        sections.append("<h2>Examples: triggered images and predictions (first seed of each setting)</h2>")
        sections += [f"<h3>{_e(c['id'])}</h3>" + _png(p, c["id"]) for c, p in examples if p.exists()]
    source = (sweep_dir / SOURCE_FILE).read_text() if (sweep_dir / SOURCE_FILE).exists() else ""
    sections += ["<h2>Config</h2>", f'<pre id="config">{_e(source)}</pre>']
    if done:
        sections.append(_environment(load_report(sweep_dir / "cells" / done[0]["id"] / "report.json")))
    return _page(f"Sweep {summary['name']}", sections)


def write_report(folder: Path, out: Path | None = None) -> Path:
    """Render ``folder`` (a sweep folder or a run folder) to ``out`` (default ``folder/report.html``), atomically."""
    if (folder / PLAN_FILE).exists():
        page = render_sweep(folder)
    elif (folder / "report.json").exists():
        page = render_run(folder)
    elif folder.is_dir():
        raise PoisonlabError(f"{folder}: neither a run folder (report.json) nor a sweep folder ({PLAN_FILE}, "
                             f"{SUMMARY_FILE})")
    else:
        raise PoisonlabError(f"{folder}: no such folder")
    target = out if out is not None else folder / REPORT_HTML
    atomic_write_bytes(target, page.encode())
    return target
