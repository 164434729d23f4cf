"""``cellgraph tokenize``: vocabulary, cell graphs with hidden edges, token shards and report.

Parses the stage's options into one :class:`cellgraph.pp.tokenize.TokenizeParams` (checked there) and runs
the stage's public functions of :mod:`cellgraph.pp.tokenize` in order: :func:`~cellgraph.pp.tokenize.read_adata`,
:func:`~cellgraph.pp.tokenize.read_networks`, :func:`~cellgraph.pp.tokenize.scan_corpus` (``--pretrain-adata``,
opened backed), :func:`~cellgraph.pp.tokenize.stage_vocabulary`, :func:`~cellgraph.pp.tokenize.read_prior_edges`,
:func:`~cellgraph.pp.tokenize.build_stage_graphs`, :func:`~cellgraph.pp.tokenize.tokenize_splits` and
:func:`~cellgraph.pp.tokenize.tokenize_corpus_streamed` (which writes ``pretrain.npz`` itself, chunk by chunk).
Then it writes ``{train,val,test,heldout,train_integrated}.npz`` (:func:`~cellgraph.pp.tokenize.write_shard`),
``graph_edges.tsv.gz``, ``vocab.tsv`` and ``report.json`` into ``--out-dir`` (docs/design.md section 5), and
removes a ``pretrain.npz`` of an earlier run when no corpus is given.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import require_file, write_json
from ..io.shards import CLS_TOKEN, PAD_TOKEN
from ..pp import tokenize as tk
from . import dataclass_from_args

log = logging.getLogger(tk.__name__)  # the stage's logger: log lines keep their name


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the options of ``cellgraph tokenize`` to ``p``.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The sub-command's parser: inputs (``--adata``, ``--networks``, ``--prior-edges``, ``--pretrain-adata``),
        ``--out-dir``, tokenization (``--n-bins``, ``--max-seq-len``, ``--n-top-genes``, ``--tie-break``,
        ``--neighbours``), graphs (``--graph``, ``--prior-graphs``, ``--edge-holdout-fraction``, ``--n-bootstraps``,
        ``--integration-alpha``, ``--knn-k``), pretraining-cell QC (``--min-counts``, ``--max-counts`` in total
        UMI, ``--min-genes``, ``--target-sum``) and ``--chunk-cells``; values are checked when the stage runs.
    """
    p.add_argument("--adata", required=True, help="expression stage output (adata.h5ad, counts in layers['counts'])")
    p.add_argument("--networks", required=True, help="grn networks table (networks.tsv.gz)")
    p.add_argument("--prior-edges", default=None,
                   help="networks stage edge table (edges.parquet: source, target, graph); needed by --graph prior|union")
    p.add_argument("--prior-graphs", nargs="+", default=["dorothea", "trrust", "huri", "string"],
                   help="values of the edge table's `graph` column that form the prior graph")
    p.add_argument("--pretrain-adata", default=None,
                   help="unlabelled cells (raw UMI counts in X) tokenized into pretrain.npz for pretraining only")
    p.add_argument("--out-dir", required=True, help="folder for vocab.tsv, {train,val,test,heldout}.npz, report.json")
    p.add_argument("--seed", type=int, default=0, help="seed of tie-breaking keys and hidden edges (default 0)")
    p.add_argument("--n-bins", type=int, default=50, help="expression rank bins (default 50)")
    p.add_argument("--max-seq-len", type=int, default=256, help="gene tokens per cell at most (default 256)")
    p.add_argument("--n-top-genes", type=int, default=3000,
                   help="vocabulary: highly variable genes (scanpy flavor seurat_v3 on train counts; default 3000)")
    p.add_argument("--tie-break", choices=tk.TIE_BREAKS, default="random",
                   help="random: every expressed gene its own rank bin; shared: ties share a bin (default random)")
    p.add_argument("--neighbours", action=argparse.BooleanOptionalAction, default=False,
                   help="also add unexpressed graph neighbours of expressed genes as bin-0 tokens")
    p.add_argument("--graph", choices=tk.GRAPHS, default="prior",
                   help="cell graphs: prior (one shared graph), aracne (per type + integration), union")
    p.add_argument("--edge-holdout-fraction", type=float, default=0.15,
                   help="fraction of graph edges hidden from every shard before pretraining (default 0.15)")
    p.add_argument("--n-bootstraps", type=int, default=50,
                   help="ARACNe bootstraps B of networks.tsv.gz (integration probability 1-(count+1)/(B+2))")
    p.add_argument("--integration-alpha", type=float, default=0.05,
                   help="Bayesian graph integration: keep an edge iff p(e) <= alpha (default 0.05)")
    p.add_argument("--knn-k", type=int, default=15, help="neighbours of the kNN cell-type classifier (default 15)")
    p.add_argument("--min-counts", type=float, default=500, help="pretraining cells: total UMI at least")
    p.add_argument("--max-counts", type=float, default=20000, help="pretraining cells: total UMI at most")
    p.add_argument("--min-genes", type=int, default=200, help="pretraining cells: detected genes at least")
    p.add_argument("--target-sum", type=float, default=1e6, help="pretraining cells: counts per cell before log1p")
    p.add_argument("--chunk-cells", type=int, default=10000,
                   help="pretraining corpus: cells read and tokenized at a time; bounds memory (default 10000)")


def params_from_args(args: argparse.Namespace) -> tk.TokenizeParams:
    """The stage's options from the parsed command line, values as parsed (so ``report.json`` keeps them).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by a parser set up with :func:`configure_parser`.

    Returns
    -------
    TokenizeParams

    Raises
    ------
    InputError
        An option out of range (the message names the option).
    """
    return dataclass_from_args(tk.TokenizeParams, args, prior_graphs=tuple(args.prior_graphs))


def run(args: argparse.Namespace) -> None:
    """``cellgraph tokenize``: vocabulary, graphs with hidden edges, token shards, report (module docstring).

    Raises
    ------
    InputError
        A bad option or input file (messages of :mod:`cellgraph.pp.tokenize`).
    """
    t_start = time.perf_counter()
    params = params_from_args(args)
    if params.graph in ("prior", "union") and not args.prior_edges:
        raise InputError(f"--graph {args.graph} needs --prior-edges (the networks stage edges.parquet)")
    paths = {"adata": require_file(args.adata, "adata"), "networks": require_file(args.networks, "grn networks")}
    adata = tk.read_adata(paths["adata"])
    networks = tk.read_networks(paths["networks"])
    corpus = None
    if args.pretrain_adata:  # opened backed and read --chunk-cells cells at a time: memory bounded by the chunk
        corpus = tk.scan_corpus(require_file(args.pretrain_adata, "pretraining adata"), params=params)
    try:
        _tokenize_and_write(args, params, paths, adata, networks, corpus, t_start)
    finally:
        if corpus is not None:
            corpus.close()


def _tokenize_and_write(args: argparse.Namespace, params: tk.TokenizeParams, paths: dict[str, Path], adata,
                        networks, corpus, t_start: float) -> None:
    """The rest of :func:`run` once the inputs are read (``corpus``: the open scan of the corpus, or None)."""
    out = Path(args.out_dir)
    vocab = tk.stage_vocabulary(adata, networks, params=params, corpus=corpus, adata_path=paths["adata"],
                                networks_path=paths["networks"])
    prior_edges = (None if params.graph == "aracne" else
                   tk.read_prior_edges(require_file(args.prior_edges, "prior edges")))
    graphs = tk.build_stage_graphs(vocab.genes, networks, prior_edges=prior_edges, params=params)
    shards, split_reports, integration = tk.tokenize_splits(adata, graphs, params=params)
    if corpus is not None:  # streamed straight into pretrain.npz
        split_reports[tk.PRETRAIN_SHARD] = tk.tokenize_corpus_streamed(
            corpus, vocab.genes, graphs.prior, out / f"{tk.PRETRAIN_SHARD}.npz", params=params)
    report: dict[str, Any] = {
        "inputs": {"adata": str(paths["adata"]), "networks": str(paths["networks"]),
                   "prior_edges": args.prior_edges, "pretrain_adata": args.pretrain_adata},
        "parameters": params.report(),
        "label_key": tk.adata_label_key(adata),
        "cells_per_split": {**{s: int(shards[s]["obs_names"].size) for s in shards},
                            **({tk.PRETRAIN_SHARD: corpus.n_kept} if corpus is not None else {})},
        "splits": split_reports,
        "vocab": vocab.report(adata.n_vars),
        "graph": graphs.report(),
        "integration": integration,
        "pretrain": corpus.report if corpus is not None else None,
    }
    for s, arrays in shards.items():
        tk.write_shard(out / f"{s}.npz", arrays)
    if corpus is None:  # a corpus shard of an earlier run must not join this run's training
        (out / f"{tk.PRETRAIN_SHARD}.npz").unlink(missing_ok=True)
    tk.write_graph_edges(out / "graph_edges.tsv.gz", graphs.edge_table())
    tk.write_vocab(out / "vocab.tsv", [PAD_TOKEN, CLS_TOKEN] + vocab.genes)
    write_json(out / "report.json", report)
    log.info("tokenized %d cells in %.1f s; vocab %d genes; %d graph edges, %d hidden",
             sum(report["cells_per_split"].values()), time.perf_counter() - t_start, len(vocab.genes),
             graphs.edges[0].size, int(graphs.hidden.sum()))
