"""Pipeline of the latent-token diffusion model (issue 7): splits, metrics, CLI end to end, bad input, resume."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellgraph.cli import diffusion as dfn_cli
from cellgraph.tl import diffusion as dfn
from cellgraph.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
PAPALEXI = ROOT / "resources/perturbation/papalexi2021_thp1_eccite_lowmoi.h5ad"
PBMC_COUNTS = ROOT / "resources/demo/expression/pbmc3p5k_sorted_counts.h5ad"
CONTROL = "non-targeting"

# a tiny model and run: every test stays within seconds on a loaded 2-core machine
TINY = ["--n-tokens", "4", "--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--ae-hidden", "64",
        "--batch-size", "64", "--threads", "1"]


def parse(*argv) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    dfn_cli.configure_parser(p)
    return p.parse_args([str(a) for a in argv])


@pytest.fixture(scope="module")
def papalexi():
    return dfn.load_papalexi_data(PAPALEXI, 0.8, CONTROL)


@pytest.fixture(scope="module")
def pbmc_stage_adata(tmp_path_factory):
    """A small h5ad shaped like the expression stage output, from the real vendored PBMC counts."""
    import anndata as ad
    import scanpy as sc

    raw = ad.read_h5ad(PBMC_COUNTS)
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(raw.obs["trueLabel"] == t), 60, replace=False)
                                   for t in ["B", "NK", "CD8TN", "Monocyte"]]))
    a = raw[keep].copy()
    sc.pp.filter_genes(a, min_cells=5)
    a.layers["counts"] = a.X.copy()  # as the expression stage keeps them
    sc.pp.normalize_total(a, target_sum=1e6)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=120, flavor="seurat")
    split = rng.choice(["train", "val", "test"], a.n_obs, p=[0.6, 0.1, 0.3]).astype(object)
    split[(a.obs["trueLabel"] == "Monocyte").to_numpy()] = "heldout"
    a.obs["split"] = pd.Categorical(split)
    a.obs["trueLabel"] = a.obs["trueLabel"].astype(str).astype("category")
    a.uns["cellgraph"] = {"label_key": "trueLabel", "heldout_types": ["Monocyte"]}
    path = tmp_path_factory.mktemp("pbmc") / "adata.h5ad"
    a.write_h5ad(path)
    return path


# ------------------------------------------------------------------------------------------------
# leave-perturbation-out split on the real Papalexi labels
# ------------------------------------------------------------------------------------------------


def test_leave_perturbation_out_never_trains_on_heldout(papalexi):
    folds = dfn.folds_of(papalexi, n_folds=5, folds_run=5, seed=3, val_fraction=0.05)
    assert len(folds) == 5
    targets = set(papalexi.vocab)
    assert len(targets) == 25
    all_held = [p for f in folds for p in f["heldout"]]
    assert sorted(all_held) == sorted(targets)  # every target held out exactly once
    for f in folds:
        seen = set(papalexi.labels[f["train"]]) | set(papalexi.labels[f["val"]])
        assert f["heldout"] and not (seen & set(f["heldout"]))
        assert CONTROL in set(papalexi.labels[f["train"]])  # control cells always train
        # every non-held-out cell is used (train or val), none twice
        used = np.r_[f["train"], f["val"]]
        assert len(np.unique(used)) == len(used) == int((~np.isin(papalexi.labels, f["heldout"])).sum())
        # the condition tensors the model sees never carry a held-out gene index
        cond = dfn.conditions(papalexi, papalexi.labels[f["train"]])
        held_idx = [papalexi.vocab.index(p) for p in f["heldout"]]
        assert not np.isin(cond["set_genes"][cond["set_mask"]].numpy(), held_idx).any()
    # the subsetting for quick runs keeps the guarantee
    for f in dfn.folds_of(papalexi, 5, 2, 3, 0.05, max_train_cells=300):
        assert len(f["train"]) == 300 and not set(papalexi.labels[f["train"]]) & set(f["heldout"])


def test_conditions_of_control_are_the_empty_set(papalexi):
    c = dfn.conditions(papalexi, [CONTROL, papalexi.vocab[3]])
    assert c["set_mask"].tolist() == [[False], [True]] and int(c["set_genes"][1, 0]) == 3
    with pytest.raises(InputError, match="not in the set-gene vocabulary"):
        dfn.conditions(papalexi, ["NOT_A_GENE"])


# ------------------------------------------------------------------------------------------------
# metrics on known cases
# ------------------------------------------------------------------------------------------------


def test_mmd_and_energy_zero_for_identical_and_grow_with_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 5))
    x2 = rng.normal(size=(150, 5))  # same distribution, other draw
    assert dfn.mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-10)
    assert dfn.energy_distance(x, x) == pytest.approx(0.0, abs=1e-10)
    same_mmd, same_e = dfn.mmd_rbf(x, x2), dfn.energy_distance(x, x2)
    prev_mmd, prev_e = same_mmd, same_e
    for shift in (0.5, 1.0, 3.0):
        m, e = dfn.mmd_rbf(x, x2 + shift), dfn.energy_distance(x, x2 + shift)
        assert m > prev_mmd and e > prev_e  # monotone in the shift
        prev_mmd, prev_e = m, e
    assert prev_mmd > 20 * same_mmd and prev_e > 20 * same_e
    # energy distance of a 1-d mean shift d between point masses is 2|d|
    assert dfn.energy_distance(np.zeros((4, 1)), np.full((4, 1), 3.0)) == pytest.approx(6.0)
    # median heuristic: the bandwidth is a median pairwise distance
    assert dfn.median_bandwidth(np.array([[0.0], [1.0]]), np.array([[3.0]])) == pytest.approx(2.0)


def test_c2st_on_real_cells():
    import anndata as ad
    import scanpy as sc
    from sklearn.decomposition import PCA

    a = ad.read_h5ad(PBMC_COUNTS)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    lab = a.obs["trueLabel"].to_numpy(str)
    x = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    top = np.argsort(-x.var(0))[:500]
    z = PCA(10, random_state=0).fit_transform(x[:, top])
    rng = np.random.default_rng(1)
    b = rng.permutation(np.flatnonzero(lab == "B"))
    nk = np.flatnonzero(lab == "NK")
    same = dfn.c2st_auroc(z[b[:200]], z[b[200:400]], seed=0)
    diff = dfn.c2st_auroc(z[b[:200]], z[nk[:200]], seed=0)
    assert 0.35 < same < 0.65, same
    assert diff > 0.95, diff
    assert np.isnan(dfn.c2st_auroc(z[:3], z[3:6]))  # too few cells for 5 folds


# ------------------------------------------------------------------------------------------------
# CLI end to end on real data, and bad input
# ------------------------------------------------------------------------------------------------


def toy_multigraph(path, genes: list[str]) -> Path:
    """A multigraph.npz whose physical graph is a chain over ``genes`` plus two extra nodes (others empty)."""
    from cellgraph.graphs.multigraph import GRAPH_TYPES, save_multigraph

    nodes = np.array(list(genes) + ["EXTRA1", "EXTRA2"])
    graphs = {"nodes": nodes}
    for g in GRAPH_TYPES:
        graphs[g] = (np.zeros((2, 0), np.int64), np.zeros(0, np.float32))
    src = np.arange(len(nodes) - 1)
    graphs["physical"] = (np.stack([src, src + 1]).astype(np.int64), np.ones(len(src), np.float32))
    save_multigraph(path, "human", graphs)
    return Path(path)


def test_papalexi_end_to_end(tmp_path, papalexi):
    """Default path: NB counts, a variational latent smaller than the genes, set genes from RWR features."""
    import anndata as ad

    out, ck = tmp_path / "out", tmp_path / "ck"
    mg = toy_multigraph(tmp_path / "mg.npz", papalexi.vocab)
    dfn_cli.run(parse("--task", "train", "--dataset", "papalexi", "--adata", PAPALEXI, "--out-dir", out,
                      "--checkpoint-dir", ck, "--max-train-cells", 192, "--ae-steps", 1, "--max-steps", 3,
                      "--folds-run", 1, "--multigraph", mg, "--rwr-dim", 3, *TINY))
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert list(metrics.columns) == dfn.METRIC_COLUMNS
    assert metrics["phase"].tolist() == ["autoencoder", "diffusion"] and np.isfinite(metrics["train_loss"]).all()
    obj = torch.load(out / "model.pt", weights_only=True)
    held = obj["folds"][0]["heldout"]
    assert held and not set(held) & set(obj["folds"][0]["train_labels"])
    assert obj["config"]["likelihood"] == "nb" and obj["config"]["n_set_features"] == 3
    assert obj["config"]["n_tokens"] * obj["config"]["latent_dim"] < 299  # a latent smaller than the genes
    feats = obj["state_dict"]["denoiser.cond_embedder.set.gene_features"]
    assert feats.shape == (25, 3) and not any(k.endswith("set.gene.weight") for k in obj["state_dict"])
    assert obj["init"]["set_features"] == "rwr"
    dfn_cli.run(parse("--task", "sample", "--dataset", "papalexi", "--out-dir", out, "--n-generate", 3,
                      "--ddim-steps", 2, *TINY))
    gen = ad.read_h5ad(out / "generated.h5ad")
    n_cond = 1 + 25
    assert gen.shape == (3 * n_cond, 299)
    assert np.isfinite(gen.X).all() and gen.X.min() >= 0
    counts = gen.layers["counts"].toarray()
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    assert np.allclose(gen.X, dfn.log_normalize(counts), atol=1e-5)  # X is log1p CP10k of the sampled counts
    obs = gen.obs
    assert sorted(set(obs["perturbation"])) == sorted([CONTROL] + obj["conditions"]["vocab"])
    assert (obs["perturbation"].value_counts() == 3).all()
    assert ((obs["set_genes"] == "") == (obs["perturbation"] == CONTROL)).all()
    assert (obs.loc[obs["set_genes"] != "", "set_genes"] == obs.loc[obs["set_genes"] != "", "perturbation"].astype(str)).all()
    assert set(obs.loc[obs["heldout"].astype(bool), "perturbation"]) == set(held)
    assert list(gen.var_names) == obj["genes"]
    dfn_cli.run(parse("--task", "evaluate", "--dataset", "papalexi", "--adata", PAPALEXI, "--out-dir", out,
                      "--guidance-scales", 1, 2, "--curve-cells", 3, "--curve-seen", 1, "--timing-cells", 2,
                      "--ddim-steps", 2, *TINY))
    ev = pd.read_csv(out / "evaluation.tsv", sep="\t")
    h = ev[ev["heldout"]]
    assert sorted(h["perturbation"].unique()) == sorted(held)
    assert set(h["method"]) == {"diffusion", "no_change", "train_mean_change"}
    assert h[h.method == "no_change"]["pearson_delta"].isna().all()
    assert h[h.method == "train_mean_change"]["pearson_delta"].notna().all()
    assert h["noise_ceiling"].between(0, 1).all()
    comp = pd.read_csv(out / "comparison.tsv", sep="\t")
    assert set(comp["set"]) == {"heldout", "seen"} and (comp["baseline"] == "train_mean_change").all()
    assert len(pd.read_csv(out / "guidance.tsv", sep="\t")) == 2
    timing = pd.read_csv(out / "sampling_time.tsv", sep="\t").set_index("sampler")
    assert timing.loc["ddpm", "steps"] == 1000 and timing.loc["ddim", "steps"] == 2
    assert (out / "perturbation.png").stat().st_size > 1000 and (out / "guidance.png").stat().st_size > 1000
    rep = json.loads((out / "report.json").read_text())
    assert rep["dataset"] == "papalexi" and rep["data"]["cells_kept"] > 10000


def test_pbmc_train_and_sample(tmp_path, pbmc_stage_adata):
    import anndata as ad

    out = tmp_path / "out"
    dfn_cli.run(parse("--task", "train", "--dataset", "pbmc", "--adata", pbmc_stage_adata, "--out-dir", out,
                      "--checkpoint-dir", tmp_path / "ck", "--ae-steps", 1, "--max-steps", 2, "--n-genes", 50, *TINY))
    obj = torch.load(out / "model.pt", weights_only=True)
    assert obj["conditions"]["vocab"] == ["B", "CD8TN", "NK"]  # Monocyte is heldout: no condition index
    assert obj["data_report"]["cells_dropped_type_without_training_cells"] == 60
    assert len(obj["genes"]) == 50
    dfn_cli.run(parse("--task", "sample", "--dataset", "pbmc", "--out-dir", out, "--ddim-steps", 2, *TINY))
    gen = ad.read_h5ad(out / "generated.h5ad")
    real = ad.read_h5ad(pbmc_stage_adata)
    test = real.obs[real.obs["split"] == "test"]["trueLabel"].astype(str)
    expected = test[test != "Monocyte"].value_counts().sort_index()
    got = gen.obs["trueLabel"].astype(str).value_counts().sort_index()
    assert gen.n_vars == 50 and got.to_dict() == obj["conditions"]["test_counts"]
    # cells without a count on the 50 modelled genes are dropped and counted, never silently
    lost = int((expected - got).sum())
    assert (got <= expected).all() and 0 <= lost <= obj["data_report"]["cells_dropped_no_count_on_modelled_genes"]
    # sampling the PBMC model as papalexi is refused
    with pytest.raises(InputError, match="trained on 'pbmc'"):
        dfn_cli.run(parse("--task", "sample", "--dataset", "papalexi", "--out-dir", out, *TINY))
    # the PBMC evaluation: every seen type scored for the model, scVI and the two references, on the same cells
    dfn_cli.run(parse("--task", "evaluate", "--dataset", "pbmc", "--adata", pbmc_stage_adata, "--out-dir", out,
                      "--n-genes", 50, "--scvi-epochs", 2, *TINY))
    ev = pd.read_csv(out / "evaluation.tsv", sep="\t")
    assert sorted(ev["method"].unique()) == ["all_types", "diffusion", "scvi", "train_cells"]
    per_type = ev.pivot(index="cell_type", columns="method", values="n_generated")
    assert per_type.index.tolist() == obj["conditions"]["vocab"]
    assert (per_type.sub(got, axis=0) == 0).all().all()  # each method scored on as many cells as were generated
    assert ev["c2st_auroc"].between(0, 1).all() and (ev["mmd_rbf"] >= 0).all()
    scvi = ad.read_h5ad(out / "baseline_scvi.h5ad")
    assert scvi.var_names.tolist() == gen.var_names.tolist()
    assert scvi.obs["trueLabel"].astype(str).value_counts().sort_index().to_dict() == got.to_dict()
    crit = pd.read_csv(out / "criteria.tsv", sep="\t")
    assert crit["cell_type"].tolist() == obj["conditions"]["vocab"]


def test_bad_input_is_refused(tmp_path, pbmc_stage_adata):
    import anndata as ad

    out = tmp_path / "out"
    with pytest.raises(InputError, match="--dataset 'mouse'"):
        dfn_cli.run(parse("--task", "train", "--dataset", "mouse", "--adata", PAPALEXI, "--out-dir", out,
                          "--checkpoint-dir", tmp_path / "ck"))
    with pytest.raises(InputError, match="--task 'fit'"):
        dfn_cli.run(parse("--task", "fit", "--dataset", "pbmc", "--out-dir", out))
    for dataset, source, column, message in (("pbmc", pbmc_stage_adata, "split", "obs has no column 'split'"),
                                             ("papalexi", PAPALEXI, "perturbation", "perturbation")):
        a = ad.read_h5ad(source)
        del a.obs[column]
        bad = tmp_path / f"no_{column}.h5ad"
        a.write_h5ad(bad)
        with pytest.raises(InputError, match=message):
            dfn_cli.run(parse("--task", "train", "--dataset", dataset, "--adata", bad, "--out-dir", out,
                              "--checkpoint-dir", tmp_path / "ck", "--set-features", "none"))
    a = ad.read_h5ad(pbmc_stage_adata)
    del a.layers["counts"]
    a.write_h5ad(tmp_path / "no_counts.h5ad")
    with pytest.raises(InputError, match="layers has no 'counts'"):
        dfn_cli.run(parse("--task", "train", "--dataset", "pbmc", "--adata", tmp_path / "no_counts.h5ad",
                          "--out-dir", out, "--checkpoint-dir", tmp_path / "ck"))
    with pytest.raises(InputError, match="--set-features rwr needs --multigraph"):
        dfn_cli.run(parse("--task", "train", "--dataset", "papalexi", "--adata", PAPALEXI, "--out-dir", out,
                          "--checkpoint-dir", tmp_path / "ck"))
    with pytest.raises(InputError, match="--likelihood 'poisson'"):
        dfn_cli.run(parse("--task", "train", "--dataset", "pbmc", "--adata", pbmc_stage_adata, "--out-dir", out,
                          "--checkpoint-dir", tmp_path / "ck", "--likelihood", "poisson"))
    with pytest.raises(InputError, match="--model-path"):
        dfn_cli.run(parse("--task", "sample", "--dataset", "pbmc", "--out-dir", out))
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_cli_main_reports_input_error(capsys, monkeypatch):
    """Through `cellgraph diffusion` (when registered): exit status 2 and one message."""
    from cellgraph import cli

    monkeypatch.setitem(cli.STAGES, "diffusion", ("cellgraph.cli.diffusion", "latent diffusion"))
    assert cli.main(["diffusion", "--task", "train", "--dataset", "nope", "--out-dir", "x"]) == 2
    assert "cellgraph diffusion: error: --dataset 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# checkpoints: a resumed run ends where an uninterrupted one does; a changed config starts over
# ------------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def test_resume_equals_uninterrupted(tmp_path, papalexi):
    import lightning.pytorch as pl

    core = dfn._model_core()
    torch.set_num_threads(1)
    cfg = core.DiffusionConfig.preset("demo", n_genes=299, n_tokens=4, d_model=32, n_layers=1, n_heads=2,
                                      ae_hidden=64, n_set_genes=len(papalexi.vocab)).to_dict()
    idx = np.random.default_rng(0).choice(len(papalexi.labels), 160, replace=False)
    x = torch.from_numpy(papalexi.x[idx])
    x = (x - x.mean(0)) / (x.std(0) + 0.1)
    cond = dfn.conditions(papalexi, papalexi.labels[idx])
    tr, va = slice(0, 128), slice(128, 160)
    sub = lambda s: {k: v[s] for k, v in cond.items()}  # noqa: E731
    settings = dfn.TrainSettings(ae_steps=4, max_steps=6, batch_size=64, lr=2e-3, seed=5)  # 2 steps/epoch

    def go(ck, s=settings, callbacks=()):
        return dfn.fit(cfg, s, x[tr], sub(tr), x[va], sub(va), ck, callbacks=callbacks)

    full, hist_full, sum_full = go(tmp_path / "a")
    assert sum_full["resumed_from"] is None and len(hist_full) == 5  # 2 autoencoder + 3 diffusion epochs

    class StopAt(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 3:  # after the first diffusion epoch was checkpointed
                raise _Stop

    with pytest.raises(_Stop):
        go(tmp_path / "b", callbacks=[StopAt()])
    resumed, hist_res, sum_res = go(tmp_path / "b")
    assert sum_res["resumed_from"] is not None
    assert [r["epoch"] for r in hist_res] == [1, 2, 3, 4, 5]
    assert np.allclose([r["train_loss"] for r in hist_res], [r["train_loss"] for r in hist_full], rtol=1e-5)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    # the EMA weights differ from a fresh model: training really happened
    fresh = core.LatentDiffusion(core.DiffusionConfig(**cfg)).state_dict()
    assert any(not torch.allclose(fresh[k].float(), a[k].float()) for k in a if k in fresh and a[k].is_floating_point())
    # a changed config does not resume: it starts over (and drops the other run's checkpoints)
    changed = dfn.TrainSettings(ae_steps=4, max_steps=6, batch_size=64, lr=1e-3, seed=5)
    _, hist_new, sum_new = go(tmp_path / "b", s=changed)
    assert sum_new["resumed_from"] is None and len(hist_new) == 5
    assert not np.allclose(hist_new[-1]["train_loss"], hist_full[-1]["train_loss"])


def test_gremln_init_of_set_gene_embeddings(tmp_path, papalexi):
    """The switch maps GREmLN gene embeddings onto the set-gene vocabulary and changes the initial weights."""
    vocab = ["<pad>", "<cls>", "IRF1", "STAT1", "OTHER"]
    weight = torch.randn(len(vocab), 16)
    path = tmp_path / "gremln.pt"
    torch.save({"config": {}, "state_dict": {"gene_emb.weight": weight}, "vocab": vocab}, path)
    vec, known, rep = dfn.gremln_vectors(path, papalexi.vocab)
    i, j = papalexi.vocab.index("IRF1"), papalexi.vocab.index("STAT1")
    assert known.sum() == 2 and known[i] and known[j]
    assert torch.equal(vec[i], weight[2]) and torch.equal(vec[j], weight[3]) and vec[~known].abs().sum() == 0
    assert rep["set_genes_initialised"] == sorted(["IRF1", "STAT1"])
    outs = {}
    for flag in ("--gremln-init", "--no-gremln-init"):
        out = tmp_path / flag
        dfn_cli.run(parse("--task", "train", "--dataset", "papalexi", "--adata", PAPALEXI, "--out-dir", out,
                          "--checkpoint-dir", tmp_path / f"ck{flag}", "--max-train-cells", 64, "--ae-steps", 1,
                          "--max-steps", 1, "--folds-run", 1, "--lr", 1e-9, flag, "--gremln-model", path,
                          "--set-features", "none", *TINY))
        outs[flag] = torch.load(out / "model.pt", weights_only=True)
    assert outs["--gremln-init"]["init"]["set_genes_initialised"] == ["IRF1", "STAT1"]
    a, b = outs["--gremln-init"]["state_dict"], outs["--no-gremln-init"]["state_dict"]
    differ = [k for k in a if a[k].is_floating_point() and not torch.allclose(a[k], b[k])]
    assert differ and all("set" in k or "cond" in k for k in differ), differ
    with pytest.raises(InputError, match="--gremln-model"):
        dfn.gremln_vectors(tmp_path / "missing.pt", papalexi.vocab)


def test_parameter_dataclasses_default_to_the_command_line_defaults():
    """The dataclasses built from the default options equal their own defaults (library and CLI agree)."""
    args = parse("--task", "train", "--dataset", "papalexi", "--out-dir", "x")
    assert dfn_cli.model_options(args) == dfn.ModelOptions()
    assert dfn_cli.train_params(args) == dfn.TrainParams()
    assert dfn_cli.sample_params(args) == dfn.SampleParams()
    assert dfn_cli.evaluate_params(args) == dfn.EvaluateParams()
    assert dfn_cli.train_settings(args) == dfn.TrainSettings()
    changed = dfn_cli.evaluate_params(parse("--task", "evaluate", "--dataset", "pbmc", "--out-dir", "x",
                                            "--guidance-scales", 1, 4, "--n-pcs", 5))
    assert changed.guidance_scales == (1.0, 4.0) and changed.n_pcs == 5
