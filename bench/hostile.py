"""Hostile-input bench (issue #18): the corpus of tests/fixtures/hostile.py run as real ``poisonlab`` processes.

Each case runs as ``python -c "from poisonlab.cli.app import main; main()" ARGS`` (what the ``poisonlab`` console
script runs) in its own working folder and session, one at a time by default, so that a time is one process's
on an otherwise idle machine; ``os.wait4`` gives its wall time and peak RSS, and a case still running after 60 s
is killed (a hang). Outcomes are classified exactly as in the test (``hostile.classify``). Prints counts per
outcome and per family, the largest RSS and time over bad inputs, the cases above 1 GB or 5 s, and every failing
case; exits 1 when any case is not ok.

With ``--workers 2`` a case's file-system check ignores the other cases' own output folders; a
shared fixture damaged by one case shows up in whichever cases were running then.

    python bench/hostile.py                 # every case
    python bench/hostile.py --match npz-    # only the case ids containing "npz-"
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KILL_AFTER_S = 60.0
BIG_RSS_MB = 1024.0
SLOW_S = 5.0
ENTRY = "from poisonlab.cli.app import main; main()"


def load_corpus() -> ModuleType:
    """tests/fixtures/hostile.py as a module (it is not part of the package)."""
    path = ROOT / "tests" / "fixtures" / "hostile.py"
    spec = importlib.util.spec_from_file_location("hostile_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


hostile = load_corpus()


def run_process(argv: list[str], cwd: Path, kill_after: float) -> tuple[Any, bool, float, float]:
    """(Result, killed, seconds, peak RSS in MB) of one ``poisonlab ARGV`` process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", ENTRY, *argv], cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > kill_after:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                killed = True
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait for it again
        try:  # anything the command left running in its session (a worker pool) goes with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        out.seek(0)
        err.seek(0)
        result = hostile.Result(proc.returncode, out.read().decode(errors="replace"),
                                err.read().decode(errors="replace"))
    return result, killed, seconds, usage.ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


def own_folders(case: Any) -> list[Path]:
    """The folders ``hostile.prepare`` creates for the case above its working folder (e.g. cwd/ID for cwd/ID/a/b)."""
    top = case.root / "cwd"
    work = case.workdir()
    return [p for p in work.parents if top in p.parents] if top in work.parents else []


def run_all(cases: list[Any], workers: int, kill_after: float) -> list[Any]:
    """Every case in a subprocess, ``workers`` at a time; the outcomes in case order."""
    private = {c.id: [*c.allowed, c.workdir(), *own_folders(c)] for c in cases}
    everyone = [p for paths in private.values() for p in paths]

    def one(case: Any) -> Any:
        others = [p for p in everyone if p not in private[case.id]]
        judged = dataclasses.replace(case, allowed=[*case.allowed, *others])
        created = hostile.prepare(case)
        before = hostile.snapshot(case.root, skip=others)
        result, killed, seconds, rss = run_process(case.argv, case.workdir(), kill_after)
        problem, leftovers = hostile.compare(judged, before, hostile.snapshot(case.root, skip=others))
        outcome, reason = hostile.classify(dataclasses.replace(case, timeout=kill_after), None if killed else result,
                                           killed, problem)
        for p in created:
            try:
                p.rmdir()
            except OSError:
                break
        return hostile.Outcome(case, outcome, reason, result, seconds, leftovers, rss)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, cases))


def report(outcomes: list[Any], wall: float) -> str:
    """The bench's table: outcomes, families, the heaviest and slowest bad inputs, and every failure."""
    bad = [o for o in outcomes if o.case.expect != "ok"]
    lines = [f"{len(outcomes)} cases as subprocesses in {wall:.0f} s", hostile.summarize(outcomes)]
    if bad:
        heaviest = max(bad, key=lambda o: o.rss_mb or 0.0)
        slowest = max(bad, key=lambda o: o.seconds)
        rss = sorted(o.rss_mb or 0.0 for o in outcomes)
        lines += [f"peak RSS over bad inputs: max {heaviest.rss_mb:.0f} MB ({heaviest.case.id}); "
                  f"median over all cases {rss[len(rss) // 2]:.0f} MB",
                  f"time over bad inputs: max {slowest.seconds:.1f} s ({slowest.case.id})"]
    over = [o for o in outcomes if (o.rss_mb or 0.0) > BIG_RSS_MB or o.seconds > SLOW_S]
    lines.append(f"cases over {BIG_RSS_MB / 1024:.0f} GB or {SLOW_S:.0f} s: {len(over)}")
    lines += [f"  {o.case.id:<48} {o.rss_mb:7.0f} MB {o.seconds:6.1f} s  {o.outcome}" for o in over]
    failed = [o for o in outcomes if o.outcome != "ok"]
    if failed:
        lines += [f"{len(failed)} case(s) not ok:", hostile.failures(failed)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1,
                        help="cases run at once (default 1; more overlap, and slow, their timings)")
    parser.add_argument("--match", default="", help="run only the cases whose id contains this")
    parser.add_argument("--kill-after", type=float, default=KILL_AFTER_S, help="seconds before a case is killed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="poisonlab-hostile-") as tmp:
        t0 = time.perf_counter()
        cases = [c for c in hostile.build_corpus(Path(tmp)) if c.skip is None and args.match in c.id]
        print(f"corpus built in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        outcomes = run_all(cases, args.workers, args.kill_after)
        print(report(outcomes, time.perf_counter() - t0))
        for dirpath, _, _ in os.walk(tmp):  # read-only fixtures must not stop the clean-up
            os.chmod(dirpath, 0o755)
    return 1 if any(o.outcome != "ok" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
