"""Tests of the grn stage (cellgraph.grn) on real PBMC counts and real DoRothEA/TRRUST regulators."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from cellgraph import grn
from cellgraph.cli import main as cli_main
from cellgraph.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo"
COUNTS = DEMO / "expression" / "pbmc3p5k_sorted_counts.h5ad"
NETS = DEMO / "networks" / "human"
TYPES = ["B", "NK"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small real adata in the expression stage's format: two cell types, 300 HVGs, and the
    DoRothEA + TRRUST TF symbols as regulators."""
    import anndata as ad
    import scanpy as sc

    d = tmp_path_factory.mktemp("grn_inputs")
    a = ad.read_h5ad(COUNTS)
    a = a[a.obs["trueLabel"].astype(str).isin(TYPES + ["Monocyte"])].copy()
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=1e6)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=300, flavor="seurat")
    rng = np.random.default_rng(0)
    labels = a.obs["trueLabel"].astype(str).to_numpy()
    split = np.where(rng.random(a.n_obs) < 0.7, "train", "test").astype(object)
    split[labels == "Monocyte"] = "heldout"
    a.obs["split"] = pd.Categorical(split)
    a.obs["trueLabel"] = pd.Categorical(labels)
    a.uns["cellgraph"] = {"heldout_types": ["Monocyte"], "label_key": "trueLabel"}
    adata_path = d / "adata.h5ad"
    a.write_h5ad(adata_path)
    dor = pd.read_csv(NETS / "dorothea_hs_regulons.tsv.gz", sep="\t")
    trr = pd.read_csv(NETS / "trrust_rawdata.human.tsv", sep="\t", header=None)
    regs = sorted(set(dor["tf"].astype(str)) | set(trr[0].astype(str)))
    reg_path = d / "regulators.txt"
    reg_path.write_text("\n".join(regs) + "\n")
    return dict(adata=adata_path, regulators=reg_path, ad=a, regs=regs)


def _args(adata, regulators, out_dir, **kw):
    p = argparse.ArgumentParser()
    grn.configure_parser(p)
    argv = ["--adata", str(adata), "--regulators", str(regulators), "--out-dir", str(out_dir)]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def stage_run(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("grn_run") / "grn"
    # sparse 3' PBMC cells give few MI edges per cell, so metacells of 10 and a looser MI p-value here
    args = _args(inputs["adata"], inputs["regulators"], out, n_bootstraps=3, metacell_k=10, mi_pvalue=1e-3,
                 consolidation_alpha=0.5, threads=2, seed=0)
    grn.run(args)
    return out, args


def test_defaults_match_config():
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["grn"]
    p = argparse.ArgumentParser()
    grn.configure_parser(p)
    a = p.parse_args(["--adata", "x", "--regulators", "y", "--out-dir", "z"])
    for k, v in cfg.items():
        assert getattr(a, k) == v, k


def test_stage_on_real_cell_types(inputs, stage_run):
    out, _ = stage_run
    net = pd.read_csv(out / "networks.tsv.gz", sep="\t")
    assert list(net.columns) == ["cell_type", "regulator", "target", "mi", "pvalue", "count"]
    assert len(net) > 0
    assert set(net["cell_type"]) <= set(TYPES)
    a = inputs["ad"]
    assert set(net["regulator"]) <= set(inputs["regs"]) & set(a.var_names)
    assert set(net["target"]) <= set(a.var_names)
    considered = set(a.var_names[a.var["highly_variable"].to_numpy()]) | (set(inputs["regs"]) & set(a.var_names))
    assert set(net["target"]) <= considered
    assert (net["regulator"] != net["target"]).all()
    assert ((net["count"] >= 1) & (net["count"] <= 3)).all()
    assert (net["pvalue"] < 0.5).all() and (net["mi"] > 0).all()
    assert not net.duplicated(["cell_type", "regulator", "target"]).any()


def test_report_counts_skipped_genes(inputs, stage_run):
    out, args = stage_run
    rep = json.loads((out / "report.json").read_text())
    a = inputs["ad"]
    present = set(inputs["regs"]) & set(a.var_names)
    assert rep["regulators_present"] == len(present)
    assert rep["regulators_absent_from_data"]["count"] == len(inputs["regs"]) - len(present)
    assert rep["heldout_types"] == ["Monocyte"] and sorted(rep["cell_types"]) == TYPES
    genes = a.var["highly_variable"].to_numpy() | a.var_names.isin(list(present))
    for ct in TYPES:
        cells = (a.obs["trueLabel"] == ct).to_numpy() & (a.obs["split"] == "train").to_numpy()
        n_expr = np.asarray((a.X[cells][:, genes] > 0).sum(axis=0)).ravel()
        low = n_expr < args.min_cells_expressed
        is_reg = a.var_names[genes].isin(list(present))
        e = rep["cell_types"][ct]
        assert e["train_cells"] == cells.sum()
        assert e["skipped_not_expressed"]["genes"]["count"] == int((low & ~is_reg).sum())
        assert e["skipped_not_expressed"]["regulators"]["count"] == int((low & is_reg).sum())
        assert e["genes"] == int((~low).sum()) and e["regulators"] == int((~low & is_reg).sum())


def test_consensus_follows_binomial_recurrence(stage_run):
    out, args = stage_run
    net = pd.read_csv(out / "networks.tsv.gz", sep="\t")
    cons = pd.read_csv(out / "consensus.tsv", sep="\t")
    rep = json.loads((out / "report.json").read_text())
    assert list(cons.columns) == ["regulator", "target", "n_types", "pvalue", "qvalue"]
    p = rep["consensus"]["p"]
    assert p == pytest.approx(np.mean(list(rep["consensus"]["densities"].values())))
    n_types = net.groupby(["regulator", "target"]).size()
    for row in cons.itertuples():
        assert row.n_types == n_types[(row.regulator, row.target)]
        assert row.pvalue == pytest.approx(binom.sf(row.n_types - 1, 2, p), rel=1e-5)
        assert row.qvalue <= args.consensus_fdr
    # an edge found in every type is the most significant; every kept edge is in >= 1 type
    assert (cons["n_types"] >= 1).all()


def test_stage_is_deterministic(inputs, stage_run, tmp_path):
    out, _ = stage_run
    args = _args(inputs["adata"], inputs["regulators"], tmp_path / "grn", n_bootstraps=3, metacell_k=10,
                 mi_pvalue=1e-3, consolidation_alpha=0.5, threads=1, seed=0,
                 cache_dir=tmp_path / "cache")
    grn.run(args)
    for name in ["networks.tsv.gz", "consensus.tsv", "report.json"]:
        a, b = (out / name).read_bytes(), (tmp_path / "grn" / name).read_bytes()
        if name == "report.json":  # the cache dir and thread count differ by design
            a, b = (json.loads(x) for x in (a, b))
            for d in (a, b):
                d["params"].pop("cache_dir"), d["params"].pop("threads")
        assert a == b, name
    with gzip.open(out / "networks.tsv.gz") as fh:
        assert fh.readline().decode().startswith("cell_type\tregulator")


def test_missing_regulators_file(inputs, tmp_path):
    out = tmp_path / "grn"
    with pytest.raises(InputError, match="regulators"):
        grn.run(_args(inputs["adata"], tmp_path / "missing.txt", out))
    assert not out.exists()


def test_no_regulator_present(inputs, tmp_path):
    reg = tmp_path / "regs.txt"
    reg.write_text("NOT_A_GENE_1\nNOT_A_GENE_2\n")
    out = tmp_path / "grn"
    with pytest.raises(InputError, match="none of the 2 regulators"):
        grn.run(_args(inputs["adata"], reg, out))
    assert not out.exists()


def test_adata_without_split(inputs, tmp_path, capsys):
    a = inputs["ad"].copy()
    del a.obs["split"]
    path = tmp_path / "nosplit.h5ad"
    a.write_h5ad(path)
    out = tmp_path / "grn"
    with pytest.raises(InputError, match="split"):
        grn.run(_args(path, inputs["regulators"], out))
    assert not out.exists()
    # the command line turns it into exit status 2 and one message
    rc = cli_main(["grn", "--adata", str(path), "--regulators", str(inputs["regulators"]), "--out-dir", str(out)])
    assert rc == 2 and "obs has no 'split'" in capsys.readouterr().err
    assert not out.exists()


def test_consensus_keeps_recurrent_edges_only():
    """Five types over 20 regulators x 200 genes: a planted edge in all five types is kept, random
    singleton edges (density ~2.5%) are not; p-values follow Binomial(T, mean density)."""
    rng = np.random.default_rng(0)
    regs = [f"R{i}" for i in range(20)]
    genes = regs + [f"G{i}" for i in range(180)]
    rows = []
    for ct in "abcde":
        for r in regs:
            for t in rng.choice(genes, size=5, replace=False):
                if t != r:
                    rows.append((ct, r, t))
        rows.append((ct, "R0", "G7"))  # planted recurrent edge
    net = pd.DataFrame(rows, columns=["cell_type", "regulator", "target"]).drop_duplicates()
    universes = {ct: (regs, genes) for ct in "abcde"}
    cons, info = grn.consensus(net, universes, fdr=0.05)
    assert ("R0", "G7") in set(zip(cons["regulator"], cons["target"]))
    assert (cons["n_types"] >= 3).all()
    dens = [(net["cell_type"] == ct).sum() / (20 * 199) for ct in "abcde"]
    assert info["p"] == pytest.approx(np.mean(dens))
    assert info["n_possible"] == 20 * 199
    top = cons.iloc[0]
    assert top["pvalue"] == pytest.approx(binom.sf(top["n_types"] - 1, 5, info["p"]))
    assert (cons["qvalue"] <= 0.05).all() and (cons["qvalue"] >= cons["pvalue"]).all()


def test_permutation_control_finds_fewer_edges_than_real_data(inputs, tmp_path):
    """Single cells at the default MI p-value: the gene-permuted control (every gene-gene dependence
    removed, marginals kept) finds far fewer edges than the real data, and the report adds up."""
    out = tmp_path / "grn"
    grn.run(_args(inputs["adata"], inputs["regulators"], out, n_bootstraps=50, metacell_k=0, mi_pvalue=1e-4,
                  threads=2, seed=0))
    rep = json.loads((out / "report.json").read_text())
    net = pd.read_csv(out / "networks.tsv.gz", sep="\t")
    control = rep["permutation_control"]
    per_type = [e["permutation_control"]["edges"] for e in rep["cell_types"].values() if "permutation_control" in e]
    assert control["edges"] == sum(per_type) and control["real_edges"] == len(net)
    assert len(net) > 0
    assert control["empirical_fdr"] == pytest.approx(min(1.0, control["edges"] / len(net)))
    assert control["edges"] < 0.5 * len(net)


def test_no_edge_in_any_type_is_an_error_and_writes_nothing(inputs, tmp_path, capsys):
    """A run in which nothing survives consolidation cannot feed the later stages: one clear error."""
    out = tmp_path / "grn"
    code = cli_main(["grn", "--adata", str(inputs["adata"]), "--regulators", str(inputs["regulators"]),
                 "--out-dir", str(out), "--n-bootstraps", "2", "--mi-pvalue", "1e-12", "--metacell-k", "0",
                 "--no-permutation-control"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no edge survived" in err and "--mi-pvalue 1e-12" in err
    assert not (out / "networks.tsv.gz").exists()
