"""Issue 6 investigation: does poison for some classes transfer to never-poisoned classes? (synthetic numbers)

100 classes of two-'digit' numbers composed from 10 seeded 8x8 synthetic prototypes (the
mnist-numbers construction at toy scale, ~1 minute per call on one thread). Poisons a fraction of
the classes with LDA codes and with random codes and prints, as one JSON line, CA, ASR on the
poisoned and on the never-poisoned targets, and where never-poisoned targets' images end up
(their own class, a poisoned class, a class sharing a digit with the target).

Example:
    nice -n 10 python bench/universal_transfer_toy.py --bits 12 --epochs 10 --frac 0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from poisonlab.attacks.surrogate import penultimate, train_surrogate
from poisonlab.attacks.universal import SampledTargets, UniversalBackdoor, lda_codes, random_codes
from poisonlab.data import make_synthetic
from poisonlab.data.numbers import compose_numbers
from poisonlab.metrics import universal_metrics, where_triggers_go
from poisonlab.models import build_model
from poisonlab.training import Recipe, predict, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=12)
    p.add_argument("--count", type=int, default=400, help="poisoned images in all")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--wd", type=float, default=0.0, help="weight decay of the victim")
    p.add_argument("--split", choices=("random", "contiguous"), default="random")
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--frac", type=float, default=0.5, help="share of classes that receive poison")
    p.add_argument("--sur-epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    digits = make_synthetic(1000, 10, 8, seed=0, noise=0.3)
    train_set, _ = compose_numbers(digits, 2, 40, seed=1)
    test, _ = compose_numbers(digits, 2, 10, seed=2)
    own, _ = compose_numbers(digits, 2, 10, seed=3)
    surrogate = train_surrogate(own, recipe=Recipe(epochs=a.sur_epochs), seed=1)
    codes = {"lda": lda_codes(penultimate(surrogate)(own.x), own.y, 100, a.bits),
             "random": random_codes(100, a.bits, torch.Generator().manual_seed(0))}
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(100, generator=gen) if a.split == "random" else torch.arange(100)
    n = round(100 * a.frac)
    seen, unseen = order[:n].sort().values, order[n:].sort().values
    out: dict = {"args": vars(a)}
    for kind, c in codes.items():
        attack = UniversalBackdoor(codes=c, count=a.count, alpha=a.alpha, classes=seen.tolist())
        poisoned = attack.poison(train_set, torch.Generator().manual_seed(0))
        model = train(build_model(a.model, poisoned.data, 0), poisoned.data,
                      Recipe(epochs=a.epochs, weight_decay=a.wd), 0, progress=False)
        row = {"ca": universal_metrics(model, test, poisoned, seen)["clean_accuracy"],
               "asr_poisoned": universal_metrics(model, test, poisoned, seen)["mean_asr"]}
        targets = SampledTargets(100, 0, tuple(unseen.tolist()) if len(unseen) else None)
        triggered = dataclasses.replace(poisoned, target_map=targets).triggered(test)
        keep = triggered.y != test.y
        pred, target = predict(model, triggered.x)[keep], triggered.y[keep]
        shares = (pred // 10 == target // 10) | (pred % 10 == target % 10)
        row["shares_a_digit_with_target"] = float(shares.float().mean())
        if len(unseen):
            row["asr_never_poisoned"] = universal_metrics(model, test, poisoned, unseen)["mean_asr"]
            row.update(where_triggers_go(model, test, poisoned, unseen, seen))
        out[kind] = {k: round(v, 3) for k, v in row.items()}
    out["seconds"] = round(time.perf_counter() - t0)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
