"""poisonlab's data scanners side by side with IBM ART's, on the same poisoned MNIST and the same trained model.

ART (adversarial-robustness-toolbox 1.20.x) is installed into its own virtual environment, never
into poisonlab's: ``$POISONLAB_ART_VENV`` (default /tmp/poisonlab-art-venv) is created on first
use with ART, ``packaging``, ``six`` and ``tqdm`` installed without dependencies; a .pth file lets
it import the project venv's torch, numpy and scikit-learn, so no second torch is downloaded.

The poisoned set and the model are written to a work folder as safetensors; poisonlab's
Spectral Signatures and Activation Clustering run here, ART's SpectralSignatureDefense and
ActivationDefence run in the ART venv on the same files. Times include feature extraction (both read
the data through the model once; poisonlab keeps its features within a memory budget).

    nice -n 10 python bench/art_compare.py --rate 0.01
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

from poisonlab.attacks import BadNets
from poisonlab.data import load_dataset
from poisonlab.defenses import ActivationClustering, SpectralSignatures, detection_metrics
from poisonlab.models import build_model, load_model, save_model
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
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/poisonlab-art-compare"))
    ap.add_argument("--model", type=Path, default=None, help="reuse these backdoored weights instead of training")
    ap.add_argument("--venv", type=Path, default=Path(os.environ.get("POISONLAB_ART_VENV", "/tmp/poisonlab-art-venv")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    py = art_python(args.venv)

    train_set, _ = load_dataset("mnist", 0)
    poisoned = BadNets(target=8, rate=args.rate).poison(train_set, torch.Generator().manual_seed(0))
    data = poisoned.data
    weights = args.model or args.work / f"badnets-{args.rate}.safetensors"
    if weights.exists():
        model = load_model("badnets-cnn", data.shape, data.num_classes, weights)
    else:
        model = train(build_model("badnets-cnn", data, 0), data, Recipe(epochs=args.epochs), 0)
        save_model(model, weights)
    save_file({"x": data.x.contiguous(), "y": data.y}, str(args.work / "data.safetensors"))
    save_file({k: v.contiguous() for k, v in load_file(str(weights)).items()}, str(args.work / "model.safetensors"))

    ours: dict[str, dict[str, float]] = {}
    for name, scanner in (("spectral", SpectralSignatures()), ("activation-clustering", ActivationClustering())):
        t = time.perf_counter()
        verdict = scanner.scan(model, data)
        ours[name] = {"seconds": time.perf_counter() - t, **detection_metrics(verdict, poisoned.indices, len(data))}

    load_before = os.getloadavg()[0]
    res = subprocess.run([str(py), "-c", ART_SCRIPT, str(args.work), str(ROOT), str(args.rate), str(args.threads)],
                         check=True, capture_output=True, text=True)
    art = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"BadNets MNIST, {len(poisoned.indices)} poisoned of {len(data)} ({args.rate:.0%}), badnets-cnn, "
          f"{args.threads} threads; 1-min load average {load_before:.1f} (2 cores: above ~2 means measured under load)")
    print(f"{'scanner':24} {'F1 ours':>8} {'F1 ART':>8} {'P/R ours':>12} {'P/R ART':>12} {'s ours':>8} {'s ART':>8} "
          f"{'ART/ours':>9}")
    for name in ("spectral", "activation-clustering"):
        theirs = detection_metrics_from(art[name]["flagged"], poisoned.indices, len(data))
        o = ours[name]
        print(f"{name:24} {o['f1']:8.3f} {theirs['f1']:8.3f} {o['precision']:5.2f}/{o['recall']:<6.2f} "
              f"{theirs['precision']:5.2f}/{theirs['recall']:<6.2f} {o['seconds']:8.1f} {art[name]['seconds']:8.1f} "
              f"{art[name]['seconds'] / o['seconds']:8.2f}x")


def detection_metrics_from(flagged: list[int], truth: torch.Tensor, n: int) -> dict[str, float | int]:
    from poisonlab.core import Verdict

    return detection_metrics(Verdict(flagged=torch.tensor(flagged, dtype=torch.long)), truth, n)


if __name__ == "__main__":
    main()
