"""Web-scale poisoning (split-view and frontrunning, Carlini et al. 2023, arXiv 2302.10149) and the check that stops it.

Datasets shipped as URL lists (``manifest``) are fetched later from hosts the curator does not control
(``fetch``); verification at download time (``verify``) tells a benign re-encode from a substituted image
with an exact hash, a perceptual hash and a thumbnail comparison (``phash``). ``server`` hosts a dataset
on loopback, ``attacker`` crafts the substitutions, ``simulate`` runs download -> train -> ASR end to end,
and ``cost`` is Carlini et al.'s price of a target poison fraction.
"""
