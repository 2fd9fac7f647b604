"""An SQLite index of every run folder under a results root, so runs can be listed, filtered and compared.

The index is a cache of the ``report.json`` files, never the source of truth: each query first
re-scans the root, adds new or changed reports (by modification time) and drops vanished ones.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from poisonlab.core import PoisonlabError
from poisonlab.registry import parse_scalar
from poisonlab.report.store import load_report, read_report

INDEX_FILE = "index.sqlite"
COLUMNS = ("run", "kind", "created", "name", "dataset", "model", "attack", "seed", "rate", "ca", "asr", "clean_ca")
FILTERABLE = ("kind", "name", "dataset", "model", "attack", "seed", "rate")
SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, mtime INTEGER NOT NULL, schema TEXT, kind TEXT, created TEXT, name TEXT,
    dataset TEXT, model TEXT, attack TEXT, seed INTEGER, rate REAL, ca REAL, asr REAL, clean_ca REAL,
    config TEXT NOT NULL, metrics TEXT NOT NULL
)
"""


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _scalar(value: Any) -> Any:
    """A column value: text or a number; anything else (a list, a table, a tampered field) is no value."""
    return value if isinstance(value, str | int | float) and not isinstance(value, bool) else None


def row(run: str, mtime: int, body: dict[str, Any]) -> dict[str, Any]:
    """The indexed columns of one report: config runs nest the attack, the built-in experiments keep it flat."""
    cfg: dict[str, Any] = body["config"] if isinstance(body.get("config"), dict) else {}
    metrics: dict[str, Any] = body["metrics"] if isinstance(body.get("metrics"), dict) else {}
    attack = _get(cfg, "attack", "name") if isinstance(cfg.get("attack"), dict) else body.get("kind")
    rate = _get(cfg, "attack", "rate") if isinstance(cfg.get("attack"), dict) else cfg.get("rate")
    columns = {
        "schema": body.get("schema"), "kind": body.get("kind"), "created": body.get("created"),
        "name": cfg.get("name") or body.get("kind"), "dataset": cfg.get("dataset"), "model": cfg.get("model"),
        "attack": attack, "seed": cfg.get("seed"), "rate": rate,
        "ca": _get(metrics, "backdoored", "clean_accuracy"), "asr": _get(metrics, "backdoored", "attack_success_rate"),
        "clean_ca": _get(metrics, "clean", "clean_accuracy"),
    }
    return {"run": run, "mtime": mtime, **{k: _scalar(v) for k, v in columns.items()},
            "config": json.dumps(cfg), "metrics": json.dumps(metrics)}


def _reports(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("report.json")):
        if not any(part.startswith(".") for part in path.relative_to(root).parts):
            yield path


def _open_index(root: Path) -> sqlite3.Connection:
    """``root/index.sqlite``, or an index in memory when the root is read-only or its index file is damaged."""
    db = root / INDEX_FILE
    if os.access(root, os.W_OK) and (not db.exists() or os.access(db, os.W_OK)):
        con = sqlite3.connect(db)
        try:
            con.execute(SCHEMA_SQL)
            con.execute("SELECT run, mtime FROM runs LIMIT 1").fetchall()
            return con
        except sqlite3.DatabaseError:  # not an index (a foreign or damaged file): leave it, index in memory
            con.close()
    return sqlite3.connect(":memory:")


def refresh(con: sqlite3.Connection, root: Path) -> None:
    """Bring the index ``con`` up to date with the poisonlab report.json files under ``root``."""
    with con:
        con.execute(SCHEMA_SQL)
        known = dict(con.execute("SELECT run, mtime FROM runs").fetchall())
        seen = set()
        for path in _reports(root):
            run = str(path.parent.relative_to(root))
            seen.add(run)
            mtime = path.stat().st_mtime_ns
            if known.get(run) == mtime:
                continue
            body = read_report(path)
            if body is None:
                continue  # unreadable or foreign report.json files are not poisonlab runs
            values = row(run, mtime, body)
            con.execute(f"INSERT OR REPLACE INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                        list(values.values()))
        con.executemany("DELETE FROM runs WHERE run = ?", [(r,) for r in set(known) - seen])


def list_runs(root: Path, where: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every indexed run under ``root``, oldest first, matching each ``field=value`` in ``where``.

    A field is an indexed column (kind, name, dataset, model, attack, seed, rate) or a dotted path
    into the config (``attack.target``, ``training.epochs``).
    """
    if not root.is_dir():
        raise PoisonlabError(f"{root}: no such results folder")
    clauses, params = [], []
    for key, value in (where or {}).items():
        if key in FILTERABLE:
            clauses.append(f"{key} = ?")
        elif key and all(part.replace("_", "").replace("-", "").isalnum() for part in key.split(".")):
            clauses.append("json_extract(config, ?) = ?")
            params.append("$." + ".".join(f'"{p}"' for p in key.split(".")))
        else:
            raise PoisonlabError(f"filter {key!r}: expected one of {', '.join(FILTERABLE)} or a dotted config field")
        params.append(parse_scalar(value))
    sql = f"SELECT {', '.join(COLUMNS)}, config, metrics FROM runs"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    with closing(_open_index(root)) as con:
        refresh(con, root)
        con.row_factory = sqlite3.Row
        rows = con.execute(sql + " ORDER BY created, run", params).fetchall()
    return [{**dict(r), "config": json.loads(r["config"]), "metrics": json.loads(r["metrics"])} for r in rows]


def load_run(ref: str, root: Path) -> tuple[str, dict[str, Any]]:
    """A run's (label, report) from a run folder, its report.json, or its path relative to ``root``."""
    for candidate in (Path(ref), root / ref):
        path = candidate / "report.json" if candidate.is_dir() else candidate
        if path.name == "report.json" and path.is_file():
            return str(path.parent), load_report(path)
    raise PoisonlabError(f"run {ref!r}: no report.json there or under {root}")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists and scalars kept as leaves."""
    if not isinstance(obj, dict):
        return {prefix.rstrip("."): obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def compare(runs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Side by side: the config fields that differ between the runs, then every numeric metric."""
    configs = [flatten(body.get("config") or {}) for _, body in runs]
    metrics = [flatten(body.get("metrics") or {}) for _, body in runs]
    config_keys = sorted({k for c in configs for k in c})
    differing = [k for k in config_keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    metric_keys = sorted({k for m in metrics for k, v in m.items()
                          if isinstance(v, int | float) and not isinstance(v, bool)})
    return {
        "runs": [label for label, _ in runs],
        "config": {k: [c.get(k) for c in configs] for k in differing},
        "metrics": {k: [m.get(k) for m in metrics] for k in metric_keys},
    }
