"""Transfer evaluation (issue 15, cellgraph.tl.transfer): cells prepared from real vendored counts, tokens with
the pretraining vocabulary and only visible graph edges, out-of-fold probes that never fit a scored cell,
macro-F1 equal to scikit-learn's, bootstrap intervals, the top-shift label choice on planted shifts, and the
three CLI steps end to end on real PBMC cells with a small saved model (test_evaluate's ``mini`` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellgraph.tl import transfer as tr
from cellgraph.cli import main as cli_main
from cellgraph.errors import InputError
import test_evaluate

mini = test_evaluate.mini  # pytest fixture: real PBMC tokens, vocab, saved models

REPO = Path(__file__).resolve().parents[1]
PBMC = REPO / "resources/demo/expression/pbmc3p5k_sorted_counts.h5ad"


@pytest.fixture(scope="module")
def pbmc_file(tmp_path_factory):
    """600 vendored PBMC cells (every type), raw counts in X, labels in obs['cell_type']."""
    full = ad.read_h5ad(PBMC)
    cells = full[:: full.n_obs // 600][:600].copy()
    cells.X = sp.csr_matrix(cells.X, dtype=np.float32)
    cells.obs = pd.DataFrame({"cell_type": cells.obs["trueLabel"].astype(str).to_numpy()}, index=cells.obs_names)
    path = tmp_path_factory.mktemp("pbmc") / "pbmc.h5ad"
    cells.write_h5ad(path)
    return path


def test_prepare_cells_normalises_real_counts(pbmc_file):
    adata, report = tr.prepare_cells(pbmc_file, "cell_type", min_genes=200, target_sum=1e4)
    assert report["cells"] == adata.n_obs <= 600 and report["cells_in"] == 600
    totals = np.expm1(adata.X.toarray()).sum(1)
    np.testing.assert_allclose(totals, 1e4, rtol=1e-3)  # log1p(1e4 x / total) of the kept cells
    assert (adata.obs["label"] == adata.obs["cell_type"]).all()
    assert sum(report["label_counts"].values()) == adata.n_obs


def test_prepare_cells_reads_published_log_values_and_gene_names(pbmc_file, tmp_path):
    real = ad.read_h5ad(pbmc_file)
    x = real.X.copy()
    x.data = np.log1p(x.data)
    gears = ad.AnnData(X=None, obs=real.obs.copy(), layers={"log_normalized": x},
                       var=pd.DataFrame({"gene_name": real.var_names.to_numpy()},
                                        index=[f"id{i}" for i in range(real.n_vars)]))
    path = tmp_path / "gears.h5ad"
    gears.write_h5ad(path)
    adata, report = tr.prepare_cells(path, "cell_type", log_layer="log_normalized")
    assert list(adata.var_names[:5]) == list(real.var_names[:5])  # symbols from var['gene_name']
    np.testing.assert_allclose(adata.X.toarray(), x.toarray())  # published values kept as they are
    assert "no count QC" in report["values"]
    with pytest.raises(InputError, match="no layer 'counts_missing'"):
        tr.prepare_cells(path, "cell_type", log_layer="counts_missing")


def test_macro_f1_codes_equals_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for k in (2, 5, 9):
        t = rng.integers(0, k, 300)
        p = np.where(rng.random(300) < 0.6, t, rng.integers(0, k + 1, 300))  # k: a label no scored cell has
        w = rng.integers(0, 3, 300)
        ref = f1_score(t, p, labels=np.arange(k), average="macro", zero_division=0)
        assert tr.macro_f1_codes(t, p, k) == pytest.approx(ref, abs=1e-12)
        ref_w = f1_score(np.repeat(t, w), np.repeat(p, w), labels=np.arange(k), average="macro", zero_division=0)
        assert tr.macro_f1_codes(t, p, k, w) == pytest.approx(ref_w, abs=1e-12)  # weights = repeated cells


def test_bootstrap_intervals_cover_the_point_and_pair_the_methods():
    rng = np.random.default_rng(1)
    y = np.repeat(np.array(["a", "b", "c"]), 100)
    good = np.where(rng.random(300) < 0.9, y, "b")
    noise = rng.choice(["a", "b", "c", "z"], 300)
    table = tr.bootstrap_macro_f1(y, {tr.MODEL_METHOD: good, "noise": noise, "same": good.copy()}, 300, 0)
    row = table.set_index("method")
    assert (row["ci_low"] <= row["macro_f1"]).all() and (row["macro_f1"] <= row["ci_high"]).all()
    assert row.loc["same", "diff_vs_model"] == 0 and row.loc["same", "diff_ci_low"] == row.loc["same", "diff_ci_high"] == 0
    assert row.loc["noise", "diff_ci_low"] > 0.3  # the planted gap, paired on the same resamples
    assert row.loc["noise", "macro_f1"] < 0.45 < 0.8 < row.loc[tr.MODEL_METHOD, "macro_f1"]


def test_probe_splits_score_every_cell_once_and_never_fit_it():
    y = np.repeat(np.array(["a", "b", "c"]), [10, 12, 20])
    splits = tr.probe_splits(y, np.full(len(y), "reference"), "cross_validation", 5, 0)
    scored = np.concatenate([s for _, s in splits])
    assert np.array_equal(np.sort(scored), np.arange(len(y)))
    assert all(not set(f) & set(s) for f, s in splits)
    role = np.where(np.arange(len(y)) % 3 == 0, "query", "reference")
    (fit, score), = tr.probe_splits(y, role, "reference_query", 5, 0)
    assert set(fit) == set(np.flatnonzero(role == "reference")) and set(score) == set(np.flatnonzero(role == "query"))
    with pytest.raises(InputError, match="too small"):
        tr.probe_splits(np.array(["a"] * 10 + ["b"] * 3), np.full(13, "reference"), "cross_validation", 5, 0)


def test_out_of_fold_probe_never_sees_a_scored_cell(monkeypatch):
    """Each fit gets only its split's fit rows: features carry the cell index, the recorded fits are checked."""
    import cellgraph.tl.evaluate as ev

    fitted = []

    class Recorder:
        def fit(self, x, y):
            fitted.append(set(np.rint(x[:, 0]).astype(int)))
            self.y0 = y[0]
            return self

        def predict(self, x):
            return np.full(len(x), self.y0)

    monkeypatch.setattr(ev, "make_annotation_probe", lambda seed: Recorder())
    y = np.repeat(np.array(["a", "b"]), 20)
    x = np.column_stack([np.arange(40.0), np.zeros(40)])
    splits = tr.probe_splits(y, np.full(40, "reference"), "cross_validation", 4, 0)
    scored, preds, fold = tr.out_of_fold_predictions({"idx": x}, y, splits, 0)
    assert len(fitted) == 4
    for (fit, score), seen in zip(splits, fitted):
        assert seen == set(fit) and not seen & set(score)
    assert len(scored) == 40 and np.array_equal(np.bincount(fold), [10, 10, 10, 10])


def test_planted_labels_are_found_by_the_probe_and_noise_is_not():
    rng = np.random.default_rng(2)
    y = np.repeat(np.array(["a", "b", "c"]), 60)
    signal = np.eye(3)[np.searchsorted(["a", "b", "c"], y)] * 3 + rng.normal(0, 1, (180, 3))
    noise = rng.normal(0, 1, (180, 3))
    splits = tr.probe_splits(y, np.full(180, "reference"), "cross_validation", 5, 0)
    scored, preds, _ = tr.out_of_fold_predictions({"signal": signal, "noise": noise}, y, splits, 0)
    table = tr.bootstrap_macro_f1(y[scored], preds, 200, 0, reference="signal").set_index("method")
    assert table.loc["signal", "macro_f1"] > 0.9 and table.loc["noise", "macro_f1"] < 0.55


def test_top_shift_labels_pick_the_planted_largest_shifts():
    rng = np.random.default_rng(3)
    shift = {"ctrl": 0.0, "p1": 0.2, "p2": 3.0, "p3": 0.5, "p4": 2.0}
    labels = np.repeat(list(shift), 40)
    x = rng.normal(0, 0.3, (len(labels), 30)) + np.array([shift[v] for v in labels])[:, None] * np.r_[1, 1, np.zeros(28)]
    adata = ad.AnnData(X=sp.csr_matrix(np.abs(x), dtype=np.float32), obs=pd.DataFrame({"label": labels},
                                                                                       index=[f"c{i}" for i in range(len(labels))]))
    kept, shifts = tr.top_shift_labels(adata, "ctrl", 2, seed=0)
    assert set(kept.obs["label"]) == {"p2", "p4"} and kept.n_obs == 80
    assert shifts.loc[shifts["top"], "perturbation"].tolist() == ["p2", "p4"]
    with pytest.raises(InputError, match="no cell has this label"):
        tr.top_shift_labels(adata, "non-targeting", 2, seed=0)


def _tokens_argv(mini, adata, out, *extra):
    return ["transfer", "--task", "tokens", "--name", "pbmc", "--adata", str(adata), "--label-key", "cell_type",
            "--vocab", str(mini / "tokens/vocab.tsv"), "--graph-edges", str(mini / "graph_edges.tsv.gz"),
            "--n-bins", "100", "--max-seq-len", "64", "--min-genes", "200", "--out-dir", str(out), *extra]


def test_cli_tokens_evaluate_table_end_to_end(mini, pbmc_file, tmp_path):  # noqa: F811
    from cellgraph.io.shards import TokenDataset, read_vocab

    assert cli_main(_tokens_argv(mini, pbmc_file, tmp_path / "tok")) == 0
    ds = TokenDataset(tmp_path / "tok/tokens.npz")
    report = json.loads((tmp_path / "tok/report.json").read_text())
    vocab = read_vocab(mini / "tokens/vocab.tsv")
    assert report["tokens"]["vocab_genes_measured"] + report["tokens"]["vocab_genes_missing"] == len(vocab) - 2
    # only visible edges reach the cell graphs: no hidden pair in any cell
    edges = pd.read_csv(mini / "graph_edges.tsv.gz", sep="\t")
    pos = {g: i for i, g in enumerate(vocab)}
    hidden = {frozenset((pos[a], pos[b])) for a, b in edges.loc[edges["hidden"], ["source", "target"]].to_numpy()}
    seen = set()
    for i in range(len(ds)):
        ids = ds.gene_ids[ds.gene_ptr[i]:ds.gene_ptr[i + 1]]
        e = ds.edge_index[:, ds.edge_ptr[i]:ds.edge_ptr[i + 1]]
        seen |= {frozenset((int(ids[a]), int(ids[b]))) for a, b in e.T}
    assert seen and not seen & hidden

    for kind in ("gremln", "vanilla"):
        out = tmp_path / kind
        argv = ["transfer", "--task", "evaluate", "--name", "pbmc", "--model-path", str(mini / f"train/{kind}/model.pt"),
                "--tokens-dir", str(tmp_path / "tok"), "--n-splits", "3", "--n-boot", "100", "--out-dir", str(out)]
        assert cli_main(argv) == 0
        table = pd.read_csv(out / "annotation.tsv", sep="\t").set_index("method")
        assert set(table.index) >= {"model_mean_pool", "model_cls", "random_init_mean_pool", "pca_all_genes",
                                    "pca_vocabulary", "bag_of_genes"}
        preds = pd.read_csv(out / "predictions.tsv", sep="\t")
        assert len(preds) == len(ds) and preds["obs_name"].is_unique
        from sklearn.metrics import f1_score

        for m in ("model_mean_pool", "pca_all_genes"):  # the table's point estimates are scikit-learn's macro-F1
            assert table.loc[m, "macro_f1"] == pytest.approx(
                f1_score(preds["label"], preds[m], labels=sorted(preds["label"].unique()), average="macro"), abs=1e-5)
        assert table.loc["pca_all_genes", "macro_f1"] > 0.7  # real PBMC types: PCA separates them
        emb = ad.read_h5ad(out / "embeddings.h5ad")
        assert emb.obsm[f"X_{kind}"].shape[0] == len(ds) and (emb.obs["fold"] >= 0).all()
    assert cli_main(["transfer", "--task", "table", "--inputs", str(tmp_path / "gremln/annotation.tsv"),
                     str(tmp_path / "vanilla/annotation.tsv"), "--out", str(tmp_path / "t.csv")]) == 0
    both = pd.read_csv(tmp_path / "t.csv")
    assert set(both["model"]) == {"gremln", "vanilla"} and (tmp_path / "t.md").is_file()


def test_cli_reference_query_needs_a_query_and_writes_nothing(mini, pbmc_file, tmp_path):  # noqa: F811
    out = tmp_path / "tok"
    assert cli_main(_tokens_argv(mini, pbmc_file, out, "--protocol", "reference_query")) == 2
    assert not out.exists() or not any(out.iterdir())


def test_visible_edges_leave_out_the_hidden_ones():
    edges = pd.DataFrame({"source": ["a", "b", "c"], "target": ["b", "c", "a"], "weight": [1.0, 2.0, 3.0],
                          "hidden": [False, True, False]})
    visible = tr.visible_edges(edges)
    assert list(visible.columns) == ["source", "target", "weight"] and list(visible.index) == [0, 1]
    assert visible["source"].tolist() == ["a", "c"] and visible["weight"].tolist() == [1.0, 3.0]


def test_transfer_table_keeps_the_report_columns_in_order():
    assert list(tr.transfer_table([]).columns) == tr.TABLE_COLUMNS and tr.transfer_table([]).empty
    row = {c: float(i) for i, c in enumerate(reversed(tr.TABLE_COLUMNS))} | {"extra": 1.0}
    table = tr.transfer_table([pd.DataFrame([row]), pd.DataFrame([row | {"dataset": "other"}])])
    assert list(table.columns) == tr.TABLE_COLUMNS and list(table.index) == [0, 1]
    assert table["dataset"].tolist() == [row["dataset"], "other"] and table["n_labels"].tolist() == [0.0, 0.0]
