"""``cellgraph evaluate``: every evaluation task on one trained model (cell-type annotation and its baselines,
hidden-edge recovery, linear probe, masked tokens; :mod:`cellgraph.tl.evaluate`).

Checks the options, reads the inputs with :func:`cellgraph.tl.evaluate.load_evaluation_inputs`, runs
:func:`cellgraph.tl.evaluate.evaluate_model` and writes into ``--out-dir`` ``annotation.json`` (with
``graph_removal``), ``baselines.json``, ``edge_recovery.json``, ``edge_curves.npz``, ``edge_scores.tsv``,
``probe.json``, ``probe_scatter.npz``, ``masked.json``, ``embeddings.h5ad``
(:func:`cellgraph.tl.evaluate.write_embeddings`) and ``report.json``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import write_json, write_npz, write_tsv
from ..tl import evaluate as ev

log = logging.getLogger(__name__)

__all__ = ["configure_parser", "run"]


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Options of ``cellgraph evaluate``."""
    p.add_argument("--model-path", required=True, help="trained model (results/train/{model}/model.pt)")
    p.add_argument("--tokens-dir", required=True, help="token shards and vocab.tsv (results/tokens)")
    p.add_argument("--adata", required=True,
                   help="results/expression/adata.h5ad (log-normalised X, for the PCA baselines)")
    p.add_argument("--graph-edges", required=True,
                   help="gene graph with hidden edges (results/tokens/graph_edges.tsv.gz: source, target, "
                        "weight, hidden)")
    p.add_argument("--coefficients", required=True, help="results/spectral/coefficients.json")
    p.add_argument("--out-dir", required=True, help="folder for the evaluation results")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--n-splits", type=int, default=3, help="random probe splits for annotation (default 3)")
    p.add_argument("--probe-alpha", type=float, default=1.0, help="ridge penalty of the linear probe (default 1.0)")


def run(args: argparse.Namespace) -> None:
    """``cellgraph evaluate`` (module docstring): check, read, evaluate, write.

    Raises InputError (before anything is written) for ``--n-splits`` < 1, ``--probe-alpha`` <= 0, a missing
    or malformed input, a model whose vocabulary or ``n_bins`` differs from the shards, or a hidden edge
    found in a shard's cell graphs.
    """
    t0 = time.time()
    if args.n_splits < 1:
        raise InputError(f"--n-splits must be >= 1, got {args.n_splits}")
    if not args.probe_alpha > 0:
        raise InputError(f"--probe-alpha must be > 0, got {args.probe_alpha}")
    inp = ev.load_evaluation_inputs(args.model_path, args.tokens_dir, adata=args.adata,
                                    graph_edges=args.graph_edges, coefficients=args.coefficients)
    emb, res, times = ev.evaluate_model(inp, seed=args.seed, n_splits=args.n_splits,
                                        probe_alpha=args.probe_alpha, t0=t0)
    _write_outputs(Path(args.out_dir), args.coefficients, inp, emb, res, times, t0)


def _write_outputs(out: Path, coefficients: str, inp: dict[str, Any], emb: dict[str, dict], res: dict[str, Any],
                   times: dict[str, float], t0: float) -> None:
    """The result files of ``cellgraph evaluate`` in ``out`` (module docstring), then a one-line summary."""
    write_json(out / "annotation.json", res["annotation"])
    write_json(out / "baselines.json", res["baselines"])
    write_json(out / "edge_recovery.json", res["edges"])
    write_npz(out / "edge_curves.npz", res["curves"])
    write_tsv(res["edge_table"], out / "edge_scores.tsv", float_format="%.8g")
    write_json(out / "probe.json", res["probe"])
    write_npz(out / "probe_scatter.npz", res["scatter"])
    write_json(out / "masked.json", res["masked"])
    shards = inp["shards"]
    parts = {s: {"obs_names": shards[s].obs_names, "cell_type": shards[s].cell_type, "mean_pool": emb[s]["mean_pool"],
                 "cls": emb[s]["cls"]} for s in ("train", "test", "heldout") if s in emb}
    ev.write_embeddings(out / "embeddings.h5ad", parts, inp["model"].config.attention)
    ann, edges = res["annotation"], res["edges"]
    write_json(out / "report.json", {
        "inputs": {"model": str(inp["model_path"]), "tokens_dir": str(inp["tokens"]), "adata": str(inp["adata_path"]),
                   "graph_edges": str(inp["edges_path"]), "coefficients": str(coefficients)},
        "cells": ann["cells"],
        "probe_tokens": {"train": res["probe"]["n_train"], "test": res["probe"]["n_test"]},
        "edge_recovery_counts": edges["counts"],
        "shard_graph_edges": inp["shard_graph_edges"], "hidden_edges_in_shard_graphs": 0,
        "masked_tokens": res["masked"]["n_masked"],
        "embeddings_h5ad_cells": {s: len(p["obs_names"]) for s, p in parts.items()},
        "seconds": {k: round(v, 2) for k, v in times.items()} | {"total_s": round(time.time() - t0, 2)},
    })
    auroc = edges["pooled"]["auroc"]
    log.info("evaluate: done in %.1f s: macro-F1 %.3f, hidden-edge AUROC %s, probe R^2 %.3f, masked CE %.3f "
             "(per-gene %.3f, per-cell %.3f)", time.time() - t0,
             ann["embeddings"]["mean_pool"]["seen_test"]["macro_f1"]["mean"],
             "n/a" if auroc is None else f"{auroc:.3f}", res["probe"]["r2"],
             res["masked"]["model"]["cross_entropy"], res["masked"]["per_gene"]["cross_entropy"],
             res["masked"]["per_cell"]["cross_entropy"])
