"""Print the per-rule wall time and peak memory of a workflow run from Snakemake's `benchmark:` files.

Usage: python bench/rule_times.py [results/benchmarks]
Baseline: the issue's budget of 20 minutes for the whole default run on 2 cores (ratio = total / budget).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ORDER = ["networks", "expression", "grn", "spectral", "tokenize", "train_gremln", "train_vanilla",
         "evaluate_gremln", "evaluate_vanilla", "figures"]
BUDGET_S = 20 * 60


def main(folder: str = "results/benchmarks") -> None:
    rows = []
    for path in sorted(Path(folder).glob("*.tsv"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem)):
        bench = pd.read_csv(path, sep="\t")
        rows.append({"rule": path.stem, "wall_s": float(bench["s"].iloc[-1]), "max_rss_mb": float(bench["max_rss"].iloc[-1])})
    if not rows:
        sys.exit(f"no benchmark files in {folder}")
    table = pd.DataFrame(rows)
    total = table["wall_s"].sum()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"sum of rule wall times: {total:.0f} s = {total / 60:.1f} min; ratio to the 20-minute budget: {total / BUDGET_S:.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
