"""``cellgraph transfer``: frozen-embedding annotation on a data set outside pretraining, beside its baselines
(:mod:`cellgraph.tl.transfer`), one ``--task`` per step.

- ``tokens``: reads the vocabulary and the gene graph, calls :func:`cellgraph.tl.transfer.visible_edges`,
  :func:`cellgraph.tl.transfer.transfer_cells` and :func:`cellgraph.tl.transfer.tokenize_transfer`; writes
  ``tokens.npz``, ``cells.h5ad`` and ``report.json`` in ``--out-dir``.
- ``evaluate``: reads the model, ``tokens.npz`` and ``cells.h5ad``, calls
  :func:`cellgraph.tl.transfer.transfer_annotation` and :func:`cellgraph.tl.transfer.embeddings_adata`; writes
  ``annotation.tsv``, ``predictions.tsv``, ``embeddings.h5ad`` and ``report.json`` in ``--out-dir``.
- ``table``: reads every ``--inputs`` annotation.tsv, calls :func:`cellgraph.tl.transfer.transfer_table` and
  writes the CSV ``--out`` and its Markdown twin.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from ..io import atomic_path, read_h5ad, require_file, write_json, write_tsv
from ..tl import transfer as tf
from ..tl.transfer import MODEL_METHOD, N_BOOT, PROTOCOLS

log = logging.getLogger(__name__)

__all__ = ["configure_parser", "run", "run_tokens", "run_evaluate", "run_table"]


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Options of ``cellgraph transfer`` (one ``--task`` per step: tokens, evaluate, table)."""
    p.add_argument("--task", required=True, choices=["tokens", "evaluate", "table"])
    p.add_argument("--name", default="dataset", help="data set name (tables, messages)")
    p.add_argument("--adata", help="tokens: the data set's h5ad (the reference file for reference_query)")
    p.add_argument("--query-adata", default=None, help="tokens: the query h5ad (protocol reference_query)")
    p.add_argument("--label-key", default="cell_type", help="obs column of the labels")
    p.add_argument("--counts-layer", default=None, help="layer with the raw counts (default: X)")
    p.add_argument("--log-layer", default=None, help="layer with published log-normalised values (no counts)")
    p.add_argument("--idmap", default=None, help="gene id map TSV (ensg, entrez, symbol)")
    p.add_argument("--top-shift", type=int, default=0, help="keep the n labels farthest from --control (0 = all)")
    p.add_argument("--control", default=None, help="label of control cells (with --top-shift)")
    p.add_argument("--min-counts", type=int, default=0)
    p.add_argument("--max-counts", type=int, default=0)
    p.add_argument("--min-genes", type=int, default=0)
    p.add_argument("--target-sum", type=float, default=1e4)
    p.add_argument("--vocab", help="tokens: results/tokens/vocab.tsv")
    p.add_argument("--graph-edges", help="tokens: results/tokens/graph_edges.tsv.gz (visible edges are used)")
    p.add_argument("--n-bins", type=int, default=None, help="tokens: expression bins (as the tokenize stage)")
    p.add_argument("--max-seq-len", type=int, default=None, help="tokens: most tokens per cell (as tokenize)")
    p.add_argument("--model-path", help="evaluate: the pretrained model.pt")
    p.add_argument("--tokens-dir", help="evaluate: the folder --task tokens wrote")
    p.add_argument("--protocol", default="cross_validation", choices=PROTOCOLS)
    p.add_argument("--n-splits", type=int, default=5)
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--inputs", nargs="*", default=[], help="table: annotation.tsv files")
    p.add_argument("--out", help="table: the CSV (a Markdown twin is written beside it)")
    p.add_argument("--out-dir", help="tokens / evaluate: output folder")


def run_tokens(args: argparse.Namespace) -> None:
    """``--task tokens``: ``tokens.npz`` (shard arrays), ``cells.h5ad`` (the log-normalised cells the
    baselines read, ``obs``: label, role) and ``report.json`` in ``--out-dir``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser`.

    Raises
    ------
    InputError
        ``--adata``, ``--vocab``, ``--graph-edges``, ``--n-bins``, ``--max-seq-len`` or ``--out-dir`` not given;
        a missing input file; and what :func:`cellgraph.tl.transfer.transfer_cells` raises on bad cells.
    """
    import anndata as ad

    from ..io.shards import read_vocab
    from ..pp.tokenize import write_shard
    from ..tl.evaluate import read_graph_edges

    for flag in ("adata", "vocab", "graph_edges", "n_bins", "max_seq_len", "out_dir"):
        if not getattr(args, flag):
            raise InputError(f"--task tokens needs --{flag.replace('_', '-')}")
    vocab = read_vocab(args.vocab)
    edges = read_graph_edges(require_file(args.graph_edges, "--graph-edges"))
    graph = tf.visible_edges(edges)
    report: dict[str, Any] = {"name": args.name, "protocol": args.protocol,
                              "graph": "visible edges of the tokenize stage's gene graph (hidden edges removed: "
                                       f"{int(edges['hidden'].sum())})"}
    cells, cells_report = tf.transfer_cells(
        args.adata, args.label_key, query_adata=args.query_adata, protocol=args.protocol,
        counts_layer=args.counts_layer, log_layer=args.log_layer, idmap=args.idmap, min_counts=args.min_counts,
        max_counts=args.max_counts, min_genes=args.min_genes, target_sum=args.target_sum,
        top_shift=args.top_shift, control=args.control, seed=args.seed)
    report.update(cells_report)
    arrays, report["tokens"] = tf.tokenize_transfer(cells, vocab, graph, args.n_bins, args.max_seq_len, args.seed,
                                                    role=cells.obs["role"].to_numpy())
    out = Path(args.out_dir)
    write_shard(out / "tokens.npz", arrays)
    keep = cells.obs[["label", "role"]].astype(str)
    with atomic_path(out / "cells.h5ad") as tmp:
        ad.AnnData(X=cells.X, obs=keep, var=pd.DataFrame(index=cells.var_names)).write_h5ad(tmp)
    write_json(out / "report.json", report)
    log.info("transfer tokens %s: %d cells, %d of %d vocabulary genes measured", args.name, cells.n_obs,
             report["tokens"]["vocab_genes_measured"], report["tokens"]["vocab_genes"])


def run_evaluate(args: argparse.Namespace) -> None:
    """``--task evaluate``: ``annotation.tsv`` (:func:`cellgraph.tl.transfer.bootstrap_macro_f1` plus data set and
    model columns), ``predictions.tsv``, ``embeddings.h5ad`` (:func:`cellgraph.tl.transfer.embeddings_adata`) and
    ``report.json`` in ``--out-dir``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser`.

    Raises
    ------
    InputError
        ``--model-path``, ``--tokens-dir`` or ``--out-dir`` not given; the model, ``tokens.npz`` or
        ``cells.h5ad`` missing; the tokens' ``n_bins`` differ from the model's.
    """
    from ..io.shards import TokenDataset
    from ..tl.evaluate import load_model

    t0 = time.time()
    if not (args.model_path and args.tokens_dir and args.out_dir):
        raise InputError("--task evaluate needs --model-path, --tokens-dir and --out-dir")
    model = load_model(require_file(args.model_path, "--model-path"))
    tokens = Path(args.tokens_dir)
    ds = TokenDataset(require_file(tokens / "tokens.npz", "transfer tokens"))
    if ds.n_bins != model.config.n_bins:
        raise InputError(f"{tokens / 'tokens.npz'}: n_bins={ds.n_bins}, the model has {model.config.n_bins}")
    cells = read_h5ad(require_file(tokens / "cells.h5ad", "transfer cells"))
    res = tf.transfer_annotation(model, ds, cells, list(model.vocab), args.protocol, args.n_splits, args.seed,
                                 args.n_boot)
    kind = model.config.attention
    table = res["table"].assign(dataset=args.name, model=kind, protocol=args.protocol)
    out = Path(args.out_dir)
    write_tsv(table, out / "annotation.tsv", "%.6g")
    write_tsv(res["predictions"], out / "predictions.tsv")
    emb = tf.embeddings_adata(ds, res["predictions"], res["embeddings"], kind)
    with atomic_path(out / "embeddings.h5ad") as tmp:
        emb.write_h5ad(tmp)
    write_json(out / "report.json", res["details"] | {"dataset": args.name, "model": str(args.model_path),
                                                      "seconds": round(time.time() - t0, 1)})
    best = table.loc[table["method"] == MODEL_METHOD, "macro_f1"]
    log.info("transfer %s (%s): macro-F1 %.3f\n%s", args.name, kind, float(best.iloc[0]),
             table[["method", "macro_f1", "ci_low", "ci_high"]].to_string(index=False))


def run_table(args: argparse.Namespace) -> None:
    """``--task table``: every ``--inputs`` annotation.tsv in one CSV (``--out``) and its Markdown twin.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser`.

    Raises
    ------
    InputError
        ``--out`` not given, or an ``--inputs`` file missing.
    """
    if not args.out:
        raise InputError("--task table needs --out")
    frames = [pd.read_csv(require_file(p, "annotation table"), sep="\t") for p in args.inputs]
    table = tf.transfer_table(frames)
    out = Path(args.out)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(out.with_suffix(".md")) as tmp:
        Path(tmp).write_text(table.to_markdown(index=False, floatfmt=".3f") + "\n")


def run(args: argparse.Namespace) -> None:
    """``cellgraph transfer``: the step named by ``--task`` (module docstring). Raises InputError on bad input,
    before anything is written."""
    if args.n_splits < 2 and args.protocol == "cross_validation":
        raise InputError(f"--n-splits must be >= 2 for cross-validation, got {args.n_splits}")
    if args.n_boot < 1:
        raise InputError(f"--n-boot must be >= 1, got {args.n_boot}")
    {"tokens": run_tokens, "evaluate": run_evaluate, "table": run_table}[args.task](args)
