"""Split-view and frontrunning poisoning simulated end to end on loopback: host, manifest, attack, fetch, train, ASR.

A curator hosts a dataset's images on ``domains`` fake domains of a ``LocalServer`` and writes the
manifest from what they served (time t0). Later (split-view) some domains expire; the attacker buys a
share of them and serves substitutions; or (frontrunning) the attacker edits pages for the short window
in which a snapshot is taken and the edits are reverted afterwards. Downloaders then fetch with and
without verification and train; the attack success rate of each model says what verification bought.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from PIL import PngImagePlugin

from poisonlab.core import AllToOne, ImageSet, PoisonlabError, TargetMap, Trigger, check_target, stamped
from poisonlab.data.images import read_image
from poisonlab.data.validate import to_image_set
from poisonlab.webscale.attacker import colliding_badnets, stamp
from poisonlab.webscale.fetch import Fetched, Fetcher
from poisonlab.webscale.manifest import Item, Manifest, manifest_of
from poisonlab.webscale.phash import fingerprint
from poisonlab.webscale.reencode import REENCODES, pillow_bytes, pixels
from poisonlab.webscale.server import LocalServer, Response
from poisonlab.webscale.verify import ACCEPTED, Verification

Attack = Literal["badnets", "collide", "swap", "trigger-original", "universal"]
ATTACKS: tuple[Attack, ...] = ("badnets", "collide", "swap", "trigger-original", "universal")
"""``trigger-original`` is the clean-label limit case: the original itself with the trigger stamped on it;
``universal`` an image of another class with the class-encoding trigger of the row's label."""
JPEG_SHARE = 1 / 3
"""Share of the hosted originals that are JPEG files (the rest PNG), so that JPEG -> PNG re-encodes occur."""


DEFAULT_FETCHER = Fetcher()


def domain(k: int) -> str:
    return f"domain-{k:03d}.example"


@dataclass(frozen=True)
class Hosted:
    """A dataset as its curator hosts it: each row's file bytes, server path, domain and label."""

    files: tuple[bytes, ...]
    paths: tuple[str, ...]
    domains: tuple[int, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)

    def serve(self, server: LocalServer) -> None:
        """Serve every row's original file."""
        for path, body in zip(self.paths, self.files, strict=True):
            server.put_image(path, body)

    def manifest(self, server: LocalServer) -> Manifest:
        """The manifest a curator writes from what ``server`` served at t0 (the original files)."""
        items = [Item(server.url(path), label, self.classes[label], fingerprint(body, pixels(body) / 255.0))
                 for path, body, label in zip(self.paths, self.files, self.labels, strict=True)]
        return manifest_of(items, "hosted dataset")


def uint8_images(data: ImageSet) -> np.ndarray:
    """Grey (N, H, W) uint8 pixels of a one-channel ImageSet."""
    if data.shape[0] != 1:
        raise PoisonlabError(f"web-scale simulation: expected grey (1-channel) images, got {data.shape[0]} channels")
    return np.asarray(np.round(data.x[:, 0].numpy() * 255.0), dtype=np.uint8)


def original_file(image: np.ndarray, row: int, jpeg: bool) -> bytes:
    """A curator's original: a JPEG (quality 90, with a comment) or a PNG with a text chunk naming its source."""
    if jpeg:
        return pillow_bytes(image, "JPEG", quality=90, comment=f"row {row}".encode())
    info = PngImagePlugin.PngInfo()
    info.add_text("source", f"row {row}")
    return pillow_bytes(image, "PNG", pnginfo=info)


def host(data: ImageSet, domains: int, seed: int) -> Hosted:
    """``data``'s images as files spread at random over ``domains`` fake domains."""
    if domains < 1:
        raise PoisonlabError(f"domains {domains}: expected at least 1")
    rng = np.random.default_rng(seed)
    images = uint8_images(data)
    jpeg = rng.random(len(images)) < JPEG_SHARE
    where = rng.integers(0, domains, len(images))
    files = tuple(original_file(im, k, bool(j)) for k, (im, j) in enumerate(zip(images, jpeg, strict=True)))
    paths = tuple(f"/{domain(int(d))}/images/{k:06d}.{'jpg' if j else 'png'}"
                  for k, (d, j) in enumerate(zip(where, jpeg, strict=True)))
    return Hosted(files, paths, tuple(int(d) for d in where), tuple(int(v) for v in data.y), data.classes)


@dataclass(frozen=True)
class Plan:
    """Rows served otherwise than their originals: new bytes, or None for a 404; and what each row was made."""

    served: dict[int, bytes | None]
    kinds: dict[int, str]

    def apply(self, server: LocalServer, hosted: Hosted) -> None:
        for row, body in self.served.items():
            if body is None:
                server.remove(hosted.paths[row])
            else:
                server.put_image(hosted.paths[row], body)

    def kind(self, row: int) -> str:
        return self.kinds.get(row, "original")


@dataclass(frozen=True)
class Substituter:
    """Crafts a substitution for a row from the attacker's own ``donors`` (uint8 grey images and labels).

    ``codes``: the class-encoding trigger of a universal backdoor (``universal_trigger``), needed by the
    ``universal`` substitution only.
    """

    donors: np.ndarray
    donor_labels: np.ndarray
    trigger: Trigger
    codes: Trigger | None = None

    def craft(self, attack: Attack, original: bytes, label: int, rng: np.random.Generator) -> bytes:
        """PNG bytes of a donor of another class: swapped as is, triggered (with the row label's code for
        ``universal``), or triggered and pHash-collided; or the original with the trigger (``trigger-original``)."""
        if attack == "trigger-original":
            return pillow_bytes(stamp(pixels(original), self.trigger), "PNG")
        pool = np.flatnonzero(self.donor_labels != label)
        donor = self.donors[int(rng.choice(pool))]
        if attack == "swap":
            return pillow_bytes(donor, "PNG")
        if attack == "badnets":
            return pillow_bytes(stamp(donor, self.trigger), "PNG")
        if attack == "universal":
            if self.codes is None:
                raise PoisonlabError("universal substitution: the attacker has no class-encoding trigger (codes)")
            return pillow_bytes(stamp(donor, self.codes, label), "PNG")
        orig = pixels(original)
        if orig.shape != donor.shape:
            donor = cv2.resize(donor, orig.shape[::-1], interpolation=cv2.INTER_AREA)
        return pillow_bytes(colliding_badnets(donor, orig, self.trigger), "PNG")


def split_view(hosted: Hosted, attacker: Substituter, *, expired: float, bought: float, attack: Attack,
               target: int, seed: int) -> Plan:
    """``expired`` of the domains lapse (404); the attacker buys ``bought`` of all domains among them.

    On a bought domain the attacker mirrors the originals except where a substitution serves them:
    rows labelled ``target`` (BadNets and its pHash-colliding form: a triggered image of another class
    that the manifest's label turns into a target-class example; or the original triggered) or every row
    (plain swaps, and universal substitutions, whose every label is a target).
    """
    if not 0.0 <= bought <= expired <= 1.0:
        raise PoisonlabError(f"split-view: bought {bought}, expired {expired}; expected 0 <= bought <= expired <= 1")
    check_target(target, len(hosted.classes), "split-view")
    rng = np.random.default_rng(seed)
    count = max(hosted.domains) + 1
    lapsed = rng.permutation(count)[: round(expired * count)]
    owned = set(int(d) for d in lapsed[: round(bought * count)])
    gone = set(int(d) for d in lapsed) - owned
    served: dict[int, bytes | None] = {}
    kinds: dict[int, str] = {}
    for row, (d, label) in enumerate(zip(hosted.domains, hosted.labels, strict=True)):
        if d in gone:
            served[row], kinds[row] = None, "expired"
        elif d in owned and (attack in ("swap", "universal") or label == target):
            served[row] = attacker.craft(attack, hosted.files[row], label, rng)
            kinds[row] = attack
    return Plan(served, kinds)


def frontrun(hosted: Hosted, attacker: Substituter, *, share: float, attack: Attack, target: int, seed: int) -> Plan:
    """Edits of ``share`` of the rows labelled ``target``, live only while a snapshot is taken."""
    check_target(target, len(hosted.classes), "frontrunning")
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(np.asarray(hosted.labels) == target)
    edited = rng.permutation(rows)[: round(share * len(rows))]
    served: dict[int, bytes | None] = {int(r): attacker.craft(attack, hosted.files[r], target, rng) for r in edited}
    return Plan(served, {r: attack for r in served})


@contextlib.contextmanager
def edit_window(server: LocalServer, hosted: Hosted, plan: Plan) -> Iterator[None]:
    """The attacker's edits live for the duration of the block, then reverted by moderators."""
    plan.apply(server, hosted)
    try:
        yield
    finally:
        for row in plan.served:
            server.put_image(hosted.paths[row], hosted.files[row])


def mixed(hosted: Hosted, attacker: Substituter, *, shares: dict[str, float], seed: int) -> Plan:
    """Each row made one kind at random with probabilities ``shares`` (keys: ``original``, a re-encode name from
    ``REENCODES``, an attack of ``ATTACKS``, ``missing`` for a 404, ``failing`` for a 503)."""
    kinds = list(shares)
    unknown = [k for k in kinds if k not in {"original", "missing", "failing", *REENCODES, *ATTACKS}]
    if unknown:
        raise PoisonlabError(f"mixed plan: unknown kind {', '.join(unknown)}")
    rng = np.random.default_rng(seed)
    p = np.array([shares[k] for k in kinds], dtype=np.float64)
    drawn = rng.choice(len(kinds), len(hosted), p=p / p.sum())
    plan = Plan({}, {})
    for row, k in enumerate(drawn):
        kind = kinds[int(k)]
        if kind == "original":
            continue
        plan.kinds[row] = kind
        if kind in REENCODES:
            plan.served[row] = REENCODES[kind](hosted.files[row], rng)
        elif kind in ATTACKS:
            plan.served[row] = attacker.craft(kind, hosted.files[row], hosted.labels[row], rng)  # type: ignore[arg-type]
        else:
            plan.served[row] = None
    return plan


def serve_plan(server: LocalServer, hosted: Hosted, plan: Plan) -> None:
    """Serve ``plan`` on ``server``; its ``failing`` rows answer 503 on every attempt."""
    plan.apply(server, hosted)
    for row, kind in plan.kinds.items():
        if kind == "failing":
            server.put(hosted.paths[row], Response(503, b"unavailable", "text/plain"))


def confusion(plan: Plan, fetched: Fetched) -> dict[str, dict[str, int]]:
    """Planted kind -> {status: rows}: how the fetch classified each kind of served item."""
    table: dict[str, Counter[str]] = {}
    for o in fetched.outcomes:
        table.setdefault(plan.kind(o.row), Counter())[o.status] += 1
    return {k: dict(v) for k, v in sorted(table.items())}


def fetched_images(fetched: Fetched, classes: tuple[str, ...], shape: tuple[int, int, int]) -> ImageSet:
    """The accepted files of a fetch as an ImageSet of ``shape``, each resized back to it when a host resized it."""
    c, h, w = shape
    mode = "L" if c == 1 else "RGB"
    images, labels = [], []
    for o in fetched.outcomes:
        if o.status not in ACCEPTED or o.file is None:
            continue
        x = read_image(Path(o.file), mode)
        if x.shape[1:] != (h, w):
            x = np.stack([cv2.resize(ch, (w, h), interpolation=cv2.INTER_AREA) for ch in x])
        images.append(x)
        labels.append(o.label)
    if not images:
        raise PoisonlabError("fetched dataset: no image was accepted; nothing to train on")
    return to_image_set(np.stack(images), np.array(labels, dtype=np.int64), classes, "fetched dataset")


@dataclass(frozen=True)
class Victim:
    """How a downloader trains: architecture, epochs, seed."""

    model: str = "small-cnn"
    epochs: int = 3
    seed: int = 0


def universal_trigger(donors: ImageSet, seed: int) -> Trigger:
    """The attacker's class-encoding trigger: LDA codes of a surrogate they train on their own ``donors``."""
    from poisonlab.attacks.universal import UniversalBackdoor, make_code_trigger  # deferred: loads scikit-learn

    attack = UniversalBackdoor()
    codes = attack.class_codes(donors, torch.Generator().manual_seed(seed))
    return make_code_trigger(attack.trigger, codes, attack.alpha, attack.cell)


def armed(donors: ImageSet, attack: Attack, trigger: Trigger | None, target: int, seed: int
          ) -> tuple[Substituter, Trigger, TargetMap]:
    """The attacker's substituter, and the trigger and target map that measure its backdoor: ``trigger`` (a 3 x 3
    patch by default) to ``target``, or for ``universal`` the class-encoding trigger to a seeded random class."""
    from poisonlab.triggers import Patch

    trigger = trigger or Patch()
    if attack != "universal":
        return Substituter(uint8_images(donors), donors.y.numpy(), trigger), trigger, AllToOne(target)
    from poisonlab.attacks.universal import SampledTargets  # deferred: loads scikit-learn

    codes = universal_trigger(donors, seed)
    return (Substituter(uint8_images(donors), donors.y.numpy(), trigger, codes), codes,
            SampledTargets(donors.num_classes, seed))


def train_and_measure(data: ImageSet, test: ImageSet, trigger: Trigger, targets: TargetMap, victim: Victim
                      ) -> dict[str, Any]:
    """Clean accuracy and ASR (``trigger`` sending each test image to ``targets``' class) of ``victim`` trained on
    ``data``; for a multi-target map (universal) the ASR is the mean over target classes."""
    from poisonlab.metrics import evaluate
    from poisonlab.models import build_model
    from poisonlab.training import Recipe, train

    model = build_model(victim.model, data, victim.seed)
    train(model, data, Recipe(epochs=victim.epochs), seed=victim.seed, progress=False)
    multi = not isinstance(targets, AllToOne)
    result = evaluate(model, test, stamped(test, trigger, targets), multi_target=multi)
    return {"clean_accuracy": result["clean_accuracy"], "train_rows": len(data),
            "attack_success_rate": result["mean_asr" if multi else "attack_success_rate"]}


def poisoned_pipeline(train: ImageSet, test: ImageSet, manifest: Manifest, fetcher: Fetcher, trigger: Trigger,
                      targets: TargetMap, victim: Victim, out: Path) -> dict[str, Any]:
    """Fetch ``manifest`` as served now, without and with verification, train on each, and measure them."""
    result: dict[str, Any] = {}
    for name, verify in (("unverified", None), ("verified", fetcher.verify or Verification())):
        fetched = Fetcher(fetcher.limits, fetcher.workers, fetcher.max_pixels, verify).fetch(manifest, out / name)
        data = fetched_images(fetched, train.classes, train.shape)
        result[name] = {"counts": fetched.counts(), "seconds": fetched.seconds,
                        **train_and_measure(data, test, trigger, targets, victim)}
    return result


def split_view_experiment(train: ImageSet, test: ImageSet, donors: ImageSet, *, domains: int = 50,
                          expired: float = 0.2, bought: float = 0.1, attack: Attack = "badnets", target: int = 0,
                          trigger: Trigger | None = None, victim: Victim = Victim(), fetcher: Fetcher = DEFAULT_FETCHER,
                          clean: bool = True, seed: int = 0) -> dict[str, Any]:
    """Split-view end to end: ASR of models trained on unverified and verified fetches (and on the originals).

    ``donors`` are the attacker's own images (and, for ``universal``, what their surrogate learns codes from).
    """
    attacker, trigger, targets = armed(donors, attack, trigger, target, seed)
    hosted = host(train, domains, seed)
    with LocalServer() as server, tempfile.TemporaryDirectory(prefix="poisonlab-webscale-") as tmp:
        hosted.serve(server)
        manifest = hosted.manifest(server)
        plan = split_view(hosted, attacker, expired=expired, bought=bought, attack=attack, target=target, seed=seed)
        plan.apply(server, hosted)
        result = poisoned_pipeline(train, test, manifest, fetcher, trigger, targets, victim, Path(tmp))
    result["planted"] = dict(Counter(plan.kinds.values()))
    if clean:
        result["clean"] = train_and_measure(train, test, trigger, targets, victim)
    return result


def frontrunning_experiment(train: ImageSet, test: ImageSet, donors: ImageSet, *, share: float = 0.2,
                            attack: Attack = "badnets", target: int = 0, trigger: Trigger | None = None,
                            victim: Victim = Victim(), fetcher: Fetcher = DEFAULT_FETCHER, domains: int = 50,
                            seed: int = 0) -> dict[str, Any]:
    """Frontrunning end to end: a snapshot during the edit window, fetched unverified and verified, then the
    verified fetch resumed after the window closed (its rejected rows come back as matches)."""
    attacker, trigger, targets = armed(donors, attack, trigger, target, seed)
    hosted = host(train, domains, seed)
    with LocalServer() as server, tempfile.TemporaryDirectory(prefix="poisonlab-webscale-") as tmp:
        hosted.serve(server)
        manifest = hosted.manifest(server)
        plan = frontrun(hosted, attacker, share=share, attack=attack, target=target, seed=seed)
        with edit_window(server, hosted, plan):
            result = poisoned_pipeline(train, test, manifest, fetcher, trigger, targets, victim, Path(tmp))
        after = fetcher.fetch(manifest, Path(tmp) / "verified")
        result["after_window"] = {"counts": after.counts(), "resumed": sum(o.resumed for o in after.outcomes)}
    result["planted"] = dict(Counter(plan.kinds.values()))
    return result
