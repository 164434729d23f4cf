r"""Per-cell rank tokens and cell subgraphs (GREmLN, Zhang et al. 2025, section 3 and eqs. 1-3).

For every cell:

1. **Rank bins.** Among the cell's *expressed* vocabulary genes (``adata.X > 0``, ``m`` of them), gene
   ``g`` gets the per-cell quantile bin ``ceil(n_bins * F(x_g))`` where ``F(x) = #{expressed genes with
   expression <= x} / m`` is the cell's empirical CDF: bins lie in ``1..n_bins``, are monotone in
   expression, equal for tied expression, and the most expressed gene is in bin ``n_bins``. Genes that
   are not expressed get bin 0.
2. **Gene selection.** The expressed genes plus their neighbours in the cell's graph, ordered by
   expression (highest first; ties, including the unexpressed neighbours, broken by a per-cell random
   key drawn from ``numpy.random.default_rng([seed, obs position])``, so the order does not depend on
   which other cells are tokenized) and capped at ``max_seq_len`` tokens. Tokens are stored in that order.
3. **Subgraph.** The cell's graph induced on its selected genes, as local token positions (both
   directions of every undirected edge, sorted).

**Graph of a cell.** ``train`` cells use the network of their own cell type (edge weight = mutual
information). ``val``, ``test`` and ``heldout`` cells use the Bayesian graph integration of GREmLN
(eqs. 1-3): a k-nearest-neighbour classifier (scikit-learn ``KNeighborsClassifier``) fitted on the train
cells in the space of a PCA of ``X`` over the highly variable genes (PCA fitted on train cells) gives
class probabilities :math:`w_c` over the train cell types; an edge :math:`e` of any cell-type network
gets

.. math:: p(e) = \sum_c w_c \, \Pr(e \notin G_c)

and is kept iff :math:`p(e) \le \alpha`. **Choice:** :math:`\Pr(e \notin G_c)` is the edge's
consolidation ``pvalue`` in :math:`G_c` from ``networks.tsv.gz`` (the probability that the edge's
bootstrap support arose by chance), and 1 when the edge is absent from :math:`G_c` (a train cell type
without a network counts as an empty network). The weight of a kept edge is the posterior expected mutual
information :math:`\sum_c w_c \, \mathrm{MI}_c(e)` (0 where absent).

Edges are undirected: a (source, target) pair and its reverse are one edge; if a network lists both,
the smaller p-value and the larger MI are used (counted in the report). Self-loops are dropped (counted).

**Vocabulary.** The genes of the union of the cell-type networks that are in ``adata.var_names``, plus the
highly variable genes of the adata, sorted by symbol, from token id 2 (0 = ``<pad>``, 1 = ``<cls>``).
Expression is read from ``adata.X`` (log1p of normalised counts).

Outputs (docs/design.md section 5): ``vocab.tsv``, ``{train,val,test,heldout}.npz``, ``report.json``, and
``train_integrated.npz``: the train cells tokenized with the Bayesian-integration graph (leave-one-out kNN)
instead of their own type's network. Training uses ``train.npz``; the evaluation's probes are fitted on
``train_integrated.npz``, because the own-type graph puts type-specific network genes into a train cell's
tokens, a label leak that test cells (integration graphs) do not have.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data import CLS_TOKEN, PAD_TOKEN, SHARD_KEYS, bin_special_ids, read_vocab
from .errors import InputError
from .io import atomic_path, require_file, write_json

log = logging.getLogger(__name__)

__all__ = [
    "SPLITS",
    "expression_bins",
    "select_genes",
    "integration_pvalues",
    "tokenize_cells",
    "write_shard",
    "read_vocab",
    "bin_special_ids",
]

SPLITS = ("train", "val", "test", "heldout")
# train cells tokenized with the Bayesian-integration graph, as unseen cells are: the evaluation probes
# fit on these, so train and test embeddings come from the same inference-time procedure
INFERENCE_SHARD = "train_integrated"
NETWORK_COLUMNS = ("cell_type", "source", "target", "mi", "pvalue")
N_PCS = 50  # PCA components for the kNN classifier of the graph integration

Graph = tuple[np.ndarray, np.ndarray, np.ndarray]  # (u, v, weight): vocab gene indices, u < v, unique


# --------------------------------------------------------------------------------------------------
# Per-cell pieces
# --------------------------------------------------------------------------------------------------


def expression_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-cell quantile bins of expression values (GREmLN section 3, rank-based value tokens).

    Parameters
    ----------
    values : float array [N]
        Expression of N genes in one cell (log-normalised; >= 0).
    n_bins : int
        Number of expression bins (>= 2).

    Returns
    -------
    int16 array [N]: 0 where ``values <= 0``; otherwise ``ceil(n_bins * F(v))`` in ``1..n_bins`` with
    ``F`` the empirical CDF of the expressed values (ties share a bin; the maximum is in bin ``n_bins``).

    Raises
    ------
    ValueError
        If ``n_bins < 2``.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    values = np.asarray(values)
    out = np.zeros(values.shape, dtype=np.int16)
    expressed = values > 0
    m = int(expressed.sum())
    if m:
        v = values[expressed]
        rank_max = np.searchsorted(np.sort(v), v, side="right").astype(np.int64)  # m * F(v)
        out[expressed] = (n_bins * rank_max + m - 1) // m
    return out


def select_genes(
    expressed: np.ndarray, expr: np.ndarray, graph: Graph, n_genes: int, max_seq_len: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Genes of one cell: the expressed genes and their graph neighbours, capped by expression.

    Parameters
    ----------
    expressed : int array [m]
        Vocabulary gene indices (0-based over the genes, no specials) with expression > 0.
    expr : float array [m]
        Their expression.
    graph : (u, v, w)
        The cell's undirected graph over gene indices (u < v, unique).
    n_genes : int
        Number of vocabulary genes G.
    max_seq_len : int
        Cap on the number of selected genes.
    rng : numpy Generator
        Draws one tie-breaking key per vocabulary gene.

    Returns
    -------
    (selected [n] gene indices in token order, their expression [n], truncated: bool)
    """
    u, v, _ = graph
    isexp = np.zeros(n_genes, dtype=bool)
    isexp[expressed] = True
    neighbours = np.concatenate([v[isexp[u]], u[isexp[v]]])
    cand = np.union1d(expressed, neighbours)
    cand_expr = np.zeros(cand.shape[0], dtype=np.float32)
    cand_expr[np.searchsorted(cand, expressed)] = expr
    key = rng.random(n_genes)[cand]
    order = np.lexsort((key, -cand_expr))[:max_seq_len]
    return cand[order], cand_expr[order], cand.shape[0] > max_seq_len


def induced_subgraph(selected: np.ndarray, graph: Graph, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges of ``graph`` among ``selected`` genes as local positions, both directions, sorted.

    Returns
    -------
    (edge_index int32 [2, 2k], edge_weight float32 [2k]) for the k undirected edges among the selection.
    """
    u, v, w = graph
    pos = np.full(n_genes, -1, dtype=np.int64)
    pos[selected] = np.arange(selected.shape[0])
    pu, pv = pos[u], pos[v]
    keep = (pu >= 0) & (pv >= 0)
    src = np.concatenate([pu[keep], pv[keep]])
    dst = np.concatenate([pv[keep], pu[keep]])
    ww = np.concatenate([w[keep], w[keep]])
    order = np.lexsort((dst, src))
    return np.vstack([src[order], dst[order]]).astype(np.int32), ww[order].astype(np.float32)


def _tokenize_core(
    x: sp.csr_matrix, obs_pos: np.ndarray, graph_of: Callable[[int], Graph], n_bins: int, max_seq_len: int,
    seed: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tokenize the rows of ``x`` (cells x vocabulary genes, CSR). Returns (arrays, truncated flags [C])."""
    n_cells, n_genes = x.shape
    gene_ptr = np.zeros(n_cells + 1, dtype=np.int64)
    edge_ptr = np.zeros(n_cells + 1, dtype=np.int64)
    ids, bins, exprs, eis, ews = [], [], [], [], []
    truncated = np.zeros(n_cells, dtype=bool)
    for j in range(n_cells):
        lo, hi = x.indptr[j], x.indptr[j + 1]
        idx, val = x.indices[lo:hi], x.data[lo:hi]
        pos = val > 0
        idx, val = idx[pos], val[pos]
        graph = graph_of(j)
        rng = np.random.default_rng([int(seed), int(obs_pos[j])])
        sel, sel_expr, truncated[j] = select_genes(idx, val, graph, n_genes, max_seq_len, rng)
        cell_bins = np.zeros(n_genes, dtype=np.int16)
        cell_bins[idx] = expression_bins(val, n_bins)
        ei, ew = induced_subgraph(sel, graph, n_genes)
        ids.append(sel)
        bins.append(cell_bins[sel])
        exprs.append(sel_expr)
        eis.append(ei)
        ews.append(ew)
        gene_ptr[j + 1] = gene_ptr[j] + sel.shape[0]
        edge_ptr[j + 1] = edge_ptr[j] + ei.shape[1]
    arrays = {
        "gene_ptr": gene_ptr,
        "gene_ids": (np.concatenate(ids) + 2 if ids else np.zeros(0)).astype(np.int32),
        "bins": (np.concatenate(bins) if bins else np.zeros(0)).astype(np.int16),
        "expr": (np.concatenate(exprs) if exprs else np.zeros(0)).astype(np.float32),
        "edge_ptr": edge_ptr,
        "edge_index": (np.concatenate(eis, axis=1) if eis else np.zeros((2, 0))).astype(np.int32),
        "edge_weight": (np.concatenate(ews) if ews else np.zeros(0)).astype(np.float32),
        "n_bins": np.asarray(n_bins, dtype=np.int64),
        "max_seq_len": np.asarray(max_seq_len, dtype=np.int64),
    }
    return arrays, truncated


def _canonical_edges(
    u: np.ndarray, v: np.ndarray, w: np.ndarray, n_genes: int, combine: str = "max"
) -> tuple[Graph, dict[str, int]]:
    """Undirected, unique edges (u < v) without self-loops; duplicates keep the max (or min) of ``w``."""
    keep = u != v
    counts = {"self_loops": int((~keep).sum())}
    a, b, w = np.minimum(u, v)[keep], np.maximum(u, v)[keep], np.asarray(w, dtype=np.float64)[keep]
    key = a.astype(np.int64) * n_genes + b
    order = np.lexsort((w if combine == "max" else -w, key))
    key, a, b, w = key[order], a[order], b[order], w[order]
    last = np.r_[key[1:] != key[:-1], True] if key.size else np.zeros(0, dtype=bool)
    counts["duplicates"] = int((~last).sum())
    return (a[last].astype(np.int64), b[last].astype(np.int64), w[last]), counts


def _label_key(adata) -> str:
    try:
        key = str(adata.uns["cellgraph"]["label_key"])
    except (KeyError, TypeError) as err:
        raise InputError("adata: uns['cellgraph']['label_key'] is missing (written by cellgraph expression)") from err
    if key not in adata.obs.columns:
        raise InputError(f"adata: obs[{key!r}] (the label key from uns['cellgraph']) is missing")
    return key


def _vocab_columns(adata, vocab: Sequence[str]) -> np.ndarray:
    if list(vocab[:2]) != [PAD_TOKEN, CLS_TOKEN]:
        raise ValueError(f"vocab must start with {PAD_TOKEN!r}, {CLS_TOKEN!r} (as read_vocab returns)")
    cols = adata.var_names.get_indexer(pd.Index(list(vocab[2:])))
    if (cols < 0).any():
        missing = [g for g, c in zip(vocab[2:], cols) if c < 0]
        raise InputError(f"adata: {len(missing)} vocabulary genes are not in var_names, e.g. {missing[:5]}")
    return cols


def _rows(adata, cells: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
    x = adata.X[cells]
    x = sp.csr_matrix(x) if not sp.issparse(x) else x.tocsr()
    x = x[:, cols].tocsr()
    x.sort_indices()
    return x


def tokenize_cells(
    adata, cells, cell_graphs, vocab: Sequence[str], n_bins: int, max_seq_len: int, seed: int,
    stats: dict | None = None,
) -> dict[str, np.ndarray]:
    """Tokens and subgraphs of the given cells, as the shard arrays of docs/design.md section 5.

    Parameters
    ----------
    adata : AnnData
        ``X`` log-normalised expression [cells, genes]; ``obs["split"]`` and the label column
        ``obs[uns["cellgraph"]["label_key"]]``.
    cells : int array [C]
        Obs positions of the cells to tokenize (shard order).
    cell_graphs : DataFrame or Mapping[int, DataFrame]
        Edge table(s) with columns ``source, target, weight``: one for all cells, or one per cell
        (keyed by obs position). Edges are undirected; edges with a gene outside the vocabulary are
        dropped and counted in ``stats["graph_edges_outside_vocab"]``.
    vocab : list[str]
        ``["<pad>", "<cls>", genes...]`` as :func:`cellgraph.data.read_vocab` returns.
    n_bins, max_seq_len, seed : int
        Expression bins (>= 2), token cap per cell (>= 1), seed of the tie-breaking keys.
    stats : dict, optional
        Filled with ``truncated`` (bool [C]: more candidate genes than ``max_seq_len``) and
        ``graph_edges_outside_vocab`` (int).

    Returns
    -------
    dict of numpy arrays: ``obs_names, cell_type, split, gene_ptr, gene_ids, bins, expr, edge_ptr,
    edge_index, edge_weight, n_bins, max_seq_len``.

    Raises
    ------
    ValueError
        On ``n_bins < 2``, ``max_seq_len < 1``, a malformed vocab, or a cell without a graph.
    InputError
        If a vocabulary gene is not in ``adata.var_names`` or the adata lacks its label/split columns.
    """
    if n_bins < 2 or max_seq_len < 1:
        raise ValueError(f"need n_bins >= 2 and max_seq_len >= 1, got {n_bins}, {max_seq_len}")
    cells = np.asarray(cells, dtype=np.int64).reshape(-1)
    cols = _vocab_columns(adata, vocab)
    gene_index = {g: i for i, g in enumerate(vocab[2:])}
    n_genes = len(gene_index)
    label_key = _label_key(adata)
    if "split" not in adata.obs.columns:
        raise InputError("adata: obs['split'] is missing")
    outside = 0
    cache: dict[int, Graph] = {}

    def convert(df: pd.DataFrame) -> Graph:
        nonlocal outside
        if id(df) not in cache:
            missing = {"source", "target", "weight"} - set(df.columns)
            if missing:
                raise ValueError(f"cell graph table lacks columns {sorted(missing)}")
            u = df["source"].map(gene_index).to_numpy(dtype=float, na_value=np.nan)
            v = df["target"].map(gene_index).to_numpy(dtype=float, na_value=np.nan)
            ok = ~(np.isnan(u) | np.isnan(v))
            outside += int((~ok).sum())
            cache[id(df)], _ = _canonical_edges(
                u[ok].astype(np.int64), v[ok].astype(np.int64), df["weight"].to_numpy(float)[ok], n_genes
            )
        return cache[id(df)]

    if isinstance(cell_graphs, pd.DataFrame):
        shared = convert(cell_graphs)
        graph_of = lambda j: shared  # noqa: E731
    else:
        absent = [int(c) for c in cells if int(c) not in cell_graphs]
        if absent:
            raise ValueError(f"cell_graphs has no graph for {len(absent)} cells, e.g. obs positions {absent[:5]}")
        graphs = [convert(cell_graphs[int(c)]) for c in cells]
        graph_of = graphs.__getitem__
    arrays, truncated = _tokenize_core(_rows(adata, cells, cols), cells, graph_of, n_bins, max_seq_len, seed)
    arrays.update(_obs_arrays(adata, cells, label_key))
    if stats is not None:
        stats["truncated"] = truncated
        stats["graph_edges_outside_vocab"] = outside
    return {k: arrays[k] for k in SHARD_KEYS}


def _obs_arrays(adata, cells: np.ndarray, label_key: str) -> dict[str, np.ndarray]:
    return {
        "obs_names": np.array(adata.obs_names[cells], dtype=str),
        "cell_type": np.array(adata.obs[label_key].astype(str).to_numpy()[cells], dtype=str),
        "split": np.array(adata.obs["split"].astype(str).to_numpy()[cells], dtype=str),
    }


# --------------------------------------------------------------------------------------------------
# Bayesian graph integration (GREmLN eqs. 1-3)
# --------------------------------------------------------------------------------------------------


def integration_pvalues(class_probs: np.ndarray, absent_prob: np.ndarray) -> np.ndarray:
    """``p(e) = sum_c w_c Pr(e not in G_c)`` (GREmLN eq. 2).

    Parameters
    ----------
    class_probs : float array [C, T]
        ``w_c``: the kNN class probabilities of C cells over T cell types (rows sum to 1).
    absent_prob : float array [T, E]
        ``Pr(e not in G_c)`` of E candidate edges in each type's network (the edge's p-value; 1 if absent).

    Returns
    -------
    float array [C, E]; an edge is kept for a cell iff its value is ``<= alpha`` (eq. 3).

    Raises
    ------
    ValueError
        On mismatched shapes or probabilities outside [0, 1].
    """
    w = np.asarray(class_probs, dtype=np.float64)
    pr = np.asarray(absent_prob, dtype=np.float64)
    if w.ndim != 2 or pr.ndim != 2 or w.shape[1] != pr.shape[0]:
        raise ValueError(f"class_probs [C, T] and absent_prob [T, E] do not match: {w.shape}, {pr.shape}")
    if (w < 0).any() or (w > 1).any() or (pr < 0).any() or (pr > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return w @ pr


# --------------------------------------------------------------------------------------------------
# Shard output
# --------------------------------------------------------------------------------------------------


def _leave_one_out_proba(knn, x_pca: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """kNN class probabilities [C, T] of the classifier's own training cells, each without itself.

    ``x_pca`` [C, p] and ``labels`` [C] must be the rows ``knn`` was fitted on, in order; the nearest
    ``k + 1`` neighbours are queried and the cell itself dropped (uniform weights, as ``predict_proba``);
    with only ``k`` cells, each votes with its ``k - 1`` others.
    """
    if x_pca.shape[0] == 0:
        return np.zeros((0, len(classes)))
    if x_pca.shape[0] == 1:  # a lone train cell has no other cell: it keeps its own label
        return (np.asarray(classes) == labels[0]).astype(float)[None, :]
    k = min(knn.n_neighbors, x_pca.shape[0] - 1)
    neighbours = knn.kneighbors(x_pca, n_neighbors=k + 1, return_distance=False)
    own = np.arange(x_pca.shape[0])
    rows = []
    for i in range(x_pca.shape[0]):  # drop the cell itself wherever ties placed it
        nb = neighbours[i]
        nb = nb[nb != own[i]][:k]
        rows.append(nb)
    nb = np.stack(rows)
    cls = np.searchsorted(np.asarray(classes), labels)
    probs = np.zeros((x_pca.shape[0], len(classes)))
    np.add.at(probs, (np.repeat(own, k), cls[nb].ravel()), 1.0 / k)
    return probs


def write_shard(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write shard arrays as an ``.npz`` (readable by ``numpy.load``), atomically and byte-reproducibly.

    ``numpy.savez`` stamps the current time into the zip entries; here every entry has a fixed date so the
    same arrays give the same bytes.
    """
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for key in SHARD_KEYS:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adata", required=True, help="expression stage output (adata.h5ad)")
    p.add_argument("--networks", required=True, help="grn networks table (networks.tsv.gz)")
    p.add_argument("--out-dir", required=True, help="folder for vocab.tsv, {train,val,test,heldout}.npz, report.json")
    p.add_argument("--seed", type=int, default=0, help="seed of tie-breaking keys (default 0)")
    p.add_argument("--n-bins", type=int, default=100, help="expression rank bins (default 100)")
    p.add_argument("--max-seq-len", type=int, default=128, help="gene tokens per cell at most (default 128)")
    p.add_argument("--integration-alpha", type=float, default=0.05,
                   help="Bayesian graph integration: keep an edge iff p(e) <= alpha (default 0.05)")
    p.add_argument("--knn-k", type=int, default=15, help="neighbours of the kNN cell-type classifier (default 15)")


def _check_args(args: argparse.Namespace) -> None:
    if args.n_bins < 2 or args.n_bins + 3 > np.iinfo(np.int16).max:
        raise InputError(f"--n-bins: expected an integer in [2, {np.iinfo(np.int16).max - 3}], got {args.n_bins}")
    if args.max_seq_len < 1:
        raise InputError(f"--max-seq-len: expected an integer >= 1, got {args.max_seq_len}")
    if not 0.0 <= args.integration_alpha <= 1.0:
        raise InputError(f"--integration-alpha: expected a number in [0, 1], got {args.integration_alpha}")
    if args.knn_k < 1:
        raise InputError(f"--knn-k: expected an integer >= 1, got {args.knn_k}")


def _read_adata(path: Path):
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - any read failure is the user's file
        raise InputError(f"{path}: cannot be read as an h5ad file ({err})") from err
    if "split" not in adata.obs.columns:
        raise InputError(f"{path}: obs['split'] is missing (expected values {list(SPLITS)})")
    bad = sorted(set(adata.obs["split"].astype(str)) - set(SPLITS))
    if bad:
        raise InputError(f"{path}: obs['split'] has values {bad[:5]}; expected only {list(SPLITS)}")
    try:
        _label_key(adata)
    except InputError as err:
        raise InputError(f"{path}: {err}") from err
    if not adata.var_names.is_unique:
        raise InputError(f"{path}: var_names are not unique")
    if "highly_variable" not in adata.var.columns:
        raise InputError(f"{path}: var['highly_variable'] is missing")
    data = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if not np.all(np.isfinite(data)) or (data < 0).any():
        raise InputError(f"{path}: X must be finite and non-negative (log-normalised expression)")
    if not (adata.obs["split"].astype(str) == "train").any():
        raise InputError(f"{path}: obs['split'] has no 'train' cells")
    return adata


def _read_networks(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep="\t", dtype={"cell_type": str, "source": str, "target": str})
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: cannot be read as a tab-separated table ({err})") from err
    missing = [c for c in NETWORK_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}; expected {list(NETWORK_COLUMNS)}")
    for col in ("cell_type", "source", "target"):
        if df[col].isna().any():
            line = int(np.flatnonzero(df[col].isna().to_numpy())[0]) + 2
            raise InputError(f"{path}: line {line}: field {col!r} is empty")
    for col in ("mi", "pvalue"):
        x = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        lo = 0.0
        hi = 1.0 if col == "pvalue" else np.inf
        bad = ~(np.isfinite(x) & (x >= lo) & (x <= hi))
        if bad.any():
            line = int(np.flatnonzero(bad)[0]) + 2
            what = "a probability in [0, 1]" if col == "pvalue" else "a finite number >= 0"
            raise InputError(f"{path}: line {line}: field {col!r} = {df[col].iloc[line - 2]!r}; expected {what}")
        df[col] = x
    return df


def _write_vocab(path: Path, vocab: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("token_id\tgene\n" + "".join(f"{i}\t{g}\n" for i, g in enumerate(vocab)))


def _summary(arrays: Mapping[str, np.ndarray], truncated: np.ndarray) -> dict[str, Any]:
    n_tok = np.diff(arrays["gene_ptr"])
    n_edge = np.diff(arrays["edge_ptr"]) // 2
    if n_tok.size == 0:
        return {"cells": 0}
    return {
        "cells": int(n_tok.size),
        "tokens_per_cell": {"mean": float(n_tok.mean()), "min": int(n_tok.min()), "max": int(n_tok.max())},
        "edges_per_cell": {"mean": float(n_edge.mean()), "min": int(n_edge.min()), "max": int(n_edge.max())},
        "cells_truncated_at_max_seq_len": int(truncated.sum()),
        "cells_without_tokens": int((n_tok == 0).sum()),
        "cells_without_edges": int((n_edge == 0).sum()),
        "expressed_token_fraction": float((arrays["bins"] > 0).mean()) if arrays["bins"].size else 0.0,
    }


def run(args: argparse.Namespace) -> None:
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    t_start = time.perf_counter()
    _check_args(args)
    adata_path = require_file(args.adata, "adata")
    net_path = require_file(args.networks, "grn networks")
    adata = _read_adata(adata_path)
    networks = _read_networks(net_path)
    label_key = _label_key(adata)

    # ---- gene universe: network genes present in the adata, plus HVGs
    var_index = adata.var_names
    net_genes = pd.Index(pd.unique(np.concatenate([networks["source"].to_numpy(str),
                                                   networks["target"].to_numpy(str)])))
    net_in = net_genes[net_genes.isin(var_index)]
    net_out = sorted(net_genes[~net_genes.isin(var_index)])
    if len(net_in) == 0 and len(net_genes):
        raise InputError(
            f"{net_path}: no gene of the networks is in {adata_path} var_names "
            f"(networks genes e.g. {list(net_genes[:5])}, adata genes e.g. {list(var_index[:5])})"
        )
    hvg = var_index[adata.var["highly_variable"].to_numpy(bool)]
    if len(hvg) == 0:
        raise InputError(f"{adata_path}: var['highly_variable'] marks no gene (the kNN classifier needs HVGs)")
    genes = sorted(set(net_in) | set(hvg))
    vocab = [PAD_TOKEN, CLS_TOKEN] + genes
    gene_index = {g: i for i, g in enumerate(genes)}
    n_genes = len(genes)

    # ---- per-type networks: drop rows with genes outside the adata, canonical undirected edges
    row_ok = networks["source"].isin(var_index).to_numpy() & networks["target"].isin(var_index).to_numpy()
    net = networks[row_ok]
    types = sorted(net["cell_type"].unique())
    u_all = net["source"].map(gene_index).to_numpy(np.int64)
    v_all = net["target"].map(gene_index).to_numpy(np.int64)
    type_of_row = net["cell_type"].to_numpy(str)
    per_type: dict[str, dict[str, np.ndarray]] = {}
    dup_counts = {"self_loops": 0, "duplicates": 0}
    for t in types:
        m = type_of_row == t
        (a, b, pv), c1 = _canonical_edges(u_all[m], v_all[m], net["pvalue"].to_numpy()[m], n_genes, "min")
        (_, _, mi), _ = _canonical_edges(u_all[m], v_all[m], net["mi"].to_numpy()[m], n_genes, "max")
        per_type[t] = {"key": a * n_genes + b, "pvalue": pv, "mi": mi}
        for k in dup_counts:
            dup_counts[k] += c1[k]
    cand_key = np.unique(np.concatenate([d["key"] for d in per_type.values()])) if per_type else np.zeros(0, np.int64)
    cand_u, cand_v = cand_key // n_genes, cand_key % n_genes

    # ---- cells per split
    split = adata.obs["split"].astype(str).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    train = np.flatnonzero(split == "train")
    train_types = sorted(set(labels[train]))
    # Pr(e not in G_c) and MI per train type over the candidate edges (types without a network: empty)
    absent = np.ones((len(train_types), cand_key.size))
    mi_mat = np.zeros((len(train_types), cand_key.size))
    for i, t in enumerate(train_types):
        if t in per_type:
            loc = np.searchsorted(cand_key, per_type[t]["key"])
            absent[i, loc] = per_type[t]["pvalue"]
            mi_mat[i, loc] = per_type[t]["mi"]
    types_without_network = [t for t in train_types if t not in per_type]
    networks_without_train_cells = [t for t in types if t not in set(train_types)]

    # ---- kNN classifier on a PCA of the HVGs (fitted on train cells)
    x_hvg = adata[:, hvg].X
    x_hvg = x_hvg.toarray() if sp.issparse(x_hvg) else np.asarray(x_hvg)
    x_hvg = x_hvg.astype(np.float64)
    if args.knn_k > train.size:
        raise InputError(f"--knn-k: {args.knn_k} neighbours but only {train.size} train cells in {adata_path}")
    n_pcs = int(max(1, min(N_PCS, train.size - 1, x_hvg.shape[1])))
    pca = PCA(n_components=n_pcs, svd_solver="covariance_eigh", random_state=args.seed).fit(x_hvg[train])
    knn = KNeighborsClassifier(n_neighbors=args.knn_k).fit(pca.transform(x_hvg[train]), labels[train])

    out = Path(args.out_dir)
    shards: dict[str, dict[str, np.ndarray]] = {}
    split_reports: dict[str, Any] = {}
    integration: dict[str, Any] = {"candidate_edges": int(cand_key.size), "alpha": args.integration_alpha}
    knn_accuracy: dict[str, float | None] = {}
    kept_any = np.zeros(cand_key.size, dtype=bool)
    kept_per_cell: list[np.ndarray] = []
    t_tok = time.perf_counter()
    for s in (*SPLITS, INFERENCE_SHARD):
        cells = np.flatnonzero(split == ("train" if s == INFERENCE_SHARD else s))
        x = _rows(adata, cells, adata.var_names.get_indexer(genes))
        if s == "train":
            type_graphs: dict[str, Graph] = {}
            for t in train_types:
                if t in per_type:
                    k = per_type[t]["key"]
                    type_graphs[t] = (k // n_genes, k % n_genes, per_type[t]["mi"])
                else:
                    type_graphs[t] = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
            cell_graph = [type_graphs[labels[c]] for c in cells]
            graph_of = cell_graph.__getitem__
        else:
            if s == INFERENCE_SHARD:  # train cells as if unseen: leave-one-out kNN (a cell is not its own neighbour)
                probs = _leave_one_out_proba(knn, pca.transform(x_hvg[cells]), labels[cells], train_types)
            elif cells.size:
                probs = knn.predict_proba(pca.transform(x_hvg[cells]))
            else:
                probs = np.zeros((0, len(train_types)))
            if s in ("val", "test") and cells.size:
                pred = np.asarray(train_types)[probs.argmax(1)]
                knn_accuracy[s] = float((pred == labels[cells]).mean())
            kept_n = np.zeros(cells.size, dtype=np.int64)

            def graph_of(j: int, probs=probs, kept_n=kept_n) -> Graph:
                p = integration_pvalues(probs[j : j + 1], absent)[0]
                keep = p <= args.integration_alpha
                kept_n[j] = keep.sum()
                kept_any[keep] = True
                return cand_u[keep], cand_v[keep], probs[j] @ mi_mat[:, keep]

        arrays, truncated = _tokenize_core(x, cells, graph_of, args.n_bins, args.max_seq_len, args.seed)
        arrays.update(_obs_arrays(adata, cells, label_key))
        shards[s] = {k: arrays[k] for k in SHARD_KEYS}
        split_reports[s] = _summary(arrays, truncated)
        if s != "train":
            split_reports[s]["integration_edges_kept_per_cell"] = (
                {"mean": float(kept_n.mean()), "min": int(kept_n.min()), "max": int(kept_n.max())}
                if cells.size else None
            )
            if s != INFERENCE_SHARD:
                kept_per_cell.append(kept_n)
    t_tok = time.perf_counter() - t_tok
    kept_all = np.concatenate(kept_per_cell) if kept_per_cell else np.zeros(0)
    integration.update({
        "cells": int(kept_all.size),
        "edges_kept_per_cell_mean": float(kept_all.mean()) if kept_all.size else None,
        "fraction_of_candidate_edges_kept_per_cell": (
            float(kept_all.mean() / cand_key.size) if kept_all.size and cand_key.size else None),
        "distinct_edges_kept_in_any_cell": int(kept_any.sum()),
        "pr_edge_absent": "pvalue of the edge in the cell type's network (1 if absent)",
        "edge_weight": "sum_c w_c * mi_c(e)",
    })
    expressed_outside = adata.X[:, ~adata.var_names.isin(genes)]
    n_expr_outside = np.diff(sp.csr_matrix(expressed_outside).indptr) if sp.issparse(expressed_outside) else \
        (np.asarray(expressed_outside) > 0).sum(1)

    report = {
        "inputs": {"adata": str(adata_path), "networks": str(net_path)},
        "parameters": {"seed": args.seed, "n_bins": args.n_bins, "max_seq_len": args.max_seq_len,
                       "integration_alpha": args.integration_alpha, "knn_k": args.knn_k, "n_pcs": n_pcs},
        "label_key": label_key,
        "cells_per_split": {s: int(shards[s]["obs_names"].size) for s in SPLITS},
        "splits": split_reports,
        "vocab": {
            "genes": n_genes,
            "network_genes_in_adata": int(len(net_in)),
            "hvgs": int(len(hvg)),
            "hvgs_not_in_networks": int(len(set(hvg) - set(net_in))),
            "adata_genes_not_in_vocab": int(adata.n_vars - n_genes),
            "mean_expressed_genes_per_cell_not_in_vocab": float(np.mean(n_expr_outside)),
            "network_genes_not_in_adata": len(net_out),
            "network_genes_not_in_adata_names": net_out[:50],
        },
        "networks": {
            "rows": int(len(networks)),
            "rows_dropped_gene_not_in_adata": int((~row_ok).sum()),
            "self_loops_dropped": dup_counts["self_loops"],
            "duplicate_undirected_edges_merged": dup_counts["duplicates"],
            "cell_types": types,
            "edges_per_type": {t: int(per_type[t]["key"].size) for t in types},
            "train_types_without_network": types_without_network,
            "train_cells_of_types_without_network": int(np.isin(labels[train], types_without_network).sum()),
            "network_types_without_train_cells": networks_without_train_cells,
        },
        "integration": integration,
        "knn": {"classes": train_types, "accuracy": knn_accuracy},
    }
    # ---- write (everything validated above)
    for s in (*SPLITS, INFERENCE_SHARD):
        write_shard(out / f"{s}.npz", shards[s])
    _write_vocab(out / "vocab.tsv", vocab)
    write_json(out / "report.json", report)
    log.info("tokenized %d cells in %.1f s (whole stage %.1f s); vocab %d genes",
             sum(report["cells_per_split"].values()), t_tok, time.perf_counter() - t_start, n_genes)
