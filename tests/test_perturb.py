"""cellgraph perturb: real Papalexi / Costanzo loading, leave-perturbation-out splits, set batching, CLI errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellgraph import cli
from cellgraph.tl import perturb, perturb_eval
from cellgraph.models import cell_graph_transformer as cgt

REPO = Path(__file__).resolve().parents[1]
PAPALEXI = REPO / "resources/perturbation/papalexi2021_thp1_eccite_lowmoi.h5ad"
COSTANZO = REPO / "resources/phenotypes/costanzo2016_fragment_301pairs.csv"
SMF = REPO / "resources/phenotypes/costanzo2016_single_mutant_fitness.tsv"
YEAST_INFO = REPO / "resources/networks/yeast/4932.protein.info.v12.0.txt.gz"


@pytest.fixture(scope="module")
def papalexi():
    return perturb.load_papalexi(PAPALEXI, 0.8, "non-targeting")


def test_papalexi_filter_counts_and_universe(papalexi):
    adata, rep = papalexi
    assert rep["cells_kept"] + rep["cells_dropped_top_grna_frac"] == rep["cells_read"] == 20729
    assert (adata.obs["top_grna_frac"] >= 0.8).all()
    # log1p of counts normalised to 1e4: expm1 rows sum to 1e4
    np.testing.assert_allclose(np.expm1(adata.X[:5].toarray()).sum(1), 1e4, rtol=1e-4)
    d = perturb.papalexi_arrays(adata, "non-targeting", set(adata.var_names))
    targets = set(adata.obs["perturbation"]) - {"non-targeting"}
    assert len(targets) == 25 and targets <= set(d["genes"])
    assert d["measured"].sum() == 299 and len(d["genes"]) == 299 + len(d["targets_unmeasured"])
    assert not d["expr"][:, ~d["measured"]].any()
    ctrl = adata.obs["perturbation"].to_numpy() == "non-targeting"
    assert all(len(s) == 0 for s, c in zip(d["sets"], ctrl) if c)
    assert all(d["genes"][s[0]] == p for s, p in zip(d["sets"], d["perturbation"]) if len(s))


def test_leave_perturbation_out_never_leaks(papalexi):
    adata, _ = papalexi
    pert = adata.obs["perturbation"].to_numpy(str)
    folds = perturb.leave_perturbation_out_folds(pert, "non-targeting", 5, seed=0)
    held_all = [p for _, held in folds for p in held]
    assert sorted(held_all) == sorted(set(pert) - {"non-targeting"})  # each target held out exactly once
    for train_idx, held in folds:
        assert not np.isin(pert[train_idx], held).any()
        assert (pert[train_idx] == "non-targeting").sum() == (pert == "non-targeting").sum()
    # a different seed gives a different split
    other = perturb.leave_perturbation_out_folds(pert, "non-targeting", 5, seed=1)
    assert [h for _, h in other] != [h for _, h in folds]


def test_deduplicated_set_batches_give_per_sample_predictions():
    torch.manual_seed(0)
    n = 12
    model = cgt.build_model("equivariant", cgt.preset("demo", n)).eval()
    sets = [np.array([3]), np.array([], np.int64), np.array([3]), np.array([5, 7]), np.array([], np.int64)]
    y = np.arange(5, dtype=np.float32)
    s = perturb.Samples(sets, {"fitness": (y, np.ones(5, bool))})
    batch = s.collate([0, 1, 2, 3, 4])
    assert batch["pert_ptr"].tolist() == [0, 1, 1, 3]  # three distinct sets
    assert batch["set_of_sample"].tolist() == [0, 1, 0, 2, 1]
    with torch.no_grad():
        out, _, _ = model(batch)
        per = perturb.per_sample(out, batch)
        for i, st in enumerate(sets):
            one, _, _ = model(perturb.Samples([st], {}).collate([0]))
            torch.testing.assert_close(per["expression"][i], one["expression"][0], atol=1e-5, rtol=1e-4)
    assert torch.equal(batch["y_fitness"], torch.from_numpy(y))


def test_costanzo_mapping_and_epsilon():
    pairs, rep = perturb.load_costanzo(COSTANZO, YEAST_INFO)
    assert rep["pairs_read"] == 301 and rep["pairs_kept"] + rep["pairs_unmapped"] == 301
    assert pairs["query"].str.match(r"^Y[A-P][LR]\d{3}[WC]").all()
    row = pairs[(pairs["query_name"] == "cox9") & (pairs["array_name"] == "ade1")].iloc[0]
    assert row["query"] == "YDL067C"
    assert row["epsilon"] == pytest.approx(0.7624 - 0.769 * 1.005)


def test_yeast_universe_hops():
    mg = {"nodes": ["A", "B", "C", "D"], "edge_index": {"physical": torch.tensor([[0, 1], [1, 2]])},
          "edge_weight": {"physical": torch.ones(2)}, "directed": {"physical": False}}
    assert perturb.yeast_universe(mg, ["A"], 0) == ["A"]
    assert perturb.yeast_universe(mg, ["A"], 1) == ["A", "B"]
    assert perturb.yeast_universe(mg, ["A"], 2) == ["A", "B", "C"]
    assert perturb.yeast_universe(mg, ["A"], -1) == ["A", "B", "C", "D"]
    graphs, kept = perturb.restrict_graphs(mg, ["C", "B"])
    assert kept == {"physical": 1} and graphs["physical"][0].tolist() == [[1], [0]]


def test_cli_bad_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "pairs.csv"
    bad.write_text("genepairs,label,Array_SMF\ncox9_ade1,0,1.0\n")
    code = cli.main(["perturb", "--task", "yeast", "--pairs", str(bad), "--smf", str(SMF), "--string-info",
                     str(YEAST_INFO), "--multigraph", str(tmp_path / "none.npz"), "--out-dir", str(tmp_path / "out")])
    assert code == 2
    assert "missing column" in capsys.readouterr().err
    code = cli.main(["perturb", "--task", "yeast", "--pairs", str(COSTANZO), "--string-info", str(YEAST_INFO),
                     "--multigraph", str(tmp_path / "none.npz"), "--out-dir", str(tmp_path / "out")])
    assert code == 2 and "needs --smf" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    code = cli.main(["perturb", "--task", "forward", "--adata", str(PAPALEXI), "--graph-reg", "physical:x",
                     "--multigraph", "m.npz", "--out-dir", str(tmp_path / "o2")])
    assert code == 2 and "GRAPH:LAYER:HEAD:LAMBDA" in capsys.readouterr().err


def test_finetune_classifier_trains_all_weights_on_real_cells(papalexi, tmp_path):
    """GREmLN fine-tuning with a classification head (reverse prediction): a tiny vanilla encoder whose
    vocabulary is the measured genes learns to tell the strongest perturbation from control cells."""
    from cellgraph.models import gremln

    adata, _ = papalexi
    shifts = perturb.top_shift_perturbations(adata, "non-targeting", 1, 20, seed=0)
    top = shifts["perturbation"].iat[0]
    pert = adata.obs["perturbation"].to_numpy(str)
    rng = np.random.default_rng(0)
    cells = np.sort(np.concatenate([rng.choice(np.flatnonzero(pert == p), 150, replace=False)
                                    for p in (top, "non-targeting")]))
    vocab = ["<pad>", "<cls>", *adata.var_names]
    cfg = gremln.preset("demo", d_model=32, n_layers=1, n_heads=2, attention="vanilla", vocab_size=len(vocab), n_bins=10)
    torch.manual_seed(0)
    torch.save({"config": cfg.to_dict(), "state_dict": gremln.GREmLN(cfg).state_dict(), "vocab": vocab},
               tmp_path / "model.pt")
    nets = tmp_path / "networks.tsv"
    nets.write_text("cell_type\tsource\ttarget\tmi\nTHP1\t" + f"{adata.var_names[0]}\t{adata.var_names[1]}\t0.5\n")
    report: dict = {}
    model, ds = perturb.tokenized_cells(tmp_path / "model.pt", adata, cells, nets, "THP1", 0, report, "gremln")
    assert report["gremln_embedding"]["vocab_genes_measured"] == adata.n_vars
    y = (pert[cells] == top).astype(int)
    order = rng.permutation(len(cells))
    train, test = np.sort(order[:200]), np.sort(order[200:])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pred = perturb.finetune_classifier(model, ds, y, train, test, 2, epochs=20, lr=1e-3, seed=0)
    assert pred.shape == (len(test),) and set(pred) <= {0, 1}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the given model is untouched
    # chance is 0.5 (100 test cells: sd 0.05); a lasso on expression reaches about 0.8 on such cells
    assert (pred == y[test]).mean() >= 0.65, (pred == y[test]).mean()


def test_fit_records_attention_diagnostics_every_epoch_and_regularisation_pulls_mass_onto_edges():
    """Planted graph (a ring over 30 genes): after training with a strong lambda on (layer 0, head 1), that
    head puts far more attention mass on true edges than uniform attention and than the unregularised heads."""
    n = 30
    ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    graphs = {"ring": (ring, torch.ones(n), False)}
    cfg = cgt.preset("demo", n, graph_reg={"ring": [0, 1, 5.0]}, row_sample_rate=1.0)
    torch.manual_seed(0)
    model = cgt.build_model("equivariant", cfg, graphs)
    rng = np.random.default_rng(0)
    sets = [np.array([i]) for i in rng.integers(0, n, 64)]
    y = rng.normal(size=(64, n)).astype(np.float32)
    samples = perturb.Samples(sets, {"expression": (y, np.ones_like(y, bool))})
    diag = {"graphs": graphs, "graph_rows": [], "head_rows": [], "fold": 0}
    perturb.fit(model, samples, {"expression": 1.0}, max_epochs=3, batch_size=16, lr=0.03, seed=0, diagnostics=diag)
    g = pd.DataFrame(diag["graph_rows"])
    assert sorted(g["epoch"].unique()) == [1, 2, 3] and (g["fold"] == 0).all()
    assert len(g) == 3 * cfg.n_layers * cfg.n_heads and len(diag["head_rows"]) == 3 * cfg.n_layers * cfg.n_heads
    last = g[g["epoch"] == 3].set_index(["layer", "head"])
    reg = last.loc[(0, 1)]
    assert bool(reg["regularised"]) and last["regularised"].sum() == 1
    assert reg["edge_mass"] > 4 * reg["uniform_mass"]
    assert reg["edge_mass"] > 2 * last.drop(index=(0, 1))["edge_mass"].max()
    assert reg["recall_at_degree"] > 0.5


def test_forward_yeast_reverse_and_figures_end_to_end(tmp_path, papalexi):
    """The three tasks on the real data with tiny settings, then the figures task on their outputs."""
    from cellgraph.graphs.multigraph import build_multigraph, save_multigraph

    mgs = {}
    for org, inputs in (("human", {"huri": REPO / "resources/demo/networks/human/HuRI_binaryPPI.tsv",
                                   "dorothea": REPO / "resources/demo/networks/human/dorothea_hs_regulons.tsv.gz",
                                   **{k: REPO / "resources/demo/networks/idmap" / f for k, f in (
                                       ("alias_map", "hs_alias_symbol.tsv"), ("ensg_map", "hs_ensg_entrez_symbol.tsv"),
                                       ("ensp_map", "hs_ensp_entrez_symbol.tsv"))}}),
                        ("yeast", {"string_physical": REPO / "resources/networks/yeast/4932.protein.physical.links.v12.0.txt.gz",
                                   "string_info": YEAST_INFO,
                                   "string_aliases": REPO / "resources/networks/yeast/4932.protein.aliases.v12.0.txt.gz"})):
        graphs, _, _ = build_multigraph(org, inputs)
        mgs[org] = tmp_path / f"{org}.npz"
        save_multigraph(mgs[org], org, graphs)
    common = ["--threads", "1", "--diagnostics-every", "2"]
    assert cli.main(["perturb", "--task", "forward", "--adata", str(PAPALEXI), "--multigraph", str(mgs["human"]),
                     "--max-epochs", "3", "--eval-every", "1", "--out-dir", str(tmp_path / "fwd"), *common]) == 0
    assert cli.main(["perturb", "--task", "yeast", "--pairs", str(COSTANZO), "--smf", str(SMF),
                     "--string-info", str(YEAST_INFO),
                     "--multigraph", str(mgs["yeast"]), "--yeast-max-epochs", "2", "--yeast-hops", "0",
                     "--out-dir", str(tmp_path / "yeast"), *common]) == 0
    assert cli.main(["perturb", "--task", "reverse", "--adata", str(PAPALEXI), "--n-top-perturbations", "3",
                     "--n-splits", "2", "--out-dir", str(tmp_path / "rev"), "--threads", "1"]) == 0
    metrics = pd.read_csv(tmp_path / "fwd" / "metrics.tsv", sep="\t")
    methods = {"equivariant_cgt", "no_change", "mean_change", "mean_change_own_gene", "weighted_mean_change",
               "weighted_mean_change_own_gene", "linear_pca", "linear_graph"}
    assert metrics["perturbation"].nunique() == 25 and set(metrics["method"]) == methods
    assert len(metrics) == 25 * len(methods)
    # the held-out deltas are against the evaluation half of the controls: recompute STAT1's from the h5ad
    import anndata as ad

    pred = ad.read_h5ad(tmp_path / "fwd" / "predictions.h5ad")
    assert set(pred.layers) == methods | {"observed"} and pred.n_obs == 25 and pred.n_vars == 299
    adata, _ = papalexi
    pert = adata.obs["perturbation"].to_numpy(str)
    x = adata.X.toarray()
    ctrl = np.flatnonzero(pert == "non-targeting")
    _, eval_half = perturb_eval.split_controls(len(ctrl), 0)
    stat1 = x[pert == "STAT1"].mean(0) - x[ctrl[eval_half]].mean(0)
    np.testing.assert_allclose(pred[pred.obs["perturbation"] == "STAT1"].layers["observed"][0], stat1, atol=1e-5)
    row = metrics[(metrics["perturbation"] == "STAT1") & (metrics["method"] == "mean_change")].iloc[0]
    assert row["pearson_delta"] == pytest.approx(np.corrcoef(pred[pred.obs["perturbation"] == "STAT1"].layers["mean_change"][0], stat1)[0, 1], abs=1e-5)
    summary = pd.read_csv(tmp_path / "fwd" / "score_summary.tsv", sep="\t")
    assert set(summary["method"]) == {"equivariant_cgt", "train_mean_score"} and (summary["n"] == 25).all()
    assert np.isnan(summary.set_index("method").loc["train_mean_score", "pearson"])  # constant: no correlation
    comp = pd.read_csv(tmp_path / "fwd" / "comparisons.tsv", sep="\t")
    assert set(comp["subset"]) >= {"all"}
    tested = comp["n_ties"] < comp["n_pairs"]  # a model identical to a baseline has nothing to test
    assert comp.loc[tested, "p_value"].between(0, 1).all() and comp.loc[~tested, "p_value"].isna().all()
    diag = pd.read_csv(tmp_path / "fwd" / "attention_diagnostics.tsv", sep="\t")
    assert set(diag["model"]) == {"equivariant_cgt"} and diag["fold"].nunique() == 5
    yeast = pd.read_csv(tmp_path / "yeast" / "summary.tsv", sep="\t")
    assert set(yeast["scheme"]) == {"pairs", "genes"} and (yeast.groupby("scheme")["n_pairs"].first() == 301).all()
    figs, tabs = tmp_path / "figures", tmp_path / "tables"
    assert cli.main(["perturb", "--task", "figures", "--forward-dir", str(tmp_path / "fwd"),
                     "--yeast-dir", str(tmp_path / "yeast"), "--reverse-dir", str(tmp_path / "rev"),
                     "--figures-dir", str(figs), "--tables-dir", str(tabs)]) == 0
    for name in ("perturbation_forward", "perturbation_yeast", "perturbation_reverse_confusion", "perturbation_attention"):
        assert (figs / f"{name}.png").stat().st_size > 10_000
    att = pd.read_csv(tabs / "table_attention_diagnostics.csv")
    assert set(att["dataset"]) == {"papalexi", "yeast"} and att["regularised"].sum() >= 2
    assert set(pd.read_csv(tabs / "table_perturbation_score.csv")["method"]) == set(summary["method"])
    assert set(pd.read_csv(tabs / "table_perturbation_forward.csv")["subset"]) >= {"all"}


def test_sample_offsets_are_added_to_predictions_and_learned_around():
    """A per-sample offset is added to the scalar readout: an untrained model predicts exactly the offsets, and
    the training loss is taken on offset + readout."""
    torch.manual_seed(0)
    n = 10
    model = cgt.build_model("equivariant", cgt.preset("demo", n))
    sets = [np.array([1, 2]), np.array([3, 4]), np.array([5, 6])]
    offsets = np.array([0.3, -0.2, 0.05], np.float32)
    out = perturb.predict(model, sets, offsets={"interaction": offsets})
    np.testing.assert_allclose(out["interaction"], offsets, atol=1e-7)
    y = offsets + np.array([0.1, 0.1, 0.1], np.float32)
    s = perturb.Samples(sets, {"interaction": (y, np.ones(3, bool))}, offsets={"interaction": offsets})
    perturb.fit(model, s, {"interaction": 1.0}, max_epochs=60, batch_size=3, lr=0.01, seed=0)
    after = perturb.predict(model, sets, offsets={"interaction": offsets})["interaction"]
    np.testing.assert_allclose(after - offsets, 0.1, atol=0.03)  # the readout learned the residual only
