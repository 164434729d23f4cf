"""GREmLN against vanilla over pretraining seeds: the ablation that can decide (``snakemake ablation``).

Every seed trains both models on the same token shards (same vocabulary, same cell graphs, the same edges
hidden before pretraining); only the model's initialisation and its masks change with the seed. For each
seed the evaluation gives, on the same cells and the same hidden edges, the seen-test annotation macro-F1
(mean-pool, mean over the probe splits), the masked-token cross-entropy, and the hidden-edge AUROC.

The paired difference GREmLN minus vanilla is taken per seed, then summarised over seeds by its mean and a
95% t-interval (``scipy.stats.t``, n - 1 degrees of freedom). The hidden-edge AUROC difference of each seed
is itself paired edge by edge (:func:`cellgraph.pl.figures.paired_edge_auroc`).

Outputs of ``cellgraph ablation`` (:mod:`cellgraph.cli.ablation`, which reads each seed's results with
:func:`cellgraph.pl.figures.load_results` and calls :func:`seed_rows` and :func:`paired_over_seeds`):
``ablation.tsv`` (one row per seed x model) and ``ablation_paired.{csv,md}`` (one row per metric).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .figures import paired_edge_auroc

log = logging.getLogger(__name__)

__all__ = ["seed_rows", "paired_over_seeds", "t_interval"]


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` with its Student t confidence interval.

    Parameters
    ----------
    values : numpy.ndarray
        Shape [n], n >= 2 (here: one paired difference per pretraining seed).
    level : float
        Coverage of the interval (default 0.95).

    Returns
    -------
    tuple of float
        ``(mean, low, high)``: ``mean -/+ t_{(1+level)/2, n-1} * sd / sqrt(n)`` (sd with ``ddof=1``;
        ``scipy.stats.t``), the textbook t interval of a mean (Student 1908).

    Raises
    ------
    ValueError
        Fewer than 2 values.
    """
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if v.size < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {v.size}")
    m, se = float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))
    h = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * se)
    return m, m - h, m + h


def seed_rows(results_by_seed: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per seed x model: annotation macro-F1, masked cross-entropy, hidden-edge AUROC.

    Parameters
    ----------
    results_by_seed : dict
        Pretraining seed -> ``{model: results}``, each as :func:`cellgraph.pl.figures.load_results` returns.

    Returns
    -------
    list of dict
        In seed order, then model order: ``seed``, ``model``, ``annotation_macro_f1`` (seen-test, mean-pool,
        mean over the probe splits), ``masked_ce`` (nats), ``edge_auroc`` (pooled; None when not computed),
        ``graph_removal_change`` (relative change of the mean-pool embedding; None when absent).
    """
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
    """``a - b`` per seed and its mean with a 95% t-interval over seeds (:func:`t_interval`), per metric.

    Parameters
    ----------
    results_by_seed : dict
        Pretraining seed -> ``{model: results}`` (:func:`cellgraph.pl.figures.load_results`), both ``a`` and
        ``b`` present for every seed.
    a, b : str
        The models compared (default ``gremln`` minus ``vanilla``).

    Returns
    -------
    list of dict
        One row per metric with at least 2 seeds: ``metric``, ``difference`` (mean over seeds), ``ci_low``,
        ``ci_high``, ``seeds``, ``per_seed`` (the differences, ``%+.4f``), ``hidden_edges_per_seed`` (AUROC
        only: fewest hidden edges paired in a seed). Metrics: annotation macro-F1 (mean-pool), masked
        cross-entropy (nats), hidden-edge AUROC paired per edge (:func:`cellgraph.pl.figures.paired_edge_auroc`,
        200 bootstrap draws, seed 0; a seed without a paired edge is left out).
    """
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
