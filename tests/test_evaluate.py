"""Tests of cellgraph.tl.evaluate: metrics on real PBMC embeddings and real DoRothEA graphs, split bookkeeping,
masked-token baselines, graph removal and hidden-edge recovery on synthetic data with a known answer, and the
stage end to end on a small real-data pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellgraph.tl import evaluate as ev
from cellgraph.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo"
H5AD = DEMO / "expression" / "pbmc3p5k_sorted_counts.h5ad"
DOROTHEA = DEMO / "networks" / "human" / "dorothea_hs_regulons.tsv.gz"
_SHARED: dict[str, Path] = {}  # the small pipeline, built once per pytest session


# --------------------------------------------------------------------------------------------------
# fixtures: real PBMC cells and real DoRothEA edges
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pbmc():
    """The real PBMC cells, log-normalised, with a 20-component PCA (obsm['X_pca'])."""
    import scanpy as sc

    a = sc.read_h5ad(H5AD)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=20, random_state=0)
    return a


@pytest.fixture(scope="module")
def pca_split(pbmc):
    """Real PCA embeddings split into train / test (seen types) and the held-out NK cells."""
    y = pbmc.obs["trueLabel"].astype(str).to_numpy()
    x = pbmc.obsm["X_pca"]
    held = np.flatnonzero(y == "NK")
    seen = np.random.default_rng(0).permutation(np.flatnonzero(y != "NK"))
    tr, te = seen[: int(0.75 * seen.size)], seen[int(0.75 * seen.size):]
    return x, y, tr, te, held


@pytest.fixture(scope="module")
def dorothea_graph(pbmc):
    """DoRothEA (confidence A/B) edges among genes detected in >= 100 PBMC cells, with gene features from
    a PCA of the real expression (genes as samples)."""
    from sklearn.decomposition import PCA

    d = pd.read_csv(DOROTHEA, sep="\t")
    d = d[d["confidence"].isin(["A", "B"])]
    detected = set(pbmc.var_names[np.asarray((pbmc.X > 0).sum(0)).ravel() >= 100])
    d = d[d["tf"].isin(detected) & d["target"].isin(detected)]
    pairs = ev.undirected_pairs(d["tf"], d["target"])
    genes = np.unique(pairs)
    pos = {g: i for i, g in enumerate(genes)}
    edges = np.array([[pos[u], pos[v]] for u, v in pairs])
    feats = PCA(16, random_state=0).fit_transform(pbmc[:, genes].X.toarray().T)
    return genes, edges, feats


# --------------------------------------------------------------------------------------------------
# a. annotation
# --------------------------------------------------------------------------------------------------


def test_annotation_on_real_pca_is_high_and_matches_sklearn(pca_split):
    from sklearn.metrics import f1_score, precision_score

    x, y, tr, te, _ = pca_split
    res = ev.annotate_seen(x[tr], y[tr], x[te], y[te], n_splits=3, seed=0)
    assert res["macro_f1"]["mean"] > 0.85  # sorted PBMC types separate well on expression PCA
    assert len(res["macro_f1"]["values"]) == 3
    assert res["macro_f1"]["sd"] == pytest.approx(np.std(res["macro_f1"]["values"], ddof=1))
    # split 0 by hand: stratified 80% of train, probe, macro metrics on all test cells
    sub = ev.stratified_subsample(y[tr], 0.8, 0)
    pred = ev.make_annotation_probe(0).fit(x[tr][sub], y[tr][sub]).predict(x[te])
    assert res["macro_f1"]["values"][0] == pytest.approx(f1_score(y[te], pred, average="macro"))
    assert res["precision"]["values"][0] == pytest.approx(precision_score(y[te], pred, average="macro"))
    cm = np.array(res["confusion_matrix"]["counts"])
    assert res["confusion_matrix"]["labels"] == sorted(set(y[tr]))
    assert cm.sum() == te.size and np.trace(cm) == (pred == y[te]).sum()
    assert np.allclose(np.array(res["confusion_matrix"]["normalized"]).sum(1), 1.0)
    assert res["n_fit"] == [sub.size] * 3


def test_shuffled_labels_give_chance(pca_split):
    x, y, tr, te, _ = pca_split
    shuffled = np.random.default_rng(1).permutation(y[tr])
    res = ev.annotate_seen(x[tr], shuffled, x[te], y[te], n_splits=2, seed=0)
    assert res["macro_f1"]["mean"] < 0.35  # 6 classes: chance is about 1/6


def test_perfectly_separable_embeddings_give_f1_one():
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["a", "b", "c"]), 40)
    x = np.eye(3)[np.searchsorted(["a", "b", "c"], y)] * 10 + rng.normal(scale=0.1, size=(120, 3))
    res = ev.annotate_seen(x[::2], y[::2], x[1::2], y[1::2], n_splits=2, seed=3)
    assert res["macro_f1"]["values"] == [1.0, 1.0]
    assert np.array_equal(np.array(res["confusion_matrix"]["normalized"]), np.eye(3))


def test_heldout_annotation_on_real_cells(pca_split):
    x, y, tr, te, held = pca_split
    res = ev.annotate_with_heldout(x[tr], y[tr], x[te], y[te], x[held], y[held], n_splits=2, seed=0)
    assert list(res["heldout_types"]) == ["NK"]
    assert res["heldout_types"]["NK"]["f1"]["mean"] > 0.8
    assert res["n_fit"] == [tr.size + held.size // 2] * 2
    assert "NK" in res["confusion_matrix"]["labels"]


def test_probe_never_sees_test_cells_and_heldout_halves_are_disjoint(pca_split, monkeypatch):
    """Put each cell's id in an extra feature column and record what every probe is fitted / scored on."""
    x, y, tr, te, held = pca_split
    xi = np.column_stack([x, np.arange(len(y))])
    seen_fit, seen_pred = [], []
    real = ev.make_annotation_probe

    class Recording:
        def __init__(self, seed):
            self.p = real(seed)

        def fit(self, a, b):
            seen_fit.append(a[:, -1].astype(int))
            self.p.fit(a[:, :-1], b)
            return self

        def predict(self, a):
            seen_pred.append(a[:, -1].astype(int))
            return self.p.predict(a[:, :-1])

    monkeypatch.setattr(ev, "make_annotation_probe", Recording)
    ev.annotate_seen(xi[tr], y[tr], xi[te], y[te], n_splits=2, seed=0)
    for f, p in zip(seen_fit, seen_pred):
        assert not np.intersect1d(f, te).size and np.isin(f, tr).all()
        assert np.array_equal(np.sort(p), np.sort(te))
    assert not np.array_equal(seen_fit[0], seen_fit[1])  # different seeds, different subsamples
    seen_fit.clear(), seen_pred.clear()
    ev.annotate_with_heldout(xi[tr], y[tr], xi[te], y[te], xi[held], y[held], n_splits=2, seed=0)
    for f, p in zip(seen_fit, seen_pred):
        half_a, half_b = np.intersect1d(f, held), np.intersect1d(p, held)
        assert not np.intersect1d(half_a, half_b).size
        assert np.array_equal(np.union1d(half_a, half_b), np.sort(held))
        assert not np.intersect1d(f, te).size
        assert np.isin(te, p).all()


def test_stratified_helpers_keep_class_proportions():
    y = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    sub = ev.stratified_subsample(y, 0.8, 0)
    assert sub.size == 80 and len(np.unique(sub)) == 80
    assert [int((y[sub] == c).sum()) for c in "abc"] == [40, 24, 16]
    a, b = ev.stratified_halves(y, 1)
    assert not np.intersect1d(a, b).size and a.size + b.size == 100
    assert [int((y[a] == c).sum()) for c in "abc"] == [25, 15, 10]


# --------------------------------------------------------------------------------------------------
# b. edges
# --------------------------------------------------------------------------------------------------


def test_undirected_pairs():
    pairs = ev.undirected_pairs(["B", "A", "A", "C"], ["A", "B", "A", "A"])
    assert pairs.tolist() == [["A", "B"], ["A", "C"]]  # reverse duplicate and self-loop dropped


def test_sample_non_edges_avoids_forbidden_pairs():
    rng = np.random.default_rng(0)
    n = 30
    forbidden = np.array([u * n + v for u in range(n) for v in range(u + 1, n) if (u + v) % 3 == 0])
    neg = ev.sample_non_edges(n, forbidden, 200, rng)
    codes = neg[:, 0] * n + neg[:, 1]
    assert neg.shape == (200, 2) and (neg[:, 0] < neg[:, 1]).all()
    assert np.unique(codes).size == 200 and not np.isin(codes, forbidden).any()
    with pytest.raises(ValueError):
        ev.sample_non_edges(4, np.array([1, 2, 3]), 4, rng)  # only 3 of 6 pairs are free


def test_link_prediction_on_real_dorothea_graph(dorothea_graph):
    genes, edges, feats = dorothea_graph
    n = len(genes)
    hidden = np.zeros(len(edges), dtype=bool)
    hidden[np.random.default_rng(0).choice(len(edges), size=round(0.15 * len(edges)), replace=False)] = True
    res = ev.link_prediction(feats, edges[~hidden], edges[hidden], seed=0, epochs=60)
    code = lambda p: np.minimum(p[:, 0], p[:, 1]) * n + np.maximum(p[:, 0], p[:, 1])  # noqa: E731
    lab = res["test_labels"]
    assert lab.sum() == hidden.sum() and (lab == 0).sum() == hidden.sum()
    test_neg = res["test_pairs"][lab == 0]
    # test negatives are not edges and never training negatives; hidden edges are not message edges
    assert not np.isin(code(test_neg), code(edges)).any()
    assert not np.isin(code(test_neg), code(res["train_negatives"])).any()
    assert not np.isin(code(res["train_negatives"]), code(edges)).any()
    assert not np.isin(code(edges[hidden]), code(res["message_edges"])).any()
    m = ev.edge_metrics(lab, res["scores"])
    assert m["auroc"] > 0.7  # DoRothEA's TF hubs make hidden edges recoverable from the visible graph
    again = ev.link_prediction(feats, edges[~hidden], edges[hidden], seed=0, epochs=60)
    assert np.array_equal(again["scores"], res["scores"])
    with pytest.raises(ValueError, match="overlap"):
        ev.link_prediction(feats, edges, edges[:3], seed=0, epochs=1)


def test_edge_metrics_match_hand_computation():
    # 2 positives, 2 negatives; one of the 4 positive-negative pairs is misordered -> AUROC 3/4
    m = ev.edge_metrics([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1])
    assert m["auroc"] == pytest.approx(0.75)
    assert m["average_precision"] == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))


# --------------------------------------------------------------------------------------------------
# synthetic shards and models with a known answer
# --------------------------------------------------------------------------------------------------


def _shard(cells, n_bins, cell_type=None, split="test", max_seq_len=64):
    """Shard arrays (docs/design.md section 5) from a list of cells ``{"gene_ids", "bins", "edges" [2, e]}``."""
    from cellgraph.io.shards import TokenDataset

    gl = [len(c["gene_ids"]) for c in cells]
    edges = [np.asarray(c.get("edges", np.zeros((2, 0))), dtype=np.int32).reshape(2, -1) for c in cells]
    n = len(cells)
    arrays = {
        "obs_names": np.array([f"{split}{i}" for i in range(n)]),
        "cell_type": np.array(cell_type if cell_type is not None else ["a"] * n),
        "split": np.array([split] * n),
        "gene_ptr": np.concatenate([[0], np.cumsum(gl)]).astype(np.int64),
        "gene_ids": np.concatenate([c["gene_ids"] for c in cells]).astype(np.int32),
        "bins": np.concatenate([c["bins"] for c in cells]).astype(np.int16),
        "expr": np.concatenate([np.asarray(c["bins"], np.float32) / n_bins for c in cells]),
        "edge_ptr": np.concatenate([[0], np.cumsum([e.shape[1] for e in edges])]).astype(np.int64),
        "edge_index": np.concatenate(edges, axis=1),
        "edge_weight": np.ones(sum(e.shape[1] for e in edges), np.float32),
        "n_bins": np.array(n_bins), "max_seq_len": np.array(max_seq_len),
    }
    return TokenDataset.from_arrays(arrays)


def _model(kind="vanilla", vocab_size=40, n_bins=10, beta=0.1, d=16, seed=0, weight_sd=None):
    import torch

    from cellgraph.models.gremln import GREmLN, GREmLNConfig
    from cellgraph.graphs.spectral import heat_kernel_coefficients

    c = heat_kernel_coefficients(beta, 1e-8) if kind == "gremln" else np.array([1.0])
    torch.manual_seed(seed)
    m = GREmLN(GREmLNConfig(d_model=d, n_layers=2, n_heads=2, attention=kind, vocab_size=vocab_size, n_bins=n_bins,
                            coefficients=c.tolist() if kind == "gremln" else [], chebyshev_order=c.size - 1))
    if weight_sd is not None:  # an untrained model at init barely attends; large weights make attention matter
        with torch.no_grad():
            for p in m.parameters():
                if p.ndim == 2:
                    p.normal_(0.0, weight_sd)
    return m.eval()


def test_per_cell_baseline_is_the_mode_of_the_visible_bins():
    # visible bins: 7 x3, 2 x2, 9 x1 -> mode 7; masked targets 7, 2, 4
    bins = np.array([7, 7, 2, 7, 2, 9, 7, 2, 4])
    masked = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=bool)
    res = ev.per_cell_baseline(bins, masked, n_bins=10)
    assert res["mode"] == 7 and res["correct"].tolist() == [True, False, False]
    total = 6 + 0.5 * 11
    assert np.allclose(res["cross_entropy"], -np.log(np.array([3.5, 2.5, 0.5]) / total))
    assert ev.per_cell_baseline(np.array([3, 3]), np.array([True, True]), 10)["mode"] == 0  # nothing visible


@pytest.fixture(scope="module")
def tiny_masked():
    """Six cells with one dominant bin each, a train shard, and an untrained model: the masked evaluation."""
    from collections import Counter

    rng = np.random.default_rng(3)
    cells = []
    for i in range(6):
        genes = rng.choice(np.arange(2, 40), size=14, replace=False)
        bins = np.array([5 + (i % 2)] * 9 + list(rng.integers(0, 11, 5)))  # mode 5 or 6, 9 of 14 tokens
        cells.append({"gene_ids": genes, "bins": rng.permutation(bins)})
    test = _shard(cells, 10)
    train = _shard([{"gene_ids": np.arange(2, 40).repeat(3), "bins": rng.integers(0, 11, 114)}], 10, split="train")
    model = _model("vanilla")
    summary, tok = ev.masked_token_evaluation(model, test, train, seed=4, batch_size=4, n_boot=200)
    return test, train, model, summary, tok, Counter


def test_masked_per_cell_baseline_matches_hand_computed_mode(tiny_masked):
    test, _, model, summary, tok, Counter = tiny_masked
    ce, ok = [], []
    for i in range(len(test)):
        it = test[i]
        sel = tok["cell_index"] == i
        masked_local = tok["position"][sel] - 1  # batch position 1 = first gene token
        visible = [b for j, b in enumerate(it["bins"]) if j not in set(masked_local)]
        mode, count = Counter(visible).most_common(1)[0]
        assert count > sorted(Counter(visible).values())[-2]  # the mode is unique by construction
        for b in it["bins"][masked_local]:
            ok.append(b == mode)
            ce.append(-np.log((Counter(visible)[b] + 0.5) / (len(visible) + 0.5 * 11)))
    assert np.array_equal(tok["per_cell_correct"], ok) and np.allclose(tok["per_cell_ce"], ce)
    assert summary["per_cell"]["accuracy"] == pytest.approx(np.mean(ok))
    assert summary["per_cell"]["cross_entropy"] == pytest.approx(np.mean(ce))


def test_masked_positions_are_identical_for_model_and_baselines(tiny_masked):
    import torch

    from cellgraph.io.shards import bin_special_ids, collate
    from cellgraph.training.pretrain import mask_positions

    test, train, model, summary, tok, _ = tiny_masked
    batch = collate([test[i] for i in range(len(test))])
    mask = mask_positions(batch["attention_mask"], batch["cell_index"], 0.15, 4, epoch=0, stream=ev.EVAL_MASK_STREAM)
    rows, pos = (t.numpy() for t in mask.nonzero(as_tuple=True))
    assert np.array_equal(tok["cell_index"], rows) and np.array_equal(tok["position"], pos)
    n_real = np.diff(test.gene_ptr)
    assert summary["n_masked"] == sum(max(1, round(0.15 * n)) for n in n_real) == len(rows)
    # the model, scored by hand with MASK at exactly these positions (one batch instead of batches of 4)
    inputs = dict(batch)
    inputs["bins"] = torch.where(mask, torch.full_like(batch["bins"], bin_special_ids(10)["MASK"]), batch["bins"])
    with torch.no_grad():
        logp = torch.log_softmax(model(inputs).double(), -1)[mask]
    tgt = batch["bins"][mask]
    assert np.allclose(tok["model_ce"], -logp[torch.arange(len(tgt)), tgt].numpy(), atol=1e-6)
    # the per-gene baseline, by hand from the train shard's counts, at the same positions
    genes = batch["gene_ids"][mask].numpy()
    for g, t, c in zip(genes, tgt.numpy(), tok["per_gene_ce"]):
        counts = np.bincount(train.bins[train.gene_ids == g], minlength=11) + 0.5
        assert c == pytest.approx(-np.log(counts[t] / counts.sum()))
    assert summary["model"]["cross_entropy"] == pytest.approx(tok["model_ce"].mean())
    d = summary["model_minus_per_gene_ce"]
    assert d["mean"] == pytest.approx(tok["model_ce"].mean() - tok["per_gene_ce"].mean())
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    # an untrained model predicts near-uniform bins: log(11) nats, worse than the cell's own mode
    assert summary["model"]["cross_entropy"] == pytest.approx(np.log(11), abs=0.1)
    assert summary["model_minus_per_cell_ce"]["ci_low"] > 0


def test_paired_bootstrap_ci_brackets_the_mean():
    rng = np.random.default_rng(0)
    count = rng.integers(1, 6, 300)
    diff = rng.normal(0.3, 1.0, 300) * count
    res = ev.paired_bootstrap_ci(diff, count, n_boot=500, seed=1)
    assert res["mean"] == pytest.approx(diff.sum() / count.sum())
    assert res["ci_low"] < res["mean"] < res["ci_high"] and res["ci_high"] - res["ci_low"] < 0.5
    assert res == ev.paired_bootstrap_ci(diff, count, n_boot=500, seed=1)


# --------------------------------------------------------------------------------------------------
# graph removal
# --------------------------------------------------------------------------------------------------


def _graph_cells(with_edges: bool, n_cells=12, n_tokens=12, seed=0):
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n_cells):
        e = np.array([(i, j) for i in range(n_tokens) for j in range(i + 1, n_tokens) if rng.random() < 0.4]).T
        e = np.concatenate([e, e[::-1]], axis=1) if with_edges else np.zeros((2, 0))
        cells.append({"gene_ids": rng.choice(np.arange(2, 40), n_tokens, replace=False),
                      "bins": rng.integers(1, 11, n_tokens), "edges": e})
    return cells, np.array(["a", "b"] * (n_cells // 2))


def test_graph_removal_is_zero_without_graph_small_for_tiny_beta_and_larger_for_large_beta():
    cells, y = _graph_cells(True)
    with_graph = _shard(cells, 10, cell_type=y)
    no_graph = _shard([c | {"edges": np.zeros((2, 0))} for c in cells], 10, cell_type=y)

    def change(model, ds):
        emb = ev.encode_dataset(model, ds, 40)
        res = ev.graph_removal(model, ds, ds, 40, emb, emb, n_splits=1, seed=0)
        return res

    big = _model("gremln", beta=3.0, weight_sd=0.5)
    tiny = _model("gremln", beta=1e-4, weight_sd=0.5)
    tiny.load_state_dict(big.state_dict())  # same weights: only the kernel differs
    r0 = change(big, no_graph)
    assert r0["applicable"] and r0["relative_change_mean_pool"] == 0.0 and r0["relative_change_cls"] == 0.0
    r_tiny, r_big = change(tiny, with_graph), change(big, with_graph)
    assert r_tiny["relative_change_mean_pool"] < 1e-3
    assert r_big["relative_change_mean_pool"] > 0.05 > 50 * r_tiny["relative_change_mean_pool"]
    assert r_big["relative_change_cls"] > 10 * r_tiny["relative_change_cls"]
    assert set(r_big["seen_test_macro_f1_without_graph"]) == {"mean_pool", "cls"}
    assert r_big["test_cells_with_edges"] == len(cells)
    assert change(_model("vanilla"), with_graph) == {"applicable": False,
                                                     "reason": "attention='vanilla' ignores the Laplacian"}


def test_relative_change_by_hand():
    e = np.array([[3.0, 0.0], [0.0, 4.0]])
    assert ev.relative_change(e, e) == 0.0
    assert ev.relative_change(e, np.zeros_like(e)) == 1.0
    assert ev.relative_change(e, e + [[1.0, 0.0], [0.0, 0.0]]) == pytest.approx(1 / 5)
    with pytest.raises(ValueError):
        ev.relative_change(np.zeros((2, 2)), e)


# --------------------------------------------------------------------------------------------------
# hidden-edge recovery
# --------------------------------------------------------------------------------------------------


def _edge_frame(pairs, hidden):
    return pd.DataFrame({"source": [a for a, _ in pairs], "target": [b for _, b in pairs],
                         "weight": 1.0, "hidden": hidden})


def _planted(n_genes=150, planted=True, seed=0):
    """Genes on a circle; edges join genes close on the circle (planted) or random pairs; 30% hidden."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 2 * np.pi, n_genes)
    if planted:
        gap = np.abs(np.angle(np.exp(1j * (theta[:, None] - theta[None, :]))))
        pairs = [(i, j) for i in range(n_genes) for j in range(i + 1, n_genes) if gap[i, j] < 0.12]
        emb = np.column_stack([np.cos(theta), np.sin(theta)]) @ rng.normal(size=(2, 16)) * 3
        emb += rng.normal(scale=0.1, size=emb.shape)
    else:
        pairs = [tuple(p) for p in {tuple(sorted(rng.choice(n_genes, 2, replace=False))) for _ in range(700)}]
        emb = rng.normal(size=(n_genes, 16))
    genes = [f"G{i}" for i in range(n_genes)]
    vocab = ["<pad>", "<cls>"] + genes
    x = np.vstack([np.full((2, 16), np.nan), emb])
    hidden = rng.random(len(pairs)) < 0.3
    return vocab, x, _edge_frame([(genes[i], genes[j]) for i, j in pairs], hidden)


@pytest.fixture(scope="module")
def planted_recovery():
    vocab, x, edges = _planted()
    x[5] = np.nan  # gene G3 has no embedding: its edges are dropped and counted
    return vocab, x, edges, ev.hidden_edge_recovery(x, edges, vocab, seed=0, n_boot=200)


def test_hidden_edge_recovery_on_planted_and_random_embeddings(planted_recovery):
    vocab, x, edges, (summary, curves, table) = planted_recovery
    p = summary["pooled"]
    assert p["auroc"] > 0.95 and p["ap"] == p["average_precision"] > 0.7
    assert p["auroc_ci_low"] <= p["auroc"] <= p["auroc_ci_high"] and p["auroc_ci_low"] > 0.9
    touches_g3 = (edges["source"] == "G3") | (edges["target"] == "G3")
    c = summary["counts"]
    assert c["hidden_dropped_no_embedding"] == int((touches_g3 & edges["hidden"]).sum())
    assert p["n_hidden"] == c["hidden_scored"] == int((~touches_g3 & edges["hidden"]).sum())
    assert p["n_negatives"] == 10 * p["n_hidden"] and len(table) == 11 * p["n_hidden"]
    assert np.trapezoid(curves["roc_tpr"], curves["roc_fpr"]) == pytest.approx(p["auroc"])
    vocab, x, edges = _planted(planted=False, seed=1)
    rand = ev.hidden_edge_recovery(x, edges, vocab, seed=0, n_boot=200)[0]["pooled"]
    assert abs(rand["auroc"] - 0.5) < 0.1 and abs(rand["auroc_random_features"] - 0.5) < 0.1
    assert rand["n_hidden"] > 150


def test_hidden_edge_negatives_share_the_source_and_are_not_edges(planted_recovery):
    _, _, edges, (_, curves, table) = planted_recovery
    all_pairs = {frozenset(p) for p in zip(edges["source"], edges["target"])}
    hidden = {(s, t) for s, t, h in zip(edges["source"], edges["target"], edges["hidden"]) if h}
    for g, grp in table.groupby("group"):
        pos, neg = grp[grp["label"] == 1], grp[grp["label"] == 0]
        assert len(pos) == 1 and len(neg) == 10 and neg["target"].nunique() == 10
        s, t = pos.iloc[0]["source"], pos.iloc[0]["target"]
        assert (s, t) in hidden
        assert (neg["source"] == s).all()
        assert not any(frozenset((s, u)) in all_pairs for u in neg["target"]) and not (neg["target"] == s).any()
    assert np.array_equal(np.sort(curves["scores"]), np.sort(table["score"].to_numpy()))


def test_grouped_bootstrap_auroc_weights_match_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = np.tile([1] + [0] * 4, 30)
    scores = np.round(rng.normal(size=150) + labels, 1)  # rounded: ties
    group = np.repeat(np.arange(30), 5)
    w = rng.integers(0, 3, 30)[group].astype(float)
    _, tie = np.unique(scores, return_inverse=True)
    assert ev._weighted_auroc(tie, labels.astype(bool), w, tie.max() + 1) == pytest.approx(
        roc_auc_score(labels, scores, sample_weight=w))
    lo, hi = ev.grouped_bootstrap_auroc(labels, scores, group, n_boot=300, seed=2)
    assert lo < roc_auc_score(labels, scores) < hi


def test_no_hidden_edges_gives_the_not_computed_result():
    vocab, x, edges = _planted()
    edges["hidden"] = False
    summary, curves, table = ev.hidden_edge_recovery(x, edges, vocab, seed=0)
    assert summary["pooled"]["auroc"] is None and "not computed" in summary["status"]
    assert curves["labels"].size == 0 and len(table) == 0 and list(table.columns) == [
        "source", "target", "label", "score", "group"]


def test_read_graph_edges_and_the_leak_check(tmp_path, tiny_masked):
    path = tmp_path / "graph_edges.tsv.gz"
    pd.DataFrame({"source": ["G2", "G3"], "target": ["G4", "G5"], "weight": [1.0, 2.0],
                  "hidden": ["true", "False"]}).to_csv(path, sep="\t", index=False)
    df = ev.read_graph_edges(path)
    assert df["hidden"].tolist() == [True, False] and df["source"].tolist() == ["G2", "G3"]
    pd.DataFrame({"source": ["a"], "target": ["b"], "weight": [1], "hidden": ["maybe"]}).to_csv(path, sep="\t")
    with pytest.raises(InputError, match="hidden"):
        ev.read_graph_edges(path)
    vocab = ["<pad>", "<cls>"] + [f"G{i}" for i in range(2, 40)]
    cells, _ = _graph_cells(True, n_cells=2)
    ds = _shard(cells, 10)
    u, v = ds.gene_ids[ds.edge_index[0, 0]], ds.gene_ids[ds.edge_index[1, 0]]  # an edge of cell 0's graph
    edges = _edge_frame([(vocab[u], vocab[v])], [False])
    assert ev.check_hidden_edges_absent({"s.npz": ds}, edges, vocab)["s.npz"] > 0
    with pytest.raises(InputError, match="s.npz"):
        ev.check_hidden_edges_absent({"s.npz": ds}, edges.assign(hidden=True), vocab)


# --------------------------------------------------------------------------------------------------
# baselines and embeddings.h5ad
# --------------------------------------------------------------------------------------------------


def test_pca_features_are_fitted_on_train_cells_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 30))
    tr, te = np.arange(40), np.arange(40, 60)
    ztr, zte, k = ev.pca_features(x, tr, te, 50, seed=0)
    assert k == 29 and ztr.shape == (40, 29) and zte.shape == (20, 29)
    x2 = x.copy()
    x2[te] *= 100  # test cells do not move the train projection
    ztr2, _, _ = ev.pca_features(x2, tr, te, 5, seed=0)
    assert np.allclose(np.abs(ztr2), np.abs(ev.pca_features(x, tr, te, 5, seed=0)[0]))


def test_bag_of_genes_marks_the_tokens():
    ds = _shard([{"gene_ids": np.array([2, 5]), "bins": np.array([1, 2])},
                 {"gene_ids": np.array([4]), "bins": np.array([3])}], 10)
    assert ev.bag_of_genes(ds, 6).tolist() == [[1, 0, 0, 1], [0, 0, 1, 0]]


def test_embeddings_h5ad_round_trips(tmp_path):
    import anndata as ad

    rng = np.random.default_rng(0)
    parts = {s: {"obs_names": [f"{s}{i}" for i in range(n)], "cell_type": ["x"] * n,
                 "mean_pool": rng.normal(size=(n, 4)), "cls": rng.normal(size=(n, 4))}
             for s, n in (("train", 3), ("test", 2))}
    ev.write_embeddings(tmp_path / "e.h5ad", parts, "gremln")
    a = ad.read_h5ad(tmp_path / "e.h5ad")
    assert a.shape == (5, 0) and list(a.obs_names) == ["train0", "train1", "train2", "test0", "test1"]
    assert set(a.obsm) == {"X_gremln", "X_gremln_cls"} and list(a.obs["split"]) == ["train"] * 3 + ["test"] * 2
    assert np.allclose(a.obsm["X_gremln_cls"][3:], parts["test"]["cls"])
    with pytest.raises(ValueError, match="repeat"):
        ev.write_embeddings(tmp_path / "f.h5ad", {"a": parts["train"], "b": parts["train"]}, "gremln")
    assert not (tmp_path / "f.h5ad").exists()


# --------------------------------------------------------------------------------------------------
# a small real-data pipeline: adata -> shards with a hidden-edge graph -> untrained models
# --------------------------------------------------------------------------------------------------


def _tokens(x, cells, visible: np.ndarray, n_bins: int, max_len: int):
    """Cells' tokens: expressed vocabulary genes by decreasing expression (at most ``max_len``), rank bins
    ``ceil(n_bins * rank / m)`` over the cell's m expressed genes, the visible graph induced on the tokens."""
    out = []
    for c in cells:
        row = x[c]
        idx, val = row.indices, row.data
        rank = np.empty(idx.size, np.int64)
        rank[np.lexsort((idx, val))] = np.arange(1, idx.size + 1)
        bins = (n_bins * rank + idx.size - 1) // idx.size
        order = np.lexsort((idx, -val))[:max_len]
        ids = idx[order] + 2
        local = {g: i for i, g in enumerate(ids)}
        sel = np.isin(visible, ids).all(axis=1)
        e = np.array([[local[a], local[b]] for a, b in visible[sel]], dtype=np.int64).reshape(-1, 2).T
        out.append({"gene_ids": ids, "bins": bins[order], "expr": val[order], "edges": np.concatenate([e, e[::-1]], 1)})
    return out


def _write_shard(path, a, cells, toks, label_key, split, n_bins, max_len):
    ds = _shard(toks, n_bins, cell_type=a.obs[label_key].to_numpy(str)[cells], split=split, max_seq_len=max_len)
    arrays = dict(ds.arrays)
    arrays["obs_names"] = a.obs_names.to_numpy(str)[cells]
    arrays["expr"] = np.concatenate([t["expr"] for t in toks]).astype(np.float32)
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """280 real PBMC cells (Monocyte held out), token shards over HVGs + DoRothEA TFs whose cell graphs are the
    visible part of a DoRothEA graph (30% of its edges hidden, graph_edges.tsv.gz), and an untrained GREmLN
    and vanilla model saved as model.pt."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp
    import torch

    from cellgraph.io import write_json
    from cellgraph.models.gremln import GREmLN, GREmLNConfig
    from cellgraph.graphs.spectral import heat_kernel_coefficients

    if "mini" in _SHARED:  # built once per session, shared with test_figures.py
        return _SHARED["mini"]
    root = tmp_path_factory.mktemp("mini")
    full = ad.read_h5ad(H5AD)
    rng = np.random.default_rng(0)
    y = full.obs["trueLabel"].astype(str).to_numpy()
    cells = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == t), 40, replace=False) for t in np.unique(y)]))
    a = ad.AnnData(X=sp.csr_matrix(full.X[cells]), obs=full.obs.iloc[cells][["trueLabel"]].copy(),
                   var=pd.DataFrame(index=full.var_names.copy()))
    a = a[:, np.asarray((a.X > 0).sum(0)).ravel() >= 5].copy()
    sc.pp.normalize_total(a, target_sum=1e6)
    sc.pp.log1p(a)
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    sc.pp.highly_variable_genes(a, n_top_genes=150, flavor="seurat")
    split = np.empty(a.n_obs, dtype=object)
    lab = a.obs["trueLabel"].astype(str).to_numpy()
    for t in np.unique(lab):
        idx = rng.permutation(np.flatnonzero(lab == t))
        split[idx] = ["train"] * 24 + ["val"] * 4 + ["test"] * 12 if t != "Monocyte" else "heldout"
    a.obs["split"] = pd.Categorical(split)
    a.obs["trueLabel"] = pd.Categorical(lab)
    a.uns["cellgraph"] = {"label_key": "trueLabel", "heldout_types": ["Monocyte"]}
    a.write_h5ad(root / "adata.h5ad")
    d = pd.read_csv(DOROTHEA, sep="\t")
    d = d[d["confidence"].isin(["A", "B", "C"]) & d["tf"].isin(a.var_names) & d["target"].isin(a.var_names)]
    d = d[d["target"].isin(set(a.var_names[a.var["highly_variable"]])) & (d["tf"] != d["target"])]
    genes = sorted(set(a.var_names[a.var["highly_variable"]]) | set(d["tf"]))
    vocab = ["<pad>", "<cls>"] + genes
    pairs = ev.undirected_pairs(d["tf"], d["target"])
    hidden = rng.random(len(pairs)) < 0.3
    pd.DataFrame({"source": pairs[:, 0], "target": pairs[:, 1], "weight": rng.uniform(0.05, 0.5, len(pairs)),
                  "hidden": hidden}).to_csv(root / "graph_edges.tsv.gz", sep="\t", index=False)
    pos = {g: i + 2 for i, g in enumerate(genes)}
    visible = np.array([[pos[u], pos[v]] for u, v in pairs[~hidden]])
    tokens = root / "tokens"
    tokens.mkdir()
    (tokens / "vocab.tsv").write_text("token_id\tgene\n" + "".join(f"{i}\t{g}\n" for i, g in enumerate(vocab)))
    x = a[:, genes].X.tocsr()
    for name, s in (("train", "train"), ("train_integrated", "train"), ("val", "val"), ("test", "test"),
                    ("heldout", "heldout")):
        sel = np.flatnonzero(split == s)
        _write_shard(tokens / f"{name}.npz", a, sel, _tokens(x, sel, visible, 100, 64), "trueLabel", s, 100, 64)
    coeffs = heat_kernel_coefficients(0.1, 1e-6)
    write_json(root / "coefficients.json", {"beta": 0.1, "tol": 1e-6, "K": coeffs.size - 1,
                                             "coefficients": coeffs.tolist()})
    for kind in ("gremln", "vanilla"):
        torch.manual_seed(0)
        cfg = GREmLNConfig(d_model=16, n_layers=1, n_heads=2, attention=kind, vocab_size=len(vocab), n_bins=100,
                           coefficients=coeffs.tolist(), chebyshev_order=coeffs.size - 1)
        (root / "train" / kind).mkdir(parents=True)
        torch.save({"config": cfg.to_dict(), "state_dict": GREmLN(cfg).state_dict(), "vocab": vocab},
                   root / "train" / kind / "model.pt")
    _SHARED["mini"] = root
    return root


def test_encode_dataset_pools_the_model_output(mini):
    import torch

    from cellgraph.io.shards import TokenDataset, collate
    from cellgraph.models.gremln import load

    model = load(mini / "train" / "gremln" / "model.pt")
    ds = TokenDataset(mini / "tokens" / "test.npz")
    out = ev.encode_dataset(model, ds, len(model.vocab), batch_size=16, token_fraction=1.0)
    batch = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        emb = model.encode(batch)
        batch["laplacian"] = torch.zeros_like(batch["laplacian"])
        emb0 = model.encode(batch)
    m = batch["attention_mask"][:, 1:]
    manual = (emb[:, 1:] * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    assert np.allclose(out["mean_pool"], manual.numpy(), atol=1e-5)
    assert np.allclose(out["cls"], emb[:, 0].numpy(), atol=1e-5)
    assert np.array_equal(out["gene_count"], np.bincount(ds.gene_ids, minlength=len(model.vocab)))
    assert np.allclose(out["token_expr"], ds.expr) and len(out["token_emb"]) == len(ds.gene_ids)
    no_graph = ev.encode_dataset(model, ds, len(model.vocab), batch_size=16, drop_graph=True)
    manual0 = (emb0[:, 1:] * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    assert np.allclose(no_graph["mean_pool"], manual0.numpy(), atol=1e-5)
    assert np.abs(no_graph["mean_pool"] - out["mean_pool"]).max() > 1e-6  # the test cells have graphs
    assert np.allclose(no_graph["cls"], out["cls"], atol=1e-6)  # one layer: the CLS query is never diffused


def test_linear_probe_r2_against_sklearn():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8))
    y = x @ rng.normal(size=8) + rng.normal(scale=0.5, size=3000)
    res = ev.linear_probe(x[:2000], y[:2000], x[2000:], y[2000:], alpha=1.0, seed=0, n_scatter=300)
    sc = StandardScaler().fit(x[:2000])
    pred = Ridge(alpha=1.0).fit(sc.transform(x[:2000]), y[:2000]).predict(sc.transform(x[2000:]))
    assert res["r2"] == pytest.approx(r2_score(y[2000:], pred))
    assert res["r2"] > 0.9 and len(res["scatter_true"]) == 300
    noise = ev.linear_probe(x[:2000], rng.normal(size=2000), x[2000:], rng.normal(size=1000), alpha=1.0, seed=0)
    assert noise["r2"] < 0.02


# --------------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------------


def _argv(mini, kind, out, model_path=None, graph_edges=None):
    return ["evaluate", "--model-path", str(model_path or mini / "train" / kind / "model.pt"),
            "--tokens-dir", str(mini / "tokens"), "--adata", str(mini / "adata.h5ad"),
            "--graph-edges", str(graph_edges or mini / "graph_edges.tsv.gz"),
            "--coefficients", str(mini / "coefficients.json"), "--seed", "0", "--out-dir", str(out)]


@pytest.fixture(scope="module")
def evaluated(mini):
    from cellgraph.cli import main

    if "evaluated" in _SHARED:
        return _SHARED["evaluated"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "LINK_EPOCHS", 30)  # keep the suite fast; the classifier is tested above
        for kind in ("gremln", "vanilla"):
            assert main(_argv(mini, kind, mini / "evaluate" / kind)) == 0
        assert main(_argv(mini, "gremln", mini / "again")) == 0
    _SHARED["evaluated"] = mini / "evaluate"
    return mini / "evaluate"


def test_evaluate_cli_writes_all_outputs(evaluated, mini):
    out = evaluated / "gremln"
    ann = json.loads((out / "annotation.json").read_text())
    for e in ("mean_pool", "cls"):
        for s in ("seen_test", "with_heldout"):
            assert len(ann["embeddings"][e][s]["macro_f1"]["values"]) == 3
    assert list(ann["embeddings"]["mean_pool"]["with_heldout"]["heldout_types"]) == ["Monocyte"]
    gr = ann["graph_removal"]
    assert gr["applicable"] and gr["relative_change_mean_pool"] > 0 and gr["test_cells_with_edges"] > 0
    vanilla = json.loads((evaluated / "vanilla" / "annotation.json").read_text())
    assert vanilla["graph_removal"]["applicable"] is False
    probe = json.loads((out / "probe.json").read_text())
    assert -1.0 < probe["r2"] <= 1.0 and probe["n_train"] > 1000
    with np.load(out / "probe_scatter.npz") as z:
        assert z["true"].shape == z["pred"].shape and z["true"].size > 100
    masked = json.loads((out / "masked.json").read_text())
    assert {"mask_rate", "n_masked", "n_cells", "model", "per_gene", "per_cell", "model_minus_per_gene_ce",
            "model_minus_per_cell_ce"} <= set(masked) and masked["n_cells"] == 72
    assert set(masked["model_minus_per_cell_ce"]) == {"mean", "ci_low", "ci_high"}
    base = json.loads((out / "baselines.json").read_text())
    for k in ("random_init_mean_pool", "random_init_cls", "pca_all_genes", "pca_vocabulary", "bag_of_genes"):
        assert len(base[k]["values"]) == 3 and 0 <= base[k]["mean"] <= 1
    assert base["pca_all_genes"]["mean"] > 0.5  # sorted PBMC types separate on expression PCs
    # same seed, same bytes
    for name in ("annotation.json", "edge_recovery.json", "probe.json", "masked.json", "baselines.json",
                 "edge_scores.tsv"):
        assert (mini / "again" / name).read_text() == (out / name).read_text()


def test_evaluate_cli_hidden_edges_and_embeddings(evaluated, mini):
    import anndata as ad

    out = evaluated / "gremln"
    edges = json.loads((out / "edge_recovery.json").read_text())
    p = edges["pooled"]
    assert p["n_hidden"] > 10 and {"auroc", "ap", "auroc_random_features", "auroc_ci_low"} <= set(p)
    graph = pd.read_csv(mini / "graph_edges.tsv.gz", sep="\t")
    hidden = set(zip(graph["source"][graph["hidden"]], graph["target"][graph["hidden"]]))
    table = pd.read_csv(out / "edge_scores.tsv", sep="\t")
    assert list(table.columns) == ["source", "target", "label", "score", "group"]
    pos = table[table["label"] == 1]
    assert set(zip(pos["source"], pos["target"])) <= hidden and len(pos) == p["n_hidden"]
    src = dict(zip(pos["group"], pos["source"]))
    assert (table["source"] == table["group"].map(src)).all()
    with np.load(out / "edge_curves.npz") as z:
        assert z["labels"].sum() == p["n_hidden"] and (z["labels"] == 0).sum() == p["n_negatives"]
        assert np.trapezoid(z["roc_tpr"], z["roc_fpr"]) == pytest.approx(p["auroc"])
    for kind in ("gremln", "vanilla"):
        a = ad.read_h5ad(evaluated / kind / "embeddings.h5ad")
        assert set(a.obsm) == {f"X_{kind}", f"X_{kind}_cls"} and a.obsm[f"X_{kind}"].shape == (a.n_obs, 16)
        assert a.obs["split"].value_counts().to_dict() == {"train": 144, "test": 72, "heldout": 40}
    adata = ad.read_h5ad(mini / "adata.h5ad")
    assert (adata.obs.loc[a.obs_names, "trueLabel"].astype(str) == a.obs["cell_type"].astype(str)).all()


def test_evaluate_bad_input_names_the_file(mini, tmp_path, capsys):
    from cellgraph.cli import main

    missing = tmp_path / "nope" / "model.pt"
    assert main(_argv(mini, "gremln", tmp_path / "o1", missing)) == 2
    assert str(missing) in capsys.readouterr().err
    wrong = tmp_path / "model.pt"
    wrong.write_text("not a model\n")
    assert main(_argv(mini, "gremln", tmp_path / "o2", wrong)) == 2
    err = capsys.readouterr().err
    assert str(wrong) in err and "not a cellgraph model file" in err
    no_edges = tmp_path / "graph_edges.tsv.gz"
    assert main(_argv(mini, "gremln", tmp_path / "o3", graph_edges=no_edges)) == 2
    assert str(no_edges) in capsys.readouterr().err
    # a hidden edge that is in the shards' cell graphs (here: every edge marked hidden) is refused
    g = pd.read_csv(mini / "graph_edges.tsv.gz", sep="\t").assign(hidden=True)
    g.to_csv(no_edges, sep="\t", index=False)
    assert main(_argv(mini, "gremln", tmp_path / "o4", graph_edges=no_edges)) == 2
    assert "hidden edges of the graph are in its cell graphs" in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    with pytest.raises(SystemExit):  # hiding moved to the tokenize stage
        main(_argv(mini, "gremln", tmp_path / "o5") + ["--edge-holdout-fraction", "0.15"])


def test_evaluate_option_checks_come_before_reading_any_input(tmp_path, capsys):
    from cellgraph.cli import main

    argv = ["evaluate", "--model-path", str(tmp_path / "m.pt"), "--tokens-dir", str(tmp_path),
            "--adata", str(tmp_path / "a.h5ad"), "--graph-edges", str(tmp_path / "g.tsv.gz"),
            "--coefficients", str(tmp_path / "c.json"), "--out-dir", str(tmp_path / "out")]
    assert main(argv + ["--n-splits", "0"]) == 2
    assert "cellgraph evaluate: error: --n-splits must be >= 1, got 0" in capsys.readouterr().err
    assert main(argv + ["--probe-alpha", "0"]) == 2
    assert "cellgraph evaluate: error: --probe-alpha must be > 0, got 0.0" in capsys.readouterr().err
    assert main(argv) == 2  # valid options: the first missing input is named
    assert str(tmp_path / "m.pt") in capsys.readouterr().err
    (tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(InputError, match="vocab"):  # the library reads in the same order
        ev.load_evaluation_inputs(tmp_path / "m.pt", tmp_path, tmp_path / "a.h5ad", tmp_path / "g.tsv.gz",
                                  tmp_path / "c.json")
    assert not (tmp_path / "out").exists()


def test_rank_bin_complement_knows_the_masked_bins_without_cell_state():
    """With rank bins of all m expressed tokens, the visible bins determine the masked bins' multiset: the
    complement baseline puts (up to its pseudocount) all its mass on them; with a shared-tie cell it cannot."""
    from cellgraph.tl.evaluate import rank_bin_complement

    n_bins, m = 10, 20
    bins = (n_bins * np.arange(1, m + 1) + m - 1) // m
    masked = np.zeros(m, dtype=bool)
    masked[[0, 7, 13, 19]] = True
    logp = rank_bin_complement(bins, masked, n_bins, pseudocount=1e-9)
    p = np.exp(logp)
    want = np.bincount(bins[masked], minlength=n_bins + 1) / masked.sum()
    np.testing.assert_allclose(p, want, atol=1e-6)
    shared = np.full(m, 10)  # every token tied in the top bin: the rank multiset says nothing true
    p2 = np.exp(rank_bin_complement(shared, masked, n_bins))
    assert p2[10] < 0.5
