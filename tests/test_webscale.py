"""Web-scale poisoning and download-time verification, on a loopback server only (no address off the machine)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from poisonlab.cli.app import app
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data import load_dataset
from poisonlab.triggers import Patch
from poisonlab.webscale.attacker import colliding_badnets
from poisonlab.webscale.client import Limits
from poisonlab.webscale.cost import greedy_quote, manifest_domains, uniform_quote
from poisonlab.webscale.fetch import REPORT_FILE, Fetcher
from poisonlab.webscale.manifest import read_manifest, url_manifest, write_manifest
from poisonlab.webscale.phash import hamming, phash, similarity, thumbnail
from poisonlab.webscale.reencode import REENCODES, pixels
from poisonlab.webscale.server import LocalServer
from poisonlab.webscale.simulate import Hosted, Plan, Substituter, Victim, host, serve_plan, split_view_experiment
from poisonlab.webscale.verify import ACCEPTED, Verification

runner = CliRunner()
FAST = Limits(timeout=5.0, retries=1, backoff=0.0)


def _upscaled(data: ImageSet, side: int) -> ImageSet:
    x = torch.nn.functional.interpolate(data.x, size=(side, side), mode="bilinear", align_corners=False)
    return ImageSet(x.clamp(0, 1).contiguous(), data.y, data.classes)


@pytest.fixture(scope="module")
def digits() -> tuple[ImageSet, ImageSet]:
    """scikit-learn's digits at 24 x 24: at 8 x 8 a 10% resize moves whole rows of pixels, no longer a benign change
    (verification is meant for web images, tens of pixels a side and more)."""
    train, test = load_dataset("digits")
    return _upscaled(train, 24), _upscaled(test, 24)


@pytest.fixture(scope="module")
def hosted(digits: tuple) -> Hosted:
    return host(digits[0].subset(slice(0, 80)), domains=8, seed=0)


@pytest.fixture
def served(hosted: Hosted):
    with LocalServer() as server:
        hosted.serve(server)
        yield server, hosted.manifest(server)


def attacker(digits: tuple) -> Substituter:
    from poisonlab.attacks.universal import make_code_trigger, random_codes

    test = digits[1]
    codes = make_code_trigger("blend", random_codes(10, 9, torch.Generator().manual_seed(0)))
    return Substituter(np.round(test.x[:, 0].numpy() * 255).astype(np.uint8), test.y.numpy(), Patch(), codes)


def test_each_item_is_classified_and_only_accepted_ones_are_written(served, hosted, digits, tmp_path):
    server, manifest = served
    rng = np.random.default_rng(0)
    plan = Plan({}, {})
    for row, name in enumerate(REENCODES):
        plan.served[row], plan.kinds[row] = REENCODES[name](hosted.files[row], rng), name
    sub = attacker(digits)
    kinds = ("swap", "badnets", "collide", "trigger-original", "universal")
    for row, kind in zip(range(10, 15), kinds, strict=True):
        plan.served[row], plan.kinds[row] = sub.craft(kind, hosted.files[row], hosted.labels[row], rng), kind
    plan.served[15], plan.kinds[15] = None, "missing"
    plan.served[16], plan.kinds[16] = None, "failing"
    serve_plan(server, hosted, plan)
    fetched = Fetcher(FAST, workers=4).fetch(manifest, tmp_path / "out")
    status = {o.row: o.status for o in fetched.outcomes}
    assert all(status[r] == "reencode" for r in range(len(REENCODES))), fetched.outcomes[: len(REENCODES)]
    assert [status[r] for r in range(10, 15)] == ["substitution"] * 5
    assert status[15] == status[16] == "unreachable"
    assert all(status[r] == "match" for r in range(17, len(hosted)))
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    rejected = {r["row"]: r for r in report["rejected"]}
    assert sorted(rejected) == list(range(10, 17))
    assert "HTTP 404" in rejected[15]["reason"] and "HTTP 503 (after 2 attempts)" in rejected[16]["reason"]
    assert "thumbnail correlation" in rejected[12]["reason"] and rejected[12]["hamming"] == 0  # pHash collided
    assert "thumbnail pixel changed by" in rejected[13]["reason"]  # the original with the trigger stamped on it
    written = sorted(p.stem for p in (tmp_path / "out").rglob("*.*") if p.name not in (REPORT_FILE, ".lock"))
    assert written == [f"{r:06d}" for r in range(len(hosted)) if r not in rejected]
    assert not (tmp_path / "out" / ".partial").exists()


def test_a_phash_collision_fools_the_hash_but_not_the_thumbnail(digits):
    images = np.round(digits[0].x[:, 0].numpy() * 255).astype(np.uint8)
    original, donor = images[0], images[int(np.flatnonzero(digits[0].y.numpy() != int(digits[0].y[0]))[0])]
    forged = colliding_badnets(donor, original, Patch())
    grey = forged.astype(np.float32) / 255.0
    assert hamming(phash(grey), phash(original / 255.0)) == 0
    assert similarity(thumbnail(grey), thumbnail(original / 255.0)) < Verification().min_similarity


def test_resume_skips_verified_items_and_refetches_a_removed_one(served, hosted, tmp_path):
    server, manifest = served
    out = tmp_path / "out"
    Fetcher(FAST, workers=4).fetch(manifest, out)
    before = sum(server.hits.values())
    again = Fetcher(FAST, workers=4).fetch(manifest, out)
    assert sum(server.hits.values()) == before and all(o.resumed for o in again.outcomes)
    victim = Path(again.outcomes[5].file or "")
    victim.write_bytes(b"truncated")  # a corrupt leftover is re-verified, removed and fetched again
    third = Fetcher(FAST, workers=4).fetch(manifest, out)
    assert sum(server.hits.values()) == before + 1 and not third.outcomes[5].resumed
    assert third.outcomes[5].status == "match" and victim.read_bytes() == hosted.files[5]


def test_a_folder_no_fetch_wrote_is_refused_untouched(served, tmp_path):
    _, manifest = served
    mine = tmp_path / "mine" / manifest.classes[0] / "000000.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own file")
    with pytest.raises(PoisonlabError, match="a non-empty folder that no fetch wrote"):
        Fetcher(FAST).fetch(manifest, tmp_path / "mine")
    assert mine.read_bytes() == b"the user's own file"


def test_a_second_fetch_into_a_folder_being_fetched_is_refused(served, tmp_path):
    from poisonlab.report.store import locked

    _, manifest = served
    with locked(tmp_path / "out", "fetch"), pytest.raises(PoisonlabError, match="another fetch is running"):
        Fetcher(FAST).fetch(manifest, tmp_path / "out")
    assert Fetcher(FAST).fetch(manifest, tmp_path / "out").counts() == {"match": len(manifest)}  # lock released


def test_size_limits_refuse_before_keeping(served, tmp_path):
    _, manifest = served
    fetched = Fetcher(Limits(max_bytes=64, retries=0), workers=2).fetch(manifest, tmp_path / "out")
    assert {o.status for o in fetched.outcomes} == {"unreachable"}
    assert "limit 64" in fetched.outcomes[0].reason
    tiny = Fetcher(FAST, workers=2, max_pixels=10).fetch(manifest, tmp_path / "px")
    assert "pixels; limit 10" in tiny.outcomes[0].reason and not tiny.accepted


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]], fields: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: r[k] for k in fields} for r in rows)


@pytest.mark.parametrize(("change", "message"), [
    ("drop-column", "missing column sha256"),
    ("sha256", "sha256 'abc123': expected 64 hexadecimal digits"),
    ("url", "url 'ftp://example.org/a.png': expected an http:// or https:// URL with a host"),
    ("label", "label 12 out of range; 11 classes expect labels in [0, 10]"),
])
def test_bad_manifest_rows_are_refused_in_one_line(served, tmp_path, change, message):
    _, manifest = served
    good = tmp_path / "good.csv"
    write_manifest(manifest, good)
    rows = _rows(good)
    fields = list(rows[0])
    if change == "drop-column":
        fields.remove("sha256")
    elif change == "label":
        rows[2]["label"], rows[2]["class"] = "12", "twelve"
    else:
        rows[2][change] = {"sha256": "abc123", "url": "ftp://example.org/a.png"}[change]
    bad = tmp_path / "bad.csv"
    _write(bad, rows, fields)
    result = runner.invoke(app, ["dataset", "fetch", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_manifest_from_a_folder_and_from_a_url_list_agree(served, hosted, tmp_path):
    server, manifest = served
    folder = tmp_path / "images"
    for row, path in enumerate(hosted.paths[:12]):
        target = folder / manifest.items[row].class_name / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(hosted.files[row])
    out = tmp_path / "folder.csv"
    args = ["dataset", "manifest", str(folder), "--base-url", server.url("/mirror/"), "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from_folder = read_manifest(out)
    by_sha = {it.fingerprint.sha256: it for it in manifest.items}
    assert all(by_sha[it.fingerprint.sha256].fingerprint == it.fingerprint for it in from_folder.items)
    urls = tmp_path / "urls.csv"
    one_each = [next(it for it in manifest.items if it.label == k) for k in range(len(manifest.classes))]
    urls.write_text("url,label\n" + "".join(f"{it.url},{it.label}\n" for it in one_each)
                    + f"{server.url('/gone/x.png')},0\n")
    listed, skipped = url_manifest(urls, FAST, workers=4)
    assert [it.fingerprint for it in listed.items] == [it.fingerprint for it in one_each]
    assert skipped == [(server.url("/gone/x.png"), "HTTP 404")]


def test_cli_fetch_reports_and_writes_a_loadable_folder(served, hosted, digits, tmp_path):
    server, manifest = served
    path = tmp_path / "m.csv"
    write_manifest(manifest, path)
    sub = attacker(digits)
    server.put_image(hosted.paths[3], sub.craft("badnets", hosted.files[3], hosted.labels[3], np.random.default_rng(1)))
    result = runner.invoke(app, ["dataset", "fetch", str(path), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["counts"] == {"match": len(hosted) - 1, "substitution": 1} and report["rejected"][0]["row"] == 3
    train, _ = load_dataset(f"folder:{tmp_path / 'out'}")
    assert len(train) == len(hosted) - 1


def test_split_view_end_to_end_verification_removes_the_backdoor():
    train, test = load_dataset("digits")  # 8 x 8: no re-encodes served here, and training takes seconds
    result = split_view_experiment(train.subset(slice(0, 900)), test, test, domains=20, expired=0.4, bought=0.35,
                                   target=0, victim=Victim(epochs=8), fetcher=Fetcher(FAST, workers=8), clean=False)
    planted = result["planted"]["badnets"]
    assert result["verified"]["counts"]["substitution"] == planted and planted > 0
    assert result["unverified"]["counts"]["unverified"] == result["verified"]["counts"]["match"] + planted
    assert result["unverified"]["attack_success_rate"] > 0.5 > 0.1 > result["verified"]["attack_success_rate"]
    assert result["verified"]["clean_accuracy"] > 0.8


def test_universal_split_view_every_class_a_target_until_verified():
    train, test = load_dataset("digits")
    result = split_view_experiment(train.subset(slice(0, 900)), test, test, domains=20, expired=0.4, bought=0.35,
                                   attack="universal", victim=Victim(epochs=8), fetcher=Fetcher(FAST, workers=8),
                                   clean=False)
    planted = result["planted"]["universal"]  # every row on a bought domain, whatever its label
    assert result["verified"]["counts"]["substitution"] == planted > 200
    assert result["unverified"]["attack_success_rate"] > 0.5 > 0.2 > result["verified"]["attack_success_rate"]


def test_cost_quotes():
    quote = uniform_quote(400_000_000, 0.0001, images_per_domain=10_000, price=12.0)
    assert (quote.domains, quote.dollars, quote.feasible) == (4, 48.0, True)
    assert not uniform_quote(1000, 0.5, images_per_domain=10, price=1.0, available=3).feasible
    with pytest.raises(PoisonlabError, match="fraction"):
        uniform_quote(1000, 0.0, images_per_domain=10, price=1.0)


def test_cost_from_a_manifest_buys_the_biggest_domains_first(served, hosted):
    _, manifest = served
    domains = manifest_domains(manifest, price=10.0)
    assert sum(d.images for d in domains) == len(hosted) and len(domains) == len(set(hosted.domains))
    quote = greedy_quote(domains, len(hosted), 0.2)
    biggest = max(d.images for d in domains)
    assert quote.bought[0] == next(d.name for d in domains if d.images == biggest) and quote.images >= 16


def test_accepted_statuses_are_the_three_kept_ones():
    assert ACCEPTED == {"match", "reencode", "unverified"}


def test_reencodes_keep_the_pixels_they_claim(hosted):
    rng = np.random.default_rng(0)
    for name in ("png-pillow", "png-opencv", "strip-metadata"):
        out = REENCODES[name](hosted.files[1], rng)
        assert out != hosted.files[1] and (pixels(out) == pixels(hosted.files[1])).all(), name


def test_parquet_manifest_round_trips(served, tmp_path):
    pytest.importorskip("pyarrow")
    _, manifest = served
    write_manifest(manifest, tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet") == manifest
