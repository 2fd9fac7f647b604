"""poisonlab's data scanners side by side with IBM ART's, on the same poisoned MNIST and the same trained model.

ART (adversarial-robustness-toolbox 1.20.x) is installed into its own virtual environment, never
into poisonlab's: ``$POISONLAB_ART_VENV`` (default /tmp/poisonlab-art-venv) is created on first
use with ART, ``packaging``, ``six`` and ``tqdm`` installed without dependencies; a .pth file lets
it import the project venv's torch, numpy and scikit-learn, so no second torch is downloaded.

For each attack (BadNets all-to-one and all-to-all, blend, WaNet, adaptive-blend, adaptive-patch by
default) the poisoned set and the model trained on it are written to a work folder as safetensors;
poisonlab's data scanners run here, ART's SpectralSignatureDefense and ActivationDefence in the ART venv
on the same files. Each line puts the best F1 of each side (its scanner named) and their times side by
side, then the model's CA and ASR and every scanner's figures. Times include feature extraction.

    nice -n 10 python bench/art_compare.py --rate 0.01
    python bench/art_compare.py --attacks "badnets:target=8" --rate 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from poisonlab.core import ImageSet
from poisonlab.data import load_dataset
from poisonlab.defenses import detection_metrics
from poisonlab.experiment.config import AttackConfig
from poisonlab.metrics import evaluate
from poisonlab.models import build_model, load_model, save_model
from poisonlab.registry import DEFENSES, parse_spec
from poisonlab.training import Recipe, train

ROOT = Path(__file__).resolve().parents[1]
ART_VERSION = "1.20.1"

ART_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
from safetensors.torch import load_file
sys.path.insert(0, sys.argv[2])
from poisonlab.models import load_model
from art.estimators.classification import PyTorchClassifier
from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
work, rate = sys.argv[1], float(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
d = load_file(work + "/data.safetensors")
x, y = d["x"].numpy(), d["y"].numpy()
model = load_model("badnets-cnn", tuple(x.shape[1:]), 10, work + "/model.safetensors")
clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=x.shape[1:], nb_classes=10,
                        clip_values=(0.0, 1.0))
onehot = np.eye(10, dtype=np.float32)[y]
out = {}
t = time.perf_counter()
_, clean = ActivationDefence(clf, x, onehot).detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
out["activation-clustering"] = {"seconds": time.perf_counter() - t,
                                "flagged": np.flatnonzero(np.array(clean) == 0).tolist()}
t = time.perf_counter()
_, clean = SpectralSignatureDefense(clf, x, onehot, batch_size=128, eps_multiplier=1.5,
                                     expected_pp_poison=rate).detect_poison()
out["spectral"] = {"seconds": time.perf_counter() - t, "flagged": np.flatnonzero(np.array(clean) == 0).tolist()}
print(json.dumps(out))
"""


def art_python(venv: Path) -> Path:
    """The ART venv's python, creating the venv on first use."""
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps",
                        f"adversarial-robustness-toolbox=={ART_VERSION}", "packaging", "six", "tqdm"], check=True)
        site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                              capture_output=True, text=True).stdout.strip()
        ours = next(p for p in sys.path if p.endswith("site-packages"))
        Path(site, "zz_poisonlab_venv.pth").write_text(ours + "\n")
    return py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", default="badnets:target=8;badnets:mode=all-to-all;blend:target=0;wanet:target=0;"
                                         "adaptive-blend:target=0;adaptive-patch:target=0",
                    help="attack specs NAME:key=value,... separated by ';'")
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/poisonlab-art-compare"))
    ap.add_argument("--venv", type=Path, default=Path(os.environ.get("POISONLAB_ART_VENV", "/tmp/poisonlab-art-venv")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    py = art_python(args.venv)
    train_set, test_set = load_dataset("mnist", 0)
    print(f"MNIST, poison rate {args.rate:.1%}, badnets-cnn {args.epochs} epochs, {args.threads} threads; ours: "
          f"{', '.join(OURS)}; ART {ART_VERSION}: SpectralSignatureDefense (told the rate) and ActivationDefence")
    print(f"{'attack':34} {'best ours':>22} {'F1 ours':>8} {'best ART':>22} {'F1 ART':>7} {'F1 ratio':>9} "
          f"{'s ours':>7} {'s ART':>6} {'time ratio':>10}")
    for spec in filter(None, (s.strip() for s in args.attacks.split(";"))):
        compare(spec, args, train_set, test_set, py)


OURS = ("spectral", "activation-clustering", "label-consistency", "spectre", "out-of-fold")
"""poisonlab's data scanners compared; ART's two are the same methods as the first two, as ART implements them."""


def compare(spec: str, args: argparse.Namespace, train_set: ImageSet, test_set: ImageSet, py: Path) -> None:
    """One attack: poison, train (or reuse the cached model), its ASR, both sides' scanners, each side's best F1."""
    name, params = parse_spec(spec, "attack")
    attack = AttackConfig.resolve({"name": name, **params, "rate": args.rate}).build()
    poisoned = attack.poison(train_set, torch.Generator().manual_seed(0))
    data = poisoned.data
    tag = spec.replace(":", "_").replace(",", "_").replace("=", "-")
    weights = args.work / f"{tag}-{args.rate}.safetensors"
    if weights.exists():
        model = load_model("badnets-cnn", data.shape, data.num_classes, weights)
    else:
        model = train(build_model("badnets-cnn", data, 0), data, Recipe(epochs=args.epochs), 0, progress=False)
        save_model(model, weights)
    quality = evaluate(model, test_set, poisoned.triggered(test_set))
    save_file({"x": data.x.contiguous(), "y": data.y}, str(args.work / "data.safetensors"))
    save_file({k: v.contiguous() for k, v in load_file(str(weights)).items()}, str(args.work / "model.safetensors"))
    ours: dict[str, dict[str, float]] = {}
    for scanner in OURS:
        t = time.perf_counter()
        verdict = DEFENSES.build(scanner).scan(model, data)
        ours[scanner] = {"seconds": time.perf_counter() - t, **detection_metrics(verdict, poisoned.indices, len(data))}
    res = subprocess.run([str(py), "-c", ART_SCRIPT, str(args.work), str(ROOT), str(args.rate), str(args.threads)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"ART's scanners failed on {spec}:\n{res.stderr[-2000:]}")
    art = json.loads(res.stdout.strip().splitlines()[-1])
    theirs = {k: {"seconds": v["seconds"], **detection_metrics_from(v["flagged"], poisoned.indices, len(data))}
              for k, v in art.items()}
    best_ours = max(ours, key=lambda k: ours[k]["f1"])
    best_art = max(theirs, key=lambda k: theirs[k]["f1"])
    o, a = ours[best_ours], theirs[best_art]
    ratio = f"{o['f1'] / a['f1']:.1f}x" if a["f1"] > 0 else "ART 0"
    print(f"{spec:34} {best_ours:>22} {o['f1']:8.3f} {best_art:>22} {a['f1']:7.3f} {ratio:>9} "
          f"{o['seconds']:7.1f} {a['seconds']:6.1f} {a['seconds'] / o['seconds']:9.2f}x")
    print(f"    model: CA {quality['clean_accuracy']:.2%}, ASR {quality['attack_success_rate']:.2%}")
    for k, v in {**{f"ours {n}": m for n, m in ours.items()}, **{f"ART {n}": m for n, m in theirs.items()}}.items():
        print(f"    {k:32} P {v['precision']:.3f} R {v['recall']:.3f} F1 {v['f1']:.3f}"
              + (f" AUROC {v['auroc']:.3f}" if k.startswith("ours") else "") + f"  {v['seconds']:.1f} s")


def detection_metrics_from(flagged: list[int], truth: torch.Tensor, n: int) -> dict[str, float | int]:
    from poisonlab.core import Verdict

    return detection_metrics(Verdict(flagged=torch.tensor(flagged, dtype=torch.long)), truth, n)


if __name__ == "__main__":
    main()
