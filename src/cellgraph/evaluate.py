r"""Evaluation of frozen GREmLN / vanilla embeddings: cell-type annotation, masked-edge recovery, linear probe.

Three tasks on embeddings from ``model.encode(batch) -> [B, 1+n, d]`` (position 0 = CLS, 1..n gene
tokens), following GREmLN (Zhang et al. 2025):

a. **Cell-type annotation** (paper sec. 4.2, Table 1, Fig. 1). Per cell, the mean of its gene-token
   embeddings ("mean-pool") and the CLS embedding. A logistic-regression probe on standardised features
   (scikit-learn) is fitted on ``train`` cells and scored on ``test`` cells with macro-averaged precision,
   recall and F1. Split ``s`` (seed ``seed + s``) fits the probe on a stratified random 80% subsample of
   the train cells and scores it on all test cells; mean and sample sd (ddof=1) over ``n_splits``. With
   the held-out cell types (cells and graphs never seen by the encoder; graphs from Bayesian
   integration): split ``s`` halves the held-out cells 50/50 stratified, fits on train + half A and scores
   on test + half B, reporting macro-F1 and each held-out type's precision / recall / F1.
b. **Masked-edge recovery** (paper sec. 4.3, Fig. 2). Per cell-type ARACNe network, a seeded fraction of
   its undirected edges is hidden; that type's *test* cells are re-tokenized with
   :func:`cellgraph.tokenize.tokenize_cells` on the network *minus the hidden edges* (so the encoder never
   sees them; checked on the re-tokenized shard) and a gene's embedding is the mean of its token
   embeddings over those cells. A link classifier (a graph-attention layer, ``torch_geometric.nn.GATConv``,
   over the visible graph and an MLP on ``[h_u * h_v || |h_u - h_v|]``; Velickovic et al. 2018) is
   trained on visible edges vs sampled non-edges and scored on hidden edges vs as many unseen non-edges
   (uniform random non-adjacent gene pairs): AUROC and average precision (scikit-learn). The same
   classifier on random node features is reported as a control: hub-dominated regulatory networks make
   hidden edges partly recoverable from the visible graph alone, so only the margin over the control is
   due to the embeddings.
c. **Linear probe** (paper appendix A.6, Fig. 4). Ridge regression (``--probe-alpha``) on standardised
   gene-token embeddings to the token's normalised log expression ``batch["expr"]``, fitted on a seeded
   subsample of train-cell tokens, R^2 on a subsample of test-cell tokens.

The metric functions work on plain arrays; :func:`run` is the glue that loads the model and shards.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io import atomic_path, require_file, write_json

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
    "undirected_pairs",
    "hide_edges",
    "sample_non_edges",
    "link_prediction",
    "edge_metrics",
    "shard_gene_pairs",
    "linear_probe",
    "encode_dataset",
    "edge_recovery",
]

TRAIN_FRACTION = 0.8  # share of the train cells one annotation split fits on
PROBE_MAX_TOKENS = 20000  # tokens the ridge probe is fitted on / scored on (each)
SCATTER_POINTS = 2000  # (true, predicted) pairs saved for the probe figure
LINK_EPOCHS = 150
LINK_HIDDEN = 32
LINK_LR = 0.01
LINK_SUPERVISION_FRACTION = 0.3  # visible edges held out of message passing each epoch as positives


# --------------------------------------------------------------------------------------------------
# a. Cell-type annotation
# --------------------------------------------------------------------------------------------------


def summarize(values) -> dict[str, Any]:
    """``{"mean", "sd", "values"}`` of a list of floats; sd is the sample sd (ddof=1; 0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "sd": sd, "values": v.tolist()}


def make_annotation_probe(seed: int):
    """Logistic-regression probe: ``StandardScaler`` then multinomial ``LogisticRegression(C=1)`` (L2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))


def stratified_subsample(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a stratified random ``fraction`` of ``y`` [N] (all of ``y`` when fraction >= 1)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if fraction >= 1.0:
        return idx
    keep, _ = train_test_split(idx, train_size=fraction, stratify=y, random_state=seed)
    return np.sort(keep)


def stratified_halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sorted position arrays splitting ``y`` [N] 50/50, stratified by label.

    Raises ValueError (from scikit-learn) if a label has fewer than 2 members.
    """
    from sklearn.model_selection import train_test_split

    a, b = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=seed)
    return np.sort(a), np.sort(b)


def classification_scores(y_true, y_pred, labels) -> dict[str, float]:
    """Macro-averaged precision, recall and F1 (``sklearn.metrics.precision_recall_fscore_support``)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {"precision": float(p), "recall": float(r), "macro_f1": float(f)}


def confusion(y_true, y_pred, labels) -> dict[str, Any]:
    """Confusion matrix [K, K] (rows = true class in ``labels`` order): counts and row-normalised."""
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

    Returns
    -------
    dict with overall ``precision``, ``recall``, ``macro_f1`` (:func:`summarize`), ``heldout_types``:
    ``{type: {"precision", "recall", "f1"}}`` (each :func:`summarize`), ``confusion_matrix`` of split 0,
    ``labels``, ``n_fit`` and ``n_test`` per split.
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
# b. Masked-edge recovery
# --------------------------------------------------------------------------------------------------


def undirected_pairs(sources, targets) -> np.ndarray:
    """Distinct undirected gene pairs [E, 2] (str, each row sorted, rows sorted) of an edge list.

    Self-loops are dropped; (a, b) and (b, a) count once.
    """
    s = np.asarray(sources).astype(str)
    t = np.asarray(targets).astype(str)
    keep = s != t
    s, t = s[keep], t[keep]
    if s.size == 0:
        return np.empty((0, 2), dtype=str)
    pairs = np.stack([np.where(s < t, s, t), np.where(s < t, t, s)], axis=1)
    return np.unique(pairs, axis=0)


def hide_edges(n_edges: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask [n_edges], True for hidden edges: ``round(fraction * n_edges)`` of them (at least one
    when ``n_edges >= 2`` and ``fraction > 0``; never all), chosen with ``numpy.random.default_rng(seed)``."""
    n_hide = int(round(fraction * n_edges))
    if fraction > 0 and n_edges >= 2:
        n_hide = min(max(n_hide, 1), n_edges - 1)
    hidden = np.zeros(n_edges, dtype=bool)
    hidden[np.random.default_rng(seed).choice(n_edges, size=n_hide, replace=False)] = True
    return hidden


def _codes(pairs: np.ndarray, n_nodes: int) -> np.ndarray:
    """Integer code ``min * N + max`` of undirected node pairs [M, 2]."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return np.minimum(pairs[:, 0], pairs[:, 1]) * n_nodes + np.maximum(pairs[:, 0], pairs[:, 1])


def sample_non_edges(n_nodes: int, forbidden: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct undirected node pairs [n, 2] (u < v) whose codes are not in ``forbidden``.

    ``forbidden`` holds codes ``u * n_nodes + v`` (u < v) of pairs to avoid (edges, pairs used elsewhere).
    Rejection sampling; raises ValueError if fewer than ``n`` such pairs exist.
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
                    use_graph: bool = True) -> dict[str, np.ndarray]:
    """Train a GAT + pair-MLP link classifier on the visible graph and score hidden edges vs non-edges.

    Model: node features standardised per dimension; ``h = ELU(GATConv(x))`` (2 heads, PyG; Velickovic et
    al. 2018) over the message-passing edges; score ``MLP([h_u * h_v || |h_u - h_v|])``. Each epoch a
    seeded ``supervision_fraction`` of the visible edges is taken out of message passing and used as
    positives against as many sampled non-edges (so training mirrors the test, where the scored edges are
    absent from the graph); binary cross-entropy, Adam, ``epochs`` full-batch steps. At test time messages
    pass over all visible edges; the test set is every hidden edge plus as many non-edges, sampled once
    before training and never used as training negatives.

    Parameters
    ----------
    x : float array [N, d] node (gene) features.
    visible, hidden : int arrays [E_v, 2], [E_h, 2] undirected edges (node positions); disjoint.
    seed : seeds the non-edge sampling, the epoch splits and torch initialisation.
    epochs : training steps (default ``LINK_EPOCHS`` = 150).
    use_graph : False replaces the GAT layer by a per-node linear layer (``h = ELU(W x)``), so the score
        depends on the two genes' embeddings only (a pair-feature MLP, no message passing).

    Returns
    -------
    dict: ``test_pairs`` [M, 2], ``test_labels`` [M] (1 = hidden edge, 0 = non-edge), ``scores`` [M]
    (probabilities), ``train_negatives`` [K, 2] (every non-edge used in training), ``message_edges`` [E_v, 2].
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
    test_neg = sample_non_edges(n, edge_codes, len(hidden), rng)
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
        def __init__(self, d_in: int):
            super().__init__()
            self.gat = GATConv(d_in, hidden_dim, heads=2, concat=True) if use_graph else None
            self.lin = None if use_graph else torch.nn.Linear(d_in, 2 * hidden_dim)
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(4 * hidden_dim, hidden_dim), torch.nn.ReLU(), torch.nn.Linear(hidden_dim, 1)
            )

        def forward(self, feats, message_edges, pairs):
            h = self.gat(feats, message_edges) if self.gat is not None else self.lin(feats)
            h = torch.nn.functional.elu(h)
            hu, hv = h[pairs[:, 0]], h[pairs[:, 1]]
            return self.mlp(torch.cat([hu * hv, (hu - hv).abs()], dim=1)).squeeze(1)

    def both_directions(e: np.ndarray) -> torch.Tensor:
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
    """AUROC and average precision (``sklearn.metrics``) of binary ``labels`` [M] against ``scores`` [M]."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"auroc": float(roc_auc_score(labels, scores)), "average_precision": float(average_precision_score(labels, scores))}


def shard_gene_pairs(arrays: dict[str, np.ndarray], vocab: list[str]) -> np.ndarray:
    """Undirected gene pairs [E, 2] of every cell subgraph in a token shard (design sec. 5 keys).

    Local token positions in ``edge_index`` are mapped back to genes through ``gene_ptr``/``gene_ids``
    and ``vocab`` (list indexed by token id).
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


# --------------------------------------------------------------------------------------------------
# c. Linear probe
# --------------------------------------------------------------------------------------------------


def linear_probe(x_train, y_train, x_test, y_test, alpha: float, seed: int,
                 n_scatter: int = SCATTER_POINTS) -> dict[str, Any]:
    """Ridge regression (``StandardScaler`` + ``sklearn.linear_model.Ridge(alpha)``) from token embeddings
    [N, d] to expression [N]; R^2 (``sklearn.metrics.r2_score``) on the test tokens (GREmLN appendix A.6).

    Returns ``{"r2", "r2_train", "n_train", "n_test", "scatter_true", "scatter_pred"}``, the scatter a
    seeded subsample of at most ``n_scatter`` test tokens.
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
# Embeddings
# --------------------------------------------------------------------------------------------------


def encode_dataset(model, dataset, n_vocab: int, batch_size: int = 64, token_fraction: float = 0.0,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Frozen embeddings of every cell of a token dataset.

    Parameters
    ----------
    model : object with ``encode(batch) -> Tensor[B, 1+n, d]`` (position 0 = CLS).
    dataset : ``cellgraph.data.TokenDataset``; batches from ``cellgraph.data.collate``.
    n_vocab : vocabulary size V (for the per-gene sums).
    token_fraction : probability that a real gene token is kept for the linear probe (seeded).

    Returns
    -------
    dict: ``cls`` [C, d], ``mean_pool`` [C, d] (mean over real gene tokens, CLS excluded), ``gene_sum``
    [V, d] and ``gene_count`` [V] (token embeddings summed per gene id), and the sampled tokens
    ``token_emb`` [M, d], ``token_expr`` [M], ``token_gene`` [M].
    """
    import torch
    from torch.utils.data import DataLoader

    from .data import collate

    rng = np.random.default_rng(seed)
    n = len(dataset)
    cls = mean = gene_sum = None
    gene_count = np.zeros(n_vocab, dtype=np.int64)
    tok_emb, tok_expr, tok_gene = [], [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
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


# --------------------------------------------------------------------------------------------------
# Stage glue
# --------------------------------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-path", required=True, help="trained model (results/train/{model}/model.pt)")
    p.add_argument("--tokens-dir", required=True, help="token shards and vocab.tsv (results/tokens)")
    p.add_argument("--adata", required=True, help="results/expression/adata.h5ad (to re-tokenize cells)")
    p.add_argument("--networks", required=True, help="ARACNe networks (results/grn/networks.tsv.gz)")
    p.add_argument("--coefficients", required=True, help="results/spectral/coefficients.json")
    p.add_argument("--out-dir", required=True, help="folder for the evaluation results")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--n-splits", type=int, default=3, help="random probe splits for annotation (default 3)")
    p.add_argument("--edge-holdout-fraction", type=float, default=0.15,
                   help="share of each cell-type network's edges hidden for edge recovery (default 0.15)")
    p.add_argument("--probe-alpha", type=float, default=1.0, help="ridge penalty of the linear probe (default 1.0)")


def _load_model(path: Path):
    from .models.gremln import load

    try:
        return load(path)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is not a model.pt
        raise InputError(
            f"{path}: not a cellgraph model file (expected a torch file with 'config', 'state_dict', "
            f"'vocab' written by cellgraph train): {type(err).__name__}: {err}"
        ) from err


def _read_networks(path: Path):
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t")
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: cannot be read as a tab-separated table ({err})") from err
    missing = {"cell_type", "source", "target", "mi"} - set(df.columns)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)}")
    df["cell_type"] = df["cell_type"].astype(str)
    df["source"] = df["source"].astype(str)
    df["target"] = df["target"].astype(str)
    return df


def _read_adata(path: Path):
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: cannot be read as an h5ad file ({err})") from err
    label_key = adata.uns.get("cellgraph", {}).get("label_key")
    if label_key is None or label_key not in adata.obs:
        raise InputError(f"{path}: uns['cellgraph']['label_key'] missing or not a column of obs")
    if "split" not in adata.obs:
        raise InputError(f"{path}: obs['split'] missing")
    return adata, str(label_key)


def _cap(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=cap, replace=False)) if n > cap else np.arange(n)


def _no_edge_recovery(fraction: float, per_type: dict, skipped: dict) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The edge-recovery result when no type network has a hidden edge to score (e.g. ARACNe kept no edge):
    metrics None, empty curves, and the reason."""
    none = {"auroc": None, "average_precision": None}
    summary = {
        "status": "not computed: no cell-type network has hidden edges between genes of its test cells "
                  "(the grn stage kept no or too few edges; see results/grn/control.tsv)",
        "cells_used": "test", "edge_holdout_fraction": fraction,
        "pooled": none | {"hidden_edges": 0, "non_edges": 0}, "control_random_features": dict(none),
        "macro_over_types": {}, "cell_types": per_type, "skipped": skipped,
    }
    empty = np.zeros(0)
    curves = {"scores": empty, "labels": np.zeros(0, np.int8), "cell_type": np.zeros(0, dtype="<U1"),
              "gene_u": np.zeros(0, dtype="<U1"), "gene_v": np.zeros(0, dtype="<U1"),
              "roc_fpr": empty, "roc_tpr": empty, "pr_precision": empty, "pr_recall": empty}
    return summary, curves


def edge_recovery(model, adata, label_key: str, networks, vocab: list[str], n_bins: int, max_seq_len: int,
                  fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Masked-edge recovery over every cell-type network (module docstring, task b).

    Returns the JSON summary and the arrays of ``edge_curves.npz``: per scored pair ``scores``, ``labels``
    (1 = hidden edge), ``cell_type``, ``gene_u``, ``gene_v``; pooled ``roc_fpr``, ``roc_tpr``,
    ``pr_precision``, ``pr_recall``; and the same four per cell type as ``<curve>__<cell type>``.
    Raises RuntimeError if a hidden edge is found in the re-tokenized cells' graphs (it would leak the
    answer).
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    from .data import TokenDataset
    from .tokenize import tokenize_cells

    labels_all = adata.obs[label_key].astype(str).to_numpy()
    split = adata.obs["split"].astype(str).to_numpy()
    gene_pos = {g: i for i, g in enumerate(vocab)}
    per_type: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    all_scores, all_labels, all_types, all_u, all_v, ctrl_scores = [], [], [], [], [], []
    for k, (cell_type, df) in enumerate(networks.groupby("cell_type", sort=True)):
        pairs = undirected_pairs(df["source"], df["target"])
        hidden_mask = hide_edges(len(pairs), fraction, seed + k)
        hidden_pairs = pairs[hidden_mask]
        hidden_set = {tuple(p) for p in hidden_pairs}
        key = [tuple(sorted((a, b))) for a, b in zip(df["source"], df["target"])]
        visible_df = df.loc[[kk not in hidden_set for kk in key], ["source", "target", "mi"]].rename(
            columns={"mi": "weight"}).reset_index(drop=True)
        cells = np.flatnonzero((split == "test") & (labels_all == cell_type))
        if cells.size == 0:
            skipped[cell_type] = "no test cells of this type"
            continue
        arrays = tokenize_cells(adata, cells, visible_df, vocab, n_bins, max_seq_len, seed)
        enc_pairs = shard_gene_pairs(arrays, vocab)
        leaked = {tuple(p) for p in enc_pairs} & hidden_set
        if leaked:
            raise RuntimeError(f"{cell_type}: {len(leaked)} hidden edges are in the encoder's graph, e.g. "
                               f"{sorted(leaked)[:3]}")
        emb = encode_dataset(model, TokenDataset.from_arrays(arrays), len(vocab))
        has = emb["gene_count"] > 0
        genes = sorted({g for g in np.unique(pairs) if g in gene_pos and has[gene_pos[g]]})
        node = {g: i for i, g in enumerate(genes)}
        ids = np.array([gene_pos[g] for g in genes], dtype=np.int64)
        x = emb["gene_sum"][ids] / emb["gene_count"][ids, None]

        def to_nodes(pp):
            ok = np.array([a in node and b in node for a, b in pp], dtype=bool)
            return np.array([[node[a], node[b]] for a, b in pp[ok]], dtype=np.int64).reshape(-1, 2), int((~ok).sum())

        vis, vis_dropped = to_nodes(pairs[~hidden_mask])
        hid, hid_dropped = to_nodes(hidden_pairs)
        info = {
            "network_nodes": int(np.unique(pairs).size), "network_edges": int(len(pairs)),
            "hidden_edges": int(len(hidden_pairs)), "cells": int(cells.size),
            "encoder_graph_edges": int(len(enc_pairs)), "hidden_edges_in_encoder_graph": 0,
            "nodes_with_embedding": len(genes),
            "visible_edges_dropped_no_embedding": vis_dropped, "hidden_edges_dropped_no_embedding": hid_dropped,
        }
        if len(hid) == 0 or len(vis) < 2:
            skipped[cell_type] = "no hidden or too few visible edges between genes with an embedding"
            per_type[cell_type] = info
            continue
        res = link_prediction(x, vis, hid, seed + k)
        info.update(edge_metrics(res["test_labels"], res["scores"]))
        # control: the same classifier on random node features (what graph structure alone recovers)
        ctrl = link_prediction(np.random.default_rng(seed + k).standard_normal(x.shape), vis, hid, seed + k)
        info["control_random_features"] = edge_metrics(ctrl["test_labels"], ctrl["scores"])
        ctrl_scores.append(ctrl["scores"])
        info.update(scored_hidden_edges=int(len(hid)), scored_non_edges=int((res["test_labels"] == 0).sum()),
                    train_visible_edges=int(len(vis)))
        per_type[cell_type] = info
        log.info("edge recovery %s: %d hidden edges, AUROC %.3f, AP %.3f", cell_type, len(hid),
                 info["auroc"], info["average_precision"])
        g = np.asarray(genes, dtype=object)
        all_scores.append(res["scores"])
        all_labels.append(res["test_labels"])
        all_types.append(np.full(len(res["scores"]), cell_type, dtype=object))
        all_u.append(g[res["test_pairs"][:, 0]])
        all_v.append(g[res["test_pairs"][:, 1]])
    if not all_scores:
        return _no_edge_recovery(fraction, per_type, skipped)
    scores, labels = np.concatenate(all_scores), np.concatenate(all_labels)
    fpr, tpr, _ = roc_curve(labels, scores)
    prec, rec, _ = precision_recall_curve(labels, scores)
    summary = {
        "method": "GATConv (2 heads) over the visible graph + MLP on [h_u*h_v || |h_u-h_v|], "
                  f"{LINK_EPOCHS} epochs; nodes = genes of the type network with a token in its test cells, "
                  "re-tokenized on the network minus the hidden edges",
        "cells_used": "test",
        "edge_holdout_fraction": fraction,
        "pooled": edge_metrics(labels, scores) | {"hidden_edges": int(labels.sum()),
                                                   "non_edges": int((labels == 0).sum())},
        "control_random_features": edge_metrics(labels, np.concatenate(ctrl_scores)),
        "negatives": "uniform random gene pairs of the type network that are not edges",
        "macro_over_types": {m: summarize([v[m] for v in per_type.values() if m in v])
                             for m in ("auroc", "average_precision")},
        "cell_types": per_type,
        "skipped": skipped,
    }
    curves = {
        "scores": scores, "labels": labels.astype(np.int8),
        "cell_type": np.concatenate(all_types).astype(str),
        "gene_u": np.concatenate(all_u).astype(str), "gene_v": np.concatenate(all_v).astype(str),
        "roc_fpr": fpr, "roc_tpr": tpr, "pr_precision": prec, "pr_recall": rec,
    }
    types = curves["cell_type"]
    for t in np.unique(types):  # per-type curves, keys "<curve>__<cell type>"
        sel = types == t
        f, r, _ = roc_curve(labels[sel], scores[sel])
        p_, r_, _ = precision_recall_curve(labels[sel], scores[sel])
        curves.update({f"roc_fpr__{t}": f, f"roc_tpr__{t}": r, f"pr_precision__{t}": p_, f"pr_recall__{t}": r_})
    return summary, curves


def run(args: argparse.Namespace) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    from .data import TokenDataset, read_vocab

    t0 = time.time()
    # ---- validate everything before writing anything
    if args.n_splits < 1:
        raise InputError(f"--n-splits must be >= 1, got {args.n_splits}")
    if not 0.0 < args.edge_holdout_fraction < 1.0:
        raise InputError(f"--edge-holdout-fraction must be in (0, 1), got {args.edge_holdout_fraction}")
    if not args.probe_alpha > 0:
        raise InputError(f"--probe-alpha must be > 0, got {args.probe_alpha}")
    model_path = require_file(args.model_path, "model")
    tokens = Path(args.tokens_dir)
    vocab_path = require_file(tokens / "vocab.tsv", "vocab")
    # probes fit on the train cells tokenized with the inference-time (Bayesian integration) graph, like the
    # test cells; "train_own_graph" (their own type's network, as in training) is kept as a diagnostic
    shard_paths = {s: require_file(tokens / f"{name}.npz", f"{name} token shard")
                   for s, name in (("train", "train_integrated"), ("test", "test"), ("heldout", "heldout"),
                                   ("train_own_graph", "train"))}
    adata_path = require_file(args.adata, "adata")
    networks_path = require_file(args.networks, "grn networks")
    require_file(args.coefficients, "coefficients")
    model = _load_model(model_path)
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
    networks = _read_networks(networks_path)
    adata, label_key = _read_adata(adata_path)
    torch.manual_seed(args.seed)

    # ---- embeddings
    rng = np.random.default_rng(args.seed)
    emb = {}
    for s, ds in shards.items():
        if len(ds) == 0:
            continue
        frac = min(1.0, 1.2 * PROBE_MAX_TOKENS / max(1, len(ds.gene_ids))) if s in ("train", "test") else 0.0
        emb[s] = encode_dataset(model, ds, len(vocab), token_fraction=frac, seed=args.seed + 17 * (s == "test"))
    t_emb = time.time() - t0

    # ---- a-c on one BLAS thread: the probes are small and several times faster without thread contention
    with threadpool_limits(limits=1):
        annotation, probe, scatter, edges, curves, t_ann, t_edge = _tasks(
            args, model, vocab, shards, shard_paths, emb, adata, label_key, networks, rng, model_path, t0, t_emb)
    _write(args, annotation, probe, scatter, edges, curves, model_path, tokens, adata_path, networks_path,
           t0, t_emb, t_ann, t_edge)


def _tasks(args, model, vocab, shards, shard_paths, emb, adata, label_key, networks, rng, model_path, t0, t_emb):
    """Tasks a-c on the embeddings; returns the results and the seconds spent on a and b."""
    # ---- a. annotation
    annotation: dict[str, Any] = {"model": str(model_path), "attention": model.config.attention,
                                  "train_fraction": TRAIN_FRACTION, "n_splits": args.n_splits,
                                  "probe": "StandardScaler + LogisticRegression(C=1.0, L2)",
                                  "cells": {s: len(ds) for s, ds in shards.items()},
                                  "train_cells_graph": "Bayesian graph integration, leave-one-out kNN "
                                                       "(tokens/train_integrated.npz), as for test cells",
                                  "heldout_types": sorted(set(shards["heldout"].cell_type)), "embeddings": {}}
    for e in ("mean_pool", "cls"):
        res = {"seen_test": annotate_seen(emb["train"][e], shards["train"].cell_type, emb["test"][e],
                                          shards["test"].cell_type, args.n_splits, args.seed)}
        if "heldout" in emb:
            try:
                res["with_heldout"] = annotate_with_heldout(
                    emb["train"][e], shards["train"].cell_type, emb["test"][e], shards["test"].cell_type,
                    emb["heldout"][e], shards["heldout"].cell_type, args.n_splits, args.seed)
            except ValueError as err:
                raise InputError(f"{shard_paths['heldout']}: cannot split the held-out cells 50/50 "
                                 f"stratified ({err})") from err
        # diagnostic: the probe fitted on train cells tokenized with their own type's network (label leak)
        res["seen_test_probe_on_own_graph_train_cells"] = annotate_seen(
            emb["train_own_graph"][e], shards["train_own_graph"].cell_type, emb["test"][e],
            shards["test"].cell_type, args.n_splits, args.seed)["macro_f1"]
        annotation["embeddings"][e] = res
    t_ann = time.time() - t0 - t_emb

    # ---- c. linear probe
    tr, te = emb["train"], emb["test"]
    itr = _cap(len(tr["token_expr"]), PROBE_MAX_TOKENS, rng)
    ite = _cap(len(te["token_expr"]), PROBE_MAX_TOKENS, rng)
    probe = linear_probe(tr["token_emb"][itr], tr["token_expr"][itr], te["token_emb"][ite],
                         te["token_expr"][ite], args.probe_alpha, args.seed)
    scatter = {"true": probe.pop("scatter_true"), "pred": probe.pop("scatter_pred")}
    probe.update(alpha=args.probe_alpha, target="batch['expr'] (log1p normalised expression), all real gene tokens",
                 features="gene-token embeddings (standardised)")

    # ---- b. masked-edge recovery
    t1 = time.time()
    edges, curves = edge_recovery(model, adata, label_key, networks, vocab, shards["test"].n_bins,
                                  shards["test"].max_seq_len, args.edge_holdout_fraction, args.seed)
    t_edge = time.time() - t1
    return annotation, probe, scatter, edges, curves, t_ann, t_edge


def _write(args, annotation, probe, scatter, edges, curves, model_path, tokens, adata_path, networks_path,
           t0, t_emb, t_ann, t_edge):
    out = Path(args.out_dir)
    write_json(out / "annotation.json", annotation)
    write_json(out / "edge_recovery.json", edges)
    with atomic_path(out / "edge_curves.npz") as tmp:
        np.savez(tmp, **curves)
    write_json(out / "probe.json", probe)
    with atomic_path(out / "probe_scatter.npz") as tmp:
        np.savez(tmp, **scatter)
    write_json(out / "report.json", {
        "inputs": {"model": str(model_path), "tokens_dir": str(tokens), "adata": str(adata_path),
                   "networks": str(networks_path), "coefficients": str(args.coefficients)},
        "cells": annotation["cells"],
        "probe_tokens": {"train": probe["n_train"], "test": probe["n_test"]},
        "edge_recovery_skipped_types": edges["skipped"],
        "edge_recovery_dropped": {
            k: int(sum(v.get(k, 0) for v in edges["cell_types"].values()))
            for k in ("visible_edges_dropped_no_embedding", "hidden_edges_dropped_no_embedding")
        },
        "hidden_edges_in_encoder_graph": int(sum(v["hidden_edges_in_encoder_graph"]
                                                 for v in edges["cell_types"].values())),
    })
    log.info("evaluate: done in %.1f s (embed %.1f, annotation %.1f, edge recovery %.1f): macro-F1 %.3f, "
             "edge AUROC %.3f, probe R^2 %.3f", time.time() - t0, t_emb, t_ann, t_edge,
             annotation["embeddings"]["mean_pool"]["seen_test"]["macro_f1"]["mean"], edges["pooled"]["auroc"],
             probe["r2"])
