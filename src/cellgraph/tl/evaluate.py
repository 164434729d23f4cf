r"""Evaluation of one frozen GREmLN / vanilla model: annotation, hidden-edge recovery, probe, masked tokens.

Embeddings come from ``model.encode(batch) -> [B, 1+n, d]`` (position 0 = CLS, 1..n gene tokens) on the
token shards (GREmLN, Zhang et al. 2025). The tasks:

a. **Cell-type annotation** (paper sec. 4.2, Table 1, Fig. 1). Per cell, the mean of its gene-token
   embeddings ("mean-pool") and the CLS embedding. A logistic-regression probe on standardised features
   (scikit-learn) is fitted on ``train`` cells and scored on ``test`` cells with macro-averaged precision,
   recall and F1. Split ``s`` (seed ``seed + s``) fits the probe on a stratified random 80% subsample of
   the train cells and scores it on all test cells; mean and sample sd (ddof=1) over ``n_splits``. With
   the held-out cell types (cells and graphs never seen by the encoder; graphs from Bayesian
   integration): split ``s`` halves the held-out cells 50/50 stratified, fits on train + half A and scores
   on test + half B, reporting macro-F1 and each held-out type's precision / recall / F1.
   **Baselines** (same cells, same probe, same splits): an untrained GREmLN of the same configuration
   (mean-pool and CLS), 50 principal components of the log-normalised expression (all genes, or the
   vocabulary genes; PCA fitted on the train cells only) and the binary bag of the cell's gene tokens.
   **Graph removal**: the relative change ``||E - E0||_F / ||E||_F`` of the test embeddings when every
   cell's Laplacian is replaced by zeros (``exp(-beta 0) = I``: no diffusion), and the annotation macro-F1
   with graph-free embeddings of train and test cells.
b. **Hidden-edge recovery** (paper sec. 4.3, Fig. 2). The tokenize stage hides a seeded fraction of the
   gene graph's edges from every shard before pretraining (``tokens/graph_edges.tsv.gz``, column
   ``hidden``); a gene's embedding is the mean of its token embeddings over the test cells. A link
   classifier (a graph-attention layer, ``torch_geometric.nn.GATConv``, over the visible graph and an MLP on
   ``[h_u * h_v || |h_u - h_v|]``; Velickovic et al. 2018) is trained on visible edges vs sampled non-edges
   and scores every hidden edge ``(s, t)`` beside ``n_negatives`` non-edges ``(s, g)`` of the same source
   gene (so a hub source cannot win by degree alone): pooled AUROC and average precision
   (scikit-learn), a bootstrap CI of the AUROC over hidden edges (each with its own negatives), and the
   same classifier on random gene features as a control (what the visible graph alone recovers).
c. **Linear probe** (paper appendix A.6, Fig. 4). Ridge regression (``--probe-alpha``) on standardised
   gene-token embeddings to the token's normalised log expression ``batch["expr"]``, fitted on a seeded
   subsample of train-cell tokens, R^2 on a subsample of test-cell tokens.
d. **Masked tokens** (paper sec. 2.3). On the test cells, ``max(1, round(mask_rate * n_real))`` gene
   tokens per cell get the MASK bin (the training mask generator, evaluation stream); the model's
   cross-entropy and accuracy at those positions beside two baselines at the same positions: each gene's
   bin distribution over the train shard, and the cell's own visible bins (add-0.5 smoothing both).

The metric functions work on plain arrays; :func:`load_evaluation_inputs` reads the model and shards and
:func:`evaluate_model` runs every task (``cellgraph evaluate``, :mod:`cellgraph.cli.evaluate`, writes the results).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import atomic_path, require_file

log = logging.getLogger(__name__)

__all__ = [
    "summarize",
    "make_annotation_probe",
    "stratified_subsample",
    "stratified_halves",
    "classification_scores",
    "confusion",
    "annotate_seen",
    "annotate_with_heldout",
    "pca_features",
    "bag_of_genes",
    "random_init_embeddings",
    "annotation_baselines",
    "relative_change",
    "graph_removal",
    "undirected_pairs",
    "sample_non_edges",
    "link_prediction",
    "edge_metrics",
    "shard_gene_pairs",
    "read_graph_edges",
    "check_hidden_edges_absent",
    "mean_gene_embedding",
    "source_matched_negatives",
    "grouped_bootstrap_auroc",
    "hidden_edge_recovery",
    "linear_probe",
    "per_gene_log_probs",
    "per_cell_baseline",
    "evaluation_mask",
    "paired_bootstrap_ci",
    "masked_token_evaluation",
    "encode_dataset",
    "write_embeddings",
    "load_model",
    "load_evaluation_inputs",
    "evaluate_model",
    "annotation_task",
    "evaluation_tasks",
]

TRAIN_FRACTION = 0.8  # share of the train cells one annotation split fits on
PROBE_MAX_TOKENS = 20000  # tokens the ridge probe is fitted on / scored on (each)
SCATTER_POINTS = 2000  # (true, predicted) pairs saved for the probe figure
LINK_EPOCHS = 150
LINK_HIDDEN = 32
LINK_LR = 0.01
LINK_SUPERVISION_FRACTION = 0.3  # visible edges held out of message passing each epoch as positives
N_NEGATIVES = 10  # source-matched non-edges scored beside each hidden edge
N_BOOT = 1000  # bootstrap resamples of every confidence interval
N_PCS = 50  # principal components of the PCA baselines
PSEUDOCOUNT = 0.5  # add-0.5 smoothing of the masked-token baselines' bin distributions
EVAL_MASK_STREAM = 3  # mask generator stream of the masked-token evaluation (train 1, validation 2)
EDGE_COLUMNS = ("source", "target", "weight", "hidden")


# --------------------------------------------------------------------------------------------------
# a. Cell-type annotation
# --------------------------------------------------------------------------------------------------


def summarize(values) -> dict[str, Any]:
    """``{"mean", "sd", "values"}`` of a list of floats; sd is the sample sd (ddof=1; 0 for one value).

    Parameters
    ----------
    values : sequence of float
        The values, e.g. one metric per split.

    Returns
    -------
    dict
        ``mean`` and ``sd`` (float, in the unit of ``values``) and ``values`` (list of float).
    """
    v = np.asarray(values, dtype=np.float64)
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "sd": sd, "values": v.tolist()}


def make_annotation_probe(seed: int):
    """Logistic-regression probe: ``StandardScaler`` then multinomial ``LogisticRegression(C=1)`` (L2).

    Parameters
    ----------
    seed : int
        ``random_state`` of the logistic regression.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Unfitted (``max_iter=2000``); ``fit(x [N, d], y [N])``, then ``predict(x) -> [N]`` labels.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))


def stratified_subsample(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a stratified random ``fraction`` of ``y`` [N] (all of ``y`` when fraction >= 1).

    Parameters
    ----------
    y : numpy.ndarray
        Labels [N] to stratify by.
    fraction : float
        Share 0-1 of the positions to keep.
    seed : int
        ``random_state`` of ``sklearn.model_selection.train_test_split``.

    Returns
    -------
    numpy.ndarray
        Sorted int positions into ``y``.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if fraction >= 1.0:
        return idx
    keep, _ = train_test_split(idx, train_size=fraction, stratify=y, random_state=seed)
    return np.sort(keep)


def stratified_halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sorted position arrays splitting ``y`` [N] 50/50, stratified by label.

    Parameters
    ----------
    y : numpy.ndarray
        Labels [N].
    seed : int
        ``random_state`` of ``sklearn.model_selection.train_test_split``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(a, b)``: sorted int positions of the two halves.

    Raises
    ------
    ValueError
        From scikit-learn, if a label has fewer than 2 members.
    """
    from sklearn.model_selection import train_test_split

    a, b = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=seed)
    return np.sort(a), np.sort(b)


def classification_scores(y_true, y_pred, labels) -> dict[str, float]:
    """Macro-averaged precision, recall and F1 (``sklearn.metrics.precision_recall_fscore_support``).

    Parameters
    ----------
    y_true, y_pred : array-like
        True and predicted labels [N].
    labels : sequence
        The labels averaged over; an ill-defined score counts 0 (``zero_division=0``).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``macro_f1``: floats 0-1.
    """
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {"precision": float(p), "recall": float(r), "macro_f1": float(f)}


def confusion(y_true, y_pred, labels) -> dict[str, Any]:
    """Confusion matrix [K, K] (rows = true class in ``labels`` order): counts and row-normalised.

    Parameters
    ----------
    y_true, y_pred : array-like
        True and predicted labels [N].
    labels : sequence
        The K labels, in row and column order.

    Returns
    -------
    dict
        ``labels`` (list), ``counts`` (int [K, K], nested lists) and ``normalized`` (each row divided by its
        sum, fraction 0-1; an all-zero row stays 0).
    """
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(y_true, y_pred, labels=labels)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    return {"labels": list(labels), "counts": counts.tolist(), "normalized": norm.tolist()}


def annotate_seen(x_train, y_train, x_test, y_test, n_splits: int, seed: int,
                  train_fraction: float = TRAIN_FRACTION) -> dict[str, Any]:
    """Cell-type annotation of seen types: probe on train cells, macro metrics on test cells.

    Parameters
    ----------
    x_train : float array [N_train, d]; y_train : str array [N_train]
    x_test : float array [N_test, d]; y_test : str array [N_test]
    n_splits : number of splits; split ``s`` uses seed ``seed + s`` for the stratified
        ``train_fraction`` subsample of the train cells; all test cells are scored every time.

    Returns
    -------
    dict with ``precision``, ``recall``, ``macro_f1`` (each :func:`summarize`), ``confusion_matrix`` of
    split 0 (:func:`confusion`), ``labels``, ``n_fit`` (cells the probe was fitted on per split) and
    ``n_test``.
    """
    y_train, y_test = np.asarray(y_train).astype(str), np.asarray(y_test).astype(str)
    labels = sorted(str(t) for t in set(y_train) | set(y_test))
    per: dict[str, list[float]] = {"precision": [], "recall": [], "macro_f1": []}
    cm = None
    n_fit = []
    for s in range(n_splits):
        sub = stratified_subsample(y_train, train_fraction, seed + s)
        probe = make_annotation_probe(seed + s).fit(x_train[sub], y_train[sub])
        pred = probe.predict(x_test)
        for k, v in classification_scores(y_test, pred, labels).items():
            per[k].append(v)
        n_fit.append(int(sub.size))
        if s == 0:
            cm = confusion(y_test, pred, labels)
    out = {k: summarize(v) for k, v in per.items()}
    out.update(confusion_matrix=cm, labels=labels, n_fit=n_fit, n_test=int(len(y_test)))
    return out


def annotate_with_heldout(x_train, y_train, x_test, y_test, x_held, y_held, n_splits: int,
                          seed: int) -> dict[str, Any]:
    """Annotation including held-out cell types (cells and graphs never seen by the encoder).

    Split ``s`` halves the held-out cells [N_held] 50/50 stratified (seed ``seed + s``), fits the probe on
    all train cells + half A and scores it on all test cells + half B.

    Parameters
    ----------
    x_train, x_test, x_held : numpy.ndarray
        Cell embeddings [N_train, d], [N_test, d], [N_held, d].
    y_train, y_test, y_held : array-like
        Their cell types [N_train], [N_test], [N_held] (compared as strings).
    n_splits : int
        Number of splits.
    seed : int
        Split ``s`` seeds the halves and the probe with ``seed + s``.

    Returns
    -------
    dict with overall ``precision``, ``recall``, ``macro_f1`` (:func:`summarize`), ``heldout_types``:
    ``{type: {"precision", "recall", "f1"}}`` (each :func:`summarize`), ``confusion_matrix`` of split 0,
    ``labels``, ``n_fit`` and ``n_test`` per split.

    Raises
    ------
    ValueError
        From :func:`stratified_halves`, if a held-out type has fewer than 2 cells.
    """
    from sklearn.metrics import precision_recall_fscore_support

    y_train, y_test, y_held = (np.asarray(y).astype(str) for y in (y_train, y_test, y_held))
    labels = sorted(str(t) for t in set(y_train) | set(y_test) | set(y_held))
    held_types = sorted(str(t) for t in set(y_held))
    per: dict[str, list[float]] = {"precision": [], "recall": [], "macro_f1": []}
    per_type = {t: {"precision": [], "recall": [], "f1": []} for t in held_types}
    cm = None
    n_fit, n_test = [], []
    for s in range(n_splits):
        a, b = stratified_halves(y_held, seed + s)
        xf = np.concatenate([x_train, x_held[a]])
        yf = np.concatenate([y_train, y_held[a]])
        xs = np.concatenate([x_test, x_held[b]])
        ys = np.concatenate([y_test, y_held[b]])
        pred = make_annotation_probe(seed + s).fit(xf, yf).predict(xs)
        for k, v in classification_scores(ys, pred, labels).items():
            per[k].append(v)
        p, r, f, _ = precision_recall_fscore_support(ys, pred, labels=held_types, average=None, zero_division=0)
        for i, t in enumerate(held_types):
            per_type[t]["precision"].append(float(p[i]))
            per_type[t]["recall"].append(float(r[i]))
            per_type[t]["f1"].append(float(f[i]))
        n_fit.append(int(len(yf)))
        n_test.append(int(len(ys)))
        if s == 0:
            cm = confusion(ys, pred, labels)
    out = {k: summarize(v) for k, v in per.items()}
    out["heldout_types"] = {t: {k: summarize(v) for k, v in d.items()} for t, d in per_type.items()}
    out.update(confusion_matrix=cm, labels=labels, n_fit=n_fit, n_test=n_test)
    return out


# --------------------------------------------------------------------------------------------------
# a. Annotation baselines and graph removal
# --------------------------------------------------------------------------------------------------


def pca_features(x, train_rows: np.ndarray, test_rows: np.ndarray, n_components: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Principal components of ``x`` fitted on the train rows only, for train and test rows.

    Parameters
    ----------
    x : float array or scipy sparse matrix [N, G] (cells x genes, e.g. log-normalised ``adata.X``).
    train_rows, test_rows : int arrays of row positions.
    n_components : wanted components; capped at ``min(n_train, G) - 1`` (ARPACK needs fewer than both).
    seed : int
        ``random_state`` of the PCA.

    Returns
    -------
    tuple
        ``(z_train [N_train, k], z_test [N_test, k], k)``: scikit-learn ``PCA(svd_solver="arpack",
        random_state=seed)`` (centring implicit for sparse input).

    Raises
    ------
    ValueError
        If fewer than 2 train rows or genes.
    """
    from sklearn.decomposition import PCA

    x_train, x_test = x[np.asarray(train_rows)], x[np.asarray(test_rows)]
    k = int(min(n_components, x_train.shape[0] - 1, x_train.shape[1] - 1))
    if k < 1:
        raise ValueError(f"PCA needs at least 2 train cells and 2 genes, got {x_train.shape}")
    pca = PCA(n_components=k, svd_solver="arpack", random_state=seed).fit(x_train)
    return pca.transform(x_train), pca.transform(x_test), k


def bag_of_genes(dataset, n_vocab: int) -> np.ndarray:
    """Binary cells x genes matrix [C, V-2] (float32): 1 where the gene is a token of the cell's shard entry.

    Columns are the vocabulary genes in token-id order (``vocab[2:]``).

    Parameters
    ----------
    dataset : cellgraph.io.shards.TokenDataset
        C cells; its ``gene_ids`` and ``gene_ptr`` are read.
    n_vocab : int
        Vocabulary size V (``<pad>`` and ``<cls>`` included).

    Returns
    -------
    numpy.ndarray
        float32 [C, V-2] of 0/1.

    Raises
    ------
    ValueError
        If a token id is outside ``2..n_vocab-1``.
    """
    ids = np.asarray(dataset.gene_ids, dtype=np.int64)
    if ids.size and (ids.min() < 2 or ids.max() >= n_vocab):
        raise ValueError(f"gene ids must lie in 2..{n_vocab - 1}")
    cell = np.repeat(np.arange(len(dataset)), np.diff(dataset.gene_ptr))
    out = np.zeros((len(dataset), n_vocab - 2), dtype=np.float32)
    out[cell, ids - 2] = 1.0
    return out


def random_init_embeddings(model, datasets: dict[str, Any], n_vocab: int, seed: int) -> dict[str, dict]:
    """Embeddings of an untrained model: ``GREmLN(model.config)`` built after ``torch.manual_seed(seed)``.

    Parameters
    ----------
    model : GREmLN
        The trained model; only its ``config`` is used.
    datasets : dict of str to TokenDataset
        The datasets to embed, by name.
    n_vocab : int
        Vocabulary size V.
    seed : int
        Torch seed of the random initialisation.

    Returns
    -------
    dict
        ``{name: encode_dataset(random_model, dataset, n_vocab)}`` for every dataset of ``datasets`` (same
        tokens and graphs as the trained model sees; eval mode).
    """
    import torch

    from ..models.gremln import GREmLN

    torch.manual_seed(seed)
    rand = GREmLN(model.config).eval()
    return {name: encode_dataset(rand, ds, n_vocab) for name, ds in datasets.items()}


def adata_rows(adata, obs_names) -> np.ndarray:
    """Row positions [C] of ``obs_names`` in ``adata.obs_names``.

    Parameters
    ----------
    adata : anndata.AnnData
        The cells to look in.
    obs_names : array-like
        C cell names (compared as strings).

    Returns
    -------
    numpy.ndarray
        int positions [C].

    Raises
    ------
    InputError
        Naming the number of missing cells and up to 3 of them.
    """
    pos = adata.obs_names.get_indexer(np.asarray(obs_names).astype(str))
    if (pos < 0).any():
        missing = np.asarray(obs_names)[pos < 0]
        raise InputError(f"{missing.size} cells of the token shards are not in the adata, e.g. {missing[:3].tolist()}")
    return pos


def annotation_baselines(adata, train_ds, test_ds, vocab: list[str], n_splits: int, seed: int,
                         random_init: dict[str, dict] | None = None,
                         n_pcs: int = N_PCS) -> dict[str, Any]:
    """Annotation of the seen test cells from non-model features, with :func:`annotate_seen`'s probe.

    Parameters
    ----------
    adata : AnnData with log-normalised expression in ``X``; cells found by ``obs_names``.
    train_ds, test_ds : TokenDatasets of the probe's train cells and the test cells.
    vocab : ``["<pad>", "<cls>", genes...]``.
    n_splits : int
        Probe splits of :func:`annotate_seen`.
    seed : int
        Seed of the probe splits and of the PCA.
    random_init : ``{"train": emb, "test": emb}`` from :func:`random_init_embeddings` (skipped if None).
    n_pcs : int
        Principal components of the PCA baselines (default ``N_PCS`` = 50; :func:`pca_features` caps it).

    Returns
    -------
    dict
        ``{name: annotate_seen(...)["macro_f1"]}`` for ``random_init_mean_pool``, ``random_init_cls``,
        ``pca_all_genes``, ``pca_vocabulary``, ``bag_of_genes``, plus ``details`` (components, gene counts).

    Raises
    ------
    InputError
        If a shard cell or a vocabulary gene is missing from ``adata``.
    """
    y_tr, y_te = train_ds.cell_type, test_ds.cell_type
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if random_init is not None:
        for e in ("mean_pool", "cls"):
            feats[f"random_init_{e}"] = (random_init["train"][e], random_init["test"][e])
    rows_tr, rows_te = adata_rows(adata, train_ds.obs_names), adata_rows(adata, test_ds.obs_names)
    genes = list(vocab[2:])
    cols = adata.var_names.get_indexer(genes)
    if (cols < 0).any():
        raise InputError(f"{int((cols < 0).sum())} vocabulary genes are not in the adata, "
                         f"e.g. {[g for g, c in zip(genes, cols) if c < 0][:3]}")
    ztr, zte, k_all = pca_features(adata.X, rows_tr, rows_te, n_pcs, seed)
    feats["pca_all_genes"] = (ztr, zte)
    ztr, zte, k_voc = pca_features(adata.X[:, cols], rows_tr, rows_te, n_pcs, seed)
    feats["pca_vocabulary"] = (ztr, zte)
    feats["bag_of_genes"] = (bag_of_genes(train_ds, len(vocab)), bag_of_genes(test_ds, len(vocab)))
    out: dict[str, Any] = {name: annotate_seen(a, y_tr, b, y_te, n_splits, seed)["macro_f1"]
                           for name, (a, b) in feats.items()}
    out["details"] = {"metric": "macro-F1 on the seen test cells (annotate_seen: same probe, splits, seed)",
                      "pca_all_genes_components": k_all, "pca_all_genes_genes": int(adata.n_vars),
                      "pca_vocabulary_components": k_voc, "pca_vocabulary_genes": len(genes),
                      "pca_fitted_on": "train cells only", "bag_of_genes_genes": len(genes),
                      "random_init": "GREmLN(model.config) after torch.manual_seed(seed), untrained",
                      "cells": {"train": len(train_ds), "test": len(test_ds)}}
    return out


def relative_change(e: np.ndarray, e0: np.ndarray) -> float:
    """``||e - e0||_F / ||e||_F`` of two embedding matrices [C, d] (dimensionless, >= 0).

    Parameters
    ----------
    e : numpy.ndarray
        Reference embeddings [C, d] (e.g. with the cell graphs).
    e0 : numpy.ndarray
        Compared embeddings [C, d] (e.g. without the graphs).

    Returns
    -------
    float
        The relative Frobenius-norm change.

    Raises
    ------
    ValueError
        If the shapes differ or ``e`` is all zero.
    """
    e, e0 = np.asarray(e, dtype=np.float64), np.asarray(e0, dtype=np.float64)
    if e.shape != e0.shape:
        raise ValueError(f"shapes differ: {e.shape} vs {e0.shape}")
    norm = float(np.linalg.norm(e))
    if norm == 0.0:
        raise ValueError("the reference embeddings are all zero")
    return float(np.linalg.norm(e - e0) / norm)


def graph_removal(model, train_ds, test_ds, n_vocab: int, emb_train: dict, emb_test: dict, n_splits: int,
                  seed: int) -> dict[str, Any]:
    """How much the embeddings depend on the cell graphs: Laplacians replaced by zeros at inference.

    With ``L = 0`` the heat kernel is ``exp(-beta 0) = I`` (up to the Chebyshev tolerance): the queries are
    not diffused. ``E`` / ``E0`` are the test embeddings with / without graph (mean-pool and CLS).

    Parameters
    ----------
    model : GREmLN
        The frozen model (:func:`load_model`); only ``config.attention == "gremln"`` uses the graphs.
    train_ds, test_ds : TokenDataset
        Shards of the probe's train cells and of the test cells.
    n_vocab : int
        Vocabulary size (``len(vocab)``), passed to :func:`encode_dataset`.
    emb_train, emb_test : :func:`encode_dataset` outputs of ``train_ds`` / ``test_ds`` with their graphs.
    n_splits : int
        Probe splits of :func:`annotate_seen`.
    seed : int
        Seed of the probe splits.

    Returns
    -------
    dict
        ``{"applicable": False, "reason"}`` for a vanilla model (its attention ignores the Laplacian); else
        ``{"applicable": True, "relative_change_mean_pool", "relative_change_cls"}`` (:func:`relative_change`
        on the test cells), ``seen_test_macro_f1_without_graph`` and ``seen_test_macro_f1_with_graph``:
        ``{"mean_pool", "cls"}`` -> :func:`summarize` of :func:`annotate_seen` (probe refitted on train
        embeddings also computed without graph), and ``test_cells_with_edges``.
    """
    if model.config.attention != "gremln":
        return {"applicable": False, "reason": f"attention={model.config.attention!r} ignores the Laplacian"}
    e0_tr = encode_dataset(model, train_ds, n_vocab, drop_graph=True)
    e0_te = encode_dataset(model, test_ds, n_vocab, drop_graph=True)
    out: dict[str, Any] = {"applicable": True, "cells": "test",
                           "definition": "||E - E0||_F / ||E||_F, E0 = embeddings with every Laplacian zero"}
    for e in ("mean_pool", "cls"):
        out[f"relative_change_{e}"] = relative_change(emb_test[e], e0_te[e])
    for key, (tr, te) in (("seen_test_macro_f1_without_graph", (e0_tr, e0_te)),
                          ("seen_test_macro_f1_with_graph", (emb_train, emb_test))):
        out[key] = {e: annotate_seen(tr[e], train_ds.cell_type, te[e], test_ds.cell_type, n_splits,
                                     seed)["macro_f1"] for e in ("mean_pool", "cls")}
    out["test_cells_with_edges"] = int((np.diff(test_ds.edge_ptr) > 0).sum())
    return out


# --------------------------------------------------------------------------------------------------
# b. Hidden-edge recovery
# --------------------------------------------------------------------------------------------------


def undirected_pairs(sources, targets) -> np.ndarray:
    """Distinct undirected gene pairs [E, 2] (str, each row sorted, rows sorted) of an edge list.

    Self-loops are dropped; (a, b) and (b, a) count once.

    Parameters
    ----------
    sources, targets : array-like
        Edge ends [E'] (gene symbols, compared as strings).

    Returns
    -------
    numpy.ndarray
        str [E, 2], E <= E'; shape (0, 2) when no edge is left.
    """
    s = np.asarray(sources).astype(str)
    t = np.asarray(targets).astype(str)
    keep = s != t
    s, t = s[keep], t[keep]
    if s.size == 0:
        return np.empty((0, 2), dtype=str)
    pairs = np.stack([np.where(s < t, s, t), np.where(s < t, t, s)], axis=1)
    return np.unique(pairs, axis=0)


def _codes(pairs: np.ndarray, n_nodes: int) -> np.ndarray:
    """Integer code ``min * N + max`` of undirected node pairs [M, 2]."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return np.minimum(pairs[:, 0], pairs[:, 1]) * n_nodes + np.maximum(pairs[:, 0], pairs[:, 1])


def sample_non_edges(n_nodes: int, forbidden: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct undirected node pairs [n, 2] (u < v) whose codes are not in ``forbidden``.

    Rejection sampling.

    Parameters
    ----------
    n_nodes : int
        Nodes are ``0..n_nodes-1``.
    forbidden : numpy.ndarray
        int codes ``u * n_nodes + v`` (u < v) of pairs to avoid (edges, pairs used elsewhere).
    n : int
        Number of pairs to draw.
    rng : numpy.random.Generator
        Source of the draws (advanced in place).

    Returns
    -------
    numpy.ndarray
        int64 [n, 2], rows ``(u, v)`` with u < v, in the order drawn.

    Raises
    ------
    ValueError
        If fewer than ``n`` such pairs exist.
    """
    total = n_nodes * (n_nodes - 1) // 2
    forbidden = np.unique(np.asarray(forbidden, dtype=np.int64))
    if n > total - forbidden.size:
        raise ValueError(f"cannot sample {n} non-edges among {n_nodes} nodes ({forbidden.size} pairs excluded)")
    chosen = np.empty(0, dtype=np.int64)
    while chosen.size < n:
        m = 2 * (n - chosen.size) + 16
        u = rng.integers(0, n_nodes, m)
        v = rng.integers(0, n_nodes, m)
        c = np.minimum(u, v) * n_nodes + np.maximum(u, v)
        c = c[(u != v) & ~np.isin(c, forbidden) & ~np.isin(c, chosen)]
        _, first = np.unique(c, return_index=True)
        chosen = np.concatenate([chosen, c[np.sort(first)]])[:n]
    return np.stack([chosen // n_nodes, chosen % n_nodes], axis=1)


def link_prediction(x: np.ndarray, visible: np.ndarray, hidden: np.ndarray, seed: int,
                    epochs: int | None = None, hidden_dim: int = LINK_HIDDEN, lr: float = LINK_LR,
                    supervision_fraction: float = LINK_SUPERVISION_FRACTION,
                    use_graph: bool = True, test_negatives: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Train a GAT + pair-MLP link classifier on the visible graph and score hidden edges vs non-edges.

    Model: node features standardised per dimension; ``h = ELU(GATConv(x))`` (2 heads, PyG; Velickovic et
    al. 2018) over the message-passing edges; score ``MLP([h_u * h_v || |h_u - h_v|])``. Each epoch a
    seeded ``supervision_fraction`` of the visible edges is taken out of message passing and used as
    positives against as many sampled non-edges (so training mirrors the test, where the scored edges are
    absent from the graph); binary cross-entropy, Adam, ``epochs`` full-batch steps. At test time messages
    pass over all visible edges; the test set is every hidden edge plus ``test_negatives`` (default: as
    many uniform random non-edges, sampled once before training); test negatives are never training
    negatives.

    Parameters
    ----------
    x : float array [N, d] node (gene) features.
    visible, hidden : int arrays [E_v, 2], [E_h, 2] undirected edges (node positions); disjoint.
    seed : seeds the non-edge sampling, the epoch splits and torch initialisation.
    epochs : training steps (default ``LINK_EPOCHS`` = 150).
    hidden_dim : int
        Width of each of the 2 GAT heads and of the MLP's hidden layer (default ``LINK_HIDDEN`` = 32).
    lr : float
        Adam learning rate (default ``LINK_LR`` = 0.01).
    supervision_fraction : float
        Share 0-1 of the visible edges taken out of message passing each epoch as training positives
        (default ``LINK_SUPERVISION_FRACTION`` = 0.3).
    use_graph : False replaces the GAT layer by a per-node linear layer (``h = ELU(W x)``), so the score
        depends on the two genes' embeddings only (a pair-feature MLP, no message passing).
    test_negatives : int array [M, 2], optional: the non-edges to score beside the hidden edges (e.g.
        :func:`source_matched_negatives`); pairs may repeat.

    Returns
    -------
    dict
        ``test_pairs`` [M, 2], ``test_labels`` [M] (1 = hidden edge, 0 = non-edge), ``scores`` [M]
        (probabilities), ``train_negatives`` [K, 2] (every non-edge used in training), ``message_edges``
        [E_v, 2].

    Raises
    ------
    ValueError
        If visible and hidden edges overlap or a given test negative is an edge (or a self-pair).
    """
    import torch

    epochs = LINK_EPOCHS if epochs is None else int(epochs)
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    visible = np.asarray(visible, dtype=np.int64).reshape(-1, 2)
    hidden = np.asarray(hidden, dtype=np.int64).reshape(-1, 2)
    if np.intersect1d(_codes(visible, n), _codes(hidden, n)).size:
        raise ValueError("visible and hidden edges overlap")
    rng = np.random.default_rng(seed)
    edge_codes = np.concatenate([_codes(visible, n), _codes(hidden, n)])
    if test_negatives is None:
        test_neg = sample_non_edges(n, edge_codes, len(hidden), rng)
    else:
        test_neg = np.asarray(test_negatives, dtype=np.int64).reshape(-1, 2)
        if np.isin(_codes(test_neg, n), edge_codes).any() or (test_neg[:, 0] == test_neg[:, 1]).any():
            raise ValueError("a test negative is an edge or a self-pair")
    forbidden = np.concatenate([edge_codes, _codes(test_neg, n)])

    mu, sd = x.mean(0), x.std(0)
    xt = torch.from_numpy((x - mu) / np.where(sd > 0, sd, 1.0))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny full-batch graphs: one thread is several times faster on a busy CPU
    try:
        return _train_link_model(xt, visible, hidden, test_neg, forbidden, rng, seed, epochs, hidden_dim, lr,
                                 supervision_fraction, use_graph)
    finally:
        torch.set_num_threads(threads)


def _train_link_model(xt, visible, hidden, test_neg, forbidden, rng, seed, epochs, hidden_dim, lr,
                      supervision_fraction, use_graph):
    import torch
    from torch_geometric.nn import GATConv

    n = xt.shape[0]
    torch.manual_seed(seed)

    class LinkModel(torch.nn.Module):
        """Link classifier of :func:`link_prediction`: ``h = ELU(GATConv(x))`` (2 heads of ``hidden_dim``, concatenated;
        Velickovic et al. 2018), or ``h = ELU(W x)`` without the graph, then the pair score
        ``MLP([h_u * h_v || |h_u - h_v|])`` (one logit per pair).
        """
        def __init__(self, d_in: int):
            super().__init__()
            self.gat = GATConv(d_in, hidden_dim, heads=2, concat=True) if use_graph else None
            self.lin = None if use_graph else torch.nn.Linear(d_in, 2 * hidden_dim)
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(4 * hidden_dim, hidden_dim), torch.nn.ReLU(), torch.nn.Linear(hidden_dim, 1)
            )

        def forward(self, feats, message_edges, pairs):
            """Pair logits [M] from node features ``feats`` [N, d_in], message-passing edges ``message_edges``
            Long [2, E] (both directions; unused without the graph) and node pairs ``pairs`` Long [M, 2].
            """
            h = self.gat(feats, message_edges) if self.gat is not None else self.lin(feats)
            h = torch.nn.functional.elu(h)
            hu, hv = h[pairs[:, 0]], h[pairs[:, 1]]
            return self.mlp(torch.cat([hu * hv, (hu - hv).abs()], dim=1)).squeeze(1)

    def both_directions(e: np.ndarray) -> torch.Tensor:
        """Undirected edges [E, 2] -> PyG ``edge_index`` Long [2, 2E] holding each edge in both directions."""
        return torch.from_numpy(np.concatenate([e, e[:, ::-1]]).T.copy())

    model = LinkModel(xt.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_neg_codes = []
    n_sup = max(1, int(round(supervision_fraction * len(visible)))) if len(visible) > 1 else 0
    model.train()
    for _ in range(epochs if n_sup else 0):
        perm = rng.permutation(len(visible))
        sup, msg = visible[perm[:n_sup]], visible[perm[n_sup:]]
        neg = sample_non_edges(n, forbidden, n_sup, rng)
        train_neg_codes.append(_codes(neg, n))
        pairs = torch.from_numpy(np.concatenate([sup, neg]))
        target = torch.cat([torch.ones(n_sup), torch.zeros(n_sup)])
        opt.zero_grad()
        loss = loss_fn(model(xt, both_directions(msg), pairs), target)
        loss.backward()
        opt.step()
    model.eval()
    test_pairs = np.concatenate([hidden, test_neg])
    with torch.no_grad():
        scores = torch.sigmoid(model(xt, both_directions(visible), torch.from_numpy(test_pairs))).numpy()
    codes = np.unique(np.concatenate(train_neg_codes)) if train_neg_codes else np.empty(0, dtype=np.int64)
    return {
        "test_pairs": test_pairs,
        "test_labels": np.concatenate([np.ones(len(hidden), np.int8), np.zeros(len(test_neg), np.int8)]),
        "scores": scores.astype(np.float64),
        "train_negatives": np.stack([codes // n, codes % n], axis=1),
        "message_edges": visible,
    }


def edge_metrics(labels, scores) -> dict[str, float]:
    """AUROC and average precision (``sklearn.metrics``) of binary ``labels`` [M] against ``scores`` [M].

    Parameters
    ----------
    labels : array-like
        Binary labels [M] (1 = edge).
    scores : array-like
        Scores [M]; higher = more likely an edge.

    Returns
    -------
    dict
        ``auroc`` and ``average_precision``, floats 0-1.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"auroc": float(roc_auc_score(labels, scores)), "average_precision": float(average_precision_score(labels, scores))}


def shard_gene_pairs(arrays: dict[str, np.ndarray], vocab: list[str]) -> np.ndarray:
    """Undirected gene pairs [E, 2] of every cell subgraph in a token shard (design sec. 5 keys).

    Local token positions in ``edge_index`` are mapped back to genes through ``gene_ptr``/``gene_ids``
    and ``vocab`` (list indexed by token id).

    Parameters
    ----------
    arrays : dict of str to numpy.ndarray
        ``gene_ptr`` [C+1], ``gene_ids`` [T], ``edge_ptr`` [C+1] and ``edge_index`` (2, E') of positions
        within each cell's gene tokens.
    vocab : list of str
        Gene symbol by token id.

    Returns
    -------
    numpy.ndarray
        str [E, 2] (:func:`undirected_pairs`: self-loops dropped, each pair once).
    """
    gene_ptr, edge_ptr = np.asarray(arrays["gene_ptr"]), np.asarray(arrays["edge_ptr"])
    gene_ids, edge_index = np.asarray(arrays["gene_ids"]), np.asarray(arrays["edge_index"]).reshape(2, -1)
    n_cells = len(gene_ptr) - 1
    cell_of_edge = np.repeat(np.arange(n_cells), np.diff(edge_ptr))
    offset = gene_ptr[:-1][cell_of_edge]
    vocab_arr = np.asarray(vocab, dtype=object)
    src = vocab_arr[gene_ids[offset + edge_index[0]]]
    dst = vocab_arr[gene_ids[offset + edge_index[1]]]
    return undirected_pairs(src, dst)


def read_graph_edges(path):
    """Read the tokenize stage's gene graph ``tokens/graph_edges.tsv.gz``.

    Columns ``source, target`` (gene symbols; undirected, one row per edge), ``weight`` and ``hidden``
    (True for edges removed from every shard before pretraining; booleans, 0/1 or true/false).

    Parameters
    ----------
    path : str or Path
        The tab-separated table (compression inferred by pandas from the suffix).

    Returns
    -------
    pandas.DataFrame
        Exactly these columns: ``source``/``target`` str, ``weight`` float (NaN if not numeric), ``hidden`` bool.

    Raises
    ------
    InputError
        If the file cannot be read, a column is missing or ``hidden`` is not boolean.
    """
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t")
    except Exception as err:  # noqa: BLE001 - any parse failure is the file's fault
        raise InputError(f"{path}: cannot be read as a tab-separated table ({err})") from err
    missing = set(EDGE_COLUMNS) - set(df.columns)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)} (expected {list(EDGE_COLUMNS)})")
    hidden = df["hidden"]
    if hidden.dtype != bool:
        text = hidden.astype(str).str.strip().str.lower()
        table = {"true": True, "1": True, "false": False, "0": False}
        bad = ~text.isin(list(table))
        if bad.any():
            raise InputError(f"{path}: column 'hidden' must be boolean, got {hidden[bad].iloc[0]!r}")
        hidden = text.map(table)
    return pd.DataFrame({"source": df["source"].astype(str), "target": df["target"].astype(str),
                         "weight": pd.to_numeric(df["weight"], errors="coerce"),
                         "hidden": hidden.to_numpy(dtype=bool)})


def check_hidden_edges_absent(shards: dict[str, Any], edges, vocab: list[str]) -> dict[str, int]:
    """Check that no hidden edge of ``edges`` (:func:`read_graph_edges`) is in any cell graph of any shard.

    Parameters
    ----------
    shards : dict of str to cellgraph.io.shards.TokenDataset
        The shards by name (the name is shown in the error).
    edges : pandas.DataFrame
        :func:`read_graph_edges` table (``source``, ``target``, ``hidden`` are read).
    vocab : list of str
        Gene symbol by token id.

    Returns
    -------
    dict of str to int
        ``{name: distinct undirected gene pairs in the shard's cell graphs}``.

    Raises
    ------
    InputError
        Naming the shard and example edges if a hidden edge would have been seen.
    """
    h = edges["hidden"].to_numpy(bool)
    hidden = {tuple(p) for p in undirected_pairs(edges["source"].to_numpy()[h], edges["target"].to_numpy()[h])}
    out = {}
    for name, ds in shards.items():
        seen = {tuple(p) for p in shard_gene_pairs(ds.arrays, vocab)}
        leaked = seen & hidden
        if leaked:
            raise InputError(f"{name}: {len(leaked)} hidden edges of the graph are in its cell graphs (they "
                             f"must be removed before pretraining), e.g. {sorted(leaked)[:3]}")
        out[name] = len(seen)
    return out


def mean_gene_embedding(gene_sum: np.ndarray, gene_count: np.ndarray) -> np.ndarray:
    """Mean contextual embedding per gene [V, d] from :func:`encode_dataset`'s ``gene_sum`` and ``gene_count``;
    rows of genes with no token are NaN (no embedding).

    Parameters
    ----------
    gene_sum : numpy.ndarray
        Token embeddings summed per gene id [V, d].
    gene_count : numpy.ndarray
        Tokens per gene id [V].

    Returns
    -------
    numpy.ndarray
        float64 [V, d].
    """
    count = np.asarray(gene_count, dtype=np.float64)
    out = np.full(np.shape(gene_sum), np.nan)
    seen = count > 0
    out[seen] = np.asarray(gene_sum, dtype=np.float64)[seen] / count[seen, None]
    return out


def _edge_table(edges) -> tuple[np.ndarray, np.ndarray]:
    """Oriented edges [E, 2] (str, ``source, target`` as given) and ``hidden`` [E], without self-loops and
    with each undirected pair once (first row kept). Raises ValueError if a pair is both hidden and not."""
    s = edges["source"].to_numpy().astype(str)
    t = edges["target"].to_numpy().astype(str)
    hidden = edges["hidden"].to_numpy(bool)
    keep = s != t
    s, t, hidden = s[keep], t[keep], hidden[keep]
    key = np.char.add(np.char.add(np.where(s < t, s, t), "\t"), np.where(s < t, t, s))
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    if (np.bincount(inv, weights=hidden, minlength=uniq.size) % np.bincount(inv, minlength=uniq.size) != 0).any():
        raise ValueError("an edge is listed both as hidden and as visible")
    first = np.sort(first)
    return np.stack([s[first], t[first]], axis=1).reshape(-1, 2), hidden[first]


def source_matched_negatives(sources: np.ndarray, adjacency: dict[int, set[int]], n_nodes: int,
                             n_negatives: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_negatives`` distinct non-neighbours of each source node, drawn without replacement (seeded).

    Parameters
    ----------
    sources : int array [H] node positions (the source gene of each hidden edge).
    adjacency : node -> set of its neighbours in the *full* graph (visible and hidden edges).
    n_nodes : node positions are ``0..n_nodes-1`` (every gene with an embedding).
    n_negatives : int
        Non-neighbours drawn per source.
    seed : int
        Source ``h`` draws with ``numpy.random.default_rng([seed, h])``, so its draw does not depend on
        the other edges.

    Returns
    -------
    tuple of numpy.ndarray
        ``(targets [H', n_negatives], keep [H])``: the negative partners ``g`` of each kept source (pairs
        ``(source, g)``; ``g`` is neither the source nor a neighbour of it), and which sources had at least
        ``n_negatives`` candidates (the others are dropped).
    """
    sources = np.asarray(sources, dtype=np.int64)
    keep = np.zeros(sources.size, dtype=bool)
    out = []
    nodes = np.arange(n_nodes)
    for h, s in enumerate(sources):
        banned = np.fromiter(adjacency.get(int(s), set()) | {int(s)}, dtype=np.int64)
        cand = np.setdiff1d(nodes, banned, assume_unique=True)
        if cand.size < n_negatives:
            continue
        keep[h] = True
        out.append(np.random.default_rng([int(seed), h]).choice(cand, size=n_negatives, replace=False))
    return (np.stack(out) if out else np.zeros((0, n_negatives), np.int64)), keep


def _weighted_auroc(tie: np.ndarray, positive: np.ndarray, weight: np.ndarray, n_ties: int) -> float:
    """AUROC (Mann-Whitney, ties count 1/2) with per-item weights; ``tie`` = rank of each score among the
    distinct scores (ascending)."""
    wp = np.bincount(tie[positive], weights=weight[positive], minlength=n_ties)
    wn = np.bincount(tie[~positive], weights=weight[~positive], minlength=n_ties)
    below = np.cumsum(wn) - wn
    den = wp.sum() * wn.sum()
    return float((wp * (below + 0.5 * wn)).sum() / den) if den > 0 else float("nan")


def grouped_bootstrap_auroc(labels, scores, group, n_boot: int = N_BOOT, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the pooled AUROC, resampling groups (a hidden edge with its negatives).

    Parameters
    ----------
    labels : binary array [M]; scores : float array [M]; group : int array [M] with values ``0..G-1``.
    n_boot : resamples (``numpy.random.default_rng(seed)``); each draws G groups with replacement and
        computes the AUROC of the pooled items, a group drawn ``w`` times weighing ``w``.
    seed : int
        Seed of the resampling (default 0).
    level : float
        Confidence level 0-1 (default 0.95).

    Returns
    -------
    tuple of float
        ``(low, high)``, the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (percentile bootstrap,
        Efron & Tibshirani 1993; the weighted AUROC is the Mann-Whitney statistic, ties 1/2).

    Raises
    ------
    ValueError
        If the arrays differ in length or are empty.
    """
    labels, scores, group = np.asarray(labels), np.asarray(scores, dtype=np.float64), np.asarray(group, np.int64)
    if not labels.size or labels.shape != scores.shape or labels.shape != group.shape:
        raise ValueError("labels, scores and group must be non-empty arrays of one length")
    uniq, tie = np.unique(scores, return_inverse=True)
    positive = labels.astype(bool)
    n_groups = int(group.max()) + 1
    rng = np.random.default_rng(seed)
    stats = np.array([
        _weighted_auroc(tie, positive, np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[group]
                        .astype(np.float64), uniq.size)
        for _ in range(n_boot)
    ])
    stats = stats[np.isfinite(stats)]
    return float(np.quantile(stats, (1 - level) / 2)), float(np.quantile(stats, (1 + level) / 2))


def hidden_edge_recovery(gene_emb: np.ndarray, edges, vocab: list[str], seed: int,
                         n_negatives: int = N_NEGATIVES, n_boot: int = N_BOOT, epochs: int | None = None):
    """Hidden-edge recovery from gene embeddings (module docstring, task b).

    Parameters
    ----------
    gene_emb : float array [V, d], row = token id: a gene's mean contextual embedding over the test cells
        (:func:`mean_gene_embedding`); NaN rows (genes never seen) are dropped and counted, as are edges
        touching them. Rows 0/1 (``<pad>``, ``<cls>``) are never nodes.
    edges : :func:`read_graph_edges` table (visible and hidden edges of the pretraining graph).
    vocab : list of gene symbols by token id.
    seed : seeds the negatives, the link classifier (:func:`link_prediction`), the random features and
        the bootstrap.
    n_negatives : non-edges ``(s, g)`` per hidden edge ``(s, t)`` (:func:`source_matched_negatives`).
    n_boot : int
        Bootstrap resamples of the AUROC CI (default ``N_BOOT`` = 1000).
    epochs : int, optional
        Training steps of the link classifier (default ``LINK_EPOCHS``).

    Returns
    -------
    tuple
        ``(summary, curves, table)``: the JSON summary (``pooled``: ``auroc``, ``ap`` (=
        ``average_precision``), ``auroc_ci_low``/``auroc_ci_high`` (:func:`grouped_bootstrap_auroc`),
        ``auroc_random_features``, ``ap_random_features``, ``n_hidden`` scored, ``n_negatives``; ``counts``
        of edges and genes kept and dropped); the arrays of ``edge_curves.npz`` (per scored pair ``scores``,
        ``labels``, ``group``, ``gene_u``, ``gene_v``, ``cell_type`` = "all"; pooled ``roc_fpr, roc_tpr,
        pr_precision, pr_recall``); and the ``edge_scores.tsv`` table (``source, target, label, score,
        group``). Without a hidden edge to score (or with fewer than 2 visible edges) the metrics are None.

    Raises
    ------
    ValueError
        If ``gene_emb`` has not one row per vocabulary entry.
    """
    x_all = np.asarray(gene_emb, dtype=np.float64)
    if x_all.ndim != 2 or x_all.shape[0] != len(vocab):
        raise ValueError(f"gene_emb must be [V={len(vocab)}, d], got {x_all.shape}")
    has = np.isfinite(x_all).all(axis=1)
    has[:2] = False
    genes = np.asarray(vocab, dtype=object)[has].astype(str)
    node = {g: i for i, g in enumerate(genes)}
    pairs, hidden = _edge_table(edges)
    idx = np.array([[node.get(a, -1), node.get(b, -1)] for a, b in pairs], dtype=np.int64).reshape(-1, 2)
    ok = (idx >= 0).all(axis=1)
    adjacency: dict[int, set[int]] = {}
    for a, b in idx[ok]:
        adjacency.setdefault(int(a), set()).add(int(b))
        adjacency.setdefault(int(b), set()).add(int(a))
    vis, hid = idx[~hidden & ok], idx[hidden & ok]
    neg_t, keep = source_matched_negatives(hid[:, 0], adjacency, len(genes), n_negatives, seed)
    graph_genes = np.unique(pairs)
    counts = {
        "edges": int(len(pairs)), "hidden_edges": int(hidden.sum()), "visible_edges": int((~hidden).sum()),
        "hidden_dropped_no_embedding": int((hidden & ~ok).sum()),
        "hidden_dropped_too_few_negatives": int((~keep).sum()),
        "visible_used": int(len(vis)), "visible_dropped_no_embedding": int((~hidden & ~ok).sum()),
        "genes_with_embedding": int(len(genes)), "graph_genes": int(graph_genes.size),
        "graph_genes_without_embedding": int(sum(g not in node for g in graph_genes)),
    }
    frac = counts["hidden_edges"] / counts["edges"] if counts["edges"] else None
    if keep.sum() == 0 or len(vis) < 2:
        summary, curves = _no_edge_recovery(frac, counts, {"reason": "no hidden edge between genes with an "
                                                           "embedding, or fewer than 2 visible edges"})
        return summary, curves, _empty_scores_table()
    return _score_hidden_edges(x_all[has], genes, vis, hid[keep], neg_t, counts, frac, seed, n_boot, epochs)


def _score_hidden_edges(x, genes, vis, hid, neg_t, counts, frac, seed, n_boot, epochs):
    """The scoring half of :func:`hidden_edge_recovery` (same returns)."""
    import pandas as pd
    from sklearn.metrics import precision_recall_curve, roc_curve

    n_hid, k = hid.shape[0], neg_t.shape[1]
    negs = np.stack([np.repeat(hid[:, 0], k), neg_t.ravel()], axis=1)
    res = link_prediction(x, vis, hid, seed, epochs=epochs, test_negatives=negs)
    x_rand = np.random.default_rng([int(seed), 1]).standard_normal(x.shape)
    ctrl = link_prediction(x_rand, vis, hid, seed, epochs=epochs, test_negatives=negs)
    labels, scores, pairs = res["test_labels"], res["scores"], res["test_pairs"]
    group = np.concatenate([np.arange(n_hid), np.repeat(np.arange(n_hid), k)])
    m, mc = edge_metrics(labels, scores), edge_metrics(labels, ctrl["scores"])
    lo, hi = grouped_bootstrap_auroc(labels, scores, group, n_boot, seed)
    counts = counts | {"hidden_scored": int(n_hid)}
    summary = {
        "status": "computed", "cells_used": "test", "edge_holdout_fraction": frac,
        "method": "GATConv (2 heads) over the visible graph + MLP on [h_u*h_v || |h_u-h_v|], trained on visible "
                  "edges vs random non-edges; nodes = genes with a token in the test cells (mean embedding)",
        "negatives": f"{k} per hidden edge (s, t): pairs (s, g), g a gene with an embedding that is not s and not a "
                     "neighbour of s in the full graph (visible + hidden); never training negatives",
        "pooled": {"auroc": m["auroc"], "ap": m["average_precision"], "average_precision": m["average_precision"],
                   "auroc_ci_low": lo, "auroc_ci_high": hi, "auroc_random_features": mc["auroc"],
                   "ap_random_features": mc["average_precision"], "n_hidden": int(n_hid),
                   "n_negatives": int(len(negs))},
        "control_random_features": mc,
        "bootstrap": {"resamples": int(n_boot), "level": 0.95, "unit": "hidden edge with its own negatives"},
        "counts": counts,
    }
    fpr, tpr, _ = roc_curve(labels, scores)
    prec, rec, _ = precision_recall_curve(labels, scores)
    curves = {"scores": scores, "labels": labels.astype(np.int8), "group": group,
              "gene_u": genes[pairs[:, 0]], "gene_v": genes[pairs[:, 1]],
              "cell_type": np.full(len(scores), "all"),
              "roc_fpr": fpr, "roc_tpr": tpr, "pr_precision": prec, "pr_recall": rec}
    table = pd.DataFrame({"source": curves["gene_u"], "target": curves["gene_v"], "label": labels.astype(int),
                          "score": scores, "group": group})
    table = table.sort_values(["group", "label"], ascending=[True, False], kind="stable").reset_index(drop=True)
    log.info("hidden-edge recovery: %d hidden edges x %d negatives, AUROC %.3f (95%% CI %.3f-%.3f), AP %.3f, "
             "random features AUROC %.3f", n_hid, k, m["auroc"], lo, hi, m["average_precision"], mc["auroc"])
    return summary, curves, table


def _empty_scores_table():
    import pandas as pd

    return pd.DataFrame({"source": pd.Series(dtype=str), "target": pd.Series(dtype=str),
                         "label": pd.Series(dtype=int), "score": pd.Series(dtype=float),
                         "group": pd.Series(dtype=int)})


def _no_edge_recovery(hidden_fraction: float | None = None, counts: dict | None = None,
                      reasons: dict | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The edge-recovery result when no hidden edge can be scored (e.g. the graph has no hidden edge or
    none between genes of the test cells): metrics None, empty curves, and the reason."""
    none = {"auroc": None, "average_precision": None}
    summary = {
        "status": "not computed: no hidden edge of graph_edges.tsv.gz between genes with a token in the test "
                  "cells (or fewer than 2 visible edges)",
        "cells_used": "test", "edge_holdout_fraction": hidden_fraction,
        "pooled": none | {"ap": None, "auroc_ci_low": None, "auroc_ci_high": None, "auroc_random_features": None,
                          "ap_random_features": None, "n_hidden": 0, "n_negatives": 0},
        "control_random_features": dict(none), "counts": counts or {}, "skipped": reasons or {},
    }
    empty = np.zeros(0)
    curves = {"scores": empty, "labels": np.zeros(0, np.int8), "group": np.zeros(0, np.int64),
              "cell_type": np.zeros(0, dtype="<U1"), "gene_u": np.zeros(0, dtype="<U1"),
              "gene_v": np.zeros(0, dtype="<U1"),
              "roc_fpr": empty, "roc_tpr": empty, "pr_precision": empty, "pr_recall": empty}
    return summary, curves


# --------------------------------------------------------------------------------------------------
# c. Linear probe
# --------------------------------------------------------------------------------------------------


def linear_probe(x_train, y_train, x_test, y_test, alpha: float, seed: int,
                 n_scatter: int = SCATTER_POINTS) -> dict[str, Any]:
    """Ridge regression (``StandardScaler`` + ``sklearn.linear_model.Ridge(alpha)``) from token embeddings
    [N, d] to expression [N]; R^2 (``sklearn.metrics.r2_score``) on the test tokens (GREmLN appendix A.6).

    Parameters
    ----------
    x_train, x_test : numpy.ndarray
        Token embeddings [N_train, d], [N_test, d].
    y_train, y_test : numpy.ndarray
        The tokens' log1p normalised expression (``batch["expr"]``) [N_train], [N_test].
    alpha : float
        Ridge penalty (> 0).
    seed : int
        Seed of the scatter subsample.
    n_scatter : int
        Most test tokens in the scatter.

    Returns
    -------
    dict
        ``r2`` (test), ``r2_train`` (float, <= 1), ``n_train``, ``n_test`` (int), and ``scatter_true``,
        ``scatter_pred`` (float32 [min(n_scatter, N_test)]), a seeded subsample of the test tokens.
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x_train, y_train)
    pred = probe.predict(x_test)
    pick = np.sort(np.random.default_rng(seed).choice(len(y_test), size=min(n_scatter, len(y_test)), replace=False))
    return {
        "r2": float(r2_score(y_test, pred)),
        "r2_train": float(r2_score(y_train, probe.predict(x_train))),
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "scatter_true": np.asarray(y_test, dtype=np.float32)[pick],
        "scatter_pred": pred.astype(np.float32)[pick],
    }


# --------------------------------------------------------------------------------------------------
# d. Masked tokens
# --------------------------------------------------------------------------------------------------


def per_gene_log_probs(gene_ids: np.ndarray, bins: np.ndarray, n_vocab: int, n_bins: int,
                       pseudocount: float = PSEUDOCOUNT) -> np.ndarray:
    """Each gene's log bin distribution [V, n_bins + 1] (nats) from its tokens (e.g. the train shard).

    ``p(b | gene) = (count(gene, b) + pseudocount) / (count(gene) + pseudocount * (n_bins + 1))`` over the
    bin values ``0..n_bins``; a gene with no token gets the uniform distribution.

    Parameters
    ----------
    gene_ids : numpy.ndarray
        Token gene ids [T], in ``0..n_vocab-1``.
    bins : numpy.ndarray
        The tokens' rank bins [T], in ``0..n_bins``.
    n_vocab : int
        Vocabulary size V.
    n_bins : int
        Highest bin value.
    pseudocount : float
        Added to every (gene, bin) count.

    Returns
    -------
    numpy.ndarray
        float64 [V, n_bins + 1], natural-log probabilities.

    Raises
    ------
    ValueError
        If a bin is outside ``0..n_bins`` or a gene id outside ``0..n_vocab-1``.
    """
    g, b = np.asarray(gene_ids, dtype=np.int64), np.asarray(bins, dtype=np.int64)
    if g.size and (b.min() < 0 or b.max() > n_bins or g.min() < 0 or g.max() >= n_vocab):
        raise ValueError(f"bins must lie in 0..{n_bins} and gene ids in 0..{n_vocab - 1}")
    counts = np.bincount(g * (n_bins + 1) + b, minlength=n_vocab * (n_bins + 1)).reshape(n_vocab, n_bins + 1)
    counts = counts + pseudocount
    return np.log(counts / counts.sum(axis=1, keepdims=True))


def per_cell_baseline(bins: np.ndarray, masked: np.ndarray, n_bins: int,
                      pseudocount: float = PSEUDOCOUNT) -> dict[str, Any]:
    """Predict a cell's masked bins from its own visible (unmasked) gene-token bins.

    Parameters
    ----------
    bins : int array [n] bins (``0..n_bins``) of the cell's real gene tokens, in token order.
    masked : bool array [n], True at masked tokens.
    n_bins : int
        Highest expression bin; bins are ``0..n_bins``.
    pseudocount : float
        Added to every bin's visible count (default ``PSEUDOCOUNT`` = 0.5).

    Returns
    -------
    dict: ``cross_entropy`` [m] (nats) and ``correct`` [m] (bool) at the masked tokens in token order,
    under ``p(b) = (count_visible(b) + pseudocount) / (n_visible + pseudocount * (n_bins + 1))``, and
    ``mode``: the predicted bin, the most common visible bin (the smallest on ties; bin 0 when nothing is
    visible).
    """
    bins, masked = np.asarray(bins, dtype=np.int64), np.asarray(masked, dtype=bool)
    counts = np.bincount(bins[~masked], minlength=n_bins + 1)[: n_bins + 1] + pseudocount
    logp = np.log(counts / counts.sum())
    target = bins[masked]
    mode = int(np.argmax(counts))
    return {"cross_entropy": -logp[target], "correct": target == mode, "mode": mode}


def rank_bin_complement(bins: np.ndarray, masked: np.ndarray, n_bins: int,
                        pseudocount: float = PSEUDOCOUNT) -> np.ndarray:
    """Log distribution [n_bins + 1] of a cell's masked bins from the bins its visible tokens leave free.

    With rank bins and random tie-breaking, a cell whose ``m`` expressed tokens are all in the sequence holds
    exactly the bins ``ceil(n_bins * r / m)``, ``r = 1..m``; the masked tokens hold that multiset minus the
    visible bins. ``p(b) ~ max(expected(b) - visible(b), 0) + pseudocount``: a baseline that needs no cell
    state, only the sequence length and the visible bins (combined with :func:`per_gene_log_probs` it is the
    strongest simple baseline of the rank-bin objective).

    Parameters
    ----------
    bins : numpy.ndarray
        True bins [n] (``0..n_bins``, > 0 = expressed) of the cell's real gene tokens, masked ones included.
    masked : numpy.ndarray
        Bool [n], True at masked tokens.
    n_bins : int
        Highest bin value.
    pseudocount : float
        Added to every bin's free count.

    Returns
    -------
    numpy.ndarray
        float64 [n_bins + 1], natural-log probabilities.
    """
    bins, masked = np.asarray(bins, dtype=np.int64), np.asarray(masked, dtype=bool)
    m = int((bins > 0).sum())
    full = np.bincount((n_bins * np.arange(1, m + 1) + m - 1) // max(m, 1), minlength=n_bins + 1)[: n_bins + 1]
    free = np.clip(full - np.bincount(bins[~masked], minlength=n_bins + 1)[: n_bins + 1], 0, None) + pseudocount
    return np.log(free / free.sum())


def evaluation_mask(batch: dict, mask_rate: float, seed: int):
    """Bool [B, 1+n]: the masked gene tokens of :func:`cellgraph.training.pretrain.mask_positions` on the evaluation
    stream (``EVAL_MASK_STREAM``, epoch 0): ``max(1, round(mask_rate * n_real))`` per cell, drawn from
    ``default_rng([seed, 3, 0, cell_index])``, independent of the batch.

    Parameters
    ----------
    batch : dict
        Collated batch with ``attention_mask`` Bool [B, 1+n] and ``cell_index`` [B].
    mask_rate : float
        Fraction 0-1 of each cell's real gene tokens to mask.
    seed : int
        Run seed.

    Returns
    -------
    torch.Tensor
        Bool [B, 1+n], on the device of ``batch["attention_mask"]``.
    """
    from ..training.pretrain import mask_positions

    return mask_positions(batch["attention_mask"], batch["cell_index"], mask_rate, seed, epoch=0,
                          stream=EVAL_MASK_STREAM)


def _masked_batch(model, batch: dict, mask, gene_logp: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Model and both baselines at the masked positions of one batch (row-major order of ``mask``)."""
    import torch

    from ..io.shards import bin_special_ids

    target = batch["bins"]
    inputs = dict(batch)
    inputs["bins"] = torch.where(mask, torch.full_like(target, bin_special_ids(n_bins)["MASK"]), target)
    with torch.no_grad():
        logp = torch.log_softmax(model(inputs)[mask].double(), dim=-1).numpy()  # [M, n_bins + 1]
    rows, pos = (t.numpy() for t in mask.nonzero(as_tuple=True))
    tgt, genes = target[mask].numpy(), batch["gene_ids"][mask].numpy()
    cell_ce, cell_ok, comp_ce, comp_ok = [], [], [], []
    real = batch["attention_mask"][:, 1:].numpy()
    for b in np.unique(rows):
        cb, cm = target[b, 1:].numpy()[real[b]], mask[b, 1:].numpy()[real[b]]
        res = per_cell_baseline(cb, cm, n_bins)
        cell_ce.append(res["cross_entropy"])
        cell_ok.append(res["correct"])
        joint = gene_logp[batch["gene_ids"][b, 1:].numpy()[real[b]][cm]] + rank_bin_complement(cb, cm, n_bins)
        joint -= np.logaddexp.reduce(joint, axis=1, keepdims=True)
        comp_ce.append(-joint[np.arange(cm.sum()), cb[cm]])
        comp_ok.append(joint.argmax(1) == cb[cm])
    m = np.arange(len(tgt))
    return {
        "cell_index": batch["cell_index"].numpy()[rows], "position": pos, "gene_id": genes, "target": tgt,
        "model_ce": -logp[m, tgt], "model_correct": logp.argmax(1) == tgt,
        "per_gene_ce": -gene_logp[genes, tgt], "per_gene_correct": gene_logp[genes].argmax(1) == tgt,
        "per_cell_ce": np.concatenate(cell_ce), "per_cell_correct": np.concatenate(cell_ok),
        "per_gene_x_complement_ce": np.concatenate(comp_ce), "per_gene_x_complement_correct": np.concatenate(comp_ok),
    }


def paired_bootstrap_ci(diff_sum: np.ndarray, count: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                        level: float = 0.95) -> dict[str, float]:
    """Bootstrap over cells of a token-weighted mean difference.

    The statistic is ``sum(diff_sum) / sum(count)``; each of ``n_boot`` resamples
    (``numpy.random.default_rng(seed)``) draws C cells with replacement (paired: both CEs of a token stay
    together; percentile bootstrap, Efron & Tibshirani 1993).

    Parameters
    ----------
    diff_sum : numpy.ndarray
        Per cell [C], the sum over its masked tokens of (model CE - baseline CE), nats.
    count : numpy.ndarray
        Per cell [C], its number of masked tokens.
    n_boot : int
        Number of resamples.
    seed : int
        Seed of the resampling.
    level : float
        Coverage (0-1) of the percentile interval.

    Returns
    -------
    dict
        ``mean``, ``ci_low``, ``ci_high``: floats, nats per masked token.

    Raises
    ------
    ValueError
        If no cell has a masked token.
    """
    diff_sum, count = np.asarray(diff_sum, dtype=np.float64), np.asarray(count, dtype=np.float64)
    if count.sum() <= 0:
        raise ValueError("no masked token")
    rng = np.random.default_rng(seed)
    c = diff_sum.size
    stats = np.empty(n_boot)
    for i in range(n_boot):
        w = np.bincount(rng.integers(0, c, c), minlength=c)
        stats[i] = (w @ diff_sum) / max(float(w @ count), 1e-300)
    return {"mean": float(diff_sum.sum() / count.sum()), "ci_low": float(np.quantile(stats, (1 - level) / 2)),
            "ci_high": float(np.quantile(stats, (1 + level) / 2))}


def masked_token_evaluation(model, test_ds, train_ds, seed: int, batch_size: int = 64,
                            n_boot: int = N_BOOT) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Masked-bin prediction on the test cells: the model beside per-gene, per-cell and complement baselines.

    Every cell gets the mask of :func:`evaluation_mask` (``model.config.mask_rate``); the masked bins are
    replaced by ``MASK`` (:func:`cellgraph.io.shards.bin_special_ids`) for the model, and the model and both
    baselines are scored on exactly those tokens: the per-gene baseline is :func:`per_gene_log_probs` of
    ``train_ds`` (the train shard), the per-cell baseline :func:`per_cell_baseline` (the cell's visible
    bins). Accuracy = the argmax (baselines: the mode) equals the true bin.

    Parameters
    ----------
    model : GREmLN
        The model (``config.n_bins``, ``mask_rate`` and ``vocab_size`` are read).
    test_ds : cellgraph.io.shards.TokenDataset
        The cells evaluated.
    train_ds : cellgraph.io.shards.TokenDataset
        The train shard, for the per-gene baseline.
    seed : int
        Seed of the mask, and of the bootstraps (``seed + i`` for baseline ``i``).
    batch_size : int
        Cells per forward pass.
    n_boot : int
        Bootstrap resamples.

    Returns
    -------
    ``(summary, tokens)``: ``summary`` with ``mask_rate``, ``n_masked``, ``n_cells``, ``model`` /
    ``per_gene`` / ``per_cell`` / ``per_gene_x_complement``: ``{"cross_entropy" (nats per masked token),
    "accuracy"}``, ``model_minus_<baseline>_ce`` of each baseline: :func:`paired_bootstrap_ci` over cells,
    and ``details``; ``tokens``: per masked token [M] ``cell_index``, ``position`` (in the [1+n] batch
    layout), ``gene_id``, ``target`` and the CE / correctness of the model and every baseline.

    Raises
    ------
    ValueError
        If the test shard has no gene token.
    """
    from torch.utils.data import DataLoader

    from ..io.shards import collate

    n_bins, mask_rate = int(model.config.n_bins), float(model.config.mask_rate)
    gene_logp = per_gene_log_probs(train_ds.gene_ids, train_ds.bins, model.config.vocab_size, n_bins)
    parts = []
    for batch in DataLoader(test_ds, batch_size=batch_size, shuffle=False, collate_fn=collate):
        parts.append(_masked_batch(model, batch, evaluation_mask(batch, mask_rate, seed), gene_logp, n_bins))
    tokens = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    if not tokens or tokens["target"].size == 0:
        raise ValueError("no gene token to mask in the test shard")
    n_cells = len(test_ds)
    count = np.bincount(tokens["cell_index"], minlength=n_cells)
    summary: dict[str, Any] = {"mask_rate": mask_rate, "n_masked": int(tokens["target"].size),
                               "n_cells": int((count > 0).sum())}
    for name in ("model", "per_gene", "per_cell", "per_gene_x_complement"):
        summary[name] = {"cross_entropy": float(tokens[f"{name}_ce"].mean()),
                         "accuracy": float(tokens[f"{name}_correct"].mean())}
    for i, name in enumerate(("per_gene", "per_cell", "per_gene_x_complement")):
        diff = np.bincount(tokens["cell_index"], weights=tokens["model_ce"] - tokens[f"{name}_ce"],
                           minlength=n_cells)
        summary[f"model_minus_{name}_ce"] = paired_bootstrap_ci(diff, count, n_boot, seed + i)
    summary["details"] = {
        "units": "cross-entropy in nats per masked token", "mask": "cellgraph.training.pretrain.mask_positions, "
        f"stream {EVAL_MASK_STREAM}, epoch 0, seed {seed}; max(1, round(mask_rate * n_real)) tokens per cell",
        "per_gene": "bin distribution of the gene over all tokens of tokens/train.npz, add-0.5 smoothing",
        "per_cell": "bin distribution of the cell's visible (unmasked) tokens, add-0.5 smoothing",
        "per_gene_x_complement": "per-gene distribution times the bins the cell's visible tokens leave free "
                                 "(rank_bin_complement), renormalised: no cell state needed",
        "smoothing_values": n_bins + 1, "bootstrap": {"resamples": n_boot, "level": 0.95, "unit": "cell"},
        "masked_tokens_of_genes_without_train_tokens": int(
            (np.bincount(train_ds.gene_ids, minlength=model.config.vocab_size)[tokens["gene_id"]] == 0).sum()),
    }
    return summary, tokens


# --------------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------------


def encode_dataset(model, dataset, n_vocab: int, batch_size: int = 64, token_fraction: float = 0.0,
                   seed: int = 0, drop_graph: bool = False) -> dict[str, np.ndarray]:
    """Frozen embeddings of every cell of a token dataset.

    Parameters
    ----------
    model : object with ``encode(batch) -> Tensor[B, 1+n, d]`` (position 0 = CLS).
    dataset : ``cellgraph.io.shards.TokenDataset``; batches from ``cellgraph.io.shards.collate``.
    n_vocab : vocabulary size V (for the per-gene sums).
    batch_size : cells per forward pass.
    token_fraction : probability that a real gene token is kept for the linear probe (seeded).
    seed : seed of that token sampling (``numpy.random.default_rng(seed)``).
    drop_graph : replace every cell's Laplacian by zeros (no graph: ``exp(-beta 0) = I``).

    Returns
    -------
    dict: ``cls`` [C, d], ``mean_pool`` [C, d] (mean over real gene tokens, CLS excluded), ``gene_sum``
    [V, d] and ``gene_count`` [V] (token embeddings summed per gene id), and the sampled tokens
    ``token_emb`` [M, d], ``token_expr`` [M], ``token_gene`` [M].

    Raises
    ------
    ValueError
        If the dataset is empty.
    """
    import torch
    from torch.utils.data import DataLoader

    from ..io.shards import collate

    rng = np.random.default_rng(seed)
    n = len(dataset)
    cls = mean = gene_sum = None
    gene_count = np.zeros(n_vocab, dtype=np.int64)
    tok_emb, tok_expr, tok_gene = [], [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            if drop_graph:
                batch["laplacian"] = torch.zeros_like(batch["laplacian"])
            emb = model.encode(batch).float()
            rows = batch["cell_index"].numpy()
            genes = emb[:, 1:, :]
            mask = batch["attention_mask"][:, 1:]
            if cls is None:
                d = emb.shape[-1]
                cls, mean = np.zeros((n, d), np.float32), np.zeros((n, d), np.float32)
                gene_sum = torch.zeros((n_vocab, d), dtype=torch.float64)
            cls[rows] = emb[:, 0, :].numpy()
            m = mask.unsqueeze(-1).float()
            mean[rows] = ((genes * m).sum(1) / m.sum(1).clamp(min=1.0)).numpy()
            flat_t = genes[mask]
            ids_t = batch["gene_ids"][:, 1:][mask]
            gene_sum.index_add_(0, ids_t, flat_t.double())
            flat, ids = flat_t.numpy(), ids_t.numpy()
            gene_count += np.bincount(ids, minlength=n_vocab)
            if token_fraction > 0:
                keep = rng.random(len(ids)) < token_fraction
                tok_emb.append(flat[keep])
                tok_expr.append(batch["expr"][mask].numpy()[keep])
                tok_gene.append(ids[keep])
    if cls is None:
        raise ValueError("empty dataset")
    d = cls.shape[1]
    return {
        "cls": cls,
        "mean_pool": mean,
        "gene_sum": gene_sum.numpy(),
        "gene_count": gene_count,
        "token_emb": np.concatenate(tok_emb) if tok_emb else np.empty((0, d), np.float32),
        "token_expr": np.concatenate(tok_expr) if tok_expr else np.empty(0, np.float32),
        "token_gene": np.concatenate(tok_gene) if tok_gene else np.empty(0, np.int64),
    }


def write_embeddings(path, parts: dict[str, dict[str, np.ndarray]], attention: str) -> None:
    """Write the cell embeddings as an AnnData (``.h5ad``) for scanpy, atomically.

    The AnnData has ``X`` of shape [n_cells, 0], ``obs`` indexed by ``obs_names`` with columns
    ``cell_type`` and ``split`` (categoricals).

    Parameters
    ----------
    path : str or Path
        The ``.h5ad`` file to write (via a temporary file renamed onto it).
    parts : ``{split: {"obs_names" [C], "cell_type" [C], "mean_pool" [C, d], "cls" [C, d]}}`` in the
        order the cells are to appear.
    attention : model kind; the embeddings go to ``obsm["X_<attention>"]`` (mean-pool) and
        ``obsm["X_<attention>_cls"]``.

    Raises
    ------
    ValueError
        If an obs name repeats (a cell in more than one shard).
    """
    import anndata as ad
    import pandas as pd

    names = np.concatenate([np.asarray(p["obs_names"]).astype(str) for p in parts.values()])
    if np.unique(names).size != names.size:
        raise ValueError("cells appear in more than one shard (obs names repeat)")
    obs = pd.DataFrame({
        "cell_type": pd.Categorical(np.concatenate([np.asarray(p["cell_type"]).astype(str) for p in parts.values()])),
        "split": pd.Categorical(np.concatenate([np.full(len(p["obs_names"]), s) for s, p in parts.items()])),
    }, index=pd.Index(names, name=None))
    obsm = {f"X_{attention}": np.concatenate([np.asarray(p["mean_pool"], np.float32) for p in parts.values()]),
            f"X_{attention}_cls": np.concatenate([np.asarray(p["cls"], np.float32) for p in parts.values()])}
    a = ad.AnnData(X=np.zeros((names.size, 0), dtype=np.float32), obs=obs, obsm=obsm)
    with atomic_path(path) as tmp:
        a.write_h5ad(tmp)


# --------------------------------------------------------------------------------------------------
# The whole evaluation of one model (``cellgraph evaluate`` in :mod:`cellgraph.cli.evaluate` calls these)
# --------------------------------------------------------------------------------------------------


def load_model(path: Path):
    """A ``cellgraph train`` model.pt (:func:`cellgraph.models.gremln.load`, eval mode, ``model.vocab``).

    Parameters
    ----------
    path : Path
        The ``model.pt`` file.

    Returns
    -------
    GREmLN
        The model in eval mode, its vocabulary (list of gene symbols by token id) as ``model.vocab``.

    Raises
    ------
    InputError
        Naming the file when it cannot be read as one (missing keys, not a torch file).
    """
    from ..models.gremln import load

    try:
        return load(path)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is not a model.pt
        raise InputError(
            f"{path}: not a cellgraph model file (expected a torch file with 'config', 'state_dict', "
            f"'vocab' written by cellgraph train): {type(err).__name__}: {err}"
        ) from err


def _read_adata(path: Path):
    import anndata as ad

    try:
        return ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: cannot be read as an h5ad file ({err})") from err


def _cap(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=cap, replace=False)) if n > cap else np.arange(n)


def load_evaluation_inputs(model_path: str | Path, tokens_dir: str | Path, adata: str | Path,
                           graph_edges: str | Path, coefficients: str | Path) -> dict[str, Any]:
    """Check and read every input of the evaluation of one model (nothing is written before this succeeds).

    Parameters
    ----------
    model_path : ``cellgraph train`` model.pt (:func:`load_model`).
    tokens_dir : tokenize output with ``vocab.tsv`` and the shards ``train_integrated.npz`` (train cells
        tokenized with the inference-time graph, like the test cells), ``test.npz``, ``heldout.npz`` and
        ``train.npz`` (train cells with their own type's graph, as in training).
    adata : the expression stage's ``adata.h5ad`` (log-normalised ``X``, for the PCA baselines).
    graph_edges : gene graph with hidden edges (``graph_edges.tsv.gz``, :func:`read_graph_edges`).
    coefficients : spectral ``coefficients.json`` (only required to exist; reported as an input).

    Returns
    -------
    dict with ``model``, ``model_path``, ``tokens`` (folder), ``vocab`` (list of str), ``shards``
    (``{"train", "test", "heldout", "train_own_graph"}`` -> :class:`cellgraph.io.shards.TokenDataset`),
    ``shard_paths`` (same keys -> Path), ``adata`` (AnnData), ``adata_path``, ``edges`` (DataFrame
    ``source, target, weight, hidden``), ``edges_path`` and ``shard_graph_edges``
    (:func:`check_hidden_edges_absent`).

    Raises
    ------
    InputError
        A missing or malformed input, a model whose vocabulary or ``n_bins`` differs from the shards, an
        empty train or test shard, or a hidden edge found in a shard's cell graphs.
    """
    from ..io.shards import TokenDataset, read_vocab

    model_path = require_file(model_path, "model")
    tokens = Path(tokens_dir)
    vocab_path = require_file(tokens / "vocab.tsv", "vocab")
    # probes fit on the train cells tokenized with the inference-time graph, like the test cells;
    # "train_own_graph" (tokens/train.npz, as in training) gives the per-gene baseline and a diagnostic
    shard_paths = {s: require_file(tokens / f"{name}.npz", f"{name} token shard")
                   for s, name in (("train", "train_integrated"), ("test", "test"), ("heldout", "heldout"),
                                   ("train_own_graph", "train"))}
    adata_path = require_file(adata, "adata")
    edges_path = require_file(graph_edges, "graph edges")
    require_file(coefficients, "coefficients")
    model = load_model(model_path)
    vocab = read_vocab(vocab_path)
    if list(getattr(model, "vocab", [])) != vocab:
        raise InputError(f"{model_path}: the model's vocabulary differs from {vocab_path}")
    shards = {s: TokenDataset(p) for s, p in shard_paths.items()}
    for s, ds in shards.items():
        if ds.n_bins != model.config.n_bins:
            raise InputError(f"{shard_paths[s]}: n_bins={ds.n_bins} but the model was trained with "
                             f"n_bins={model.config.n_bins}")
    for s in ("train", "test"):
        if len(shards[s]) == 0:
            raise InputError(f"{shard_paths[s]}: no cells")
    edges = read_graph_edges(edges_path)
    shard_graph_edges = check_hidden_edges_absent({str(shard_paths[s]): ds for s, ds in shards.items()}, edges, vocab)
    return {"model": model, "model_path": model_path, "tokens": tokens, "vocab": vocab, "shards": shards,
            "shard_paths": shard_paths, "adata": _read_adata(adata_path), "adata_path": adata_path,
            "edges": edges, "edges_path": edges_path, "shard_graph_edges": shard_graph_edges}


def evaluate_model(inputs: dict[str, Any], seed: int, n_splits: int, probe_alpha: float,
                   t0: float | None = None) -> tuple[dict[str, dict], dict[str, Any], dict[str, float]]:
    """Every task of the module docstring (a-d) on one model, in the order of ``cellgraph evaluate``.

    Seeds torch with ``seed``, embeds every non-empty shard (:func:`encode_dataset`; train and test cells
    keep a sample of token embeddings for the probe, seed ``seed`` and ``seed + 17``), embeds train and test
    cells with an untrained model (:func:`random_init_embeddings`), runs the masked-token evaluation
    (:func:`masked_token_evaluation`, all threads), then tasks a-c on one BLAS thread
    (:func:`evaluation_tasks`).

    Parameters
    ----------
    inputs : :func:`load_evaluation_inputs`.
    seed : seed of every random choice.
    n_splits : random probe splits of the annotation (>= 1).
    probe_alpha : ridge penalty of the linear probe (> 0).
    t0 : ``time.time()`` the ``embed_s`` timing counts from (default: now).

    Returns
    -------
    (embeddings ``{shard: encode_dataset(...)}``, results of :func:`evaluation_tasks` with ``masked`` added,
    seconds per part ``{"embed_s", "masked_s", "annotation_s", "edge_recovery_s"}``).

    Raises
    ------
    InputError
        If the held-out cells cannot be halved 50/50 stratified (:func:`annotation_task`).
    """
    import torch
    from threadpoolctl import threadpool_limits

    t0 = time.time() if t0 is None else t0
    model, shards, n_vocab = inputs["model"], inputs["shards"], len(inputs["vocab"])
    torch.manual_seed(seed)
    times: dict[str, float] = {}

    # ---- embeddings and the masked-token evaluation (torch, all threads)
    emb = {}
    for s, ds in shards.items():
        if len(ds) == 0:
            continue
        frac = min(1.0, 1.2 * PROBE_MAX_TOKENS / max(1, len(ds.gene_ids))) if s in ("train", "test") else 0.0
        emb[s] = encode_dataset(model, ds, n_vocab, token_fraction=frac, seed=seed + 17 * (s == "test"))
    rand = random_init_embeddings(model, {"train": shards["train"], "test": shards["test"]}, n_vocab, seed)
    times["embed_s"] = time.time() - t0
    t1 = time.time()
    masked, _ = masked_token_evaluation(model, shards["test"], shards["train_own_graph"], seed)
    times["masked_s"] = time.time() - t1

    # ---- probes and edge recovery on one BLAS thread: small problems, several times faster without contention
    with threadpool_limits(limits=1):
        res = evaluation_tasks(inputs, emb, rand, n_splits=n_splits, seed=seed, probe_alpha=probe_alpha,
                               times=times)
    res["masked"] = masked
    return emb, res, times


def annotation_task(inputs: dict[str, Any], emb: dict[str, dict], n_splits: int, seed: int) -> dict[str, Any]:
    """Task a on the model's embeddings: ``annotation.json`` without ``graph_removal``.

    For the mean-pool and CLS embeddings: :func:`annotate_seen` (train -> test cells), with held-out cells
    :func:`annotate_with_heldout`, and as a diagnostic the probe fitted on the train cells tokenized with
    their own type's network (``seen_test_probe_on_own_graph_train_cells``, macro-F1 only).

    Parameters
    ----------
    inputs : :func:`load_evaluation_inputs`.
    emb : ``{shard: encode_dataset(...)}`` with ``train``, ``test``, ``train_own_graph`` (and ``heldout``).
    n_splits, seed : probe splits and their seed.

    Returns
    -------
    dict
        ``model``, ``attention``, ``train_fraction``, ``n_splits``, ``probe``, ``cells``, ``train_cells_graph``,
        ``heldout_types`` and ``embeddings``: ``{"mean_pool" | "cls": {"seen_test", "with_heldout"`` (with a
        held-out embedding) ``, "seen_test_probe_on_own_graph_train_cells"}}``.

    Raises
    ------
    InputError
        If the held-out cells cannot be halved 50/50 stratified.
    """
    model, shards, shard_paths = inputs["model"], inputs["shards"], inputs["shard_paths"]
    annotation: dict[str, Any] = {"model": str(inputs["model_path"]), "attention": model.config.attention,
                                  "train_fraction": TRAIN_FRACTION, "n_splits": n_splits,
                                  "probe": "StandardScaler + LogisticRegression(C=1.0, L2)",
                                  "cells": {s: len(ds) for s, ds in shards.items()},
                                  "train_cells_graph": "Bayesian graph integration, leave-one-out kNN "
                                                       "(tokens/train_integrated.npz), as for test cells",
                                  "heldout_types": sorted(set(shards["heldout"].cell_type)), "embeddings": {}}
    y_tr, y_te = shards["train"].cell_type, shards["test"].cell_type
    for e in ("mean_pool", "cls"):
        res = {"seen_test": annotate_seen(emb["train"][e], y_tr, emb["test"][e], y_te, n_splits, seed)}
        if "heldout" in emb:
            try:
                res["with_heldout"] = annotate_with_heldout(
                    emb["train"][e], y_tr, emb["test"][e], y_te, emb["heldout"][e], shards["heldout"].cell_type,
                    n_splits, seed)
            except ValueError as err:
                raise InputError(f"{shard_paths['heldout']}: cannot split the held-out cells 50/50 "
                                 f"stratified ({err})") from err
        # diagnostic: the probe fitted on train cells tokenized with their own type's network (label leak)
        res["seen_test_probe_on_own_graph_train_cells"] = annotate_seen(
            emb["train_own_graph"][e], shards["train_own_graph"].cell_type, emb["test"][e], y_te,
            n_splits, seed)["macro_f1"]
        annotation["embeddings"][e] = res
    return annotation


def evaluation_tasks(inputs: dict[str, Any], emb: dict[str, dict], rand: dict[str, dict], n_splits: int,
                     seed: int, probe_alpha: float, times: dict[str, float]) -> dict[str, Any]:
    """Tasks a-c: annotation with graph removal and baselines, the linear probe, hidden-edge recovery.

    The probe is fitted on at most :data:`PROBE_MAX_TOKENS` train-cell tokens and scored on as many test-cell
    tokens (sampled with ``numpy.random.default_rng(seed)``); a gene's embedding for edge recovery is the
    mean of its token embeddings over the test cells (:func:`mean_gene_embedding`).

    Parameters
    ----------
    inputs : :func:`load_evaluation_inputs`; emb : ``{shard: encode_dataset(...)}``.
    rand : :func:`random_init_embeddings` of ``train`` and ``test``.
    n_splits, seed : annotation splits and the seed of every random choice.
    probe_alpha : ridge penalty of the linear probe (> 0).
    times : seconds per part; ``annotation_s`` and ``edge_recovery_s`` are added.

    Returns
    -------
    dict with ``annotation`` (:func:`annotation_task` + ``graph_removal``), ``baselines``
    (:func:`annotation_baselines`), ``probe`` (:func:`linear_probe` without the scatter, plus ``alpha``,
    ``target``, ``features``), ``scatter`` (``{"true", "pred"}``), and ``edges``, ``curves``,
    ``edge_table`` (:func:`hidden_edge_recovery`).
    """
    model, shards, vocab = inputs["model"], inputs["shards"], inputs["vocab"]
    t = time.time()
    annotation = annotation_task(inputs, emb, n_splits, seed)
    annotation["graph_removal"] = graph_removal(model, shards["train"], shards["test"], len(vocab), emb["train"],
                                                emb["test"], n_splits, seed)
    baselines = annotation_baselines(inputs["adata"], shards["train"], shards["test"], vocab, n_splits,
                                     seed, random_init=rand)
    times["annotation_s"] = time.time() - t

    rng = np.random.default_rng(seed)
    tr, te = emb["train"], emb["test"]
    itr = _cap(len(tr["token_expr"]), PROBE_MAX_TOKENS, rng)
    ite = _cap(len(te["token_expr"]), PROBE_MAX_TOKENS, rng)
    probe = linear_probe(tr["token_emb"][itr], tr["token_expr"][itr], te["token_emb"][ite],
                         te["token_expr"][ite], probe_alpha, seed)
    scatter = {"true": probe.pop("scatter_true"), "pred": probe.pop("scatter_pred")}
    probe.update(alpha=probe_alpha, target="batch['expr'] (log1p normalised expression), all real gene tokens",
                 features="gene-token embeddings (standardised)")

    t = time.time()
    gene_emb = mean_gene_embedding(te["gene_sum"], te["gene_count"])
    edges, curves, table = hidden_edge_recovery(gene_emb, inputs["edges"], vocab, seed)
    times["edge_recovery_s"] = time.time() - t
    return {"annotation": annotation, "baselines": baselines, "probe": probe, "scatter": scatter,
            "edges": edges, "curves": curves, "edge_table": table}
