"""One universal-backdoor training run per call, for the investigations of issue 6; prints one JSON line.

Trains the attacker's surrogate (cached per dataset/bits/seed under --cache), builds LDA or random
codes, poisons the victim's training set (all classes, or half of them for transferability) and
prints CA, mean ASR on the poisoned classes and, for a half split, on the never-poisoned classes.

Example:
    nice -n 10 python bench/universal_sweep.py --rate 0.005 --split random
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from poisonlab.attacks.universal import UniversalBackdoor, code_stats, random_codes
from poisonlab.core import ImageSet
from poisonlab.data import load_dataset
from poisonlab.experiment.universal import UniversalConfig, attacker_codes, split_classes
from poisonlab.metrics import accuracy, universal_metrics, where_triggers_go
from poisonlab.models import build_model
from poisonlab.training import Recipe, predict, train


def codes_for(args: argparse.Namespace, cfg: UniversalConfig, train_set: ImageSet, test: ImageSet
              ) -> tuple[torch.Tensor, dict]:
    if args.codes == "random":
        return random_codes(train_set.num_classes, args.bits, torch.Generator().manual_seed(args.seed + 3)), {}
    key = (f"{args.dataset}-{args.surrogate}-{args.surrogate_epochs}-{args.surrogate_per_class}-{args.bits}-{args.lr}-"
           f"{args.seed}")
    path = Path(args.cache) / f"codes-{key.replace(':', '_').replace(',', '_').replace('=', '')}.safetensors"
    if path.is_file():
        return load_file(str(path))["codes"].long(), json.loads((path.with_suffix(".json")).read_text())
    codes, info = attacker_codes(cfg, train_set, test)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"codes": codes}, str(path))
    path.with_suffix(".json").write_text(json.dumps(info))
    return codes, info


def main() -> None:
    defaults = UniversalConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=UniversalConfig.dataset)
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--surrogate", default="cnn")
    p.add_argument("--surrogate-per-class", type=int, default=UniversalConfig.surrogate_per_class)
    p.add_argument("--surrogate-epochs", type=int, default=UniversalConfig.surrogate_epochs)
    p.add_argument("--codes", choices=("lda", "random"), default="lda")
    p.add_argument("--bits", type=int, default=UniversalConfig.bits)
    p.add_argument("--trigger", default="blend")
    p.add_argument("--alpha", type=float, default=UniversalConfig.alpha)
    p.add_argument("--rate", type=float, default=0.005)
    p.add_argument("--split", choices=("none", "random", "contiguous"), default="none")
    p.add_argument("--epochs", type=int, default=defaults.training.epochs)
    p.add_argument("--lr", type=float, default=defaults.training.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core box)")
    p.add_argument("--clean", action="store_true", help="also train a clean model for the CA reference")
    p.add_argument("--cache", default="/tmp/poisonlab-universal-cache")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    recipe = Recipe(epochs=args.epochs, lr=args.lr)
    cfg = UniversalConfig(dataset=args.dataset, model=args.model, surrogate=args.surrogate, bits=args.bits,
                          surrogate_per_class=args.surrogate_per_class, surrogate_epochs=args.surrogate_epochs,
                          transfer_split="contiguous" if args.split == "contiguous" else "random", training=recipe,
                          seed=args.seed)
    train_set, test = load_dataset(args.dataset, args.seed)
    codes, info = codes_for(args, cfg, train_set, test)
    result: dict = {"args": vars(args), "codes": code_stats(codes), **info, "train_size": len(train_set)}
    if args.clean:
        clean = train(build_model(args.model, train_set, args.seed), train_set, recipe, args.seed, progress=False)
        result["clean_ca"] = accuracy(predict(clean, test.x), test.y)
    poisoned_half = other_half = None
    if args.split != "none":
        poisoned_half, other_half = split_classes(cfg, train_set.num_classes)
    attack = UniversalBackdoor(codes=codes, trigger=args.trigger, alpha=args.alpha, rate=args.rate,
                               classes=None if poisoned_half is None else poisoned_half.tolist())
    poisoned = attack.poison(train_set, torch.Generator().manual_seed(args.seed))
    model = train(build_model(args.model, poisoned.data, args.seed), poisoned.data, recipe, args.seed, progress=False)
    seen = universal_metrics(model, test, poisoned, poisoned_half, args.seed)
    result.update(poisoned=len(poisoned.indices), ca=seen["clean_accuracy"], asr=seen["mean_asr"],
                  asr_p10=seen["per_target_asr_quantiles"]["p10"])
    if other_half is not None:
        result["asr_unpoisoned"] = universal_metrics(model, test, poisoned, other_half, args.seed)["mean_asr"]
        result["unpoisoned_targets"] = where_triggers_go(model, test, poisoned, other_half, poisoned_half, args.seed)
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
