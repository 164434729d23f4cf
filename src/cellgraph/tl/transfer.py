r"""Transfer evaluation: frozen embeddings of a pretrained model on a data set that took no part in
pretraining, beside the simple baselines, on the same splits, with the same probe and metric code.

The GREmLN paper (Zhang et al. 2025, sections 4.2-4.5) evaluates its pretrained encoders on data sets
separate from the pretraining corpus: cancer-infiltrating myeloid cells (reference cancer types -> query
cancer types), held-out CELLxGENE cell types (types absent from pretraining) and Adamson 2016 Perturb-seq
(which perturbation a cell received; the 20 perturbations with the largest centroid shift). The main
evaluation set (Human Immune in ``config/paper.yaml``) goes through ``cellgraph evaluate``; every further
set goes through this stage in three steps (``--task``):

``tokens``
    :func:`prepare_cells` (the expression stage's count QC and ``log1p(target_sum * x / total)``, or
    published log-normalised values when the file has no counts), optionally :func:`top_shift_labels`, then
    :func:`tokenize_transfer`: the cells tokenised with the *pretraining* vocabulary and the visible edges of
    the tokenize stage's gene graph (hidden edges never enter); vocabulary genes the data set lacks are
    never expressed (counted in the report).
``evaluate``
    :func:`transfer_annotation` on one model: out-of-fold predictions of a logistic-regression probe
    (:func:`cellgraph.tl.evaluate.make_annotation_probe`) on the model's mean-pool and CLS embeddings, an
    untrained encoder of the same shape, PCA of all genes and of the vocabulary genes (fitted on each fold's
    probe cells only) and the bag of token genes; macro-F1 with a 95% bootstrap interval over scored cells
    and paired bootstrap differences of every method against the model's mean-pool embedding.
``table``
    the per-model tables of every data set in one table for the report.

Protocols (:func:`probe_splits`): ``cross_validation`` (stratified k-fold over the data set's cells: every
cell scored once, by a probe that never saw it) and ``reference_query`` (the probe fits on every cell of the
reference file and scores every cell of the query file, as scGPT's myeloid benchmark).

Command lines (:mod:`cellgraph.cli.transfer`; what ``workflow/rules/transfer.smk`` calls)::

    cellgraph transfer --task tokens --adata ref.h5ad [--query-adata query.h5ad] --label-key cell_type \
        --vocab results/tokens/vocab.tsv --graph-edges results/tokens/graph_edges.tsv.gz --out-dir DIR
    cellgraph transfer --task evaluate --model-path results/train/gremln/model.pt --tokens-dir DIR --out-dir D2
    cellgraph transfer --task table --inputs D2/annotation.tsv ... --out tables/table_transfer.csv
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..io import read_h5ad, require_file

log = logging.getLogger(__name__)

__all__ = ["PROTOCOLS", "TABLE_COLUMNS", "prepare_cells", "top_shift_labels", "tokenize_transfer", "probe_splits",
           "macro_f1_codes", "bootstrap_macro_f1", "out_of_fold_predictions", "transfer_annotation", "visible_edges",
           "transfer_cells", "embeddings_adata", "transfer_table"]

PROTOCOLS = ("cross_validation", "reference_query")
REFERENCE, QUERY = "reference", "query"
MODEL_METHOD = "model_mean_pool"  # the paired differences are taken against this method
N_BOOT = 1000
#: Columns of the report's transfer table (:func:`transfer_table`).
TABLE_COLUMNS = ["dataset", "protocol", "model", "method", "macro_f1", "ci_low", "ci_high", "diff_vs_model",
                 "diff_ci_low", "diff_ci_high", "n_cells", "n_labels"]


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------


def _log_normalised(path: Path, label_key: str, log_layer: str):
    """The published log-normalised values of ``layers[log_layer]`` as X (CSR float32), checked."""
    adata = read_h5ad(path)
    if label_key not in adata.obs.columns:
        raise InputError(f"{path}: obs has no label column {label_key!r} (--label-key); available: "
                         f"{', '.join(map(str, adata.obs.columns)) or '(none)'}")
    if log_layer not in adata.layers:
        raise InputError(f"{path}: no layer {log_layer!r} (--log-layer); layers present: "
                         f"{', '.join(map(str, adata.layers.keys())) or '(none)'}")
    x = sp.csr_matrix(adata.layers[log_layer], dtype=np.float32)
    if not np.isfinite(x.data).all() or (x.data < 0).any():
        raise InputError(f"{path}: layers[{log_layer!r}] must hold finite, non-negative log-normalised values")
    if adata.obs[label_key].isna().any():
        raise InputError(f"{path}: obs[{label_key!r}] has {int(adata.obs[label_key].isna().sum())} missing labels")
    import anndata as ad

    out = ad.AnnData(X=x, obs=pd.DataFrame({label_key: adata.obs[label_key].astype(str).to_numpy()},
                                           index=adata.obs_names.astype(str)),
                     var=pd.DataFrame(index=adata.var_names.astype(str)))
    if "gene_name" in adata.var.columns:  # GEARS: Ensembl ids as var_names, symbols in var["gene_name"]
        out.var_names = pd.Index(adata.var["gene_name"].astype(str).to_numpy())
        out.var_names_make_unique()
    return out


def prepare_cells(path: str | Path, label_key: str, *, counts_layer: str | None = None,
                  log_layer: str | None = None, idmap: str | Path | None = None, gene_id_type: str = "auto",
                  min_mapped_fraction: float = 0.5, min_counts: int = 0, max_counts: int = 0, min_genes: int = 0,
                  target_sum: float = 1e4):
    """Cells of a transfer data set as log-normalised expression with HGNC symbols, and what was done.

    Parameters
    ----------
    path : h5ad; raw counts in ``X`` (or ``layers[counts_layer]``), or published log-normalised values in
        ``layers[log_layer]`` when the file holds no counts (GEARS' Adamson file).
    label_key : obs column of the labels (cell type, or perturbation for reverse perturbation).
    idmap, gene_id_type, min_mapped_fraction : as :func:`cellgraph.pp.expression.map_gene_ids`.
    min_counts, max_counts, min_genes : the expression stage's cell QC (count data only; 0 = off).
    target_sum : counts per cell after normalisation (``X = log1p(target_sum * counts / total)``).

    Returns
    -------
    (AnnData [cells, genes] with ``X`` log-normalised CSR float32 and ``obs["label"]`` str, dict report:
    cells in/out, QC counts, gene-id mapping, where the values came from).

    Raises
    ------
    InputError
        Missing file, label column or layer; counts that are not counts; gene ids that do not map; no cell
        left after QC.
    """
    import scanpy as sc

    from ..pp.expression import DEFAULT_IDMAP, load_input, map_gene_ids, quality_control

    path = require_file(path, "transfer data set")
    if log_layer:
        adata = _log_normalised(path, label_key, log_layer)
        adata, ids = map_gene_ids(adata, idmap or DEFAULT_IDMAP, gene_id_type, min_mapped_fraction, path)
        report = {"values": f"layers[{log_layer!r}] as published (log-normalised; no counts, so no count QC: "
                            "rank tokens depend only on the order of a cell's values, which log1p keeps)",
                  "gene_ids": ids, "cells_in": int(adata.n_obs)}
    else:
        p = {"counts_layer": counts_layer, "gene_id_type": gene_id_type, "min_mapped_fraction": min_mapped_fraction}
        adata, rep = load_input(path, label_key, p, idmap)
        adata, qc = quality_control(adata, min_counts, max_counts or 10**12, min_genes, 0, label_key)
        if adata.n_obs == 0:
            raise InputError(f"{path}: no cell passes QC (min_counts {min_counts}, max_counts {max_counts}, "
                             f"min_genes {min_genes})")
        sc.pp.normalize_total(adata, target_sum=target_sum)
        sc.pp.log1p(adata)
        report = {"values": f"counts from {rep['counts_from']}, log1p({target_sum:g} x / total)",
                  "gene_ids": rep["gene_ids"], "cells_in": rep["cells"], "qc": qc}
    adata.obs["label"] = adata.obs[label_key].astype(str).to_numpy()
    report.update(path=str(path), label_key=label_key, cells=int(adata.n_obs), genes=int(adata.n_vars),
                  label_counts={str(k): int(v) for k, v in adata.obs["label"].value_counts().sort_index().items()})
    return adata, report


def top_shift_labels(adata, control: str, n_top: int, seed: int, n_comps: int = 20):
    """The cells of the ``n_top`` labels whose centroid lies farthest from the control centroid.

    GREmLN paper section 4.5 (reverse perturbation on Adamson): the 20 perturbations with the largest centroid
    shift. The distance is Euclidean in the PCA space of the log-normalised X
    (:func:`cellgraph.tl.perturb.top_shift_perturbations`, ``n_comps`` components, seeded).

    Parameters
    ----------
    adata : AnnData [cells, genes]
        Log-normalised ``X``, ``obs["label"]`` the perturbation (``control`` for control cells).
    control : str
        Label of the control cells.
    n_top : int
        Number of labels kept (those with the largest shift).
    seed : int
        ``random_state`` of the PCA.
    n_comps : int, default 20
        PCA components.

    Returns
    -------
    tuple
        (AnnData subset [kept cells, genes] without control cells, DataFrame of every label's shift with its
        ``top`` flag).

    Raises
    ------
    InputError
        No control cell, or fewer than ``n_top`` perturbations.
    """
    from .perturb import top_shift_perturbations

    if not (adata.obs["label"] == control).any():
        raise InputError(f"--control {control!r}: no cell has this label; labels are, e.g., "
                         f"{sorted(adata.obs['label'].unique())[:5]}")
    probe = adata.copy()
    probe.obs["perturbation"] = probe.obs["label"].to_numpy()
    shifts = top_shift_perturbations(probe, control, n_top, n_comps, seed)
    keep = adata.obs["label"].isin(shifts.loc[shifts["top"], "perturbation"]).to_numpy()
    return adata[keep].copy(), shifts


# --------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------


def _aligned(adata, genes: Sequence[str]):
    """``adata`` restricted and ordered to ``genes``; genes it lacks become all-zero columns."""
    import anndata as ad

    pos = adata.var_names.get_indexer(pd.Index(list(genes)))
    x = adata.X.tocsr() if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    cols = sp.csr_matrix((x.shape[0], len(genes)), dtype=np.float32)
    have = np.flatnonzero(pos >= 0)
    if have.size:
        sel = sp.csr_matrix((np.ones(have.size, np.float32), (pos[have], have)), shape=(x.shape[1], len(genes)))
        cols = (x @ sel).tocsr().astype(np.float32)
    return ad.AnnData(X=cols, obs=adata.obs.copy(), var=pd.DataFrame(index=list(genes))), int(have.size)


def tokenize_transfer(adata, vocab: Sequence[str], graph: pd.DataFrame, n_bins: int, max_seq_len: int,
                      seed: int, role: Sequence[str] | np.ndarray | None = None) -> tuple[dict, dict]:
    """Rank tokens of transfer cells with the pretraining vocabulary and one shared gene graph.

    Parameters
    ----------
    adata : AnnData [cells, genes] from :func:`prepare_cells` (``obs["label"]``).
    vocab : ``["<pad>", "<cls>", genes...]`` of the pretrained model (``tokens/vocab.tsv``).
    graph : edge table ``source, target, weight`` of every cell (the visible edges of the tokenize stage's
        gene graph).
    n_bins, max_seq_len, seed : as :func:`cellgraph.pp.tokenize.tokenize_cells` (random tie-breaking, expressed
        genes only, as the default training tokens).
    role : str [cells] written to the shard's ``split`` array (``reference`` / ``query``); default all
        ``reference``.

    Returns
    -------
    (shard arrays of :func:`cellgraph.pp.tokenize.tokenize_cells` with ``cell_type`` = the label, dict report:
    vocabulary genes measured, truncated cells, graph edges, tokens per cell).

    Raises
    ------
    InputError
        If no vocabulary gene is measured in the data set.
    """
    from ..pp.tokenize import tokenize_cells

    genes = list(vocab[2:])
    tok, measured = _aligned(adata, genes)
    if measured == 0:
        raise InputError(f"none of the {len(genes)} vocabulary genes is measured in this data set "
                         "(check the gene ids: HGNC symbols are expected after mapping)")
    roles = np.asarray(role if role is not None else np.full(tok.n_obs, REFERENCE)).astype(str)
    tok.obs = pd.DataFrame({"split": roles, "label": tok.obs["label"].astype(str).to_numpy()}, index=tok.obs_names)
    tok.uns["cellgraph"] = {"label_key": "label"}
    stats: dict = {}
    arrays = tokenize_cells(tok, np.arange(tok.n_obs), graph, vocab, n_bins, max_seq_len, seed, stats)
    n_tokens = np.diff(arrays["gene_ptr"])
    report = {"vocab_genes": len(genes), "vocab_genes_measured": measured,
              "vocab_genes_missing": len(genes) - measured, "cells": int(tok.n_obs),
              "cells_without_tokens": int((n_tokens == 0).sum()), "tokens_per_cell_mean": float(n_tokens.mean()),
              "truncated_cells": int(np.asarray(stats["truncated"]).sum()), "graph_edges": int(len(graph)),
              "graph_edges_outside_vocab": int(stats["graph_edges_outside_vocab"]),
              "cells_by_role": {r: int((roles == r).sum()) for r in sorted(set(roles))}}
    return arrays, report


# --------------------------------------------------------------------------------------------------
# Probe, metric and intervals
# --------------------------------------------------------------------------------------------------


def probe_splits(y: np.ndarray, role: np.ndarray, protocol: str, n_splits: int,
                 seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit, score)`` cell positions of each probe fit.

    ``cross_validation``: ``StratifiedKFold(n_splits, shuffle=True, random_state=seed)`` over all cells, so
    every cell is scored exactly once by a probe that was not fitted on it. ``reference_query``: one split,
    fit on the ``reference`` cells, score the ``query`` cells (``role`` [C]).

    Parameters
    ----------
    y : numpy.ndarray
        Cell labels, [C] (compared as strings).
    role : numpy.ndarray
        Per-cell role, [C], ``"reference"`` or ``"query"`` (read by ``reference_query`` only).
    protocol : str
        ``"cross_validation"`` or ``"reference_query"``.
    n_splits : int
        Number of folds (cross-validation).
    seed : int
        ``random_state`` of the fold shuffle.

    Returns
    -------
    list of tuple of numpy.ndarray
        One ``(fit, score)`` pair of sorted int cell positions per probe fit (``n_splits`` pairs, or one).

    Raises
    ------
    InputError
        Unknown protocol; fewer than 2 labels or a label with fewer than ``n_splits`` cells
        (cross-validation); no reference or no query cell.
    """
    from sklearn.model_selection import StratifiedKFold

    y, role = np.asarray(y).astype(str), np.asarray(role).astype(str)
    if protocol == "cross_validation":
        labels, counts = np.unique(y, return_counts=True)
        small = {str(lab): int(c) for lab, c in zip(labels, counts) if c < n_splits}
        if small or len(labels) < 2:
            raise InputError(f"cross-validation with {n_splits} folds needs >= 2 labels with >= {n_splits} cells "
                             f"each; too small: {small or dict(zip(labels.tolist(), counts.tolist()))}")
        skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(np.sort(a), np.sort(b)) for a, b in skf.split(np.zeros(len(y)), y)]
    if protocol == "reference_query":
        fit, score = np.flatnonzero(role == REFERENCE), np.flatnonzero(role == QUERY)
        if fit.size == 0 or score.size == 0:
            raise InputError(f"reference_query needs reference and query cells; got {fit.size} and {score.size}")
        return [(fit, score)]
    raise InputError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")


def macro_f1_codes(true: np.ndarray, pred: np.ndarray, n_labels: int, weights: np.ndarray | None = None) -> float:
    """Macro-F1 over the ``n_labels`` true labels from integer codes: the mean over labels of
    2 TP / (2 TP + FP + FN), 0 where the denominator is 0 (scikit-learn's ``f1_score(average="macro",
    zero_division=0)`` with the true labels listed).

    ``true`` int [C] in ``0..n_labels-1``; ``pred`` int [C] in ``0..n_labels``, where ``n_labels`` stands for
    a predicted label that no scored cell has (it costs recall, adds no class); ``weights`` [C] counts each
    cell that many times (a bootstrap resample).

    Parameters
    ----------
    true : numpy.ndarray
        True label codes, int [C], in ``0..n_labels-1``.
    pred : numpy.ndarray
        Predicted label codes, int [C], in ``0..n_labels``.
    n_labels : int
        Number of true labels.
    weights : numpy.ndarray, optional
        Per-cell counts, [C]; ``None`` counts every cell once.

    Returns
    -------
    float
        Macro-F1, fraction 0-1.
    """
    k = n_labels
    w = np.ones(len(true)) if weights is None else np.asarray(weights, dtype=np.float64)
    cm = np.bincount(np.asarray(true) * (k + 1) + np.asarray(pred), weights=w,
                     minlength=k * (k + 1)).reshape(k, k + 1)
    tp = cm[np.arange(k), np.arange(k)]
    fn = cm.sum(1) - tp
    fp = cm[:, :k].sum(0) - tp
    denom = 2 * tp + fp + fn
    return float(np.mean(np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)))


def bootstrap_macro_f1(y: np.ndarray, preds: dict[str, np.ndarray], n_boot: int = N_BOOT, seed: int = 0,
                       reference: str = MODEL_METHOD) -> pd.DataFrame:
    """Macro-F1 of each method with a 95% percentile bootstrap interval over scored cells, and the paired
    difference (``reference`` minus the method) on the same resamples (Efron & Tibshirani 1993, ch. 13).

    Parameters
    ----------
    y : str array [C]
        True labels of the scored cells.
    preds : dict of str to str array [C]
        ``{method: predictions}``.
    n_boot : int, default N_BOOT (1000)
        Resamples of the C cells with replacement (one set shared by every method).
    seed : int, default 0
        Seed of ``numpy.random.default_rng`` for the resamples.
    reference : str, default MODEL_METHOD ("model_mean_pool")
        Method the paired differences are taken against.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``method, macro_f1, ci_low, ci_high, diff_vs_model, diff_ci_low, diff_ci_high,
        n_cells, n_labels`` (the diff columns are NaN when ``reference`` is not in ``preds``). Labels are
        those of ``y``; a prediction outside them counts as a false positive of no label.
    """
    y = np.asarray(y).astype(str)
    labels = np.unique(y)
    k = len(labels)
    t = np.searchsorted(labels, y)
    # a predicted label that no scored cell has gets the extra code k (macro_f1_codes)
    p = {m: _codes_or_extra(labels, np.asarray(pr).astype(str)) for m, pr in preds.items()}
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=n_boot)
    boot = {m: np.array([macro_f1_codes(t, pm, k, wi) for wi in w]) for m, pm in p.items()}
    rows = []
    for m, pm in p.items():
        point = macro_f1_codes(t, pm, k, None)
        row = {"method": m, "macro_f1": point, "ci_low": np.quantile(boot[m], 0.025),
               "ci_high": np.quantile(boot[m], 0.975), "diff_vs_model": np.nan, "diff_ci_low": np.nan,
               "diff_ci_high": np.nan, "n_cells": len(y), "n_labels": k}
        if reference in p:
            d = boot[reference] - boot[m]
            row.update(diff_vs_model=macro_f1_codes(t, p[reference], k, None) - point,
                       diff_ci_low=np.quantile(d, 0.025), diff_ci_high=np.quantile(d, 0.975))
        rows.append(row)
    return pd.DataFrame(rows)


def _codes_or_extra(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Positions of ``values`` in the sorted ``labels``; ``len(labels)`` for a value not among them."""
    pos = np.searchsorted(labels, values)
    known = (pos < len(labels)) & (labels[np.minimum(pos, len(labels) - 1)] == values)
    return np.where(known, pos, len(labels))


def _feature_blocks(emb: dict, rand: dict, x_all, x_vocab, bag: np.ndarray) -> dict[str, Any]:
    """``{method: features}``: arrays [C, d], or ``("pca", matrix)`` for PCA fitted per fold."""
    return {MODEL_METHOD: emb["mean_pool"], "model_cls": emb["cls"],
            "random_init_mean_pool": rand["mean_pool"], "random_init_cls": rand["cls"],
            "pca_all_genes": ("pca", x_all), "pca_vocabulary": ("pca", x_vocab), "bag_of_genes": bag}


def out_of_fold_predictions(features: dict[str, Any], y: np.ndarray, splits, seed: int,
                            n_pcs: int = 50) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Predictions of the annotation probe for every scored cell, each by a probe fitted without it.

    Parameters
    ----------
    features : dict
        ``{method: float [C, d]}``, or ``("pca", matrix [C, G])`` for PCA fitted on the fold's fit cells
        only (:func:`cellgraph.tl.evaluate.pca_features`, ``n_pcs`` components).
    y : str array [C]
        Labels of the cells.
    splits : list of (fit, score) position arrays
        From :func:`probe_splits`.
    seed : int
        Fold ``i`` seeds its probe and its PCA with ``seed + i``.
    n_pcs : int, default 50
        PCA components of the ``"pca"`` features.

    Returns
    -------
    tuple
        (scored cell positions [S] in split order, ``{method: str [S]}``, fold index [S]).
    """
    from .evaluate import make_annotation_probe, pca_features

    y = np.asarray(y).astype(str)
    scored = np.concatenate([s for _, s in splits])
    fold = np.concatenate([np.full(len(s), i) for i, (_, s) in enumerate(splits)])
    preds: dict[str, list] = {m: [] for m in features}
    for i, (fit, score) in enumerate(splits):
        for m, f in features.items():
            if isinstance(f, tuple):
                a, b, _ = pca_features(f[1], fit, score, n_pcs, seed + i)
            else:
                a, b = f[fit], f[score]
            preds[m].append(make_annotation_probe(seed + i).fit(a, y[fit]).predict(b))
    return scored, {m: np.concatenate(v) for m, v in preds.items()}, fold


def transfer_annotation(model, ds, cells, vocab: Sequence[str], protocol: str, n_splits: int, seed: int,
                        n_boot: int = N_BOOT, n_pcs: int = 50) -> dict[str, Any]:
    """Annotation of a transfer data set from one frozen model and from the baselines, on the same splits.

    Parameters
    ----------
    model : GREmLN
        A pretrained encoder (:func:`cellgraph.models.gremln.load`).
    ds : cellgraph.io.shards.TokenDataset
        The data set (:func:`tokenize_transfer`; ``cell_type`` is the label, ``split`` the role
        ``reference``/``query``).
    cells : AnnData
        The same cells (``obs_names`` match ``ds.obs_names``), log-normalised ``X``.
    vocab : sequence of str
        The model's vocabulary.
    protocol, n_splits, seed : str, int, int
        See :func:`probe_splits`; ``seed`` also seeds the untrained model, the probes and the bootstrap.
    n_boot : int, default N_BOOT (1000)
        Bootstrap resamples of :func:`bootstrap_macro_f1`.
    n_pcs : int, default 50
        Components of the PCA baselines (:func:`out_of_fold_predictions`).

    Returns
    -------
    dict
        ``table`` (:func:`bootstrap_macro_f1`, one row per method), ``predictions`` (DataFrame: obs_name,
        label, fold, one column per method), ``embeddings`` (``mean_pool``, ``cls`` [C, d]), ``details``.
        Methods: the model's mean-pool and CLS embeddings, the same for ``GREmLN(model.config)`` untrained
        (:func:`cellgraph.tl.evaluate.random_init_embeddings`), PCA of all genes and of the measured
        vocabulary genes (fitted on each fold's probe cells only) and the bag of token genes.

    Raises
    ------
    InputError
        Cells of the shard missing from ``cells``; see :func:`probe_splits`.
    """
    from .evaluate import adata_rows, bag_of_genes, encode_dataset, random_init_embeddings

    n_vocab = len(vocab)
    rows = adata_rows(cells, ds.obs_names)
    emb = encode_dataset(model, ds, n_vocab)
    rand = random_init_embeddings(model, {"all": ds}, n_vocab, seed)["all"]
    x_all = cells.X[rows]
    vcols = cells.var_names.get_indexer(pd.Index(list(vocab[2:])))
    x_vocab = x_all[:, vcols[vcols >= 0]]
    features = _feature_blocks(emb, rand, x_all, x_vocab, bag_of_genes(ds, n_vocab))
    y = ds.cell_type
    splits = probe_splits(y, ds.split, protocol, n_splits, seed)
    scored, preds, fold = out_of_fold_predictions(features, y, splits, seed, n_pcs)
    table = bootstrap_macro_f1(y[scored], preds, n_boot, seed)
    predictions = pd.DataFrame({"obs_name": ds.obs_names[scored], "label": y[scored], "fold": fold} | preds)
    details = {"protocol": protocol, "n_splits": len(splits), "probe": "StandardScaler + LogisticRegression(C=1)",
               "fit_cells": [int(len(f)) for f, _ in splits], "scored_cells": int(len(scored)),
               "pca_all_genes_genes": int(x_all.shape[1]), "pca_vocabulary_genes": int(x_vocab.shape[1]),
               "labels": sorted(set(y.tolist())), "interval": f"95% percentile bootstrap over scored cells, {n_boot} "
                                                               "resamples shared by every method (paired)"}
    return {"table": table, "predictions": predictions, "embeddings": emb, "details": details}


# --------------------------------------------------------------------------------------------------
# The steps of ``cellgraph transfer`` (:mod:`cellgraph.cli.transfer` reads, calls these and writes)
# --------------------------------------------------------------------------------------------------


def visible_edges(edges: pd.DataFrame) -> pd.DataFrame:
    """The edges of the tokenize stage's gene graph that pretraining saw (hidden edges removed).

    Parameters
    ----------
    edges : ``source, target, weight, hidden`` (:func:`cellgraph.tl.evaluate.read_graph_edges`).

    Returns
    -------
    DataFrame ``source, target, weight`` of the rows with ``hidden`` False, index 0..E-1.
    """
    return edges.loc[~edges["hidden"], ["source", "target", "weight"]].reset_index(drop=True)


def transfer_cells(adata: str | Path, label_key: str, *, query_adata: str | Path | None = None,
                   protocol: str = "cross_validation", counts_layer: str | None = None,
                   log_layer: str | None = None, idmap: str | Path | None = None, min_counts: int = 0,
                   max_counts: int = 0, min_genes: int = 0, target_sum: float = 1e4, top_shift: int = 0,
                   control: str | None = None, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """The data set's cells (reference + query) with ``obs["role"]``, after QC and the label selection.

    Each file goes through :func:`prepare_cells` (same options); obs names get the prefix ``reference:`` or
    ``query:`` and the two are joined (outer join of the genes, missing values 0). With ``top_shift`` > 0
    only the cells of the ``top_shift`` labels farthest from the ``control`` cells are kept
    (:func:`top_shift_labels`; GREmLN, Zhang et al. 2025, section 4.5).

    Parameters
    ----------
    adata : h5ad of the data set (the reference file for ``reference_query``).
    label_key : obs column of the labels.
    query_adata : h5ad of the query cells (protocol ``reference_query``), or None.
    protocol : one of :data:`PROTOCOLS`; ``reference_query`` needs ``query_adata``.
    counts_layer, log_layer, idmap, min_counts, max_counts, min_genes, target_sum : :func:`prepare_cells`.
    top_shift : labels to keep by centroid shift (0 = all); control : label of the control cells.
    seed : seed of the PCA of :func:`top_shift_labels`.

    Returns
    -------
    (AnnData [cells, genes], log-normalised CSR float32 ``X``, ``obs["label"]`` and ``obs["role"]``;
    report dict with ``reference``, ``query`` (when given) and ``top_shift`` (when used) entries).

    Raises
    ------
    InputError
        See :func:`prepare_cells` and :func:`top_shift_labels`; ``reference_query`` without ``query_adata``;
        ``top_shift`` without ``control``.
    """
    import anndata as ad

    report: dict[str, Any] = {}
    opts = dict(counts_layer=counts_layer, log_layer=log_layer, idmap=idmap, min_counts=min_counts,
                max_counts=max_counts, min_genes=min_genes, target_sum=target_sum)
    ref, report["reference"] = prepare_cells(adata, label_key, **opts)
    parts = {REFERENCE: ref}
    if query_adata:
        parts[QUERY], report["query"] = prepare_cells(query_adata, label_key, **opts)
    elif protocol == "reference_query":
        raise InputError("--protocol reference_query needs --query-adata")
    for role, a in parts.items():
        a.obs_names = [f"{role}:{n}" for n in a.obs_names]
        a.obs["role"] = role
    cells = ad.concat(parts.values(), join="outer", fill_value=0) if len(parts) > 1 else ref
    cells.X = sp.csr_matrix(cells.X, dtype=np.float32)
    if top_shift:
        if not control:
            raise InputError("--top-shift needs --control (the label of control cells)")
        cells, shifts = top_shift_labels(cells, control, top_shift, seed)
        report["top_shift"] = {"n_top": top_shift, "control": control, "shifts": shifts.to_dict("records")}
    return cells, report


def embeddings_adata(ds, predictions: pd.DataFrame, embeddings: dict[str, np.ndarray], attention: str):
    """The cell embeddings of :func:`transfer_annotation` as an AnnData for scanpy.

    Parameters
    ----------
    ds : the data set's :class:`cellgraph.io.shards.TokenDataset` (C cells).
    predictions : ``transfer_annotation(...)["predictions"]`` (``obs_name``, ``fold`` of each scored cell).
    embeddings : ``{"mean_pool": [C, d], "cls": [C, d]}``.
    attention : the model's kind; the embeddings go to ``obsm["X_<attention>"]`` (mean-pool) and
        ``obsm["X_<attention>_cls"]`` (float32).

    Returns
    -------
    AnnData with ``X`` of shape [C, 0] and ``obs`` (index ``ds.obs_names``): ``label``, ``role``
    (categoricals) and ``fold`` (int; -1 marks a cell no probe scored: the reference cells of
    ``reference_query``).
    """
    import anndata as ad

    obs = pd.DataFrame({"label": pd.Categorical(ds.cell_type), "role": pd.Categorical(ds.split)}, index=ds.obs_names)
    fold = pd.Series(predictions["fold"].to_numpy(), index=predictions["obs_name"].to_numpy())
    obs["fold"] = fold.reindex(ds.obs_names).fillna(-1).astype(int).to_numpy()
    return ad.AnnData(X=np.zeros((len(ds), 0), np.float32), obs=obs,
                      obsm={f"X_{attention}": embeddings["mean_pool"].astype(np.float32),
                            f"X_{attention}_cls": embeddings["cls"].astype(np.float32)})


def transfer_table(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per-model annotation tables of every data set in one table (the report's transfer table).

    Parameters
    ----------
    frames : ``annotation.tsv`` tables of ``--task evaluate`` (:func:`bootstrap_macro_f1` rows with
        ``dataset``, ``model``, ``protocol`` columns).

    Returns
    -------
    DataFrame with the columns of :data:`TABLE_COLUMNS`, the frames' rows in order (empty without frames).
    """
    return pd.concat(frames, ignore_index=True)[TABLE_COLUMNS] if frames else pd.DataFrame(columns=TABLE_COLUMNS)
