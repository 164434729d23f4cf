r"""Per-cell rank tokens and cell subgraphs (GREmLN, Zhang et al. 2025, section 3 and eqs. 1-3).

**Vocabulary.** The highly variable genes of the raw counts (``adata.layers["counts"]``) of the *train*
cells only, plus a pretraining corpus when one is given (scanpy ``highly_variable_genes(flavor="seurat_v3")``,
the data sets as ``batch_key``), ``--n-top-genes`` of them; with ARACNe graphs (``--graph aracne|union``)
the networks' genes that are in the adata join. Sorted by symbol, from token id 2 (0 = ``<pad>``,
1 = ``<cls>``). Validation, test and held-out cells never influence it.

For every cell:

1. **Rank bins.** Among the cell's *expressed* vocabulary genes (``adata.X > 0``, ``m`` of them) each gene
   gets a rank ``r`` in ``1..m`` by expression, ties broken by the cell's seeded keys
   (``numpy.random.default_rng([seed, obs position])``), and the bin ``ceil(n_bins * r / m)`` in
   ``1..n_bins`` (``--tie-break random``, rank-value encoding as Geneformer). Sparse 3' UMI counts tie:
   most expressed genes of a cell have one UMI, and with shared bins (``--tie-break shared``: tied values
   share ``ceil(n_bins * F(x))``) a masked token's bin could be copied from its visible tie group.
2. **Gene selection.** The expressed genes (plus, with ``--neighbours``, their unexpressed graph neighbours
   as bin-0 tokens), highest rank first, capped at ``max_seq_len`` tokens, stored in that order.
3. **Subgraph.** The cell's graph induced on its selected genes, as local token positions (both
   directions of every undirected edge, sorted).

**Graph of a cell** (``--graph``). ``prior``: one shared, unweighted graph for every cell, the union of the
networks stage's prior graphs (``--prior-graphs``: by default DoRothEA A-C, TRRUST, HuRI, STRING; with a
Pathway Commons input also ``pathway_commons_physical`` / ``_regulatory``) over the vocabulary.
``aracne``: ``train`` cells use the ARACNe network of their own cell type (edge weight = mutual
information); ``val``, ``test`` and ``heldout`` cells use the Bayesian graph integration of GREmLN
(eqs. 1-3): a k-nearest-neighbour classifier (scikit-learn ``KNeighborsClassifier``) fitted on the train
cells in the space of a PCA of ``X`` over the vocabulary genes (fitted on train cells) gives class
probabilities :math:`w_c` over the train cell types; an edge :math:`e` of any cell-type network gets

.. math:: p(e) = \sum_c w_c \, \Pr(e \notin G_c), \qquad
          \Pr(e \notin G_c) = 1 - \frac{\mathrm{count}_c(e) + 1}{B + 2}

(the edge's recurrence over the B ARACNe bootstraps, Laplace's rule; ``count = 0`` where absent) and is kept
iff :math:`p(e) \le \alpha`; a kept edge weighs :math:`\sum_c w_c \, \mathrm{MI}_c(e)`. ``union``: the
prior graph joined to the ``aracne`` graph of each cell.

**Hidden edges.** Before any cell is tokenized, ``--edge-holdout-fraction`` of all graph edges (prior and
ARACNe together) are drawn (seeded) and removed from every cell graph of every shard, so no model is
pretrained with them; ``graph_edges.tsv.gz`` lists every edge (``source, target, weight, hidden``) for the
hidden-edge recovery of the evaluation.

Edges are undirected: a (source, target) pair and its reverse are one edge (duplicates counted in the
report). Self-loops are dropped (counted). Expression for the bins and the ``expr`` arrays is ``adata.X``
(log1p of normalised counts).

Outputs (docs/design.md section 5): ``vocab.tsv``, ``{train,val,test,heldout}.npz``, ``train_integrated.npz``
(the train cells with the inference-time graph: the evaluation's probes are fitted on it, because an
own-type graph would be a label leak that test cells do not have), ``pretrain.npz`` (the unlabelled corpus of
``--pretrain-adata``, QC'd as the expression stage, with the shared prior graph; training only),
``graph_edges.tsv.gz`` and ``report.json``.

The stage in steps (each a public function; :mod:`cellgraph.cli.tokenize` runs them in this order from the
command line and writes the outputs): the options as one :class:`TokenizeParams`; :func:`read_adata`,
:func:`read_networks`, :func:`read_prior_edges`; the corpus opened backed by :func:`scan_corpus`;
:func:`stage_vocabulary`; :func:`build_stage_graphs` (graphs and hidden edges); :func:`tokenize_splits`
(labelled shards); :func:`tokenize_corpus_streamed` (``pretrain.npz``, written chunk by chunk, byte-identical
to the whole-corpus reference :func:`read_corpus` + :func:`tokenize_corpus` + :func:`write_shard`);
:func:`write_shard`, :func:`write_graph_edges`, :func:`write_vocab`.
"""

from __future__ import annotations

import gzip
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..io.shards import CLS_TOKEN, PAD_TOKEN, SHARD_KEYS, bin_special_ids, read_vocab
from ..errors import InputError
from ..io import atomic_path, read_h5ad

log = logging.getLogger(__name__)

__all__ = [
    "SPLITS",
    "TokenizeParams",
    "Vocabulary",
    "StageGraphs",
    "expression_bins",
    "select_genes",
    "integration_pvalues",
    "tokenize_cells",
    "write_shard",
    "read_vocab",
    "bin_special_ids",
    "read_adata",
    "read_networks",
    "read_prior_edges",
    "read_corpus",
    "scan_corpus",
    "adata_label_key",
    "stage_vocabulary",
    "build_stage_graphs",
    "tokenize_splits",
    "tokenize_corpus",
    "tokenize_corpus_streamed",
    "write_vocab",
    "write_graph_edges",
]

SPLITS = ("train", "val", "test", "heldout")
# train cells tokenized with the Bayesian-integration graph, as unseen cells are: the evaluation probes
# fit on these, so train and test embeddings come from the same inference-time procedure
INFERENCE_SHARD = "train_integrated"
# unlabelled cells of a pretraining corpus (--pretrain-adata): training only, never evaluated
PRETRAIN_SHARD = "pretrain"
PRETRAIN_STREAM = 1
NETWORK_COLUMNS = ("cell_type", "source", "target", "mi", "pvalue", "count")
N_PCS = 50  # PCA components for the kNN classifier of the graph integration
TIE_BREAKS = ("random", "shared")
GRAPHS = ("prior", "aracne", "union")

Graph = tuple[np.ndarray, np.ndarray, np.ndarray]  # (u, v, weight): vocab gene indices, u < v, unique


# --------------------------------------------------------------------------------------------------
# Per-cell pieces
# --------------------------------------------------------------------------------------------------


def expression_bins(values: np.ndarray, n_bins: int, key: np.ndarray | None = None) -> np.ndarray:
    """Per-cell quantile bins of expression values (GREmLN section 3, rank-based value tokens).

    Parameters
    ----------
    values : float array [N]
        Expression of N genes in one cell (log-normalised; >= 0).
    n_bins : int
        Number of expression bins (>= 2).
    key : float array [N], optional
        Tie-breaking keys. Without keys, tied values share a bin (``F`` counts all ties). With keys, the
        expressed genes are ranked by (value, key), so each expressed gene gets its own rank ``r`` in
        ``1..m`` (rank-value encoding as Geneformer, Theodoris et al. 2023) and the bin is
        ``ceil(n_bins * r / m)``: the bins of a cell's expressed genes are then spread evenly over
        ``1..n_bins`` and a tie group (sparse UMI counts: most expressed genes of a cell have 1 UMI) no
        longer shares one bin that a masked model could copy from its visible neighbours.

    Returns
    -------
    int16 array [N]: 0 where ``values <= 0``; otherwise ``ceil(n_bins * F(v))`` in ``1..n_bins`` with
    ``F`` the empirical CDF of the expressed values (the maximum is in bin ``n_bins``).

    Raises
    ------
    ValueError
        If ``n_bins < 2`` or ``key`` does not have the shape of ``values``.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    values = np.asarray(values)
    out = np.zeros(values.shape, dtype=np.int16)
    expressed = values > 0
    m = int(expressed.sum())
    if m:
        v = values[expressed]
        if key is None:
            rank_max = np.searchsorted(np.sort(v), v, side="right").astype(np.int64)  # m * F(v)
        else:
            key = np.asarray(key)
            if key.shape != values.shape:
                raise ValueError(f"key must have the shape of values {values.shape}, got {key.shape}")
            rank_max = np.empty(m, dtype=np.int64)
            rank_max[np.lexsort((key[expressed], v))] = np.arange(1, m + 1)
        out[expressed] = (n_bins * rank_max + m - 1) // m
    return out


def select_genes(
    expressed: np.ndarray, expr: np.ndarray, graph: Graph, n_genes: int, max_seq_len: int,
    rng: np.random.Generator, neighbours: bool = True, key: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Genes of one cell: the expressed genes (and, optionally, their graph neighbours), capped by expression.

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
        Draws one tie-breaking key per vocabulary gene (unless ``key`` is given).
    neighbours : bool
        Add the unexpressed graph neighbours of expressed genes (bin 0 tokens); False keeps expressed
        genes only, as the GREmLN paper's tokens.
    key : float array [G], optional
        Tie-breaking keys per vocabulary gene (the same keys as the cell's rank bins).

    Returns
    -------
    (selected [n] gene indices in token order, their expression [n], truncated: bool)
    """
    u, v, _ = graph
    if neighbours:
        isexp = np.zeros(n_genes, dtype=bool)
        isexp[expressed] = True
        cand = np.union1d(expressed, np.concatenate([v[isexp[u]], u[isexp[v]]]))
    else:
        cand = np.unique(expressed)
    cand_expr = np.zeros(cand.shape[0], dtype=np.float32)
    cand_expr[np.searchsorted(cand, expressed)] = expr
    key = (rng.random(n_genes) if key is None else np.asarray(key))[cand]
    order = np.lexsort((-key, -cand_expr))[:max_seq_len]
    return cand[order], cand_expr[order], cand.shape[0] > max_seq_len


def induced_subgraph(selected: np.ndarray, graph: Graph, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges of ``graph`` among ``selected`` genes as local positions, both directions, sorted.

    Parameters
    ----------
    selected : int array [n]
        The cell's selected vocabulary gene indices in token order (unique); local position = index here.
    graph : (u, v, w)
        The cell's undirected graph over vocabulary gene indices (u < v, unique).
    n_genes : int
        Number of vocabulary genes G (every index of ``selected`` and ``graph`` is below it).

    Returns
    -------
    (edge_index int32 [2, 2k], edge_weight float32 [2k]) for the k undirected edges among the selection,
    sorted by (source, target) position.
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
    seed: int, tie_break: str = "random", neighbours: bool = False, stream: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tokenize the rows of ``x`` (cells x vocabulary genes, CSR). Returns (arrays, truncated flags [C]).

    Cell ``j``'s keys come from ``default_rng([seed, obs_pos[j]])`` (``[seed, stream, obs_pos[j]]`` for
    ``stream > 0``, e.g. the cells of a pretraining corpus, whose positions restart at 0).
    """
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
        rng = np.random.default_rng([int(seed), int(obs_pos[j])] if stream == 0 else
                                    [int(seed), int(stream), int(obs_pos[j])])
        key = rng.random(n_genes)
        sel, sel_expr, truncated[j] = select_genes(idx, val, graph, n_genes, max_seq_len, rng,
                                                   neighbours=neighbours, key=key)
        cell_bins = np.zeros(n_genes, dtype=np.int16)
        cell_bins[idx] = expression_bins(val, n_bins, key[idx] if tie_break == "random" else None)
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


def adata_label_key(adata) -> str:
    """The obs column of the cell-type labels: ``adata.uns["cellgraph"]["label_key"]`` (the expression stage's).

    Parameters
    ----------
    adata : AnnData
        The expression stage's output.

    Returns
    -------
    str, a column of ``adata.obs``.

    Raises
    ------
    InputError
        If ``uns["cellgraph"]["label_key"]`` is missing or not an obs column.
    """
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
    stats: dict | None = None, tie_break: str = "random", neighbours: bool = False,
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
        ``["<pad>", "<cls>", genes...]`` as :func:`cellgraph.io.shards.read_vocab` returns.
    n_bins, max_seq_len, seed : int
        Expression bins (>= 2), token cap per cell (>= 1), seed of the tie-breaking keys.
    tie_break : {"random", "shared"}
        ``"random"``: every expressed gene of a cell gets its own rank, ties broken by the cell's seeded
        keys (:func:`expression_bins`); ``"shared"``: tied values share a bin.
    neighbours : bool
        Also add the unexpressed graph neighbours of expressed genes as bin-0 tokens.
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
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    cells = np.asarray(cells, dtype=np.int64).reshape(-1)
    cols = _vocab_columns(adata, vocab)
    gene_index = {g: i for i, g in enumerate(vocab[2:])}
    n_genes = len(gene_index)
    label_key = adata_label_key(adata)
    if "split" not in adata.obs.columns:
        raise InputError("adata: obs['split'] is missing")
    graph_of, outside = _cell_graph_lookup(cell_graphs, cells, gene_index, n_genes)
    arrays, truncated = _tokenize_core(_rows(adata, cells, cols), cells, graph_of, n_bins, max_seq_len, seed,
                                       tie_break, neighbours)
    arrays.update(_obs_arrays(adata, cells, label_key))
    if stats is not None:
        stats["truncated"] = truncated
        stats["graph_edges_outside_vocab"] = outside
    return {k: arrays[k] for k in SHARD_KEYS}


def _cell_graph_lookup(cell_graphs, cells: np.ndarray, gene_index: dict[str, int], n_genes: int):
    """Canonical vocabulary-indexed graphs of :func:`tokenize_cells`: (``graph_of(j)``, the graph of the
    ``j``-th cell of ``cells``; number of edges dropped for a gene outside the vocabulary).

    A table shared by many cells (the same DataFrame object) is converted once. Raises ValueError on a table
    without ``source, target, weight`` columns or a cell without a graph."""
    outside = 0
    cache: dict[int, Graph] = {}

    def convert(df: pd.DataFrame) -> Graph:
        """Edge table -> canonical graph over vocabulary indices (:func:`_canonical_edges`), cached by
        table object; counts the edges with a gene outside the vocabulary into ``outside``.

        Parameters
        ----------
        df : DataFrame [E, >= 3]
            Columns ``source``, ``target`` (gene names) and ``weight`` (float).

        Returns
        -------
        Graph
            ``(u int64 [E'], v int64 [E'], w float64 [E'])``, undirected edges with ``u < v``, no self-loops,
            duplicates merged (maximum weight).

        Raises
        ------
        ValueError
            A missing column.
        """
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
    return graph_of, outside


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

    ``x_pca`` [C, p] and ``labels`` [C] must be the rows ``knn`` was fitted on, in order (checked by shape);
    scikit-learn's ``kneighbors(X=None)`` returns each fitted cell's ``k`` nearest other cells (uniform
    weights, as ``predict_proba``); with only ``k`` cells, each votes with its ``k - 1`` others.
    Raises ValueError if ``x_pca`` is not the classifier's training data shape.
    """
    if x_pca.shape[0] == 0:
        return np.zeros((0, len(classes)))
    if x_pca.shape[0] == 1:  # a lone train cell has no other cell: it keeps its own label
        return (np.asarray(classes) == labels[0]).astype(float)[None, :]
    if x_pca.shape[0] != knn.n_samples_fit_:
        raise ValueError(f"{x_pca.shape[0]} cells, but the classifier was fitted on {knn.n_samples_fit_}")
    k = min(knn.n_neighbors, x_pca.shape[0] - 1)
    nb = knn.kneighbors(n_neighbors=k, return_distance=False)  # X=None: the fitted cells, self excluded
    cls = np.searchsorted(np.asarray(classes), labels)
    probs = np.zeros((x_pca.shape[0], len(classes)))
    np.add.at(probs, (np.repeat(np.arange(x_pca.shape[0]), k), cls[nb].ravel()), 1.0 / k)
    return probs


def write_shard(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write shard arrays as an ``.npz`` (readable by ``numpy.load``), atomically and byte-reproducibly.

    ``numpy.savez`` stamps the current time into the zip entries; here every entry has a fixed date so the
    same arrays give the same bytes.

    Parameters
    ----------
    path : str or Path
        The ``.npz`` to write.
    arrays : mapping str -> numpy.ndarray
        At least the keys of ``SHARD_KEYS`` (``obs_names``, ``gene_ptr``, ``gene_ids``, ``bins``, ``expr``,
        ``edge_ptr``, ``edge_index``, ``edge_weight``, ...); only those are written, in that order.
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


@dataclass(frozen=True)
class TokenizeParams:
    """Options of the tokenize stage: every ``cellgraph tokenize`` option except the file paths.

    Built by :mod:`cellgraph.cli.tokenize` from the command line and passed to :func:`scan_corpus`,
    :func:`stage_vocabulary`, :func:`build_stage_graphs`, :func:`tokenize_splits` and the corpus tokenizers
    (:func:`tokenize_corpus_streamed`, :func:`tokenize_corpus`). Values are kept as given (``report.json``
    writes them) and checked on construction.

    Attributes
    ----------
    seed : int, default 0
        Seed of the per-cell tie-breaking keys (``default_rng([seed, obs position])``), of the hidden edges
        and of the integration's PCA (``--seed``).
    n_bins : int, default 50
        Expression rank bins per cell, in ``[2, 32764]`` (``--n-bins``).
    max_seq_len : int, default 256
        Gene tokens per cell at most, >= 1 (``--max-seq-len``).
    n_top_genes : int, default 3000
        Highly variable genes of the vocabulary (scanpy ``seurat_v3`` on raw counts), >= 2 (``--n-top-genes``).
    tie_break : {"random", "shared"}, default "random"
        ``random``: every expressed gene of a cell its own rank bin, ties broken by the seeded keys;
        ``shared``: tied values share a bin (``--tie-break``, :func:`expression_bins`).
    neighbours : bool, default False
        Also add the unexpressed graph neighbours of expressed genes as bin-0 tokens (``--neighbours``).
    graph : {"prior", "aracne", "union"}, default "prior"
        Graph of a cell (``--graph``, module docstring).
    prior_graphs : tuple of str, default ("dorothea", "trrust", "huri", "string")
        Values of the prior edge table's ``graph`` column whose union is the prior graph (``--prior-graphs``).
    edge_holdout_fraction : float, default 0.15
        Fraction of all graph edges hidden from every shard, in [0, 1) (``--edge-holdout-fraction``).
    n_bootstraps : int, default 50
        ARACNe bootstraps B behind the networks' ``count`` column, >= 1 (``--n-bootstraps``;
        ``Pr(e not in G_c) = 1 - (count + 1) / (B + 2)``, :func:`absent_probability`).
    integration_alpha : float, default 0.05
        Bayesian graph integration keeps an edge iff ``p(e) <= alpha`` (GREmLN eq. 3), in [0, 1]
        (``--integration-alpha``).
    knn_k : int, default 15
        Neighbours of the kNN cell-type classifier of the integration (GREmLN eq. 1), >= 1 (``--knn-k``).
    min_counts, max_counts : float, default 500 and 20000
        Pretraining-corpus cell QC: total UMI per cell at least / at most, inclusive (``--min-counts``,
        ``--max-counts``).
    min_genes : int, default 200
        Pretraining-corpus cell QC: detected genes per cell at least (``--min-genes``).
    target_sum : float, default 1e6
        Pretraining-corpus normalisation: counts per cell before log1p, i.e. log1p CPM (``--target-sum``).
    chunk_cells : int, default 10000
        Corpus cells read and tokenized at a time; bounds the memory, >= 1 (``--chunk-cells``).

    Raises
    ------
    InputError
        On construction, for a value outside the ranges above (the message names the option).
    """

    seed: int = 0
    n_bins: int = 50
    max_seq_len: int = 256
    n_top_genes: int = 3000
    tie_break: str = "random"
    neighbours: bool = False
    graph: str = "prior"
    prior_graphs: tuple[str, ...] = ("dorothea", "trrust", "huri", "string")
    edge_holdout_fraction: float = 0.15
    n_bootstraps: int = 50
    integration_alpha: float = 0.05
    knn_k: int = 15
    min_counts: float = 500
    max_counts: float = 20000
    min_genes: int = 200
    target_sum: float = 1e6
    chunk_cells: int = 10000

    def __post_init__(self) -> None:
        """Check the values, in the order and with the messages of the command line.

        Raises
        ------
        InputError
            The first value out of range.
        """
        if self.n_bins < 2 or self.n_bins + 3 > np.iinfo(np.int16).max:
            raise InputError(f"--n-bins: expected an integer in [2, {np.iinfo(np.int16).max - 3}], got {self.n_bins}")
        if self.max_seq_len < 1:
            raise InputError(f"--max-seq-len: expected an integer >= 1, got {self.max_seq_len}")
        if not 0.0 <= self.integration_alpha <= 1.0:
            raise InputError(f"--integration-alpha: expected a number in [0, 1], got {self.integration_alpha}")
        if self.knn_k < 1:
            raise InputError(f"--knn-k: expected an integer >= 1, got {self.knn_k}")
        if self.n_top_genes < 2:
            raise InputError(f"--n-top-genes: expected an integer >= 2, got {self.n_top_genes}")
        if not 0.0 <= self.edge_holdout_fraction < 1.0:
            raise InputError(f"--edge-holdout-fraction: expected a number in [0, 1), got {self.edge_holdout_fraction}")
        if self.n_bootstraps < 1:
            raise InputError(f"--n-bootstraps: expected an integer >= 1, got {self.n_bootstraps}")
        if self.chunk_cells < 1:
            raise InputError(f"--chunk-cells: expected an integer >= 1 (cells per chunk of the pretraining corpus), "
                             f"got {self.chunk_cells}")
        if self.tie_break not in TIE_BREAKS:
            raise InputError(f"--tie-break: expected one of {list(TIE_BREAKS)}, got {self.tie_break!r}")
        if self.graph not in GRAPHS:
            raise InputError(f"--graph: expected one of {list(GRAPHS)}, got {self.graph!r}")

    def report(self) -> dict[str, Any]:
        """``report.json["parameters"]``: the tokenization and graph options (not the corpus QC).

        Returns
        -------
        dict option name -> value, in a fixed order (``prior_graphs`` as a list).
        """
        keys = ("seed", "n_bins", "max_seq_len", "n_top_genes", "tie_break", "neighbours", "graph", "prior_graphs",
                "edge_holdout_fraction", "n_bootstraps", "integration_alpha", "knn_k")
        return {k: list(self.prior_graphs) if k == "prior_graphs" else getattr(self, k) for k in keys}

    def corpus_qc(self) -> dict[str, Any]:
        """The pretraining-corpus cell QC thresholds, as the corpus report's ``qc`` entry.

        Returns
        -------
        dict with ``min_counts``, ``max_counts`` (total UMI) and ``min_genes``.
        """
        return {"min_counts": self.min_counts, "max_counts": self.max_counts, "min_genes": self.min_genes}


def read_adata(path: Path):
    """Read the expression stage's ``adata.h5ad`` and check what the tokenize stage needs of it.

    Parameters
    ----------
    path : Path
        h5ad with log-normalised expression in ``X`` [cells, genes], raw counts in ``layers["counts"]``,
        ``obs["split"]`` (values of :data:`SPLITS`) and the label column ``obs[uns["cellgraph"]["label_key"]]``.

    Returns
    -------
    anndata.AnnData, as read.

    Raises
    ------
    InputError
        Unreadable file; ``obs["split"]`` missing, with other values or without ``train`` cells; label key
        missing; repeated ``var_names``; NaN, infinite or negative ``X``. The message names the file.
    """
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
        adata_label_key(adata)
    except InputError as err:
        raise InputError(f"{path}: {err}") from err
    if not adata.var_names.is_unique:
        raise InputError(f"{path}: var_names are not unique")
    data = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if not np.all(np.isfinite(data)) or (data < 0).any():
        raise InputError(f"{path}: X must be finite and non-negative (log-normalised expression)")
    if not (adata.obs["split"].astype(str) == "train").any():
        raise InputError(f"{path}: obs['split'] has no 'train' cells")
    return adata


def read_networks(path: Path) -> pd.DataFrame:
    """Read the grn stage's ``networks.tsv.gz`` (ARACNe networks of the cell types) and check its fields.

    Parameters
    ----------
    path : Path
        Tab-separated table with columns :data:`NETWORK_COLUMNS` (``cell_type, source, target, mi, pvalue,
        count``): one row per edge of a cell type's network; ``mi`` in nats, ``count`` the edge's bootstrap
        count.

    Returns
    -------
    DataFrame [E, >= 6] with ``mi``, ``pvalue`` and ``count`` as float.

    Raises
    ------
    InputError
        Unreadable table, a missing column, an empty gene or type field, or ``mi`` < 0, ``pvalue`` outside
        [0, 1], ``count`` not an integer >= 0 (the message names the file, line and field).
    """
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
    for col in ("mi", "pvalue", "count"):
        x = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        hi = 1.0 if col == "pvalue" else np.inf
        bad = ~(np.isfinite(x) & (x >= 0.0) & (x <= hi))
        if col == "count":
            bad |= np.isfinite(x) & (x != np.round(x))
        if bad.any():
            line = int(np.flatnonzero(bad)[0]) + 2
            what = {"pvalue": "a probability in [0, 1]", "mi": "a finite number >= 0",
                    "count": "a bootstrap count (integer >= 0)"}[col]
            raise InputError(f"{path}: line {line}: field {col!r} = {df[col].iloc[line - 2]!r}; expected {what}")
        df[col] = x
    return df


def write_vocab(path: Path, vocab: Sequence[str]) -> None:
    """Write ``vocab.tsv`` atomically: a ``token_id, gene`` header, then one row per token (id = position).

    Parameters
    ----------
    path : Path
        Output file.
    vocab : list of str
        ``["<pad>", "<cls>", genes...]`` (as :func:`cellgraph.io.shards.read_vocab` reads it back).
    """
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
        "tokens_with_an_edge_fraction": _tokens_with_edge(arrays),
    }


def _tokens_with_edge(arrays: Mapping[str, np.ndarray]) -> float:
    """Fraction of all gene tokens that have at least one edge in their cell's subgraph."""
    gp, ep, ei = arrays["gene_ptr"], arrays["edge_ptr"], np.asarray(arrays["edge_index"]).reshape(2, -1)
    if gp[-1] == 0:
        return 0.0
    cell = np.repeat(np.arange(gp.size - 1), np.diff(ep))
    touched = np.unique(gp[cell] + ei[0]) if ei.shape[1] else np.zeros(0)
    return float(touched.size / gp[-1])


def choose_vocabulary(counts: Sequence[Any], n_top_genes: int) -> list[str]:
    """Highly variable genes of raw counts: scanpy ``highly_variable_genes(flavor="seurat_v3")``.

    Parameters
    ----------
    counts : list of AnnData
        Raw UMI counts in ``X`` (cells x genes) of the *training* cells only, one AnnData per data set
        (labelled train cells, a pretraining corpus); genes are those shared by all, and the data sets are
        the ``batch_key`` (genes ranked within each, then by their median rank; Stuart et al. 2019).
    n_top_genes : int
        Number of genes (capped at the shared genes).

    Returns
    -------
    Sorted gene symbols.

    Raises
    ------
    InputError
        If the data sets share fewer than 2 genes.
    """
    import anndata as ad
    import scanpy as sc

    shared = counts[0].var_names
    for a in counts[1:]:
        shared = shared.intersection(a.var_names)
    if len(shared) < 2:
        raise InputError(f"the expression and pretraining data share {len(shared)} genes; expected at least 2")
    parts = [ad.AnnData(sp.csr_matrix(a[:, shared].X, dtype=np.float32), obs=pd.DataFrame(index=a.obs_names))
             for a in counts]
    both = ad.concat(parts, label="dataset", index_unique="-")
    both.var_names = shared
    both = both[:, np.asarray((both.X > 0).sum(0)).ravel() > 0].copy()
    if n_top_genes >= both.n_vars:  # every detected gene is kept: nothing to rank
        return sorted(both.var_names)
    hvg = sc.pp.highly_variable_genes(both, flavor="seurat_v3", n_top_genes=min(n_top_genes, both.n_vars),
                                      batch_key="dataset" if len(counts) > 1 else None, inplace=False)
    return sorted(both.var_names[hvg["highly_variable"].to_numpy(bool)])


def prior_graph(edges: pd.DataFrame, graphs: Sequence[str], gene_index: Mapping[str, int]) -> tuple[Graph, dict]:
    """One undirected, unweighted graph over the vocabulary from the networks stage's edge table.

    Parameters
    ----------
    edges : DataFrame
        Columns ``source, target, graph`` (``results/networks/edges.parquet``: DoRothEA, TRRUST, HuRI, STRING,
        optionally the two Pathway Commons graphs).
    graphs : list of str
        Values of ``graph`` to keep (their union).
    gene_index : mapping gene symbol -> vocabulary gene index (0-based, no specials).

    Returns
    -------
    ((u, v, weight=1) with u < v unique, counts: rows per graph, rows outside the vocabulary, self-loops).
    """
    sel = edges[edges["graph"].astype(str).isin(list(graphs))]
    u = sel["source"].map(gene_index).to_numpy(dtype=float, na_value=np.nan)
    v = sel["target"].map(gene_index).to_numpy(dtype=float, na_value=np.nan)
    ok = ~(np.isnan(u) | np.isnan(v))
    (a, b, w), c = _canonical_edges(u[ok].astype(np.int64), v[ok].astype(np.int64), np.ones(int(ok.sum())),
                                    len(gene_index))
    counts = {"rows": {g: int((sel["graph"] == g).sum()) for g in graphs},
              "rows_outside_vocabulary": int((~ok).sum()), "self_loops": c["self_loops"], "edges": int(a.size)}
    return (a, b, w), counts


def hidden_edge_mask(n_edges: int, fraction: float, seed: int) -> np.ndarray:
    """Bool [n_edges]: ``round(fraction * n_edges)`` edges drawn without replacement (seeded) to hide.

    Hidden edges are removed from every cell graph of every shard before pretraining, so the edge-recovery
    evaluation scores edges no model has seen (GREmLN section 4.3 hides edges only at evaluation).

    Parameters
    ----------
    n_edges : int
        Number of edges (prior and ARACNe together).
    fraction : float
        Fraction 0-1 of the edges to hide.
    seed : int
        Seed; the draw uses ``numpy.random.default_rng([seed, 7])``.

    Returns
    -------
    numpy.ndarray bool [n_edges]
        True for a hidden edge.
    """
    out = np.zeros(n_edges, dtype=bool)
    k = int(round(fraction * n_edges))
    if k:
        out[np.random.default_rng([int(seed), 7]).choice(n_edges, size=k, replace=False)] = True
    return out


def absent_probability(count: np.ndarray, n_bootstraps: int) -> np.ndarray:
    """``Pr(e not in G_c) = 1 - (count + 1) / (B + 2)`` from an edge's bootstrap count (Laplace's rule).

    GREmLN appendix A.1, eq. 2 weighs each cell type's network by the probability that an edge is absent
    from it; the recurrence of the edge over the B bootstraps of ARACNe estimates its presence. An edge
    missing from the consolidated network counts as ``count = 0``.

    Parameters
    ----------
    count : array of int [...]
        Bootstraps (of B) in which each edge was found, 0..B.
    n_bootstraps : int
        B, the number of ARACNe bootstraps.

    Returns
    -------
    numpy.ndarray float64, shape of ``count``
        Probability 0-1 that each edge is absent from the cell type's network.

    Raises
    ------
    ValueError
        A count outside [0, B].

    References
    ----------
    GREmLN (Zhang et al. 2025) appendix A.1, eq. 2.
    """
    count = np.asarray(count, dtype=np.float64)
    if (count < 0).any() or (count > n_bootstraps).any():
        raise ValueError(f"bootstrap counts must lie in [0, {n_bootstraps}]")
    return 1.0 - (count + 1.0) / (n_bootstraps + 2.0)


def merge_graphs(*graphs: Graph) -> Graph:
    """Union of undirected graphs over the same genes (an edge in several keeps its largest weight).

    Parameters
    ----------
    *graphs : (u, v, w)
        Undirected graphs over vocabulary gene indices (int arrays [k], weights [k]).

    Returns
    -------
    (u int64 [k], v int64 [k], w float64 [k])
        The union: u < v, unique edges sorted by (u, v), self-loops dropped.
    """
    u = np.concatenate([g[0] for g in graphs]).astype(np.int64)
    v = np.concatenate([g[1] for g in graphs]).astype(np.int64)
    w = np.concatenate([np.asarray(g[2], dtype=np.float64) for g in graphs])
    n = int(max(u.max(initial=-1), v.max(initial=-1)) + 1)
    return _canonical_edges(u, v, w, max(n, 1))[0]


def _drop_keys(graph: Graph, hidden_keys: np.ndarray, n_genes: int) -> Graph:
    u, v, w = graph
    keep = ~np.isin(u * n_genes + v, hidden_keys)
    return u[keep], v[keep], np.asarray(w)[keep]


EMPTY: Graph = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))


def read_prior_edges(path: Path) -> pd.DataFrame:
    """Read the networks stage's edge table (``edges.parquet``, or a tab-separated file).

    Parameters
    ----------
    path : Path
        Table with columns ``source, target, graph`` (gene symbols and the name of the source graph).

    Returns
    -------
    DataFrame [E, >= 3], as read.

    Raises
    ------
    InputError
        Unreadable table or a missing column.
    """
    try:
        df = pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path, sep="\t")
    except Exception as err:  # noqa: BLE001 - any read failure is the user's file
        raise InputError(f"{path}: cannot be read as an edge table ({err})") from err
    missing = [c for c in ("source", "target", "graph") if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}; expected source, target, graph")
    return df


def read_corpus(path: Path, params: TokenizeParams) -> tuple[Any, dict[str, Any]]:
    """Whole pretraining corpus in memory: raw counts in X, cell QC, then ``layers["log1p"]`` (log1p CPM).

    The reference of the streamed path (:func:`scan_corpus`, :func:`tokenize_corpus_streamed`), which gives
    the same cells, report and tokens without loading the corpus.

    Parameters
    ----------
    path : Path
        h5ad with raw UMI counts in ``X`` [cells, genes].
    params : TokenizeParams
        ``min_counts``, ``max_counts`` (total UMI per cell, inclusive), ``min_genes`` (detected genes per
        cell) and ``target_sum`` (counts per cell before log1p) are used.

    Returns
    -------
    (AnnData [kept cells, genes] with float32 counts in ``X`` and ``layers["log1p"]``, report dict:
    ``path, cells, cells_kept, cells_dropped_qc, genes, qc``).

    Raises
    ------
    InputError
        Unreadable file, ``X`` not raw counts, repeated ``var_names``, or no cell passing the QC.
    """
    import anndata as ad
    import scanpy as sc

    try:
        a = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: cannot be read as an h5ad file ({err})") from err
    x = sp.csr_matrix(a.X)
    if x.nnz and (not np.all(np.isfinite(x.data)) or (x.data < 0).any() or (x.data != np.round(x.data)).any()):
        raise InputError(f"{path}: X must hold raw UMI counts (non-negative integers)")
    if not a.var_names.is_unique:
        raise InputError(f"{path}: var_names are not unique")
    a.X = x.astype(np.float32)
    total = np.asarray(a.X.sum(1)).ravel()
    n_genes = np.diff(a.X.indptr)
    keep = (total >= params.min_counts) & (total <= params.max_counts) & (n_genes >= params.min_genes)
    report = {"path": str(path), "cells": int(a.n_obs), "cells_kept": int(keep.sum()),
              "cells_dropped_qc": int((~keep).sum()), "genes": int(a.n_vars), "qc": params.corpus_qc()}
    if not keep.any():
        raise InputError(f"{path}: no cell passes QC ({report['qc']})")
    a = a[keep].copy()
    a.layers["log1p"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=params.target_sum, layer="log1p")
    sc.pp.log1p(a, layer="log1p")
    return a, report


def _type_networks(networks: pd.DataFrame, gene_index: Mapping[str, int], n_bootstraps: int):
    """Per cell type: canonical edge keys, Pr(e not in G_c) from bootstrap counts, and MI."""
    n_genes = len(gene_index)
    ok = networks["source"].isin(gene_index).to_numpy() & networks["target"].isin(gene_index).to_numpy()
    net = networks[ok]
    u_all = net["source"].map(gene_index).to_numpy(np.int64)
    v_all = net["target"].map(gene_index).to_numpy(np.int64)
    type_of_row = net["cell_type"].to_numpy(str)
    per_type: dict[str, dict[str, np.ndarray]] = {}
    dup = {"self_loops": 0, "duplicates": 0}
    for t in sorted(set(type_of_row)):
        m = type_of_row == t
        (a, b, cnt), c1 = _canonical_edges(u_all[m], v_all[m], net["count"].to_numpy(float)[m], n_genes, "max")
        (_, _, mi), _ = _canonical_edges(u_all[m], v_all[m], net["mi"].to_numpy()[m], n_genes, "max")
        try:
            absent = absent_probability(cnt, n_bootstraps)
        except ValueError as err:
            raise InputError(f"networks: cell type {t!r}: {err} (--n-bootstraps {n_bootstraps})") from err
        per_type[t] = {"key": a * n_genes + b, "absent": absent, "mi": mi}
        for k in dup:
            dup[k] += c1[k]
    return per_type, {"rows_dropped_gene_not_in_vocabulary": int((~ok).sum()), **dup}


def _graph_of_key(keys: np.ndarray, w: np.ndarray, n_genes: int) -> Graph:
    return keys // n_genes, keys % n_genes, w


class _Integration:
    """Bayesian graph integration (GREmLN eqs. 1-3) for cells without a known type network."""

    def __init__(self, adata, genes, train, labels, per_type, knn_k: int, alpha: float, seed: int,
                 n_bootstraps: int):
        from sklearn.decomposition import PCA
        from sklearn.neighbors import KNeighborsClassifier

        n_genes = len(genes)
        self.alpha = alpha
        self.types = sorted(set(labels[train]))
        keys = [d["key"] for d in per_type.values()]
        self.cand = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
        self.cand_u, self.cand_v = self.cand // n_genes, self.cand % n_genes
        self.absent = np.full((len(self.types), self.cand.size), float(absent_probability(0, n_bootstraps)))
        self.mi = np.zeros((len(self.types), self.cand.size))
        for i, t in enumerate(self.types):
            if t in per_type:
                loc = np.searchsorted(self.cand, per_type[t]["key"])
                self.absent[i, loc] = per_type[t]["absent"]
                self.mi[i, loc] = per_type[t]["mi"]
        x = adata[:, list(genes)].X
        self.x = (x.toarray() if sp.issparse(x) else np.asarray(x)).astype(np.float64)
        if knn_k > train.size:
            raise InputError(f"--knn-k: {knn_k} neighbours but only {train.size} train cells")
        self.n_pcs = int(max(1, min(N_PCS, train.size - 1, self.x.shape[1])))
        self.pca = PCA(n_components=self.n_pcs, svd_solver="covariance_eigh", random_state=seed).fit(self.x[train])
        self.labels = labels
        self.knn = KNeighborsClassifier(n_neighbors=knn_k).fit(self.pca.transform(self.x[train]), labels[train])
        self.kept_any = np.zeros(self.cand.size, dtype=bool)

    def probabilities(self, cells: np.ndarray, leave_one_out: bool) -> np.ndarray:
        """kNN cell-type probabilities ``w_c`` of GREmLN eq. 2 (classifier on PCA of the log expression).

        Parameters
        ----------
        cells : int array [C]
            Obs positions of the cells.
        leave_one_out : bool
            The cells are the classifier's own train cells, in its fitting order: each is classified
            without itself (:func:`_leave_one_out_proba`).

        Returns
        -------
        float array [C, T]
            Probabilities over ``self.types`` (rows sum to 1).
        """
        if cells.size == 0:
            return np.zeros((0, len(self.types)))
        z = self.pca.transform(self.x[cells])
        if leave_one_out:
            return _leave_one_out_proba(self.knn, z, self.labels[cells], self.types)
        return self.knn.predict_proba(z)

    def graph(self, probs: np.ndarray) -> Graph:
        """Integrated graph of one cell: candidate edges with ``p(e) <= alpha`` (GREmLN eqs. 2-3).

        Parameters
        ----------
        probs : float array [T]
            The cell's type probabilities (:meth:`probabilities`).

        Returns
        -------
        Graph
            ``(u int64 [E], v int64 [E], w float64 [E])`` with ``w`` the probability-weighted sum of the MI (nats) of
            the types' networks; kept edges are also marked in ``self.kept_any``.
        """
        p = integration_pvalues(probs[None, :], self.absent)[0]
        keep = p <= self.alpha
        self.kept_any[keep] = True
        return self.cand_u[keep], self.cand_v[keep], probs @ self.mi[:, keep]


@dataclass(frozen=True)
class Vocabulary:
    """Vocabulary of the stage (:func:`stage_vocabulary`); token id of ``genes[i]`` is ``i + 2``.

    Attributes
    ----------
    genes : list of str
        The vocabulary genes [G], sorted by symbol (no special tokens).
    hvgs : list of str
        The highly variable genes among them (:func:`choose_vocabulary`, sorted).
    network_genes : list of str
        Genes of the ARACNe networks that are in the adata, sorted (empty with ``graph = "prior"``).
    with_corpus : bool
        Whether the HVGs were chosen on the train cells and a pretraining corpus together.
    """

    genes: list[str]
    hvgs: list[str]
    network_genes: list[str]
    with_corpus: bool

    def report(self, n_adata_genes: int) -> dict[str, Any]:
        """``report.json["vocab"]``.

        Parameters
        ----------
        n_adata_genes : int
            Genes of the adata (``n_vars``).

        Returns
        -------
        dict: ``genes, hvgs, hvg_method, aracne_genes_added, adata_genes_not_in_vocab``.
        """
        return {"genes": len(self.genes), "hvgs": len(self.hvgs),
                "hvg_method": "scanpy seurat_v3 on raw counts of train cells"
                + (" and the pretraining corpus (batch_key = data set)" if self.with_corpus else ""),
                "aracne_genes_added": len(set(self.network_genes) - set(self.hvgs)),
                "adata_genes_not_in_vocab": int(n_adata_genes - len(self.genes))}


def stage_vocabulary(adata, networks: pd.DataFrame, params: TokenizeParams, corpus: _CorpusScan | None = None,
                     adata_path: str | Path = "adata", networks_path: str | Path = "networks") -> Vocabulary:
    """The vocabulary: HVGs of the training counts, plus the ARACNe network genes when the graphs use them.

    The HVGs (:func:`choose_vocabulary`, scanpy ``seurat_v3``, Stuart et al. 2019) are those of the raw
    counts (``layers["counts"]``) of the *train* cells, with the pretraining corpus as a second batch when
    one is given (:func:`choose_vocabulary_streamed`, read ``params.chunk_cells`` cells at a time).
    Validation, test and held-out cells never influence the vocabulary.

    Parameters
    ----------
    adata : AnnData
        The expression stage's output (:func:`read_adata`) [cells, genes].
    networks : DataFrame
        The grn networks table (:func:`read_networks`).
    params : TokenizeParams
        ``n_top_genes``, ``graph`` (``prior``: no network genes) and ``chunk_cells`` are used.
    corpus : the open pretraining corpus (:func:`scan_corpus`), or None.
    adata_path, networks_path : the input files, for messages.

    Returns
    -------
    Vocabulary

    Raises
    ------
    InputError
        ``layers["counts"]`` missing, the data sets sharing fewer than 2 genes, or (``graph`` aracne/union)
        no network gene among the adata's ``var_names``.
    """
    train = np.flatnonzero(adata.obs["split"].astype(str).to_numpy() == "train")
    counts = _train_counts(adata, train, Path(adata_path))
    hvg = (choose_vocabulary([counts], params.n_top_genes) if corpus is None else
           choose_vocabulary_streamed(counts, corpus, params.n_top_genes, params.chunk_cells))
    net_genes = set(networks["source"]) | set(networks["target"]) if params.graph != "prior" else set()
    net_in = sorted(g for g in net_genes if g in adata.var_names)
    if net_genes and not net_in:
        raise InputError(f"{networks_path}: no gene of the networks is in {adata_path} var_names (networks genes "
                         f"e.g. {sorted(net_genes)[:5]}, adata genes e.g. {list(adata.var_names[:5])})")
    return Vocabulary(genes=sorted(set(hvg) | set(net_in)), hvgs=hvg, network_genes=net_in,
                      with_corpus=corpus is not None)


@dataclass(frozen=True)
class StageGraphs:
    """The stage's graphs over the vocabulary (:func:`build_stage_graphs`), hidden edges already removed.

    Attributes
    ----------
    genes : list of str
        The vocabulary genes [G]; graph nodes are their indices.
    source : str
        ``params.graph``: ``prior``, ``aracne`` or ``union``.
    prior : Graph
        The shared prior graph without its hidden edges, ``(u, v, w=1)`` (empty for ``aracne``).
    prior_counts : dict or None
        Counts of :func:`prior_graph` (None for ``aracne``).
    per_type : dict
        Cell type -> ``{"key": int64 [E_t] edge keys u * G + v, "absent": float64 [E_t] Pr(e not in G_t),
        "mi": float64 [E_t] mutual information (nats)}``, without the hidden edges (empty for ``prior``).
    aracne_counts : dict
        Rows of the networks table dropped (gene outside the vocabulary), self-loops and duplicates.
    edges : Graph
        Every edge of the prior and type graphs before hiding, ``(u, v, w)``, u < v unique.
    hidden : bool array [E]
        Which of ``edges`` are hidden from every shard (:func:`hidden_edge_mask`).
    """

    genes: list[str]
    source: str
    prior: Graph
    prior_counts: dict | None
    per_type: dict[str, dict[str, np.ndarray]]
    aracne_counts: dict
    edges: Graph
    hidden: np.ndarray

    def edge_table(self) -> pd.DataFrame:
        """``graph_edges.tsv.gz``: every edge with its weight and whether it is hidden.

        Returns
        -------
        DataFrame [E, 4]: ``source, target`` (gene symbols), ``weight``, ``hidden`` (bool).
        """
        genes = np.asarray(self.genes)
        return pd.DataFrame({"source": genes[self.edges[0]], "target": genes[self.edges[1]],
                             "weight": self.edges[2], "hidden": self.hidden})

    def report(self) -> dict[str, Any]:
        """``report.json["graph"]``: sources, counts, edges per type, hidden edges.

        Returns
        -------
        dict
        """
        return {"source": self.source, "prior": self.prior_counts, "aracne": self.aracne_counts,
                "edges_per_type": {t: int(d["key"].size) for t, d in self.per_type.items()},
                "edges": int(self.edges[0].size), "hidden_edges": int(self.hidden.sum()),
                "hidden_edges_note": "removed from every shard's cell graphs before pretraining; "
                                     "listed in graph_edges.tsv.gz (hidden = True)"}


def build_stage_graphs(genes: Sequence[str], networks: pd.DataFrame, prior_edges: pd.DataFrame | None,
                       params: TokenizeParams) -> StageGraphs:
    """The prior and per-type ARACNe graphs over the vocabulary, then hide edges from all of them.

    ``params.edge_holdout_fraction`` of all edges (prior and ARACNe together, :func:`merge_graphs`) are drawn
    with ``params.seed`` (:func:`hidden_edge_mask`) and removed before any cell is tokenized, so no model is
    pretrained with them.

    Parameters
    ----------
    genes : list of str
        The vocabulary genes [G] (:attr:`Vocabulary.genes`).
    networks : DataFrame
        The grn networks table (:func:`read_networks`); used for ``graph`` aracne/union.
    prior_edges : DataFrame or None
        The networks stage's edge table (:func:`read_prior_edges`); needed for ``graph`` prior/union.
    params : TokenizeParams
        ``graph``, ``prior_graphs``, ``n_bootstraps``, ``edge_holdout_fraction`` and ``seed`` are used.

    Returns
    -------
    StageGraphs

    Raises
    ------
    InputError
        Bootstrap counts above ``params.n_bootstraps``.
    ValueError
        ``prior_edges`` is None with ``graph`` prior/union.
    """
    gene_index = {g: i for i, g in enumerate(genes)}
    n_genes = len(genes)
    prior, prior_counts = EMPTY, None
    if params.graph != "aracne":
        if prior_edges is None:
            raise ValueError(f"graph {params.graph!r} needs the prior edge table")
        prior, prior_counts = prior_graph(prior_edges, params.prior_graphs, gene_index)
    per_type, net_counts = ({}, {}) if params.graph == "prior" else _type_networks(networks, gene_index,
                                                                                     params.n_bootstraps)
    everything = merge_graphs(prior, *(_graph_of_key(d["key"], d["mi"], n_genes) for d in per_type.values()))
    all_keys = everything[0] * n_genes + everything[1]
    hidden = hidden_edge_mask(all_keys.size, params.edge_holdout_fraction, params.seed)
    hidden_keys = all_keys[hidden]
    prior = _drop_keys(prior, hidden_keys, n_genes)
    for d in per_type.values():
        keep = ~np.isin(d["key"], hidden_keys)
        for k in ("key", "absent", "mi"):
            d[k] = d[k][keep]
    return StageGraphs(genes=list(genes), source=params.graph, prior=prior, prior_counts=prior_counts,
                       per_type=per_type, aracne_counts=net_counts, edges=everything, hidden=hidden)


def tokenize_splits(adata, graphs: StageGraphs, params: TokenizeParams):
    """Token shards of the labelled cells: ``train``, ``val``, ``test``, ``heldout`` and ``train_integrated``.

    Graph of a cell (module docstring): ``prior`` -> the shared prior graph; ``aracne``/``union`` -> train
    cells the (prior merged with the) network of their own type, the other shards the Bayesian graph
    integration of GREmLN eqs. 1-3 (kNN classifier on a PCA of the train cells' ``X``; the train cells of
    ``train_integrated`` are classified leave-one-out). Tokens: :func:`tokenize_cells`'s procedure with
    ``params.n_bins``, ``max_seq_len``, ``seed``, ``tie_break`` and ``neighbours``.

    Parameters
    ----------
    adata : AnnData
        The expression stage's output (:func:`read_adata`).
    graphs : StageGraphs
        The graphs without their hidden edges (:func:`build_stage_graphs`).
    params : TokenizeParams

    Returns
    -------
    (shards, reports, integration): shard name -> shard arrays (docs/design.md section 5); shard name ->
    summary (tokens and edges per cell, truncation; with the integration also kept edges per cell and the
    kNN accuracy on val/test); ``report.json["integration"]`` (None for ``graph = "prior"``).

    Raises
    ------
    InputError
        ``params.knn_k`` above the number of train cells.
    """
    label_key = adata_label_key(adata)
    split = adata.obs["split"].astype(str).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    train = np.flatnonzero(split == "train")
    integ = (_Integration(adata, graphs.genes, train, labels, graphs.per_type, params.knn_k,
                          params.integration_alpha, params.seed, params.n_bootstraps)
             if params.graph != "prior" else None)
    shards, reports = _tokenize_splits(params, adata, graphs.genes, split, labels, label_key, graphs.prior,
                                       graphs.per_type, integ)
    return shards, reports, _integration_report(integ, reports, params.integration_alpha)


def write_graph_edges(path: str | Path, edge_table: pd.DataFrame) -> None:
    """Write ``graph_edges.tsv.gz`` atomically and byte-reproducibly (no name or time in the gzip header).

    Parameters
    ----------
    path : output file.
    edge_table : DataFrame
        :meth:`StageGraphs.edge_table` (``source, target, weight, hidden``), written tab-separated without
        the index.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
            gz.write(edge_table.to_csv(sep="\t", index=False).encode())


def _train_counts(adata, train: np.ndarray, path: Path):
    import anndata as ad

    if "counts" not in adata.layers:
        raise InputError(f"{path}: layers['counts'] (raw UMI counts, written by cellgraph expression) is missing")
    x = sp.csr_matrix(adata.layers["counts"][train])
    return ad.AnnData(x, obs=pd.DataFrame(index=adata.obs_names[train]), var=pd.DataFrame(index=adata.var_names))


def _tokenize_splits(params: TokenizeParams, adata, genes, split, labels, label_key, prior, per_type, integ):
    """Shards and summaries of :func:`tokenize_splits` (``integ``: the :class:`_Integration`, or None)."""
    n_genes = len(genes)
    shards: dict[str, dict[str, np.ndarray]] = {}
    reports: dict[str, Any] = {}
    cols = adata.var_names.get_indexer(genes)
    for s in (*SPLITS, INFERENCE_SHARD):
        cells = np.flatnonzero(split == ("train" if s == INFERENCE_SHARD else s))
        kept_n = np.zeros(cells.size, dtype=np.int64)
        if integ is None:
            graph_of = lambda j: prior  # noqa: E731 - one shared graph
        elif s == "train":  # one merged graph per type, shared by its cells
            own = {t: merge_graphs(prior, _graph_of_key(d["key"], d["mi"], n_genes)) for t, d in per_type.items()}
            graph_of = lambda j: own.get(labels[cells[j]], prior)  # noqa: E731
        else:
            probs = integ.probabilities(cells, leave_one_out=s == INFERENCE_SHARD)

            def graph_of(j: int, probs=probs, kept_n=kept_n) -> Graph:
                """Graph of the shard's ``j``-th cell: the prior merged with its integrated graph
                (:meth:`_Integration.graph`), whose edge count is recorded in ``kept_n[j]``.

                Parameters
                ----------
                j : int
                    Position of the cell in the shard.
                probs, kept_n : arrays [C, T] and [C]
                    Bound at definition: the shard's type probabilities and kept-edge counts.

                Returns
                -------
                Graph
                    ``(u, v, w)`` undirected edges (:func:`merge_graphs`).
                """
                g = integ.graph(probs[j])
                kept_n[j] = g[0].size
                return merge_graphs(prior, g)

        arrays, truncated = _tokenize_core(_rows(adata, cells, cols), cells, graph_of, params.n_bins,
                                           params.max_seq_len, params.seed, params.tie_break, params.neighbours)
        arrays.update(_obs_arrays(adata, cells, label_key))
        shards[s] = {k: arrays[k] for k in SHARD_KEYS}
        reports[s] = _summary(arrays, truncated)
        if integ is not None and s != "train":
            reports[s]["integration_edges_kept_per_cell"] = (
                {"mean": float(kept_n.mean()), "min": int(kept_n.min()), "max": int(kept_n.max())}
                if cells.size else None)
            if s in ("val", "test") and cells.size:  # probs: the kNN class probabilities used for the graphs
                pred = np.asarray(integ.types)[probs.argmax(1)]
                reports[s]["knn_accuracy"] = float((pred == labels[cells]).mean())
    return shards, reports


def tokenize_corpus(corpus, genes: Sequence[str], prior: Graph,
                    params: TokenizeParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The pretraining corpus in memory: the shared (prior) graph only, label ``unlabelled``, split ``pretrain``.

    Whole-corpus path (the corpus of :func:`read_corpus` in memory); the stage streams the corpus with
    :func:`tokenize_corpus_streamed`, which writes the same bytes. Kept as the reference of that equality.
    Cell ``j``'s tie-breaking keys come from ``default_rng([seed, 1, j])`` (``j``: position among the kept
    cells).

    Parameters
    ----------
    corpus : AnnData
        Kept corpus cells with log1p CPM in ``layers["log1p"]`` [cells, genes] (:func:`read_corpus`).
    genes : list of str
        The vocabulary genes [G]; genes the corpus lacks are unexpressed.
    prior : Graph
        The shared graph ``(u, v, w)`` over gene indices (hidden edges removed).
    params : TokenizeParams
        ``n_bins``, ``max_seq_len``, ``seed``, ``tie_break`` and ``neighbours`` are used.

    Returns
    -------
    (shard arrays of docs/design.md section 5, report: the shard summary plus ``vocabulary_genes_absent``).
    """
    cols = corpus.var_names.get_indexer(genes)
    present = cols >= 0
    x = _vocab_rows(sp.csr_matrix(corpus.layers["log1p"]), cols)
    cells = np.arange(corpus.n_obs)
    arrays, truncated = _tokenize_core(x, cells, lambda j: prior, params.n_bins, params.max_seq_len, params.seed,
                                       params.tie_break, params.neighbours, stream=PRETRAIN_STREAM)
    arrays.update({"obs_names": np.array(corpus.obs_names, dtype=str),
                   "cell_type": np.full(corpus.n_obs, "unlabelled"), "split": np.full(corpus.n_obs, "pretrain")})
    rep = _summary(arrays, truncated)
    rep["vocabulary_genes_absent"] = int((~present).sum())
    return {k: arrays[k] for k in SHARD_KEYS}, rep


def _integration_report(integ, split_reports, alpha: float) -> dict[str, Any] | None:
    if integ is None:
        return None
    kept = [split_reports[s]["integration_edges_kept_per_cell"]["mean"] for s in ("val", "test", "heldout")
            if split_reports[s].get("integration_edges_kept_per_cell")]
    return {"candidate_edges": int(integ.cand.size), "alpha": alpha, "n_pcs": integ.n_pcs,
            "edges_kept_per_cell_mean": float(np.mean(kept)) if kept else None,
            "distinct_edges_kept_in_any_cell": int(integ.kept_any.sum()),
            "pr_edge_absent": "1 - (count + 1) / (B + 2) from the edge's bootstrap count (0 where absent)",
            "edge_weight": "sum_c w_c * mi_c(e)"}


# --------------------------------------------------------------------------------------------------
# Pretraining corpus, streamed: memory bounded by --chunk-cells, not by the corpus
# --------------------------------------------------------------------------------------------------

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the fixed entry date of write_shard
_SPOOL_PARTS = {  # shard key -> (dtype, spool files); edge_index is [2, E]: its two rows spool apart
    "gene_ptr": (np.int64, ("gene_ptr",)), "gene_ids": (np.int32, ("gene_ids",)),
    "bins": (np.int16, ("bins",)), "expr": (np.float32, ("expr",)), "edge_ptr": (np.int64, ("edge_ptr",)),
    "edge_index": (np.int32, ("edge_src", "edge_dst")), "edge_weight": (np.float32, ("edge_weight",)),
}


class _CorpusScan:
    """First pass over a backed corpus (:func:`scan_corpus`): the QC mask and count statistics of kept cells."""

    def __init__(self, adata, path: Path, keep: np.ndarray, stats: dict[str, np.ndarray], report: dict[str, Any]):
        self.adata, self.path, self.keep, self.stats, self.report = adata, path, keep, stats, report

    @property
    def n_kept(self) -> int:
        """Number of corpus cells that pass the QC (``keep`` is True).

        Returns
        -------
        int
        """
        return int(self.keep.sum())

    def close(self) -> None:
        """Close the backed h5ad file."""
        self.adata.file.close()


def _raw_rows(adata, lo: int, hi: int, path: Path) -> sp.csr_matrix:
    """Rows ``lo:hi`` of the backed corpus X as CSR (stored dtype), after the raw-count check of :func:`read_corpus`."""
    try:
        x = sp.csr_matrix(adata.X[lo:hi])
    except Exception as err:  # noqa: BLE001 - a damaged matrix is the user's file
        raise InputError(f"{path}: cannot be read as an h5ad file ({err})") from err
    if x.nnz and (not np.all(np.isfinite(x.data)) or (x.data < 0).any() or (x.data != np.round(x.data)).any()):
        raise InputError(f"{path}: X must hold raw UMI counts (non-negative integers)")
    return x


def _kept_chunks(scan: _CorpusScan, chunk_cells: int):
    """Yield (position of the chunk's first kept cell among kept cells, obs rows, float32 CSR counts of its kept cells)."""
    done = 0
    for lo in range(0, scan.adata.n_obs, chunk_cells):
        hi = min(lo + chunk_cells, scan.adata.n_obs)
        keep = scan.keep[lo:hi]
        if not keep.any():
            continue
        x = _raw_rows(scan.adata, lo, hi, scan.path).astype(np.float32)[keep]
        yield done, lo + np.flatnonzero(keep), x
        done += int(keep.sum())


def _count_stats(x: sp.csr_matrix, n_genes: int) -> dict[str, np.ndarray]:
    """Per-gene sum, sum of squares and cells > 0 of float32 counts [cells, n_genes] (float64 [n_genes] each).

    Squares are taken in float32 and summed in float64 as scanpy's ``_get_mean_var``; for integer counts the
    sums are exact, so the statistics do not depend on how the cells are chunked.
    """
    idx, val = x.indices, x.data.astype(np.float32)
    return {"sum": np.bincount(idx, weights=val, minlength=n_genes),
            "sumsq": np.bincount(idx, weights=val * val, minlength=n_genes),
            "positive": np.bincount(idx[val > 0], minlength=n_genes).astype(np.float64)}


def scan_corpus(path: Path, params: TokenizeParams) -> _CorpusScan:
    """Open a pretraining corpus backed and check and QC it chunk by chunk, as :func:`read_corpus` does whole.

    Parameters
    ----------
    path : Path
        h5ad with raw UMI counts in ``X`` [cells, genes] (any stored dtype).
    params : TokenizeParams
        ``chunk_cells`` (rows of X read at a time), ``min_counts``, ``max_counts`` (total UMI) and
        ``min_genes`` (the cell QC) are used.

    Returns
    -------
    The open corpus (close it with ``.close()``) with ``keep`` (bool [n_obs]: passes the QC), ``stats``
    (float64 [n_vars] per gene over the kept cells: ``sum``, ``sumsq``, ``positive`` cell count), ``n_kept``
    and ``report`` (the report of :func:`read_corpus`).

    Raises
    ------
    InputError
        If the file is not an h5ad, X is not raw counts, var_names repeat, or no cell passes QC (the
        messages of :func:`read_corpus`, in its order).
    """
    a = read_h5ad(path, backed="r")
    try:
        keep = np.zeros(a.n_obs, dtype=bool)
        stats = {k: np.zeros(a.n_vars) for k in ("sum", "sumsq", "positive")}
        for lo in range(0, a.n_obs, params.chunk_cells):
            x = _raw_rows(a, lo, min(lo + params.chunk_cells, a.n_obs), path).astype(np.float32)
            total = np.asarray(x.sum(1)).ravel()
            n_genes = np.diff(x.indptr)
            k = (total >= params.min_counts) & (total <= params.max_counts) & (n_genes >= params.min_genes)
            keep[lo:lo + k.size] = k
            for key, v in _count_stats(x[k], a.n_vars).items():
                stats[key] += v
        if not a.var_names.is_unique:
            raise InputError(f"{path}: var_names are not unique")
        report = {"path": str(path), "cells": int(a.n_obs), "cells_kept": int(keep.sum()),
                  "cells_dropped_qc": int((~keep).sum()), "genes": int(a.n_vars), "qc": params.corpus_qc()}
        if not keep.any():
            raise InputError(f"{path}: no cell passes QC ({report['qc']})")
    except BaseException:
        a.file.close()
        raise
    return _CorpusScan(a, path, keep, stats, report)


def _seurat_v3_norm_var(n_obs: int, stats: Mapping[str, np.ndarray], clipped_sums: Callable) -> np.ndarray:
    """Normalised variance [G] of one batch as scanpy's ``highly_variable_genes(flavor="seurat_v3")``.

    ``stats``: per-gene ``sum``/``sumsq`` of the batch's counts (float64 [G]); ``clipped_sums(clip_val)``
    returns (sum of squares, sum) of the counts clipped at ``clip_val`` [G] (a second pass over the batch).
    """
    from skmisc.loess import loess

    mean = stats["sum"] / n_obs
    var = stats["sumsq"] / n_obs - (stats["sum"] / n_obs) ** 2
    if n_obs != 1:
        var *= n_obs / (n_obs - 1)
    not_const = var > 0
    estimat_var = np.zeros(mean.size, dtype=np.float64)
    model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=0.3, degree=2)
    model.fit()
    estimat_var[not_const] = model.outputs.fitted_values
    reg_std = np.sqrt(10**estimat_var)
    squared_sum, total = clipped_sums(reg_std * np.sqrt(n_obs) + mean)
    return (1 / ((n_obs - 1) * np.square(reg_std))) * ((n_obs * np.square(mean)) + squared_sum - 2 * total * mean)


def _clipped_sums(x: sp.csr_matrix, clip_val: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of squares, sum) per output gene of ``min(x, clip_val)``; ``cols``: x column -> output gene or -1."""
    gene = cols[x.indices]
    ok = gene >= 0
    gene = gene[ok]
    el = np.minimum(x.data[ok].astype(np.float64), clip_val[gene])
    return (np.bincount(gene, weights=el**2, minlength=clip_val.size),
            np.bincount(gene, weights=el, minlength=clip_val.size))


def choose_vocabulary_streamed(counts, scan: _CorpusScan, n_top_genes: int, chunk_cells: int) -> list[str]:
    """:func:`choose_vocabulary` of ``[counts, corpus]`` with the corpus read ``chunk_cells`` cells at a time.

    Parameters
    ----------
    counts : AnnData
        Raw UMI counts of the train cells (in memory).
    scan : _CorpusScan
        The corpus from :func:`scan_corpus` (its per-gene sums over kept cells; one more chunked pass
        for the clipped sums of seurat_v3 when genes must be ranked).
    n_top_genes : int
        Number of genes (capped at the shared detected genes).
    chunk_cells : int
        Rows of the corpus file read at a time in that chunked pass (bounds the memory).

    Returns
    -------
    list of str
        Sorted gene symbols: the same genes as :func:`choose_vocabulary` (the unclipped statistics are
        exact integer sums; the clipped sums can differ from scanpy's in the last bits, scanpy's own being
        summed in thread order).

    Raises
    ------
    InputError
        If the train cells and the corpus share fewer than 2 genes.
    """
    shared = counts.var_names.intersection(scan.adata.var_names)
    if len(shared) < 2:
        raise InputError(f"the expression and pretraining data share {len(shared)} genes; expected at least 2")
    x_train = sp.csr_matrix(counts[:, shared].X, dtype=np.float32)
    tstats = _count_stats(x_train, len(shared))
    ccols = scan.adata.var_names.get_indexer(shared)
    cstats = {k: v[ccols] for k, v in scan.stats.items()}
    detected = (tstats["positive"] + cstats["positive"]) > 0
    genes = shared[detected]
    if n_top_genes >= genes.size:
        return sorted(genes)
    out_of = np.full(len(shared), -1, dtype=np.int64)
    out_of[detected] = np.arange(genes.size)  # shared gene -> detected gene
    corpus_cols = np.full(scan.adata.n_vars, -1, dtype=np.int64)
    corpus_cols[ccols] = out_of

    def corpus_clipped(clip_val):
        """(sum of squares, sum) per detected gene of the kept corpus counts clipped at ``clip_val``: the
        second pass of scanpy's ``seurat_v3`` flavour (Stuart et al., *Cell* 2019), one chunk at a time.

        Parameters
        ----------
        clip_val : float array [G]
            Clip value of each detected gene (raw counts).

        Returns
        -------
        (float64 array [G], float64 array [G])
        """
        sq, s = np.zeros(genes.size), np.zeros(genes.size)
        for _, _, x in _kept_chunks(scan, chunk_cells):
            a, b = _clipped_sums(x, clip_val, corpus_cols)
            sq += a
            s += b
        return sq, s

    norm = np.stack([
        _seurat_v3_norm_var(x_train.shape[0], {k: v[detected] for k, v in tstats.items()},
                            lambda c: _clipped_sums(x_train, c, out_of)),
        _seurat_v3_norm_var(scan.n_kept, {k: v[detected] for k, v in cstats.items()}, corpus_clipped),
    ])
    return _rank_batches(genes, norm, n_top_genes)


def _rank_batches(genes: pd.Index, norm_gene_vars: np.ndarray, n_top_genes: int) -> list[str]:
    """The top genes of per-batch normalised variances [B, G], ranked as scanpy's seurat_v3 with batch_key."""
    ranked = np.argsort(np.argsort(-norm_gene_vars, axis=1), axis=1).astype(np.float32)
    nbatches = np.sum((ranked < n_top_genes).astype(int), axis=0)
    ranked[ranked >= n_top_genes] = np.nan
    median_ranked = np.ma.median(np.ma.masked_invalid(ranked), axis=0).filled(np.nan)
    df = pd.DataFrame({"highly_variable_rank": median_ranked, "highly_variable_nbatches": nbatches}, index=genes)
    order = df.sort_values(["highly_variable_rank", "highly_variable_nbatches"], ascending=[True, False],
                           na_position="last").index
    return sorted(order[: int(n_top_genes)])


def _log1p_rows(x: sp.csr_matrix, target_sum: float) -> sp.csr_matrix:
    """``layers["log1p"]`` of :func:`read_corpus` for some kept cells: float32 counts -> log1p(CPM) (per cell)."""
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(x)
    a.layers["log1p"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=target_sum, layer="log1p")
    sc.pp.log1p(a, layer="log1p")
    return sp.csr_matrix(a.layers["log1p"])


def _vocab_rows(x: sp.csr_matrix, cols: np.ndarray) -> sp.csr_matrix:
    """Columns ``cols`` of CSR ``x`` (-1: a gene the corpus lacks, all zero), zeros dropped, indices sorted."""
    present = cols >= 0
    x = sp.csr_matrix(x[:, np.where(present, cols, 0)].multiply(present[None, :].astype(np.float32)))
    x.eliminate_zeros()
    x.sort_indices()
    return x


class _SummaryAccumulator:
    """``_summary`` of a shard built chunk by chunk: the same numbers without holding the shard."""

    def __init__(self) -> None:
        self.cells = self.tokens = self.edges = self.truncated = self.no_tokens = self.no_edges = 0
        self.expressed = self.touched = 0
        self.tok_min = self.tok_max = self.edge_min = self.edge_max = None

    def add(self, arrays: Mapping[str, np.ndarray], truncated: np.ndarray) -> None:
        """Add the arrays of ``_tokenize_core`` for some cells (local pointers starting at 0)."""
        n_tok, n_edge = np.diff(arrays["gene_ptr"]), np.diff(arrays["edge_ptr"]) // 2
        if n_tok.size == 0:
            return
        self.cells += int(n_tok.size)
        self.tokens += int(n_tok.sum())
        self.edges += int(n_edge.sum())
        self.truncated += int(truncated.sum())
        self.no_tokens += int((n_tok == 0).sum())
        self.no_edges += int((n_edge == 0).sum())
        self.expressed += int((arrays["bins"] > 0).sum())
        first = self.tok_min is None
        self.tok_min = int(n_tok.min()) if first else min(self.tok_min, int(n_tok.min()))
        self.tok_max = int(n_tok.max()) if first else max(self.tok_max, int(n_tok.max()))
        self.edge_min = int(n_edge.min()) if first else min(self.edge_min, int(n_edge.min()))
        self.edge_max = int(n_edge.max()) if first else max(self.edge_max, int(n_edge.max()))
        gp, ep, ei = arrays["gene_ptr"], arrays["edge_ptr"], np.asarray(arrays["edge_index"]).reshape(2, -1)
        if ei.shape[1]:  # token positions of different cells are disjoint: per-chunk counts add up
            self.touched += int(np.unique(gp[np.repeat(np.arange(gp.size - 1), np.diff(ep))] + ei[0]).size)

    def result(self) -> dict[str, Any]:
        """The dict of ``_summary`` (means are exact integer totals / cells, as numpy's means of them)."""
        if self.cells == 0:
            return {"cells": 0}
        return {
            "cells": self.cells,
            "tokens_per_cell": {"mean": float(np.float64(self.tokens) / self.cells), "min": self.tok_min,
                                "max": self.tok_max},
            "edges_per_cell": {"mean": float(np.float64(self.edges) / self.cells), "min": self.edge_min,
                               "max": self.edge_max},
            "cells_truncated_at_max_seq_len": self.truncated,
            "cells_without_tokens": self.no_tokens,
            "cells_without_edges": self.no_edges,
            "expressed_token_fraction": float(np.float64(self.expressed) / self.tokens) if self.tokens else 0.0,
            "tokens_with_an_edge_fraction": float(self.touched / np.int64(self.tokens)) if self.tokens else 0.0,
        }


def write_npz_streamed(path: str | Path, entries: Sequence[tuple[str, Any, tuple, Sequence[Any]]],
                       block_bytes: int = 1 << 22) -> None:
    """Write an ``.npz`` from raw array bytes in files, byte-identical to :func:`write_shard` of the arrays.

    Parameters
    ----------
    path : output file (written atomically).
    entries : (name, dtype, shape, parts) per array, in zip order; ``parts``: files (paths) or ``bytes``
        whose concatenation is the array's C-order data (little-endian as the dtype says).
    block_bytes : bytes copied at a time; memory stays bounded by it.

    Each entry is a ``.npy`` with the format-1.0 header that ``np.lib.format.write_array`` writes, stored
    deflated with write_shard's fixed date; the zip entry's size is set before it is opened, as
    ``ZipFile.writestr`` does, so the same zip (and zip64) records are written.

    Raises
    ------
    ValueError
        If the parts do not hold ``prod(shape) * itemsize`` bytes.
    """
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, dtype, shape, parts in entries:
                dtype = np.dtype(dtype)
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    head, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                           "shape": tuple(int(s) for s in shape)})
                sizes = [len(p) if isinstance(p, bytes) else Path(p).stat().st_size for p in parts]
                if sum(sizes) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                    raise ValueError(f"{name}: {sum(sizes)} bytes of data for shape {tuple(shape)} of {dtype}")
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.file_size = len(head.getvalue()) + sum(sizes)
                with zf.open(info, "w") as dst:
                    dst.write(head.getvalue())
                    for p in parts:
                        if isinstance(p, bytes):
                            dst.write(p)
                            continue
                        with open(p, "rb") as src:
                            while block := src.read(block_bytes):
                                dst.write(block)


def _append(spool: Path, name: str, arr: np.ndarray) -> None:
    with open(spool / name, "ab") as fh:
        fh.write(np.ascontiguousarray(arr).tobytes())


def _spool_chunk(spool: Path, arrays: Mapping[str, np.ndarray], offsets: dict[str, int]) -> None:
    """Append one chunk's arrays of ``_tokenize_core``; pointers are shifted to global offsets."""
    for key, ptr in (("gene_ptr", "gene_ids"), ("edge_ptr", "edge_weight")):
        _append(spool, key, arrays[key][1:] + offsets[key])
        offsets[key] += int(arrays[ptr].size)
    for key in ("gene_ids", "bins", "expr", "edge_weight"):
        _append(spool, key, arrays[key].astype(_SPOOL_PARTS[key][0], copy=False))
    ei = np.asarray(arrays["edge_index"], dtype=np.int32).reshape(2, -1)
    _append(spool, "edge_src", ei[0])
    _append(spool, "edge_dst", ei[1])


def _shard_entries(spool: Path, obs_names_dtype: np.dtype, n_cells: int, n_bins: int, max_seq_len: int) -> list:
    """(name, dtype, shape, parts) of every shard key, in SHARD_KEYS order, from the spool files."""
    sizes = {k: (spool / f).stat().st_size // np.dtype(dt).itemsize
             for k, (dt, files) in _SPOOL_PARTS.items() for f in files[:1]}
    shapes = {"gene_ptr": (n_cells + 1,), "edge_ptr": (n_cells + 1,), "edge_index": (2, sizes["edge_index"]),
              **{k: (sizes[k],) for k in ("gene_ids", "bins", "expr", "edge_weight")}}
    entries = []
    for key in SHARD_KEYS:
        if key in _SPOOL_PARTS:
            dt, files = _SPOOL_PARTS[key]
            entries.append((key, dt, shapes[key], [spool / f for f in files]))
        elif key in ("n_bins", "max_seq_len"):
            entries.append((key, np.int64, (), [np.int64(n_bins if key == "n_bins" else max_seq_len).tobytes()]))
        elif key == "obs_names":
            entries.append((key, obs_names_dtype, (n_cells,), [spool / "obs_names"]))
        else:  # constant columns, as np.full(n, "unlabelled") and np.full(n, "pretrain")
            value = np.array("unlabelled" if key == "cell_type" else "pretrain")
            entries.append((key, value.dtype, (n_cells,), [spool / key]))
    return entries


def tokenize_corpus_streamed(scan: _CorpusScan, genes: Sequence[str], prior: Graph, out_path: str | Path,
                             params: TokenizeParams) -> dict[str, Any]:
    """Tokenize the QC'd pretraining corpus ``params.chunk_cells`` cells at a time into ``out_path``.

    Each chunk's rows are read from the backed file, normalised (log1p CPM with ``params.target_sum``),
    restricted to the vocabulary ``genes`` and tokenized with the shared ``prior`` graph (label
    ``unlabelled``, split ``pretrain``) with the cells' positions among all kept cells, so no token depends
    on the chunk size. Chunk arrays are appended to files in a temporary folder next to ``out_path``
    (removed on success and on error), then streamed into the zip: the file is byte-identical to
    :func:`write_shard` of the whole-corpus arrays of :func:`tokenize_corpus` (on :func:`read_corpus`), and
    memory is bounded by the chunk, not by the corpus.

    Parameters
    ----------
    scan : the open corpus of :func:`scan_corpus` (its ``keep`` mask selects the cells).
    genes : list of str
        The vocabulary genes [G]; genes the corpus lacks are unexpressed.
    prior : Graph
        The shared graph ``(u, v, w)`` over gene indices (hidden edges removed).
    out_path : the shard file (``pretrain.npz``), written atomically; its folder is created.
    params : TokenizeParams
        ``chunk_cells``, ``target_sum``, ``n_bins``, ``max_seq_len``, ``seed``, ``tie_break`` and
        ``neighbours`` are used.

    Returns
    -------
    The shard's report: the summary of the arrays (tokens and edges per cell, truncation) plus
    ``vocabulary_genes_absent``, equal to :func:`tokenize_corpus`'s.

    Raises
    ------
    InputError
        If a chunk cannot be read or is not raw counts.
    """
    import shutil
    import tempfile

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cols = scan.adata.var_names.get_indexer(genes)
    kept_names = scan.adata.obs_names[scan.keep]
    names_dtype = np.dtype(("U", max(1, max(len(n) for n in kept_names))))  # as np.array(names, dtype=str)
    acc = _SummaryAccumulator()
    offsets = {"gene_ptr": 0, "edge_ptr": 0}
    spool = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.spool.", dir=out_path.parent))
    try:
        _append(spool, "gene_ptr", np.zeros(1, np.int64))
        _append(spool, "edge_ptr", np.zeros(1, np.int64))
        for start, rows, x in _kept_chunks(scan, params.chunk_cells):
            x = _vocab_rows(_log1p_rows(x, params.target_sum), cols)
            arrays, truncated = _tokenize_core(x, np.arange(start, start + x.shape[0]), lambda j: prior,
                                               params.n_bins, params.max_seq_len, params.seed, params.tie_break,
                                               params.neighbours,
                                               stream=PRETRAIN_STREAM)
            _spool_chunk(spool, arrays, offsets)
            acc.add(arrays, truncated)
            _append(spool, "obs_names", np.array(scan.adata.obs_names[rows], dtype=names_dtype))
            _append(spool, "cell_type", np.full(rows.size, "unlabelled"))
            _append(spool, "split", np.full(rows.size, "pretrain"))
        write_npz_streamed(out_path, _shard_entries(spool, names_dtype, scan.n_kept, params.n_bins,
                                                    params.max_seq_len))
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    rep = acc.result()
    rep["vocabulary_genes_absent"] = int((cols < 0).sum())
    return rep
