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
from cellgraph.pp.expression import SPLITS, choose_heldout_types, preprocess

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
    dropped += qc["cells_dropped_min_cells_per_type"]
    # the demo: symbols, every type large enough (min_cells_per_type 20), nothing dropped for ids
    assert qc["small_types_dropped"] == {} and qc["cells_dropped_min_cells_per_type"] == 0
    assert sorted(adata.obs[LABEL].unique()) == report["input"]["cell_types"] and len(report["input"]["cell_types"]) == 7
    ids = report["input"]["gene_ids"]
    assert ids["type"] == "symbol" and ids["genes_out"] == ids["genes_in"] == raw.n_vars
    assert 0.85 < ids["fraction_mapped"] < 0.95 and report["input"]["counts_from"] == "X"
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
    elif kind == "random_ids":
        a.var_names = [f"gene{i:05d}x" for i in range(a.n_vars)]
    elif kind == "mouse_ids":
        a.var_names = [f"ENSMUSG{i:011d}" for i in range(a.n_vars)]
    elif kind == "layer_nan":
        a.layers["counts"] = a.X.copy()
        a.layers["counts"].data[:3] = np.nan
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
    ("random_ids", "random_ids", [], ["bad.h5ad", "symbol ids", "0 of", "(0.0%)", "at least 50%"]),
    ("mouse_ids", "mouse_ids", [], ["bad.h5ad", "ensembl ids", "(0.0%)", "--min-mapped-fraction"]),
    ("missing_layer", None, ["--counts-layer", "counts"], ["no layer 'counts'", "scminer_log2cpm"]),
    ("layer_nan", "layer_nan", ["--counts-layer", "counts"], ["layers['counts'] has 3 NaN", "bad.h5ad"]),
    ("all_types_small", None, ["--min-cells-per-type", "1000"], ["every cell type", "--min-cells-per-type"]),
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
    from cellgraph.cli.expression import run

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


# --------------------------------------------------------------------------------------------------
# Gene id types, counts layer, small cell types (issue 17)
# --------------------------------------------------------------------------------------------------

IDMAP = REPO / "resources/demo/networks/idmap/hs_ensg_entrez_symbol.tsv"


@pytest.fixture(scope="module")
def idmap():
    return pd.read_csv(IDMAP, sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def id_files(subset_path, idmap, tmp_path_factory):
    """The subset restricted to the symbols with exactly one ENSG (and one Entrez) id that maps back only to them,
    written three times: with symbols, with Ensembl ids (every other one with a version suffix) and with Entrez
    ids. The Ensembl file gets 7 extra real gene columns whose ids must be dropped: 3 unknown ids, 2 ids of
    several symbols and 2 ids of one symbol (a collision); the Entrez file 6 unknown ids."""
    sub = ad.read_h5ad(subset_path)
    per_sym = idmap.groupby("symbol").agg(n_ensg=("ensg", "nunique"), ensg=("ensg", "first"),
                                          n_entrez=("entrez", "nunique"), entrez=("entrez", "first"))
    ensg_syms = idmap.groupby("ensg")["symbol"].nunique()
    entrez_syms = idmap.groupby("entrez")["symbol"].nunique()
    ok = per_sym[(per_sym.n_ensg == 1) & (per_sym.n_entrez == 1)
                 & per_sym.ensg.map(ensg_syms).eq(1) & per_sym.entrez.map(entrez_syms).eq(1)]
    genes = [g for g in sub.var_names if g in ok.index]
    known = set(idmap["symbol"])
    spare = [g for g in sub.var_names if g not in known][:7]  # real columns, ids replaced below
    assert len(genes) > 5000 and len(spare) == 7
    amb = ensg_syms[ensg_syms > 1].index[:2].tolist()
    multi = per_sym[(per_sym.n_ensg >= 2) & ~per_sym.index.isin(sub.var_names)].index[0]
    two = idmap.loc[idmap.symbol == multi, "ensg"].unique()[:2].tolist()
    extra_ens = ["ENSG99999999991", "ENSG99999999992.3", "ENSG99999999993"] + amb + two
    out = tmp_path_factory.mktemp("ids")
    paths = {}
    sym = sub[:, genes].copy()
    sym.write_h5ad(out / "symbol.h5ad")
    paths["symbol"] = out / "symbol.h5ad"
    both = sub[:, genes + spare].copy()
    ensg_of, entrez_of = ok["ensg"].to_dict(), ok["entrez"].to_dict()
    both.var_names = [ensg_of[g] + (".12" if i % 2 else "") for i, g in enumerate(genes)] + extra_ens
    both.write_h5ad(out / "ensembl.h5ad")
    paths["ensembl"] = out / "ensembl.h5ad"
    # Entrez ids and symbols are one-to-one in the map: the 6 extra Entrez ids are unknown ones
    extra_ent = [str(999999990 + i) for i in range(6)]
    ent = sub[:, genes + spare[:6]].copy()
    ent.var_names = [entrez_of[g] for g in genes] + extra_ent
    ent.write_h5ad(out / "entrez.h5ad")
    paths["entrez"] = out / "entrez.h5ad"
    return paths, genes, {g: ensg_of[g] for g in genes}


ID_KW = {"heldout_types": ["NK"], "n_top_genes": 300}


@pytest.fixture(scope="module")
def symbol_run(id_files):
    return preprocess(id_files[0]["symbol"], **ID_KW)


@pytest.mark.parametrize("kind", ["ensembl", "entrez"])
def test_gene_ids_mapped_to_symbols(kind, id_files, symbol_run):
    paths, genes, ensg_of = id_files
    a_sym, r_sym = symbol_run
    a, r = preprocess(paths[kind], **ID_KW)
    ids = r["input"]["gene_ids"]
    assert ids["detected"] == ids["type"] == kind and ids["requested"] == "auto"
    if kind == "ensembl":
        assert (ids["unmapped"], ids["ambiguous"], ids["collisions"]) == (3, 2, 2)
        assert ids["genes_in"] == len(genes) + 7
    else:
        assert (ids["unmapped"], ids["ambiguous"], ids["collisions"]) == (6, 0, 0)
        assert ids["genes_in"] == len(genes) + 6
    assert ids["genes_out"] == len(genes)
    # the same genes, counts, splits and clusters as the symbol input
    assert list(a.var_names) == list(a_sym.var_names)
    assert (a.obs["split"] == a_sym.obs["split"]).all() and (a.obs["leiden"] == a_sym.obs["leiden"]).all()
    assert abs(a.layers["counts"] - a_sym.layers["counts"]).max() == 0
    assert r["qc"]["genes_out"] == r_sym["qc"]["genes_out"]
    # the original id is kept
    if kind == "ensembl":
        assert [g.split(".")[0] for g in a.var["gene_id"]] == [ensg_of[s] for s in a.var_names]
        assert any(g.endswith(".12") for g in a.var["gene_id"])
    assert "gene_id" not in a_sym.var.columns
    assert r_sym["input"]["gene_ids"]["type"] == "symbol"


def test_gene_id_type_forced_symbol_on_ensembl_ids_fails(id_files):
    with pytest.raises(InputError) as err:
        preprocess(id_files[0]["ensembl"], gene_id_type="symbol", **ID_KW)
    assert "symbol ids" in str(err.value) and "0.0%" in str(err.value)


@pytest.fixture(scope="module")
def layer_path(subset_path, tmp_path_factory):
    """The subset in the scanpy layout: raw counts in layers["counts"], log-normalised X."""
    import scanpy as sc

    a = ad.read_h5ad(subset_path)
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    path = tmp_path_factory.mktemp("layer") / "layer.h5ad"
    a.write_h5ad(path)
    return path


def test_counts_layer_same_result_as_counts_in_x(layer_path, subset_path, tmp_path):
    out = tmp_path / "out"
    rc = cli.main(["expression", "--input", str(layer_path), "--out-dir", str(out), "--counts-layer", "counts",
                   "--heldout-types", "NK", "--n-top-genes", "300"])
    assert rc == 0
    a = ad.read_h5ad(out / "adata.h5ad")
    report = json.loads((out / "report.json").read_text())
    b, _ = preprocess(subset_path, **ID_KW)
    assert report["input"]["counts_from"] == "layers['counts']"
    assert report["input"]["layers_dropped"] == ["scminer_log2cpm"]
    assert list(a.layers.keys()) == ["counts"]
    assert list(a.var_names) == list(b.var_names) and list(a.obs_names) == list(b.obs_names)
    assert abs(a.layers["counts"] - b.layers["counts"]).max() == 0
    assert abs(a.X - b.X).max() == 0
    assert (a.obs["split"] == b.obs["split"]).all()
    # without the option the normalised X is refused as counts
    with pytest.raises(InputError, match="non-integer"):
        preprocess(layer_path, **ID_KW)


@pytest.fixture(scope="module")
def small_type_path(raw, subset_path, tmp_path_factory):
    """The subset with B shrunk to 5 cells that pass the cell QC."""
    a = ad.read_h5ad(subset_path)
    totals = np.asarray(a.X.sum(axis=1)).ravel()
    good = (totals >= 500) & (totals <= 20000) & (a.X.getnnz(axis=1) >= 200)
    is_b = (a.obs[LABEL] == "B").to_numpy()
    keep = ~is_b
    keep[np.flatnonzero(is_b & good)[:5]] = True
    path = tmp_path_factory.mktemp("small") / "small.h5ad"
    a[keep].copy().write_h5ad(path)
    return path


def test_small_type_dropped_and_reported(small_type_path, caplog):
    with caplog.at_level("WARNING", logger="cellgraph.pp.expression"):
        a, r = preprocess(small_type_path, **ID_KW)
    assert r["qc"]["small_types_dropped"] == {"B": 5}
    assert r["qc"]["cells_dropped_min_cells_per_type"] == 5
    assert "B" in r["input"]["cell_types"] and "B" not in set(a.obs[LABEL].astype(str))
    qc = r["qc"]
    assert qc["cells_out"] == a.n_obs
    assert qc["cells_out"] + 5 + sum(qc[f"cells_dropped_{k}"] for k in ("min_counts", "max_counts", "min_genes")) \
        == qc["cells_in"]
    assert "'B': 5" in caplog.text
    for t, s in r["splits"]["per_type"].items():
        if t != "NK":
            assert s["train"] > 0 and s["val"] > 0 and s["test"] > 0, t
    # without the filter the 5 B cells stay and are too few for every split
    b, rb = preprocess(small_type_path, min_cells_per_type=0, **ID_KW)
    assert int((b.obs[LABEL] == "B").sum()) == 5 and rb["qc"]["small_types_dropped"] == {}
    assert "B" in rb["splits"]["types_missing_from_splits"]
    # an explicit held-out type that is too small is no held-out set
    with pytest.raises(InputError, match="every --heldout-types type"):
        preprocess(small_type_path, heldout_types=["B"], n_top_genes=300)


def test_type_removed_by_cell_qc_is_reported(subset_path, tmp_path, caplog):
    """A type whose every cell fails a cell filter (B at 100x depth > max_counts) is named and counted."""
    a = ad.read_h5ad(subset_path)
    is_b = (a.obs[LABEL] == "B").to_numpy()
    x = a.X.tocsr().copy()
    x[np.flatnonzero(is_b)] = x[np.flatnonzero(is_b)] * 100
    a.X = x
    path = tmp_path / "deep_b.h5ad"
    a.write_h5ad(path)
    with caplog.at_level("WARNING", logger="cellgraph.pp.expression"):
        out, r = preprocess(path, min_cells_per_type=0, **ID_KW)
    assert r["qc"]["types_removed_by_qc"] == {"B": int(is_b.sum())}
    assert r["qc"]["cells_dropped_by_type"]["max_counts"]["B"] == int(is_b.sum())
    assert "B" not in set(out.obs[LABEL].astype(str)) and "'B': 40" in caplog.text
    with pytest.raises(InputError, match=r"every --heldout-types type \['B'\].*'B': 0.*--max-counts"):
        preprocess(path, heldout_types=["B"], n_top_genes=300)
