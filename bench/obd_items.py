"""``make obd``'s last step: the Open Bandit Dataset's items with ZOZOTOWN's Bernoulli-TS prior.

Writes ``data/obd/items.csv``: the "all" campaign's ``item_context.csv`` (item_id and
item_feature_0..3) plus ``bts_alpha`` and ``bts_beta``, the Beta prior of ZOZOTOWN's Bernoulli
Thompson sampling from ``prior_bts.yaml`` (obp's ``obp/policy/conf/prior_bts.yaml``), by item
id. A policy reads them as item columns: ``bernoulli-ts:prior_alpha=bts_alpha,prior_beta=bts_beta``.

Usage: python bench/obd_items.py data/obd
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import yaml


def main(root: str) -> None:
    root = Path(root)
    prior = yaml.safe_load((root / "prior_bts.yaml").read_text())["all"]
    alpha, beta = prior["alpha"], prior["beta"]
    with open(root / "random" / "all" / "item_context.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    fields = [f for f in rows[0] if f] + ["bts_alpha", "bts_beta"]  # the unnamed index column is dropped
    with open(root / "items.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            k = int(row["item_id"])
            w.writerow({**row, "bts_alpha": alpha[k], "bts_beta": beta[k]})


if __name__ == "__main__":
    main(sys.argv[1])
