"""Each experiment's report as tables of text cells: the terminal (rich) and the HTML report render the same rows.

Cells may carry rich markup (``[red]...[/red]``); ``plain`` strips it for other renderers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TableData:
    """A titled table: column names, rows of text cells, a caption; the first ``left`` columns are left-aligned."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""
    left: int = 1
    id: str = "headline"

    def to_rich(self) -> Any:
        """The table for the terminal (a ``rich.table.Table``; the markup in cells renders as colour)."""
        from rich.table import Table

        table = Table(title=self.title, caption=self.caption or None)
        for i, col in enumerate(self.columns):
            table.add_column(col, justify="left" if i < self.left else "right")
        for row in self.rows:
            table.add_row(*row)
        return table


def printable(text: str) -> str:
    """``text`` with unprintable characters escaped (``\\n``, ``\\x1b``): one line, no terminal codes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def plain(cell: str) -> str:
    """A cell without its rich markup."""
    return re.sub(r"\[/?(?:bold|red|green|yellow)\]", "", cell)


def pct(v: Any, digits: int = 2) -> str:
    return "-" if not isinstance(v, int | float) or v != v else f"{100 * v:.{digits}f}%"


def _f(v: Any) -> str:
    return "" if v is None else f"{v:.3f}"


def _db(v: Any) -> str:
    """A PSNR in dB; an exact match (infinite PSNR, stored as null in strict JSON) reads inf."""
    return "inf" if v is None or v == float("inf") else f"{v:.1f}"


def _attack_label(cfg: dict[str, Any]) -> str:
    attack = cfg.get("attack") or {}
    shown = {k: v for k, v in attack.items() if k not in ("name", "trigger") and not isinstance(v, list)}
    return f"{attack.get('name')} ({', '.join(f'{k}={v}' for k, v in shown.items())})"


def pipeline_tables(body: dict[str, Any]) -> list[TableData]:
    """CA and ASR of the clean and the backdoored model (each deployed variant a row), then the defenses."""
    m, cfg = body["metrics"], body["config"]
    budget = (f"{m['poisoned_samples']} poisoned of {m['train_size']} ({pct(m['poisoned_fraction'])})"
              if m["poisoned_samples"] else f"training attack, {m['train_size']} training images")
    title = f"{_attack_label(cfg)} on {cfg['dataset']}, seed {cfg['seed']}: {budget}"
    caption = f"{m['asr_definition']} ({m['clean'].get('asr_images', 0)} images)."

    def worst(row: dict[str, Any]) -> str:
        seen = [v for v in row.get("per_class_asr") or [] if v is not None]
        return pct(min(seen)) if seen else "-"

    deployments = m.get("deployments") or {}
    if not deployments:
        table = TableData(title, ["model", "clean accuracy", "attack success rate", "worst-class ASR"], caption=caption)
        for name in ("clean", "backdoored"):
            r = m[name]
            table.rows.append([name, pct(r["clean_accuracy"]), pct(r.get("attack_success_rate")), worst(r)])
    else:
        table = TableData(title, ["variant", "clean CA", "clean ASR", "backdoored CA", "backdoored ASR",
                                  "backdoored worst-class ASR"], caption=caption)
        aimed = (cfg.get("attack") or {}).get("deployment")
        for spec, variants in {"float": {"clean": m["clean"], "backdoored": m["backdoored"]}, **deployments}.items():
            c, b = variants["clean"], variants["backdoored"]
            label = f"[bold]{spec}[/bold] (attacked)" if spec == aimed else spec
            table.rows.append([label, pct(c["clean_accuracy"]), pct(c.get("attack_success_rate")),
                               pct(b["clean_accuracy"]), pct(b.get("attack_success_rate")), worst(b)])
    tables = [table]
    if m.get("defenses"):
        tables.append(defense_table(m["defenses"], f"defenses on the backdoored model (defender data: "
                                                   f"{cfg.get('defender')})"))
    return tables


def train_tables(body: dict[str, Any]) -> list[TableData]:
    """``train``: accuracy on the training rows and on the test part (when the data have one)."""
    m, cfg = body["metrics"], body["config"]
    table = TableData(f"{cfg['model']} trained on {cfg['dataset']}, seed {cfg['seed']}", ["rows", "images", "accuracy"],
                      [["training", str(m["train_size"]), pct(m["train_accuracy"])]])
    table.rows.append(["test", str(m["test_size"]), pct(m["test_accuracy"]) if m["test_size"] else "- (no test part)"])
    return [table]


def defense_summary(r: dict[str, Any]) -> str:
    """One defense's result in a line, by the kind of result it has."""
    if "precision" in r:
        return (f"P {_f(r['precision'])} R {_f(r['recall'])} F1 {_f(r['f1'])} AUROC {_f(r['auroc'])}, "
                f"{r['flagged']} flagged")
    if "false_rejection_rate" in r:
        found = f"detects {pct(r['detection_rate'])} of triggered inputs at " if "detection_rate" in r else ""
        return f"{found}false rejection {pct(r['false_rejection_rate'])}"
    if "flagged_classes" in r:
        index = f", anomaly index max {r['max_anomaly_index']:.2f}" if "max_anomaly_index" in r else ""
        return f"flags classes {r['flagged_classes']}{index}"
    if "ca_after" in r:
        return (f"CA {pct(r['ca_before'])} -> {pct(r['ca_after'])}, ASR {pct(r.get('asr_before'))} -> "
                f"{pct(r.get('asr_after'))}")
    return f"CA {pct(r.get('ca'))}, ASR {pct(r.get('asr'))}"


def defense_table(results: dict[str, Any], title: str) -> TableData:
    table = TableData(title, ["defense", "result", "seconds"], id="defenses")
    for spec, r in results.items():
        table.rows.append([spec, defense_summary(r), f"{r.get('seconds', 0):.1f}"])
    return table


def universal_tables(body: dict[str, Any]) -> list[TableData]:
    """Mean ASR and CA per budget, universal vs baseline, and the transferability rows."""
    m, cfg = body["metrics"], body["config"]
    table = TableData(f"Universal backdoor on {cfg['dataset']} ({m['num_classes']} classes, {m['train_size']} "
                      f"training images), clean CA {pct(m['clean_accuracy'], 1)}",
                      ["codes", "poison", "per class", "mean ASR", "worst-10% ASR", "unpoisoned targets: ASR", "CA"])
    for r in m["budgets"]:
        never = r.get("mean_asr_never_poisoned_targets")
        table.rows.append([r["codes"], f"{100 * r['rate']:g}% ({r['poisoned_samples']})", f"{r['per_class']:.2f}",
                           pct(r["mean_asr"], 1), pct(r["per_target_asr_quantiles"]["p10"], 1),
                           "-" if never is None else f"{pct(never, 1)} ({r['never_poisoned_targets']})",
                           pct(r["clean_accuracy"], 1)])
    for r in m["transfer"]:
        table.rows.append([f"{r['codes']}, half the classes ({r['split']})", f"{100 * r['rate']:g}%", "",
                           pct(r["asr_poisoned_classes"], 1), "", pct(r["asr_unpoisoned_classes"], 1),
                           pct(r["clean_accuracy"], 1)])
    table.caption = (f"lda = universal (LDA codes, {m['surrogate']}); random = multi-target BadNets baseline. "
                     f"{m['asr_definition']}; {m['target_sampling']}.")
    return [table]


def _ratio(v: float, clean: float) -> str:
    return f"x{v / clean:.2f}" if clean > 0 else "-"


def backgradient_tables(body: dict[str, Any]) -> list[TableData]:
    """Error of the victim against poison rate, optimised points beside their label-flipped starts."""
    m, cfg = body["metrics"], body["config"]
    key = m["error_metric"]
    what = f"error on class {cfg['source']}" if cfg["goal"] == "targeted" else "test error"
    table = TableData(f"back-gradient {cfg['goal']} poisoning, {cfg['dataset']} {cfg['learner']}: {what}",
                      ["rate", "points", "back-gradient", "x clean", "label flip", "x clean"], left=0)
    clean = m["clean_error"]
    for row in m["curve"]:
        bg, flip = row["backgradient"][key], row["label_flip"][key]
        table.rows.append([pct(row["rate"]), str(row["count"]), pct(bg), _ratio(bg, clean), pct(flip),
                           _ratio(flip, clean)])
    for name, t in m["transfer"].items():
        if "skipped" not in t:
            c, bg, flip = t["clean"][key], t["backgradient"][key], t["label_flip"][key]
            table.rows.append([f"-> {name}", str(t["count"]), f"{pct(c)} -> {pct(bg)}", _ratio(bg, c), pct(flip),
                               _ratio(flip, c)])
    return [table]


def camouflage_tables(body: dict[str, Any]) -> list[TableData]:
    """CA and both ASRs per run, then the data scanners' detection of the camouflaged poison."""
    m, cfg = body["metrics"], body["config"]
    hr, low = "x".join(map(str, m["high_resolution"])), "x".join(map(str, m["pipeline_size"]))
    table = TableData(f"scaling camouflage: {cfg['count']} poisoned of {m['train_size']} {hr} images, pipeline "
                      f"{cfg['resizer']} to {low}, target {cfg['target']}",
                      ["run", "CA", "ASR visible", "ASR camouflaged", "note"])
    for name, r in m["runs"].items():
        note = ""
        if "psnr_poisoned_vs_original_db" in r:
            note = (f"poisoned vs original {r['psnr_poisoned_vs_original_db']:.1f} dB, {r['labels_changed']} labels "
                    "changed")
        elif "psnr_poisoned_vs_clean_db" in r:
            note = f"poisoned vs clean {r['psnr_poisoned_vs_clean_db']:.1f} dB (visible)"
        table.rows.append([name, pct(r["clean_accuracy"]), pct(r["asr_visible"]), pct(r.get("asr_camouflaged")), note])
    for attack, scanners in m["detection"].items():
        for scanner, d in scanners.items():
            table.rows.append([f"{scanner} on {attack} data", "", "", "", defense_summary(d)])
    table.caption = f"{m['upscaled_note']}. {m['asr_definition']}"
    return [table]


def audit_tables(body: dict[str, Any]) -> list[TableData]:
    """One row per resizer x ratio: pixels read, success rate, PSNRs and the verdict."""
    m, cfg = body["metrics"], body["config"]
    table = TableData(f"image-scaling attack audit: {m['pairs']} photo pairs at {cfg['size']}x{cfg['size']}, eps "
                      f"{cfg['eps']:g}, success = output within eps and A closer to S than to T upscaled (PSNR)",
                      ["resizer", "ratio", "pixels read", "success", "PSNR(A,S)", "PSNR(out,T)", "verdict"])
    for r in m["rows"]:
        table.rows.append([r["resizer"], str(r["ratio"]), pct(r["coverage"], 1), pct(r["success_rate"], 0),
                           _db(r["psnr_source"]), _db(r["psnr_target"]),
                           "[red]vulnerable[/red]" if r["vulnerable"] else "[green]robust[/green]"])
    return [table]


MATRIX_COLUMNS = ["attack", "defense", "P", "R", "F1", "AUROC", "flagged", "CA", "ASR", "other", "seconds"]


def matrix_tables(body: dict[str, Any]) -> list[TableData]:
    """One row per (attack, defense): detection figures for scanners, CA/ASR after for mitigations, seconds."""
    m = body["metrics"]
    table = TableData(f"defense matrix on {body['config']['dataset']} ({m['train_size']} training images, defender "
                      f"holds {m['reserve']} clean ones)", MATRIX_COLUMNS, left=2, id="defense-matrix")
    for attack, rows in m["results"].items():
        for name, r in rows.items():
            other = "" if "precision" in r or "ca_after" in r or "ca" in r else defense_summary(r)
            ca, asr = (r.get("ca_after"), r.get("asr_after")) if "ca_after" in r else (r.get("ca"), r.get("asr"))
            table.rows.append([attack, name, _f(r.get("precision")), _f(r.get("recall")), _f(r.get("f1")),
                               _f(r.get("auroc")), str(r.get("flagged", "")), _f(ca), _f(asr), other,
                               f"{r['seconds']:.1f}" if "seconds" in r else ""])
    for attack, err in m["errors"].items():
        table.rows.append([attack, "-", "", "", "", "", "", "", "", f"not run: {err}", ""])
    table.caption = (f"CA/ASR after the mitigation on that row (retrain:scanner=X drops what X flagged). "
                     f"{m['asr_definition']}")
    return [table]


TAKES = 0.9
"""An ASR at or above which a backdoor counts as taken in the detection matrix (the issue's bar reads cells there)."""


def detection_tables(body: dict[str, Any]) -> list[TableData]:
    """``detection-matrix``: per attack and rate the backdoor, each scanner's AUROC / TPR at 5% FPR, retraining."""
    m = body["metrics"]
    detectors = list(body["config"]["detectors"])
    table = TableData(f"detection matrix on {body['config']['dataset']} ({m['train_size']} training images, class "
                      f"sizes {min(m['class_sizes'])}-{max(m['class_sizes'])})",
                      ["attack", "rate", "poisoned", "CA", "ASR", *(f"{d} AUROC / TPR" for d in detectors),
                       "best", "ASR after retraining"], left=2, id="detection-matrix")
    for attack, rates in m["cells"].items():
        for rate, c in rates.items():
            asr = pct(c["asr"]) if c["asr"] >= TAKES else f"[dim]{pct(c['asr'])} (not taken)[/dim]"
            cells = [f"{_f(c['detectors'][d]['auroc'])} / {_f(c['detectors'][d]['tpr_at_5fpr'])}" for d in detectors]
            table.rows.append([attack, rate, str(c["poisoned"]), pct(c["ca"]), asr, *cells, c["best"],
                               pct(c.get("asr_after"))])
    for cell, err in m["errors"].items():
        table.rows.append([cell, "-", "", "", "", *([""] * len(detectors)), "", f"not run: {err}"])
    table.caption = (f"AUROC and TPR at FPR <= 5% from each scanner's continuous scores; retraining drops the rows "
                     "flagged by the cell's best scanner (flags that caught poison, then the highest TPR at 5% FPR, "
                     f"then AUROC). {m['asr_definition']}")
    out = [table]
    ref = m.get("clean_reference")
    if ref:
        clean = TableData("the clean reference model (no poison): false alarms", ["scanner", "rows flagged",
                                                                                  "called backdoored"], id="clean")
        for name, r in ref["detectors"].items():
            clean.rows.append([name, pct(r["flagged_share"]), "yes" if r["called_backdoored"] else "no"])
        clean.caption = f"clean accuracy {pct(ref['ca'])}"
        out.append(clean)
    return out


def deploy_check_tables(result: dict[str, Any], title: str) -> list[TableData]:
    """``deploy-check``: the float reference, then every deployed variant with its verdict."""
    scanned = "scan" in result["float"]
    table = TableData(title, ["variant", "clean accuracy", "ASR", "agreement (confident)", "divergence (confident)",
                              *(["NC flags"] if scanned else []), "verdict"], id="deploy-check")

    def nc(row: dict[str, Any]) -> list[str]:
        return [f"{row['scan']['flagged_classes']} (max index {max(row['scan']['anomaly_index']):.1f})"] \
            if scanned else []

    f = result["float"]
    table.rows.append(["float", pct(f["clean_accuracy"]), pct(f.get("attack_success_rate")), "-", "-", *nc(f),
                       "reference"])
    for r in result["variants"]:
        verdict = "[red]FLAGGED[/red]: " + "; ".join(r["reasons"]) if r["flagged"] else "[green]ok[/green]"
        table.rows.append([r["deployment"], pct(r["clean_accuracy"]), pct(r.get("attack_success_rate")),
                           f"{pct(r['agreement'])} ({pct(1 - r['confident_disagreement'])})",
                           f"{pct(r['divergence'])} ({pct(r['confident_divergence'])})", *nc(r), verdict])
    return [table]


def data_scan_tables(result: dict[str, Any], per_class: list[tuple[str, int]]) -> list[TableData]:
    """``scan data``: flagged samples per class (suspicious classes marked)."""
    read = "models of its own" if result["layer"] is None else f"{result['layer']} features"
    table = TableData(f"{result['defense']} on {result['samples']} samples ({read}), "
                      f"{result['seconds']:.1f} s", ["class", "flagged"], [[c, str(n)] for c, n in per_class])
    d = result.get("detection")
    if d is not None:
        table.caption = (f"against the truth ({d['poisoned']} poisoned): precision {d['precision']:.3f}, recall "
                         f"{d['recall']:.3f}, F1 {d['f1']:.3f}, AUROC {d['auroc']:.3f}"
                         + (f"; {d['truth_rows_not_scanned']} truth rows were not scanned (held out or not in the "
                            "subset)" if d.get("truth_rows_not_scanned") else ""))
    return [table]


def model_scan_tables(result: dict[str, Any]) -> list[TableData]:
    """``scan model``: Neural Cleanse's mask size, anomaly index and trigger success per class."""
    table = TableData(f"Neural Cleanse ({result['seconds']:.1f} s); flagged: "
                      f"{', '.join(result['flagged_classes']) or 'none'}",
                      ["class", "mask L1", "anomaly index", "trigger success"], left=0)
    for row in zip(result["classes"], result["mask_l1"], result["anomaly_index"], result["trigger_success"],
                   strict=True):
        table.rows.append([str(row[0]), f"{row[1]:.1f}", f"{row[2]:.2f}", f"{row[3]:.2f}"])
    return [table]


def before_after_tables(result: dict[str, Any], title: str) -> list[TableData]:
    """``defend``: CA and ASR before and after a mitigation."""
    return [TableData(title, ["model", "clean accuracy", "attack success rate"],
                      [["before", pct(result["ca_before"]), pct(result["asr_before"])],
                       ["after", pct(result["ca_after"]), pct(result["asr_after"])]], left=0)]


def image_scan_tables(rows: list[dict[str, Any]], title: str) -> list[TableData]:
    """``scaling scan``: each image's detection score and verdict."""
    return [TableData(title, ["image", "score", "verdict"], [[r["image"], f"{r['score']:.1f}", "[red]ATTACK[/red]"
                                                              if r["flagged"] else "clean"] for r in rows], left=3)]


def runs_tables(rows: list[dict[str, Any]], title: str) -> list[TableData]:
    """``poisonlab runs``: one row per indexed run; CA and ASR are the backdoored model's."""
    def p(v: Any) -> str:
        return f"{100 * v:.2f}" if isinstance(v, int | float) else "-"

    table = TableData(title, ["run", "kind", "dataset", "attack", "rate", "seed", "CA %", "ASR %", "clean CA %",
                              "created"], left=4)
    for r in rows:
        table.rows.append([r["run"], r["kind"] or "-", r["dataset"] or "-", r["attack"] or "-",
                           "-" if r["rate"] is None else f"{r['rate']:g}", "-" if r["seed"] is None else str(r["seed"]),
                           p(r["ca"]), p(r["asr"]), p(r["clean_ca"]), r["created"] or "-"])
    return [table]


def compare_tables(result: dict[str, Any]) -> list[TableData]:
    """``poisonlab compare``: runs side by side, the config fields that differ, then every metric."""
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)

    names = [f"[{i + 1}] {Path(label).name}" for i, label in enumerate(result["runs"])]
    table = TableData("runs side by side", ["field", *names],
                      caption="  ".join(f"[{i + 1}] {label}" for i, label in enumerate(result["runs"])))
    for section in ("config", "metrics"):
        for key, values in result[section].items():
            table.rows.append([f"{section}.{key}", *map(cell, values)])
    return [table]


HEADLINE = (("backdoored.clean_accuracy", "CA (backdoored)"), ("backdoored.attack_success_rate", "ASR (backdoored)"),
            ("clean.clean_accuracy", "CA (clean)"), ("clean.attack_success_rate", "ASR (clean)"))
"""The sweep summary's columns: aggregated metric key, label."""


def sweep_tables(summary: dict[str, Any]) -> list[TableData]:
    """One row per setting (every axis but seed): CA and ASR in percent, mean ± sample std over its seeds."""
    axes = [a for a in summary["axes"] if a != "seed"]
    table = TableData(f"sweep {summary['name']}: mean ± std over seeds (percent), {summary['done']}/"
                      f"{summary['total']} cells done", [*axes, "seeds done", *(label for _, label in HEADLINE)],
                      left=len(axes), id="summary")
    for group in summary["groups"]:
        stats = [group["metrics"].get(k) or {} for k, _ in HEADLINE]
        table.rows.append([*(str(group["overrides"].get(a)) for a in axes), f"{group['done']}/{len(group['seeds'])}",
                           *(f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}" if s.get("mean") is not None else "-"
                             for s in stats)])
    return [table]
