"""Tests of cellgraph.evaluate: metrics on real PBMC embeddings and real DoRothEA graphs, split bookkeeping,
edge hiding against the real tokenizer, and the stage end to end on a small real-data pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellgraph import evaluate as ev
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


def test_undirected_pairs_and_hide_edges():
    pairs = ev.undirected_pairs(["B", "A", "A", "C"], ["A", "B", "A", "A"])
    assert pairs.tolist() == [["A", "B"], ["A", "C"]]  # reverse duplicate and self-loop dropped
    h = ev.hide_edges(200, 0.15, 5)
    assert h.sum() == 30 and np.array_equal(h, ev.hide_edges(200, 0.15, 5))
    assert not np.array_equal(h, ev.hide_edges(200, 0.15, 6))
    assert ev.hide_edges(3, 0.01, 0).sum() == 1 and ev.hide_edges(2, 0.99, 0).sum() == 1


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
    hidden = ev.hide_edges(len(edges), 0.15, 0)
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
# a small real-data pipeline: adata -> networks -> tokenize -> untrained models
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """280 real PBMC cells (Monocyte held out), per-type DoRothEA networks, real tokenize shards, and an
    untrained GREmLN and vanilla model saved as model.pt."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp
    import torch

    from cellgraph.cli import main
    from cellgraph.data import read_vocab
    from cellgraph.io import write_json
    from cellgraph.models.gremln import GREmLN, GREmLNConfig
    from cellgraph.spectral import heat_kernel_coefficients

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
    hvg = set(a.var_names[a.var["highly_variable"]])
    d = d[d["target"].isin(hvg) & (d["tf"] != d["target"])]
    rows = []
    for t in sorted(set(lab) - {"Monocyte"}):
        s = d.sample(frac=0.8, random_state=int(rng.integers(1e6)))
        rows.append(pd.DataFrame({"cell_type": t, "source": s["tf"].to_numpy(), "target": s["target"].to_numpy(),
                                  "mi": rng.uniform(0.05, 0.5, len(s)), "pvalue": 1e-6, "count": 10}))
    pd.concat(rows).to_csv(root / "networks.tsv.gz", sep="\t", index=False)
    coeffs = heat_kernel_coefficients(0.1, 1e-6)
    write_json(root / "coefficients.json", {"beta": 0.1, "tol": 1e-6, "K": coeffs.size - 1,
                                             "coefficients": coeffs.tolist()})
    assert main(["tokenize", "--adata", str(root / "adata.h5ad"), "--networks", str(root / "networks.tsv.gz"),
                 "--seed", "0", "--max-seq-len", "64", "--knn-k", "5", "--out-dir", str(root / "tokens")]) == 0
    vocab = read_vocab(root / "tokens" / "vocab.tsv")
    for kind in ("gremln", "vanilla"):
        torch.manual_seed(0)
        cfg = GREmLNConfig(d_model=16, n_layers=1, n_heads=2, attention=kind, vocab_size=len(vocab), n_bins=100,
                           coefficients=coeffs.tolist(), chebyshev_order=coeffs.size - 1)
        (root / "train" / kind).mkdir(parents=True)
        torch.save({"config": cfg.to_dict(), "state_dict": GREmLN(cfg).state_dict(), "vocab": vocab},
                   root / "train" / kind / "model.pt")
    _SHARED["mini"] = root
    return root


def test_hidden_edges_never_reach_the_encoder_graph(mini):
    """Re-tokenize test cells with the real tokenizer on the network minus hidden edges: no hidden edge is in
    the shard; with the full network some are (so the check can fail)."""
    import anndata as ad

    from cellgraph.data import read_vocab
    from cellgraph.tokenize import tokenize_cells

    a = ad.read_h5ad(mini / "adata.h5ad")
    vocab = read_vocab(mini / "tokens" / "vocab.tsv")
    net = pd.read_csv(mini / "networks.tsv.gz", sep="\t")
    net = net[net["cell_type"] == "B"].rename(columns={"mi": "weight"})
    pairs = ev.undirected_pairs(net["source"], net["target"])
    hidden = {tuple(p) for p in pairs[ev.hide_edges(len(pairs), 0.3, 0)]}
    visible = net[[tuple(sorted(p)) not in hidden for p in zip(net["source"], net["target"])]]
    cells = np.flatnonzero((a.obs["split"] == "test").to_numpy() & (a.obs["trueLabel"] == "B").to_numpy())
    arrays = tokenize_cells(a, cells, visible[["source", "target", "weight"]], vocab, 100, 64, 0)
    seen = {tuple(p) for p in ev.shard_gene_pairs(arrays, vocab)}
    assert seen and not seen & hidden
    assert seen <= {tuple(p) for p in pairs}  # the local positions map back to real network edges
    full = tokenize_cells(a, cells, net[["source", "target", "weight"]], vocab, 100, 64, 0)
    assert {tuple(p) for p in ev.shard_gene_pairs(full, vocab)} & hidden


def test_encode_dataset_pools_the_model_output(mini):
    import torch

    from cellgraph.data import TokenDataset, collate
    from cellgraph.models.gremln import load

    model = load(mini / "train" / "gremln" / "model.pt")
    ds = TokenDataset(mini / "tokens" / "test.npz")
    out = ev.encode_dataset(model, ds, len(model.vocab), batch_size=16, token_fraction=1.0)
    batch = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        emb = model.encode(batch)
    m = batch["attention_mask"][:, 1:]
    manual = (emb[:, 1:] * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    assert np.allclose(out["mean_pool"], manual.numpy(), atol=1e-5)
    assert np.allclose(out["cls"], emb[:, 0].numpy(), atol=1e-5)
    assert np.array_equal(out["gene_count"], np.bincount(ds.gene_ids, minlength=len(model.vocab)))
    assert np.allclose(out["token_expr"], ds.expr) and len(out["token_emb"]) == len(ds.gene_ids)


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


def _argv(mini, kind, out, model_path=None):
    return ["evaluate", "--model-path", str(model_path or mini / "train" / kind / "model.pt"),
            "--tokens-dir", str(mini / "tokens"), "--adata", str(mini / "adata.h5ad"),
            "--networks", str(mini / "networks.tsv.gz"), "--coefficients", str(mini / "coefficients.json"),
            "--seed", "0", "--out-dir", str(out)]


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
    edges = json.loads((out / "edge_recovery.json").read_text())
    assert edges["cell_types"] and all(v["hidden_edges_in_encoder_graph"] == 0 for v in edges["cell_types"].values())
    with np.load(out / "edge_curves.npz") as z:
        assert z["labels"].sum() == edges["pooled"]["hidden_edges"] == (z["labels"] == 0).sum()
        hid = {(u, v) for u, v, lab in zip(z["gene_u"], z["gene_v"], z["labels"]) if lab == 1}
        for t in edges["cell_types"]:
            if "auroc" in edges["cell_types"][t]:  # the saved per-type ROC curve integrates to its AUROC
                assert np.trapezoid(z[f"roc_tpr__{t}"], z[f"roc_fpr__{t}"]) == pytest.approx(
                    edges["cell_types"][t]["auroc"])
    net = pd.read_csv(mini / "networks.tsv.gz", sep="\t")
    assert hid <= set(map(tuple, ev.undirected_pairs(net["source"], net["target"])))
    probe = json.loads((out / "probe.json").read_text())
    assert -1.0 < probe["r2"] <= 1.0 and probe["n_train"] > 1000
    with np.load(out / "probe_scatter.npz") as z:
        assert z["true"].shape == z["pred"].shape and z["true"].size > 100
    # same seed, same bytes
    for name in ("annotation.json", "edge_recovery.json", "probe.json"):
        assert (mini / "again" / name).read_text() == (out / name).read_text()


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
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    with pytest.raises(InputError, match="edge-holdout-fraction"):
        import argparse

        p = argparse.ArgumentParser()
        ev.configure_parser(p)
        ev.run(p.parse_args(_argv(mini, "gremln", tmp_path / "o3")[1:] + ["--edge-holdout-fraction", "1.5"]))
