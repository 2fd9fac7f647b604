"""Back-gradient poisoning: gradient check against unrolled autograd, flat memory, the attack, the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from poisonlab.attacks import ATTACKS
from poisonlab.attacks.backgradient import BackGradientPoisoning
from poisonlab.backgradient.learners import Descent, build_learner
from poisonlab.backgradient.memory import SavedTensorMeter
from poisonlab.backgradient.reverse import InnerProblem, back_gradient, unrolled_gradient
from poisonlab.cli.app import app
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data import load_dataset, make_synthetic


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _problem(name: str, batch_size: int | None = None, steps: int = 30, lr: float = 0.05):
    train = make_synthetic(48, num_classes=3, size=8, seed=0)
    val = make_synthetic(32, num_classes=3, size=8, seed=1)
    learner = build_learner(name, train.shape, 3, 1e-2, center=train.x.mean(0).double())
    problem = InnerProblem(learner, train.x.double(), train.y, torch.tensor([1, 2]),
                           Descent(steps=steps, lr=lr, batch_size=batch_size))

    def objective(w: torch.Tensor) -> torch.Tensor:
        return learner.sample_losses(learner.logits(w, val.x.double()), val.y).mean()

    return problem, learner.init(0, torch.float64), train.x[:2].double(), objective


@pytest.mark.parametrize(("name", "batch_size", "lr"),
                         [("logreg", None, 0.05), ("logreg", 16, 0.05), ("mlp", None, 0.05), ("cnn", None, 0.05),
                          ("adaline", None, 0.02)])
def test_back_gradient_matches_unrolled_autograd(name: str, batch_size: int | None, lr: float) -> None:
    problem, w0, xp, objective = _problem(name, batch_size, lr=lr)
    back = back_gradient(problem, w0, xp, objective, refine=3)
    unrolled = unrolled_gradient(problem, w0, xp, objective)
    rel = float((back.grad - unrolled.grad).norm() / unrolled.grad.norm())
    assert unrolled.grad.norm() > 0
    assert rel <= 1e-4
    assert back.w0_error < 1e-4
    assert back.value == pytest.approx(unrolled.value, rel=1e-12)


def test_paper_one_step_reversal_is_approximate_and_refinement_fixes_it() -> None:
    problem, w0, xp, objective = _problem("logreg", lr=0.2)
    unrolled = unrolled_gradient(problem, w0, xp, objective)
    errors = [float((back_gradient(problem, w0, xp, objective, refine=r).grad - unrolled.grad).norm()
                    / unrolled.grad.norm()) for r in (0, 4)]
    assert errors[1] < errors[0] / 10


def test_back_gradient_memory_is_flat_in_t_while_unrolling_grows() -> None:
    peaks: dict[str, list[int]] = {"back": [], "unrolled": []}
    for steps in (10, 40):
        problem, w0, xp, objective = _problem("mlp", steps=steps)
        with SavedTensorMeter() as meter:
            back_gradient(problem, w0, xp, objective)
        peaks["back"].append(meter.peak)
        with SavedTensorMeter() as meter:
            unrolled_gradient(problem, w0, xp, objective)
        peaks["unrolled"].append(meter.peak)
    assert peaks["back"][0] > 0 and peaks["back"][1] == peaks["back"][0]
    assert peaks["unrolled"][1] > 3.5 * peaks["unrolled"][0]


def _tiny() -> tuple[ImageSet, ImageSet]:
    data = make_synthetic(120, num_classes=3, size=6, seed=3, noise=0.3)
    return data.subset(slice(0, 80)), data.subset(slice(80, 120))


def _attack(**kw: object) -> BackGradientPoisoning:
    train, val = _tiny()
    args = dict(learner="logreg", count=3, steps=15, lr=0.3, validation=val, iterations=2, seed=0)
    args.update(kw)
    return BackGradientPoisoning(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("goal", ["availability", "targeted"])
def test_attack_raises_the_attackers_objective_over_its_starting_points(goal: str) -> None:
    train, val = _tiny()
    attack = _attack(goal=goal, source=0, target=1)
    crafted = attack.craft(train, torch.Generator().manual_seed(0))
    learner = attack.surrogate(train)
    objective = attack.objective(learner, val)
    w0 = learner.init(0, torch.float64)
    descent = attack.descent()

    problem = InnerProblem(learner, train.x.double(), train.y, crafted.labels, descent)

    def after_training(xp: torch.Tensor) -> float:
        return float(objective(problem.train(w0, xp.double())))

    optimised = crafted.poisoned.data.x[crafted.poisoned.indices]
    assert after_training(optimised) > after_training(crafted.start) + 1e-3
    assert crafted.objective[-1] == pytest.approx(after_training(optimised), rel=1e-6)


def test_poisoned_set_appends_points_in_range_with_flipped_labels() -> None:
    train, _ = _tiny()
    crafted = _attack(step=5.0, count=4).craft(train, torch.Generator().manual_seed(1))
    p = crafted.poisoned
    assert len(p.data) == len(train) + 4
    assert p.indices.tolist() == list(range(len(train), len(train) + 4))
    assert torch.equal(p.data.x[: len(train)], train.x)
    x = p.data.x[p.indices]
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert not torch.equal(x, crafted.start)
    assert torch.equal(p.data.y[p.indices], crafted.labels)


def test_attack_is_deterministic_and_registered() -> None:
    train, _ = _tiny()
    a = _attack(iterations=1).poison(train, torch.Generator().manual_seed(5))
    b = _attack(iterations=1).poison(train, torch.Generator().manual_seed(5))
    assert torch.equal(a.data.x, b.data.x) and torch.equal(a.indices, b.indices)
    assert ATTACKS.get("backgradient") is BackGradientPoisoning


@pytest.mark.parametrize(("kw", "message"), [({"learner": "svm"}, "unknown learner"),
                                             ({"goal": "chaos"}, "goal"),
                                             ({"goal": "targeted", "source": 3, "target": 3}, "two classes"),
                                             ({"steps": 0}, "inner steps"),
                                             ({"rate": 1.5}, "poison rate")])
def test_bad_settings_fail_with_one_line(kw: dict[str, object], message: str) -> None:
    with pytest.raises(PoisonlabError, match=message):
        BackGradientPoisoning(**kw)  # type: ignore[arg-type]


def test_cnn_refuses_inputs_smaller_than_its_kernel_and_breast_cancer_loads() -> None:
    train, test = load_dataset("breast-cancer")
    assert train.shape == (1, 1, 30) and len(train) + len(test) == 569
    assert train.x.min() >= 0 and train.x.max() <= 1
    with pytest.raises(PoisonlabError, match="smaller than"):
        build_learner("cnn", train.shape, 2)


def test_cli_writes_a_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "backgradient", "--dataset", "synthetic", "--train-size", "60", "--val-size", "30",
            "--test-size", "100", "--rates", "0.05", "--steps", "5", "--warm-start", "5", "--iterations", "1",
            "--transfer", "mlp", "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["kind"] == "backgradient"
    curve = body["metrics"]["curve"]
    assert [row["count"] for row in curve] == [0, 3]
    assert "test_error" in body["metrics"]["transfer"]["mlp"]["backgradient"]
    for name in ("report.json", "curves.png", "poisons.png", "poison.safetensors", "config.toml"):
        assert (out / name).is_file()
    assert 'experiment = "backgradient"' in (out / "config.toml").read_text()


@pytest.mark.parametrize(("extra", "message"), [(["--learner", "svm"], "unknown learner"),
                                                (["--rates", "0.1,x"], "--rates"),
                                                (["--rates", "1.5"], "poison rate 1.5")])
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, extra: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["run", "backgradient", "--dataset", "synthetic", "--out", str(tmp_path / "r"),
                                      *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
