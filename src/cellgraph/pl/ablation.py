"""GREmLN against vanilla over pretraining seeds: the ablation that can decide (``snakemake ablation``).

Every seed trains both models on the same token shards (same vocabulary, same cell graphs, the same edges
hidden before pretraining); only the model's initialisation and its masks change with the seed. For each
seed the evaluation gives, on the same cells and the same hidden edges, the seen-test annotation macro-F1
(mean-pool, mean over the probe splits), the masked-token cross-entropy, and the hidden-edge AUROC.

The paired difference GREmLN minus vanilla is taken per seed, then summarised over seeds by its mean and a
95% t-interval (``scipy.stats.t``, n - 1 degrees of freedom). The hidden-edge AUROC difference of each seed
is itself paired edge by edge (:func:`cellgraph.pl.figures.paired_edge_auroc`).

Outputs: ``ablation.tsv`` (one row per seed x model) and ``ablation_paired.{csv,md}`` (one row per metric).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .figures import load_results, markdown_table, paired_edge_auroc
from ..io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["seed_rows", "paired_over_seeds", "t_interval"]


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a Student t interval of the mean of ``values`` [n] (n >= 2). Raises ValueError."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if v.size < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {v.size}")
    m, se = float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))
    h = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * se)
    return m, m - h, m + h


def seed_rows(results_by_seed: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per seed x model: annotation macro-F1, masked cross-entropy, hidden-edge AUROC."""
    rows = []
    for seed, results in sorted(results_by_seed.items()):
        for m, res in results.items():
            rows.append({
                "seed": seed, "model": m,
                "annotation_macro_f1": float(res["annotation"]["embeddings"]["mean_pool"]["seen_test"]
                                             ["macro_f1"]["mean"]),
                "masked_ce": float(res["masked"]["model"]["cross_entropy"]),
                "edge_auroc": res["edge_recovery"]["pooled"]["auroc"],
                "graph_removal_change": (res["annotation"].get("graph_removal", {})
                                         .get("relative_change_mean_pool")),
            })
    return rows


def paired_over_seeds(results_by_seed: dict[int, dict[str, dict[str, Any]]], a: str = "gremln",
                      b: str = "vanilla") -> list[dict[str, Any]]:
    """``a - b`` per seed and its mean with a 95% t-interval over seeds, per metric."""
    per_metric: dict[str, list[float]] = {"annotation macro-F1 (mean-pool)": [], "masked cross-entropy (nats)": [],
                                          "hidden-edge AUROC (paired per edge)": []}
    n_edges = []
    for _, results in sorted(results_by_seed.items()):
        ra, rb = results[a], results[b]
        per_metric["annotation macro-F1 (mean-pool)"].append(
            ra["annotation"]["embeddings"]["mean_pool"]["seen_test"]["macro_f1"]["mean"]
            - rb["annotation"]["embeddings"]["mean_pool"]["seen_test"]["macro_f1"]["mean"])
        per_metric["masked cross-entropy (nats)"].append(
            ra["masked"]["model"]["cross_entropy"] - rb["masked"]["model"]["cross_entropy"])
        edge = paired_edge_auroc(ra["edge_scores"], rb["edge_scores"], n_boot=200)
        if edge is not None:
            per_metric["hidden-edge AUROC (paired per edge)"].append(edge["difference"])
            n_edges.append(edge["n"])
    rows = []
    for metric, diffs in per_metric.items():
        if len(diffs) < 2:
            continue
        mean, lo, hi = t_interval(np.asarray(diffs))
        rows.append({"metric": f"{a} - {b}: {metric}", "difference": mean, "ci_low": lo, "ci_high": hi,
                     "seeds": len(diffs), "per_seed": " ".join(f"{d:+.4f}" for d in diffs),
                     "hidden_edges_per_seed": int(np.min(n_edges)) if "AUROC" in metric and n_edges else None})
    return rows


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``ablation`` stage's command-line options to ``p``."""
    p.add_argument("--runs", nargs="+", required=True,
                   help="SEED=EVALUATE_DIR for every pretraining seed (each dir holds one folder per model)")
    p.add_argument("--models", nargs=2, default=["gremln", "vanilla"], help="the two models compared")
    p.add_argument("--out-dir", required=True, help="folder for ablation.tsv and ablation_paired.{csv,md}")


def run(args: argparse.Namespace) -> None:
    """``cellgraph ablation``: GREmLN minus vanilla over pretraining seeds, paired, with 95% t-intervals.

    Reads, for every ``--runs SEED=EVALUATE_DIR``, the evaluation results of both ``--models`` in
    ``EVALUATE_DIR/<model>/`` (:func:`cellgraph.pl.figures.load_results`) and writes to ``--out-dir``:
    ``ablation.tsv`` (one row per seed x model, :func:`seed_rows`) and ``ablation_paired.csv`` /
    ``ablation_paired.md`` (one row per metric: mean difference over seeds and its 95% t-interval,
    :func:`paired_over_seeds`).

    Raises
    ------
    InputError
        If a ``--runs`` entry is not ``SEED=EVALUATE_DIR`` with an integer seed, if fewer than 2 seeds are
        given, or if an evaluation file is missing or unreadable.
    """
    import pandas as pd

    results_by_seed = {}
    for spec in args.runs:
        seed, sep, folder = spec.partition("=")
        if not sep or not seed.isdigit():
            raise InputError(f"--runs: expected SEED=EVALUATE_DIR, got {spec!r}")
        results_by_seed[int(seed)] = load_results(folder, list(args.models))
    if len(results_by_seed) < 2:
        raise InputError(f"--runs: need at least 2 seeds for an interval over seeds, got {len(results_by_seed)}")
    per_seed = pd.DataFrame(seed_rows(results_by_seed))
    paired = pd.DataFrame(paired_over_seeds(results_by_seed, *args.models))
    out = Path(args.out_dir)
    with atomic_path(out / "ablation.tsv") as tmp:
        per_seed.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out / "ablation_paired.csv") as tmp:
        paired.to_csv(tmp, index=False)
    with atomic_path(out / "ablation_paired.md") as tmp:
        tmp.write_text(markdown_table(paired, digits=4))
    log.info("ablation over %d seeds:\n%s", len(results_by_seed), paired.to_string(index=False))
