"""Carlini et al.'s cost of split-view poisoning: how many expired domains, and how many dollars, buy a poison fraction.

Assumptions, all explicit inputs: (1) every image on a bought domain is served by the attacker to every
downloader who fetches after the purchase; (2) the attacker buys the domains that host the most images per
dollar first (greedy; optimal when prices are equal); (3) a domain's price is one year's registration;
(4) downloaders do not verify what they fetch (img2dataset's hash check is off by default). Under
download-time verification (``verify``) a substituted image is rejected, so no budget buys any poison
that is kept; the calculator states the fraction an unverified downloader receives.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from poisonlab.core import PoisonlabError, require
from poisonlab.webscale.manifest import Manifest
from poisonlab.webscale.server import LOOPBACK


@dataclass(frozen=True)
class Domain:
    """One purchasable domain: its name, how many dataset images it hosts, and its price in dollars."""

    name: str
    images: int
    price: float


@dataclass(frozen=True)
class Quote:
    """The cheapest purchase found for a target fraction: domains, dollars, images and the fraction they reach."""

    fraction: float
    images_needed: int
    domains: int
    dollars: float
    images: int
    reached: float
    feasible: bool
    bought: tuple[str, ...] = ()


def greedy_quote(domains: Sequence[Domain], dataset_size: int, fraction: float) -> Quote:
    """Buy domains in order of images per dollar until they host ``fraction`` of ``dataset_size`` images."""
    require(dataset_size >= 1, "dataset size", dataset_size, "an integer >= 1")
    require(0.0 < fraction <= 1.0, "fraction", fraction, "a number in (0, 1]")
    for d in domains:
        if d.images < 0 or not d.price > 0 or not math.isfinite(d.price):
            raise PoisonlabError(f"domain {d.name!r}: {d.images} images at ${d.price}; expected images >= 0 and a "
                                 "finite price > 0")
    needed = math.ceil(fraction * dataset_size)
    bought, images, dollars = [], 0, 0.0
    for d in sorted(domains, key=lambda d: (-d.images / d.price, d.name)):
        if images >= needed:
            break
        bought.append(d.name)
        images += d.images
        dollars += d.price
    return Quote(fraction, needed, len(bought), dollars, images, images / dataset_size, images >= needed,
                 tuple(bought))


def uniform_quote(dataset_size: int, fraction: float, images_per_domain: float, price: float,
                  available: int | None = None) -> Quote:
    """The quote when every purchasable domain hosts ``images_per_domain`` images at ``price`` dollars.

    ``available`` caps how many such domains exist (None: as many as needed).
    """
    require(images_per_domain > 0, "images per domain", images_per_domain, "a number > 0")
    require(price > 0, "price", price, "a number of dollars > 0")
    require(dataset_size >= 1, "dataset size", dataset_size, "an integer >= 1")
    require(0.0 < fraction <= 1.0, "fraction", fraction, "a number in (0, 1]")
    needed = math.ceil(fraction * dataset_size)
    want = math.ceil(needed / images_per_domain)
    domains = want if available is None else min(want, available)
    images = math.floor(domains * images_per_domain)
    return Quote(fraction, needed, domains, domains * price, images, images / dataset_size, domains == want)


def domain_of(url: str) -> str:
    """The domain that serves ``url``: its host, or on loopback (the simulation's server) its first path segment."""
    parts = urlsplit(url)
    if parts.hostname == LOOPBACK:
        return parts.path.lstrip("/").split("/", 1)[0]
    return parts.hostname or ""


def manifest_domains(manifest: Manifest, price: float) -> list[Domain]:
    """Each domain of a manifest's URLs with the images it serves, all at ``price`` (every one assumed purchasable)."""
    hosts = Counter(domain_of(item.url) for item in manifest.items)
    return [Domain(host, n, price) for host, n in sorted(hosts.items())]
