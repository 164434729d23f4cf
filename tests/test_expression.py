"""Tests of the expression stage on the real PBMC counts (resources/demo)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellgraph import cli
from cellgraph.errors import InputError
from cellgraph.expression import SPLITS, choose_heldout_types, preprocess

REPO = Path(__file__).resolve().parents[1]
COUNTS = REPO / "resources/demo/expression/pbmc3p5k_sorted_counts.h5ad"
LABEL = "trueLabel"


@pytest.fixture(scope="module")
def raw():
    return ad.read_h5ad(COUNTS)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One CLI run on all 3,500 real cells with the config defaults and seed 0."""
    out = tmp_path_factory.mktemp("expr_full")
    rc = cli.main(["expression", "--input", str(COUNTS), "--seed", "0", "--out-dir", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    return ad.read_h5ad(out / "adata.h5ad"), report


@pytest.fixture(scope="module")
def subset_path(raw, tmp_path_factory):
    """A small real subset: the first 40 cells of each type, all genes, raw counts."""
    labels = raw.obs[LABEL].astype(str).to_numpy()
    idx = np.concatenate([np.flatnonzero(labels == t)[:40] for t in sorted(set(labels))])
    sub = raw[np.sort(idx)].copy()
    path = tmp_path_factory.mktemp("subset") / "subset.h5ad"
    sub.write_h5ad(path)
    return path


# --------------------------------------------------------------------------------------------------
# Full real run
# --------------------------------------------------------------------------------------------------


def test_qc_counts_add_up(full_run, raw):
    adata, report = full_run
    qc = report["qc"]
    dropped = qc["cells_dropped_min_counts"] + qc["cells_dropped_max_counts"] + qc["cells_dropped_min_genes"]
    assert qc["cells_in"] == raw.n_obs
    assert qc["cells_out"] + dropped == qc["cells_in"]
    assert qc["cells_out"] == adata.n_obs
    assert qc["genes_out"] + qc["genes_dropped_min_cells"] == qc["genes_in"] == raw.n_vars
    assert qc["genes_out"] == adata.n_vars
    # independent recount of the first filter on the raw counts
    totals = np.asarray(raw.X.sum(axis=1)).ravel()
    assert qc["cells_dropped_min_counts"] == int((totals < report["params"]["min_counts"]).sum())
    # the per-type drop counts add up to the per-filter totals
    for name in ("min_counts", "max_counts", "min_genes"):
        assert sum(qc["cells_dropped_by_type"][name].values()) == qc[f"cells_dropped_{name}"]
    # every kept cell/gene passes every filter
    counts = adata.layers["counts"]
    kept_totals = np.asarray(counts.sum(axis=1)).ravel()
    assert kept_totals.min() >= 500 and kept_totals.max() <= 20000
    assert counts.getnnz(axis=1).min() >= 200
    assert counts.getnnz(axis=0).min() >= 10
    assert report["input"]["layers_dropped"] == ["scminer_log2cpm"]
    assert list(adata.layers.keys()) == ["counts"]


def test_counts_layer_and_normalised_x(full_run, raw):
    adata, report = full_run
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert sp.isspmatrix_csr(adata.layers["counts"]) and adata.layers["counts"].dtype == np.float32
    # raw counts are the input's, for the kept cells and genes
    expect = raw[adata.obs_names, adata.var_names].X
    assert (abs(adata.layers["counts"] - expect)).max() == 0
    # expm1(X) rows sum to target_sum
    sums = np.asarray(adata.X.expm1().sum(axis=1)).ravel()
    np.testing.assert_allclose(sums, 1e6, rtol=1e-4)
    # X is the log of counts scaled per cell: proportional to counts within a row
    row = 7
    c = adata.layers["counts"][row].toarray().ravel()
    x = np.expm1(adata.X[row].toarray().ravel().astype(np.float64))
    np.testing.assert_allclose(x, c / c.sum() * 1e6, rtol=1e-4)


def test_hvg_and_leiden(full_run):
    from sklearn.metrics import adjusted_rand_score

    adata, report = full_run
    assert adata.var["highly_variable"].dtype == bool
    assert int(adata.var["highly_variable"].sum()) == report["hvg"]["n_hvg"] == 1000
    assert isinstance(adata.obs["leiden"].dtype, pd.CategoricalDtype)
    n_clusters = adata.obs["leiden"].nunique()
    assert n_clusters == report["leiden"]["n_clusters"] >= 2
    assert sum(report["leiden"]["cluster_sizes"].values()) == adata.n_obs
    # on FACS-sorted PBMCs the clusters must carry cell-type signal (B, monocytes, NK separate well)
    assert adjusted_rand_score(adata.obs[LABEL], adata.obs["leiden"]) > 0.3


def test_splits_full(full_run):
    adata, report = full_run
    labels = adata.obs[LABEL].astype(str)
    split = adata.obs["split"].astype(str)
    assert isinstance(adata.obs[LABEL].dtype, pd.CategoricalDtype)
    assert set(split) <= set(SPLITS)
    assert sum(report["splits"]["sizes"].values()) == adata.n_obs
    heldout = list(adata.uns["cellgraph"]["heldout_types"])
    assert adata.uns["cellgraph"]["label_key"] == LABEL
    assert heldout == report["splits"]["heldout_types"]
    assert len(heldout) == max(1, round(0.15 * labels.nunique()))
    is_held = labels.isin(heldout)
    assert (split[is_held] == "heldout").all()
    assert (split[~is_held] != "heldout").all()
    for t in sorted(set(labels) - set(heldout)):
        s = split[labels == t]
        n = len(s)
        for name, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
            assert abs((s == name).sum() / n - frac) < 0.02, (t, name)
        assert report["splits"]["per_type"][t]["train"] == int((s == "train").sum())


# --------------------------------------------------------------------------------------------------
# Subset runs
# --------------------------------------------------------------------------------------------------


def test_same_seed_same_split_other_seed_differs(subset_path):
    a0, _ = preprocess(subset_path, seed=0, heldout_types=["NK"])
    a0b, _ = preprocess(subset_path, seed=0, heldout_types=["NK"])
    a1, _ = preprocess(subset_path, seed=1, heldout_types=["NK"])
    assert (a0.obs["split"] == a0b.obs["split"]).all()
    assert (a0.obs["leiden"] == a0b.obs["leiden"]).all()
    assert not (a0.obs["split"] == a1.obs["split"]).all()
    # the drawn held-out type depends on the seed and is reproducible
    types = sorted(a0.obs[LABEL].astype(str).unique())
    draws = [tuple(choose_heldout_types(types, 0.15, [], s)) for s in range(10)]
    assert draws == [tuple(choose_heldout_types(types, 0.15, [], s)) for s in range(10)]
    assert len(set(draws)) > 1


def test_explicit_heldout_types(subset_path, tmp_path):
    out = tmp_path / "out"
    rc = cli.main(["expression", "--input", str(subset_path), "--out-dir", str(out),
                   "--heldout-types", "B", "NK", "--n-top-genes", "300"])
    assert rc == 0
    adata = ad.read_h5ad(out / "adata.h5ad")
    assert list(adata.uns["cellgraph"]["heldout_types"]) == ["B", "NK"]
    held = adata.obs[LABEL].isin(["B", "NK"])
    assert (adata.obs["split"][held] == "heldout").all()
    assert set(adata.obs["split"][~held]) == {"train", "val", "test"}
    assert int(adata.var["highly_variable"].sum()) == 300


# --------------------------------------------------------------------------------------------------
# Bad input: InputError, exit 2, nothing written
# --------------------------------------------------------------------------------------------------


def _write_bad(src: Path, dst: Path, kind: str) -> Path:
    a = ad.read_h5ad(src)
    if kind == "no_label":
        del a.obs[LABEL]
    elif kind == "nan":
        a.X.data[:3] = np.nan
    elif kind == "negative":
        a.X.data[:5] = -1.0
    elif kind == "non_integer":
        a.X.data[:4] += 0.5
    a.write_h5ad(dst)
    return dst


BAD_CASES = [
    # (id, bad file kind or None, extra flags, strings expected in the message)
    ("missing_file", "missing", [], ["not found", "nope.h5ad"]),
    ("no_label", "no_label", [], ["'trueLabel'", "cellType"]),
    ("nan", "nan", [], ["3 NaN", "bad.h5ad"]),
    ("negative", "negative", [], ["5 negative", "bad.h5ad"]),
    ("non_integer", "non_integer", [], ["4 non-integer", "raw counts"]),
    ("qc_min_counts", None, ["--min-counts", "100000", "--max-counts", "200000"], ["min_counts", "every cell"]),
    ("qc_max_counts", None, ["--min-counts", "0", "--max-counts", "10"], ["max_counts", "every cell"]),
    ("qc_min_genes", None, ["--min-genes", "50000"], ["min_genes", "every cell"]),
    ("qc_min_cells", None, ["--min-cells", "100000"], ["min_cells", "every gene"]),
    ("unknown_type", None, ["--heldout-types", "B", "Platelet"], ["Platelet", "--heldout-types"]),
    ("all_types_heldout", None, ["--heldout-types", "B", "CD4TCM", "CD4TN", "CD4Treg", "CD8TN", "Monocyte", "NK"],
     ["no cell type"]),
    ("val_zero", None, ["--val-fraction", "0"], ["--val-fraction", "empty"]),
    ("fractions_sum", None, ["--val-fraction", "0.5", "--test-fraction", "0.5"], ["--test-fraction", "empty"]),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input(case, subset_path, tmp_path, capsys):
    _, kind, flags, expected = case
    if kind is None:
        src = subset_path
    elif kind == "missing":
        src = tmp_path / "nope.h5ad"
    else:
        src = _write_bad(subset_path, tmp_path / "bad.h5ad", kind)
    out = tmp_path / "out"
    argv = ["expression", "--input", str(src), "--out-dir", str(out), *flags]

    parser = cli.build_parser(argv)
    args = parser.parse_args(argv)
    from cellgraph.expression import run

    with pytest.raises(InputError) as err:
        run(args)
    for s in expected:
        assert s in str(err.value), (s, str(err.value))
    assert not out.exists()

    capsys.readouterr()
    assert cli.main(argv) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("cellgraph expression: error:")
    assert expected[0] in stderr
    assert not out.exists()
