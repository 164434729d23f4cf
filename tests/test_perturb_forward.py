"""Issue 13: held-out data never reach training, evaluation statistics on planted data, gene features,
the yeast folds and baselines, the L1 reverse classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellgraph.tl import perturb, perturb_eval, perturb_forward, perturb_yeast
from cellgraph.errors import InputError
from cellgraph.graphs.gene_features import expression_loadings, random_walk_features, rwr_profiles

REPO = Path(__file__).resolve().parents[1]
PAPALEXI = REPO / "resources/perturbation/papalexi2021_thp1_eccite_lowmoi.h5ad"
COSTANZO = REPO / "resources/phenotypes/costanzo2016_fragment_301pairs.csv"
SMF = REPO / "resources/phenotypes/costanzo2016_single_mutant_fitness.tsv"
YEAST_INFO = REPO / "resources/networks/yeast/4932.protein.info.v12.0.txt.gz"


def _toy_multigraph(nodes, edges_by_graph, directed=None):
    directed = directed or {}
    return {"nodes": nodes, "directed": {g: directed.get(g, False) for g in edges_by_graph},
            "edge_index": {g: torch.tensor(np.array([[a for a, _, _ in e], [b for _, b, _ in e]]), dtype=torch.long)
                           for g, e in edges_by_graph.items()},
            "edge_weight": {g: torch.tensor([w for _, _, w in e], dtype=torch.float32) for g, e in edges_by_graph.items()}}


# ---- held-out perturbations and evaluation controls never reach training -------------------------


@pytest.fixture(scope="module")
def forward_ctx():
    """The real Papalexi context with a planted graph (random features are enough for a leakage test)."""
    params = perturb_forward.ForwardParams(min_grna_frac=0.8, control="non-targeting",
                                           attend="targets_to_regulators", rwr_dim=4, preset="demo",
                                           head="cross_attention", graph_reg={}, max_epochs=3, eval_every=1,
                                           inner_fraction=0.25, score_weight=0.1, batch_size=64, lr=3e-3,
                                           weight_decay=0.01, dropout=0.0, label_scale="gene", n_pca=4, ridge=0.1,
                                           reliable_threshold=0.6, seeds=(0,))
    adata, report = perturb.load_papalexi(PAPALEXI, 0.8, "non-targeting")
    d = perturb.papalexi_arrays(adata, "non-targeting", set())
    rng = np.random.default_rng(0)
    ctx = {**d, "graphs": {}, "rwr": rng.normal(size=(len(d["genes"]), 8)).astype(np.float32),
           "gremln": np.zeros((len(d["genes"]), 0), np.float32), "report": report,
           "targets": sorted(set(d["perturbation"]) - {"non-targeting"}),
           "ctrl_rows": np.flatnonzero(d["perturbation"] == "non-targeting"),
           "pos": {g: i for i, g in enumerate(d["genes"])}}
    return params, ctx


@pytest.mark.parametrize("forced_epochs", [None, 3])
def test_forward_fold_predictions_ignore_heldout_cells_and_evaluation_controls(forward_ctx, monkeypatch, forced_epochs):
    """Scrambling every held-out cell and every evaluation control leaves every prediction unchanged (model and
    baselines) while the observed deltas change: nothing fitted in the fold reads them. Run with the inner
    early stopping as it is, and with 3 training epochs forced (so the training path is covered whatever the
    early stopping chooses)."""
    params, ctx = forward_ctx
    if forced_epochs is not None:
        monkeypatch.setattr(perturb_forward, "choose_epochs", lambda *a, **k: (forced_epochs, []))
    train_c, eval_c = perturb_eval.split_controls(len(ctx["ctrl_rows"]), 0)
    train_ctrl, eval_ctrl = ctx["ctrl_rows"][train_c], ctx["ctrl_rows"][eval_c]
    assert not set(train_ctrl) & set(eval_ctrl)
    held = ["IFNGR2", "JAK2", "SPI1", "STAT1", "CUL3"]
    rel = perturb_forward.reliability_table(ctx, eval_ctrl, 0, 0.6)
    first = perturb_forward.run_fold(params, ctx, 0, 0, held, train_ctrl, eval_ctrl, rel, None)
    scrambled = dict(ctx)
    expr = ctx["expr"].copy()
    hidden = np.flatnonzero(np.isin(ctx["perturbation"], held))
    hidden = np.concatenate([hidden, eval_ctrl])
    expr[hidden] = np.random.default_rng(1).permutation(expr[hidden].ravel()).reshape(len(hidden), -1) * 3
    scrambled["expr"] = expr
    second = perturb_forward.run_fold(params, scrambled, 0, 0, held, train_ctrl, eval_ctrl, rel, None)
    assert first["info"]["epochs"] == second["info"]["epochs"]
    if forced_epochs is not None:
        assert first["info"]["epochs"] == 3
        assert not np.allclose(first["methods"]["equivariant_cgt"], first["methods"]["weighted_mean_change_own_gene"])
    for method, pred in first["methods"].items():
        np.testing.assert_allclose(second["methods"][method], pred, atol=1e-6, err_msg=method)
    assert not np.allclose(first["observed"], second["observed"])
    # the model's own-gene prediction is a drop for the measured held-out targets (offset from training targets)
    rows = pd.DataFrame(first["rows"])
    own = rows[(rows["method"] == "equivariant_cgt") & rows["own_gene_observed"].notna()]
    assert len(own) >= 2 and (own["own_gene_predicted"] < 0).all()


# ---- evaluation statistics with known answers -------------------------------------------------------


def test_split_half_reliability_and_noise_ceiling_on_planted_deltas():
    rng = np.random.default_rng(0)
    g = 300
    signal = rng.normal(size=g)
    ctrl = 5 * rng.normal(size=(400, g))
    strong = signal + 5 * rng.normal(size=(400, g))
    null = 5 * rng.normal(size=(400, g))
    r_strong = perturb_eval.split_half_reliability(strong, ctrl, seed=0)
    r_null = perturb_eval.split_half_reliability(null, ctrl, seed=0)
    # a half-delta: signal variance 1 over genes, noise variance 25/200 + 25/200 = 0.25 -> r = 1 / 1.25
    assert r_strong == pytest.approx(0.8, abs=0.04)
    assert abs(r_null) < 0.1
    assert perturb_eval.noise_ceiling(0.6) == pytest.approx(np.sqrt(1.2 / 1.6))
    assert perturb_eval.noise_ceiling(-0.2) == 0.0 and np.isnan(perturb_eval.noise_ceiling(float("nan")))


def test_debiased_score_is_unbiased_on_null_data_where_the_norm_is_not():
    rng = np.random.default_rng(0)
    plain, debiased = [], []
    for _ in range(200):
        xp, x0 = rng.normal(size=(30, 50)), rng.normal(size=(60, 50))
        d = xp.mean(0) - x0.mean(0)
        plain.append(d @ d)
        debiased.append(perturb_eval.debiased_score(xp, x0))
    assert np.mean(plain) == pytest.approx(50 * (1 / 30 + 1 / 60), rel=0.1)  # grows with 1/n
    assert abs(np.mean(debiased)) < 0.1 * np.mean(plain)


def test_linear_baseline_recovers_a_planted_bilinear_model():
    rng = np.random.default_rng(0)
    g_emb, p_emb = rng.normal(size=(100, 5)), rng.normal(size=(40, 3))
    w = rng.normal(size=(5, 3))
    b = rng.normal(size=100)
    y = (g_emb @ w @ p_emb.T).T + b  # [40, 100]
    pred = perturb_eval.linear_baseline(y[:30], g_emb, p_emb[:30], p_emb[30:], lam=1e-6)
    np.testing.assert_allclose(pred, y[30:], atol=0.2)
    # the mean training embedding predicts the mean training delta
    mid = perturb_eval.linear_baseline(y[:30], g_emb, p_emb[:30], p_emb[:30].mean(0, keepdims=True), lam=0.1)
    np.testing.assert_allclose(mid[0], y[:30].mean(0))


def test_weighted_mean_change_keeps_the_reliable_direction_and_fits_the_scale():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=200)
    y = np.stack([2.0 * direction, 1.0 * direction, *rng.normal(size=(8, 200))])
    out = perturb_eval.weighted_mean_change(y, np.array([1.0, 1.0] + [0.0] * 8))
    assert perturb_eval.pearson(out, direction) == pytest.approx(1.0)
    c = (y @ direction).sum() / (10 * direction @ direction)  # least squares of every delta on the direction
    np.testing.assert_allclose(out, c * direction, rtol=1e-6)
    with pytest.raises(ValueError):
        perturb_eval.weighted_mean_change(y, np.zeros(10))


def test_one_standard_error_rule_prefers_the_simpler_model():
    curve = [{"epoch": 0, "score": 0.50, "se": 0.05}, {"epoch": 10, "score": 0.53, "se": 0.05},
             {"epoch": 20, "score": 0.70, "se": 0.05}, {"epoch": 30, "score": 0.72, "se": 0.05}]
    assert perturb_eval.one_standard_error_choice(curve)["epoch"] == 20
    flat = [{"epoch": e, "score": 0.5 + 0.01 * (e == 30), "se": 0.05} for e in (0, 10, 20, 30)]
    assert perturb_eval.one_standard_error_choice(flat)["epoch"] == 0


def test_paired_comparison_detects_a_consistently_better_model():
    rows = []
    for seed in range(3):
        for i in range(8):
            rows += [{"seed": seed, "perturbation": f"p{i}", "method": "m", "pearson_delta": 0.5 + 0.01 * i, "subset": "all"},
                     {"seed": seed, "perturbation": f"p{i}", "method": "b", "pearson_delta": 0.4 + 0.01 * i, "subset": "all"}]
    comp = perturb_eval.paired_comparison(pd.DataFrame(rows), "m", ["b"])
    assert comp["n_pairs"].iat[0] == 24 and comp["p_value"].iat[0] < 1e-4
    assert comp["n_perturbations"].iat[0] == 8 and comp["p_value_perturbations"].iat[0] < 0.01
    assert comp["mean_difference"].iat[0] == pytest.approx(0.1)
    # a model that returns the baseline up to float rounding ties with it: no test, whatever the rounding
    base = pd.DataFrame(rows).query("method == 'b'")
    noisy = base.assign(method="m", pearson_delta=base["pearson_delta"] + np.linspace(-1e-9, 2e-9, len(base)))
    comp = perturb_eval.paired_comparison(pd.concat([base, noisy]), "m", ["b"])
    assert comp["n_ties"].iat[0] == 24 and np.isnan(comp["p_value"].iat[0])


def test_top_de_genes_finds_the_planted_genes():
    rng = np.random.default_rng(0)
    x0, xp = rng.normal(size=(100, 50)), rng.normal(size=(100, 50))
    xp[:, [3, 17, 40]] += 2.0
    assert set(perturb_eval.top_de_genes(xp, x0, 3)) == {3, 17, 40}


# ---- gene features --------------------------------------------------------------------------------


def test_random_walk_features_separate_two_modules_and_keep_the_sign():
    # two 5-cliques joined by one edge; gene "X" is not in the multigraph
    nodes = [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
    edges = [(i, j, 1.0) for i in range(5) for j in range(i + 1, 5)]
    edges += [(5 + i, 5 + j, 1.0) for i in range(5) for j in range(i + 1, 5)] + [(0, 5, 1.0)]
    reg = [(0, 1, 1.0), (0, 2, -1.0), (5, 6, -1.0)]
    mg = _toy_multigraph(nodes, {"physical": edges, "regulatory": reg}, {"regulatory": True})
    genes = nodes + ["X"]
    x, names, rep = random_walk_features(mg, genes, dim=3)
    assert x.shape == (11, 3 * 5) and len(names) == 15  # physical + regulatory {+, -} x {out, in}
    assert {n.split("_")[1] for n in names} == {"physical", "regulatory+:out", "regulatory+:in", "regulatory-:out",
                                                 "regulatory-:in"}
    assert rep["genes_not_in_multigraph"] == 1 and not x[-1].any()
    # the two leading components carry the modules; the third lies in the degenerate within-clique
    # eigenspace, where the direction an SVD returns is arbitrary (it changed with a fresh install of the
    # dependencies, scikit-learn 1.9.1 and SciPy 1.17.1)
    phys = x[:, :2]
    within = np.linalg.norm(phys[1] - phys[2])
    across = np.linalg.norm(phys[1] - phys[7])
    assert within < 0.5 * across
    # the activating and the repressing out-edges of a0 land in different blocks
    minus_out = x[:, 9:12]
    assert minus_out[0].any() and minus_out[5].any() and not minus_out[3].any()


def test_rwr_profiles_match_the_closed_form():
    ei = np.array([[0, 1, 1, 2], [1, 0, 2, 1]])
    w = np.ones(4)
    r = rwr_profiles(ei, w, 3, np.array([0]), restart=0.5, n_iter=200)[0]
    a = np.zeros((3, 3))
    a[ei[1], ei[0]] = 1
    t = a / a.sum(0, keepdims=True)
    exact = np.linalg.solve(np.eye(3) - 0.5 * t, 0.5 * np.eye(3)[:, 0])
    np.testing.assert_allclose(r, exact, atol=1e-10)


def test_expression_loadings_place_measured_genes_and_mark_the_rest():
    rng = np.random.default_rng(0)
    measured = np.array([True, False, True, True, False])
    x = rng.normal(size=(50, 3))
    out = expression_loadings(x, measured, n_components=2)
    assert out.shape == (5, 3)
    assert not out[~measured, :2].any() and (out[:, -1] == measured).all()


# ---- yeast ------------------------------------------------------------------------------------------


def test_gene_disjoint_folds_hold_queries_out_of_every_training_pair():
    pairs, _ = perturb.load_costanzo(COSTANZO, YEAST_INFO)
    folds = perturb_yeast.gene_disjoint_folds(pairs, 5, seed=0)
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested) == list(range(len(pairs)))  # each pair tested exactly once
    for tr, te in folds:
        held = set(pairs["query"].iloc[te])
        train_genes = set(pairs["query"].iloc[tr]) | set(pairs["array"].iloc[tr])
        assert not held & train_genes


def test_additive_baseline_recovers_planted_gene_effects():
    rng = np.random.default_rng(0)
    q_eff, a_eff = rng.normal(size=10), rng.normal(size=12)
    rows = [{"query": f"q{i}", "array": f"a{j}", "epsilon": q_eff[i] + a_eff[j]} for i in range(10) for j in range(12)]
    df = pd.DataFrame(rows)
    test = rng.permutation(len(df))[:20]
    train = np.setdiff1d(np.arange(len(df)), test)
    pred = perturb_yeast.additive_epsilon(df.iloc[train], df.iloc[test], alpha=1e-6)
    np.testing.assert_allclose(pred, df["epsilon"].to_numpy()[test], atol=1e-3)


def test_load_smf_reads_the_full_table_and_rejects_other_files(tmp_path):
    smf, rep = perturb_yeast.load_smf(SMF)
    raw = pd.read_csv(SMF, sep="\t")
    has = raw["Single mutant fitness (30°)"].notna() | raw["Single mutant fitness (26°)"].notna()
    assert rep["strains_read"] == len(raw) == 10859 and rep["strains_without_fitness"] == int((~has).sum()) > 0
    assert rep["orfs"] == len(smf) == raw.loc[has, "Systematic gene name"].nunique()
    rows = raw[raw["Systematic gene name"] == "YAL002W"]
    assert smf["YAL002W"] == pytest.approx(rows["Single mutant fitness (30°)"].mean())
    bad = tmp_path / "bad.tsv"
    bad.write_text("gene\tfitness\nYAL001C\t0.9\n")
    with pytest.raises(InputError, match="missing column"):
        perturb_yeast.load_smf(bad)


# ---- reverse task: the lasso is L1 on every scikit-learn the project allows ------------------------


@pytest.mark.parametrize("version", ["1.4.2", "1.7.1", "1.8.0", None])
def test_lasso_logistic_regression_is_l1(monkeypatch, version):
    import sklearn

    if version is not None:
        monkeypatch.setattr(sklearn, "__version__", version)
    clf = perturb.l1_logistic_regression(C=0.05, max_iter=2000, tol=1e-4)
    params = clf.get_params()
    if version is not None and tuple(int(v) for v in version.split(".")[:2]) < (1, 8):
        assert params["penalty"] == "l1"
        return
    assert params["l1_ratio"] == 1.0 and params["solver"] == "saga"
    # the installed scikit-learn: the fit is sparse (an L2 penalty leaves no coefficient at exactly 0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    coef = clf.fit(x, y).coef_
    assert (coef == 0).sum() >= 20 and coef[0, 0] != 0


def test_gremln_features_cover_the_vocabulary_genes_only(tmp_path):
    from cellgraph.graphs.gene_features import embedding_features, gremln_vectors

    weight = torch.randn(5, 4)
    torch.save({"state_dict": {"gene_emb.weight": weight}, "vocab": ["<pad>", "<cls>", "STAT1", "JAK2", "IRF1"]},
               tmp_path / "model.pt")
    vec, known, rep = gremln_vectors(tmp_path / "model.pt", ["JAK2", "SPI1", "STAT1", "MYC"])
    assert known.tolist() == [True, False, True, False]
    torch.testing.assert_close(vec[0], weight[3])
    x = embedding_features(vec.numpy(), known.numpy())
    assert x.shape == (4, 5)
    assert not x[1, :-1].any() and not x[3, :-1].any() and (x[:, -1] == [1, 0, 1, 0]).all()
    # two known rows: centred, so they are mirror images
    np.testing.assert_allclose(x[0, :-1], -x[2, :-1], atol=1e-6)
    with pytest.raises(InputError, match="gene_emb.weight"):
        torch.save({"vocab": []}, tmp_path / "bad.pt")
        gremln_vectors(tmp_path / "bad.pt", ["JAK2"])


def test_parameter_dataclasses_default_to_the_command_line_defaults():
    """ForwardParams / YeastParams / ReverseParams built from the default options equal their own defaults, so a
    library caller and the command line run the same method unless told otherwise."""
    import argparse

    from cellgraph.cli import perturb as perturb_cli

    p = argparse.ArgumentParser()
    perturb_cli.configure_parser(p)
    args = p.parse_args(["--task", "forward"])
    graph_reg = perturb.graph_reg_from_flags(args.graph_reg)
    assert perturb_cli.forward_params(args, graph_reg) == perturb_forward.ForwardParams()
    assert perturb_cli.yeast_params(args, graph_reg) == perturb_yeast.YeastParams()
    assert perturb_cli.reverse_params(args) == perturb.ReverseParams()
    changed = perturb_cli.forward_params(p.parse_args(["--task", "forward", "--seeds", "3", "4", "--n-pca", "7"]), {})
    assert changed.seeds == (3, 4) and changed.n_pca == 7 and changed.graph_reg == {}
