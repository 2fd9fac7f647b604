"""The README's Python example runs as written and shows a working backdoor that the scanner finds."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), scope)
    metrics = scope["evaluate"](scope["model"], scope["test"], scope["poisoned"].triggered(scope["test"]))
    assert metrics["clean_accuracy"] > 0.95 and metrics["attack_success_rate"] > 0.9
    found = scope["detection_metrics"](scope["verdict"], scope["poisoned"].indices, len(scope["poisoned"].data))
    assert found["recall"] > 0.9 and found["precision"] > 0.9
    assert scope["report"]["flagged"] == [] and len(out.getvalue().splitlines()) == 3


def test_every_public_name_resolves():
    import poisonlab

    assert sorted(dir(poisonlab)) == sorted([*poisonlab.__all__, "__version__"])
    for name in poisonlab.__all__:
        assert getattr(poisonlab, name) is not None, name
