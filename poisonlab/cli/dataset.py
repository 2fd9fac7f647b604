"""``poisonlab dataset manifest|fetch|cost``: URL-list datasets, verified downloads, the price of split-view poisoning.

``fetch`` classifies every row as match, benign re-encode, substitution or unreachable (Carlini et al. 2023's
split-view and frontrunning attacks substitute images after a manifest was written) and writes only the
accepted images, with a report of what it rejected and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from poisonlab.cli.common import at_least, err_console, one_line_errors, print_json, print_tables, say
from poisonlab.core import PoisonlabError
from poisonlab.report.store import check_out_file
from poisonlab.report.tables import TableData

app = typer.Typer(help="URL-list datasets: build manifests, fetch them with verification, price split-view poisoning.",
                  no_args_is_help=True)


@app.command()
@one_line_errors
def manifest(
    source: Annotated[Path, typer.Argument(help="folder of class sub-folders, or a CSV of url,label[,class]")],
    out: Annotated[Path, typer.Option("--out", "-o", help="manifest to write (.csv, or .parquet with pyarrow)")],
    base_url: Annotated[str | None, typer.Option(help="for a folder: the URL its files are served under")] = None,
    workers: Annotated[int, typer.Option(help="download threads (URL list)")] = 16,
    timeout: Annotated[float, typer.Option(help="seconds per attempt (URL list)")] = 10.0,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Write a manifest (url, label, class, sha256, pHash, thumbnail, size) of a folder or of a list of URLs.

    A folder's URLs are --base-url plus each file's path below the folder; a URL list is downloaded once
    and unreachable URLs are left out (and counted).

    Example: poisonlab dataset manifest images/ --base-url https://cdn.example.org/images/ -o manifest.csv
    """
    from poisonlab.webscale.client import Limits
    from poisonlab.webscale.manifest import folder_manifest, url_manifest, write_manifest

    check_out_file(out, "manifest")
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise PoisonlabError(f"--out {out}: expected a .csv or .parquet file name")
    skipped: list[tuple[str, str]] = []
    if source.is_dir():
        if base_url is None:
            raise PoisonlabError(f"{source}: a folder needs --base-url, the URL its files will be served under")
        built = folder_manifest(source, base_url)
    else:
        if base_url is not None:
            raise PoisonlabError(f"--base-url: only for a folder; {source} is a URL list")
        built, skipped = url_manifest(source, Limits(timeout=timeout), workers)
    write_manifest(built, out)
    body = {"out": str(out), "rows": len(built), "classes": list(built.classes),
            "unreachable": [{"url": u, "reason": r} for u, r in skipped]}
    if json_out:
        print_json(body)
        return
    say(f"wrote {out}: {len(built):,} rows, {len(built.classes)} classes"
        + (f"; {len(skipped):,} unreachable URLs left out" if skipped else ""))


@app.command()
@one_line_errors
def fetch(
    manifest_file: Annotated[Path, typer.Argument(metavar="MANIFEST", help="manifest (.csv or .parquet)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="dataset folder to write (class sub-folders)")],
    workers: Annotated[int, typer.Option(help="download threads")] = 16,
    timeout: Annotated[float, typer.Option(help="seconds per attempt")] = 10.0,
    retries: Annotated[int, typer.Option(help="further attempts after a network error, 429 or 5xx")] = 2,
    max_bytes: Annotated[int, typer.Option(help="largest image file accepted")] = 20_000_000,
    max_pixels: Annotated[int, typer.Option(help="most pixels an image may declare")] = 40_000_000,
    max_hamming: Annotated[int, typer.Option(help="pHash bits a re-encode may differ by")] = 10,
    min_similarity: Annotated[float, typer.Option(help="thumbnail correlation a re-encode must reach")] = 0.97,
    verify: Annotated[bool, typer.Option(help="verify each image against the manifest (--no-verify: keep all)")]
    = True,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Download MANIFEST's images into OUT/<class>/, keeping only those that verify; resumable.

    Each row is a match (same SHA-256), a benign re-encode (pHash, thumbnail and aspect ratio agree), a
    substitution, or unreachable; OUT/fetch-report.json lists every rejected row and why. A rerun
    re-verifies the files already there and downloads only the rest.

    Example: poisonlab dataset fetch manifest.csv --out data/ --workers 32
    """
    from poisonlab.webscale.client import Limits
    from poisonlab.webscale.fetch import REPORT_FILE, Fetcher, Outcome
    from poisonlab.webscale.manifest import read_manifest
    from poisonlab.webscale.verify import ACCEPTED, Verification

    at_least("--timeout", timeout, 0.0, strict=True)
    checks = Verification(max_hamming, min_similarity) if verify else None
    fetcher = Fetcher(Limits(timeout=timeout, retries=retries, max_bytes=max_bytes), workers, max_pixels, checks)
    rows = read_manifest(manifest_file)
    columns = (TextColumn("fetching"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rejected]} rejected"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True, disable=json_out) as bar:
        task = bar.add_task("fetch", total=len(rows), rejected=0)
        rejected = 0

        def advance(outcome: Outcome) -> None:
            nonlocal rejected
            rejected += outcome.status not in ACCEPTED
            bar.update(task, advance=1, rejected=rejected)

        fetched = fetcher.fetch(rows, out, advance)
    report = fetched.report()
    if json_out:
        print_json(report)
        return
    counts = fetched.counts()
    print_tables([TableData("fetch", ["status", "rows"], [[k, str(counts.get(k, 0))] for k in
                                                         ("match", "reencode", "unverified", "substitution",
                                                          "unreachable") if k in counts])])
    rate = fetched.bytes / max(fetched.seconds, 1e-9) / 1e6
    say(f"kept {report['accepted']:,} of {len(rows):,} images in {out} ({report['resumed']:,} from an earlier run); "
        f"{fetched.seconds:.1f} s, {rate:.1f} MB/s; rejected rows and reasons in {out / REPORT_FILE}")


@app.command()
@one_line_errors
def cost(
    fraction: Annotated[float, typer.Option(help="share of the dataset the attacker wants to control")],
    size: Annotated[int | None, typer.Option(help="images in the dataset (default: the manifest's rows)")] = None,
    images_per_domain: Annotated[float | None, typer.Option(help="images each purchasable domain hosts")] = None,
    price: Annotated[float, typer.Option(help="dollars per domain (one year's registration, an assumption)")] = 10.0,
    available: Annotated[int | None, typer.Option(help="how many purchasable domains exist (default: unbounded)")]
    = None,
    manifest_file: Annotated[Path | None, typer.Option("--manifest", help="count images per domain in a manifest "
                                                       "(every domain assumed purchasable at --price)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the quote as JSON")] = False,
) -> None:
    """Domains and dollars a split-view attacker needs to control FRACTION of a dataset (Carlini et al. 2023).

    Assumes every image on a bought domain reaches every later downloader, who does not verify; buys the
    domains with the most images per dollar first. Give --size and --images-per-domain, or --manifest.

    Example: poisonlab dataset cost --fraction 0.0001 --size 400000000 --images-per-domain 6700 --price 10
    """
    from dataclasses import asdict

    from poisonlab.webscale.cost import greedy_quote, manifest_domains, uniform_quote
    from poisonlab.webscale.manifest import read_manifest

    at_least("--price", price, 0.0, strict=True)
    if manifest_file is not None:
        if images_per_domain is not None:
            raise PoisonlabError("--images-per-domain: not with --manifest, which counts the images of each domain")
        rows = read_manifest(manifest_file)
        quote = greedy_quote(manifest_domains(rows, price), size or len(rows), fraction)
    elif size is None or images_per_domain is None:
        raise PoisonlabError("cost: expected --size and --images-per-domain, or --manifest")
    else:
        quote = uniform_quote(size, fraction, images_per_domain, price, available)
    if json_out:
        print_json(asdict(quote))
        return
    verdict = "" if quote.feasible else " (not reachable with the domains available)"
    say(f"{quote.domains:,} domains, ${quote.dollars:,.2f}: {quote.images:,} images = {quote.reached:.6%} of the "
        f"dataset (wanted {quote.images_needed:,} = {fraction:.6%}){verdict}; a verifying downloader keeps none")
