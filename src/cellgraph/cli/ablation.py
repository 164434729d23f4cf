"""``cellgraph ablation``: GREmLN minus vanilla over pretraining seeds, paired, with 95% t-intervals.

Reads, for every ``--runs SEED=EVALUATE_DIR``, the evaluation results of both ``--models`` in
``EVALUATE_DIR/<model>/`` (:func:`cellgraph.pl.figures.load_results`), then writes to ``--out-dir``:
``ablation.tsv`` (one row per seed x model, :func:`cellgraph.pl.ablation.seed_rows`) and
``ablation_paired.csv`` / ``ablation_paired.md`` (one row per metric: mean difference over seeds and its 95%
t-interval, :func:`cellgraph.pl.ablation.paired_over_seeds`; markdown by
:func:`cellgraph.pl.figures.markdown_table`), each atomically.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import atomic_path
from ..pl.ablation import paired_over_seeds, seed_rows
from ..pl.figures import load_results, markdown_table

log = logging.getLogger(__name__)


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the options of ``cellgraph ablation`` to ``p``.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The sub-command's parser; ``--runs`` and ``--out-dir`` are required.
    """
    p.add_argument("--runs", nargs="+", required=True,
                   help="SEED=EVALUATE_DIR for every pretraining seed (each dir holds one folder per model)")
    p.add_argument("--models", nargs=2, default=["gremln", "vanilla"], help="the two models compared")
    p.add_argument("--out-dir", required=True, help="folder for ablation.tsv and ablation_paired.{csv,md}")


def _results_by_seed(runs: list[str], models: list[str]) -> dict[int, dict[str, dict[str, Any]]]:
    """``--runs`` entries ``SEED=EVALUATE_DIR`` -> ``{seed: load_results(EVALUATE_DIR, models)}``.

    Each entry is checked, then its results read, in the order given. InputError for an entry that is not
    ``SEED=EVALUATE_DIR`` with a non-negative integer seed, for a missing or unreadable evaluation file, and
    for fewer than 2 seeds.
    """
    results_by_seed = {}
    for spec in runs:
        seed, sep, folder = spec.partition("=")
        if not sep or not seed.isdigit():
            raise InputError(f"--runs: expected SEED=EVALUATE_DIR, got {spec!r}")
        results_by_seed[int(seed)] = load_results(folder, models)
    if len(results_by_seed) < 2:
        raise InputError(f"--runs: need at least 2 seeds for an interval over seeds, got {len(results_by_seed)}")
    return results_by_seed


def run(args: argparse.Namespace) -> None:
    """``cellgraph ablation``: read every seed's evaluation results, write the paired tables (module docstring).

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`configure_parser`.

    Raises
    ------
    InputError
        If a ``--runs`` entry is not ``SEED=EVALUATE_DIR`` with an integer seed, if fewer than 2 seeds are
        given, or if an evaluation file is missing or unreadable; nothing is written then.
    """
    import pandas as pd

    a, b = args.models
    results_by_seed = _results_by_seed(list(args.runs), list(args.models))
    per_seed = pd.DataFrame(seed_rows(results_by_seed))
    paired = pd.DataFrame(paired_over_seeds(results_by_seed, a=a, b=b))
    out = Path(args.out_dir)
    with atomic_path(out / "ablation.tsv") as tmp:
        per_seed.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out / "ablation_paired.csv") as tmp:
        paired.to_csv(tmp, index=False)
    with atomic_path(out / "ablation_paired.md") as tmp:
        tmp.write_text(markdown_table(paired, digits=4))
    log.info("ablation over %d seeds:\n%s", len(results_by_seed), paired.to_string(index=False))
