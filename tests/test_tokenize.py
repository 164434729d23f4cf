"""Tests of the tokenize stage (cellgraph.pp.tokenize, its command line cellgraph.cli.tokenize) and the token batches (cellgraph.io.shards).

Inputs are built here from real data, because the upstream stages are written in parallel:

- the adata: the vendored PBMC counts (resources/demo) processed as docs/design.md section 2 says
  (normalize_total 1e6, log1p, 1000 HVGs, a seeded train/val/test split with one held-out type);
- a STAND-IN for the ARACNe output ``networks.tsv.gz``: the real DoRothEA A-C regulons among the adata's
  genes (targets restricted to HVGs and regulators, as the grn stage does), a seeded random 60% of
  them per cell type, with seeded random ``mi``/``pvalue``/``count``. It has the shape of the grn output,
  not its biology.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

from cellgraph import cli
from cellgraph.cli import tokenize as tk_cli
from cellgraph.pp import tokenize as tk
from cellgraph.io.shards import TokenDataset, bin_special_ids, collate, read_vocab
from cellgraph.errors import InputError
from cellgraph.graphs.spectral import normalized_laplacian

REPO = Path(__file__).resolve().parents[1]
COUNTS = REPO / "resources/demo/expression/pbmc3p5k_sorted_counts.h5ad"
DOROTHEA = REPO / "resources/demo/networks/human/dorothea_hs_regulons.tsv.gz"
HELDOUT = "CD4Treg"


# --------------------------------------------------------------------------------------------------
# Stand-in inputs from real data
# --------------------------------------------------------------------------------------------------


def make_adata(n_per_type: int | None = None, seed: int = 0) -> ad.AnnData:
    """Real PBMC counts processed like the expression stage (design.md section 2)."""
    a = ad.read_h5ad(COUNTS)
    rng = np.random.default_rng(seed)
    if n_per_type is not None:
        keep = np.concatenate([
            rng.choice(np.flatnonzero(a.obs["trueLabel"].to_numpy() == t), n_per_type, replace=False)
            for t in sorted(a.obs["trueLabel"].unique())
        ])
        a = a[np.sort(keep)].copy()
    sc.pp.filter_genes(a, min_cells=10)
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=1e6)
    sc.pp.log1p(a)
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    sc.pp.highly_variable_genes(a, n_top_genes=1000, flavor="seurat")
    labels = a.obs["trueLabel"].astype(str).to_numpy()
    split = np.empty(a.n_obs, dtype=object)
    for t in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(labels == t))
        if t == HELDOUT:
            split[idx] = "heldout"
            continue
        n_val, n_test = int(0.1 * idx.size), int(0.2 * idx.size)
        split[idx[:n_val]] = "val"
        split[idx[n_val : n_val + n_test]] = "test"
        split[idx[n_val + n_test :]] = "train"
    a.obs["split"] = pd.Categorical(split)
    a.obs["trueLabel"] = a.obs["trueLabel"].astype(str).astype("category")
    a.uns["cellgraph"] = {"label_key": "trueLabel", "heldout_types": [HELDOUT]}
    return a


def make_networks(a: ad.AnnData, seed: int = 0, keep_fraction: float = 0.6) -> pd.DataFrame:
    """STAND-IN for grn networks.tsv.gz: real DoRothEA A-C edges, random per-type subsets and statistics."""
    d = pd.read_csv(DOROTHEA, sep="\t")
    d = d[d["confidence"].isin(["A", "B", "C"])]
    genes = set(a.var_names)
    regulators = set(d["tf"]) & genes
    targets = set(a.var_names[a.var["highly_variable"].to_numpy()]) | regulators
    d = d[d["tf"].isin(regulators) & d["target"].isin(targets) & (d["tf"] != d["target"])]
    d = d.drop_duplicates(["tf", "target"]).sort_values(["tf", "target"])
    rng = np.random.default_rng(seed)
    frames = []
    for t in sorted(set(a.obs["trueLabel"].astype(str)) - {HELDOUT}):
        sub = d[rng.random(len(d)) < keep_fraction]
        n = len(sub)
        frames.append(pd.DataFrame({
            "cell_type": t, "source": sub["tf"].to_numpy(), "target": sub["target"].to_numpy(),
            "mi": rng.uniform(0.05, 0.5, n), "pvalue": 10 ** rng.uniform(-8, np.log10(0.05), n),
            "count": rng.integers(40, 51, n),
        }))
    return pd.concat(frames, ignore_index=True)


# the ARACNe-per-type tokenization these tests were written for: shared tie bins, neighbours, no hidden edges,
# 100 bins and at most 128 tokens per cell
ARACNE_MODE = {"graph": "aracne", "tie_break": "shared", "neighbours": True, "edge_holdout_fraction": 0.0,
               "n_top_genes": 1000, "n_bootstraps": 50, "n_bins": 100, "max_seq_len": 128}


def tokenize_args(adata_path, networks_path, out_dir, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    tk_cli.configure_parser(p)
    argv = ["--adata", str(adata_path), "--networks", str(networks_path), "--out-dir", str(out_dir)]
    for k, v in {**ARACNE_MODE, **kw}.items():
        if isinstance(v, bool):
            argv.append(f"--{'' if v else 'no-'}{k.replace('_', '-')}")
        elif isinstance(v, (list, tuple)):
            argv += [f"--{k.replace('_', '-')}", *map(str, v)]
        else:
            argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """All 3,500 real cells tokenized once by the stage; returns (adata, networks, out_dir, seconds)."""
    d = tmp_path_factory.mktemp("tok_full")
    a = make_adata()
    net = make_networks(a)
    a.write_h5ad(d / "adata.h5ad")
    net.to_csv(d / "networks.tsv.gz", sep="\t", index=False)
    t0 = time.perf_counter()
    tk_cli.run(tokenize_args(d / "adata.h5ad", d / "networks.tsv.gz", d / "tokens", seed=0))
    return a, net, d / "tokens", time.perf_counter() - t0


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 40-cells-per-type adata and its stand-in networks on disk."""
    d = tmp_path_factory.mktemp("tok_small")
    a = make_adata(n_per_type=40, seed=1)
    net = make_networks(a, seed=1)
    a.write_h5ad(d / "adata.h5ad")
    net.to_csv(d / "networks.tsv.gz", sep="\t", index=False)
    return a, net, d


def load(out_dir, split) -> TokenDataset:
    return TokenDataset(Path(out_dir) / f"{split}.npz")


def vocab_genes(out_dir) -> np.ndarray:
    return np.asarray(read_vocab(Path(out_dir) / "vocab.tsv"))


def cell_expression(a: ad.AnnData, obs_name: str, genes) -> np.ndarray:
    row = a.obs_names.get_loc(obs_name)
    return np.asarray(a[:, list(genes)].X[row].toarray()).ravel()


def undirected(df: pd.DataFrame) -> dict[frozenset, float]:
    """{frozenset({a, b}): max mi} of a networks table."""
    out: dict[frozenset, float] = {}
    for r, t, mi in zip(df["source"], df["target"], df["mi"]):
        k = frozenset((r, t))
        out[k] = max(out.get(k, 0.0), mi)
    return out


# --------------------------------------------------------------------------------------------------
# Bins
# --------------------------------------------------------------------------------------------------


def test_expression_bins_synthetic_ties_and_range():
    v = np.array([0.0, 3.0, 1.0, 1.0, 0.0, 7.5, 2.0])
    b = tk.expression_bins(v, n_bins=10)
    # expressed values 3, 1, 1, 7.5, 2 (m = 5); empirical CDF 4/5, 2/5, 2/5, 5/5, 3/5 -> ceil(10 * F)
    assert b.tolist() == [0, 8, 4, 4, 0, 10, 6]
    assert b.dtype == np.int16
    with pytest.raises(ValueError):
        tk.expression_bins(v, n_bins=1)


def test_bins_on_real_cells(full):
    a, _, out, _ = full
    genes = vocab_genes(out)
    ds = load(out, "train")
    rng = np.random.default_rng(0)
    for i in rng.choice(len(ds), 20, replace=False):
        it = ds[i]
        x_all = cell_expression(a, ds.obs_names[i], genes[2:])  # all vocab genes of that cell
        x_tok = x_all[it["gene_ids"] - 2]
        np.testing.assert_allclose(it["expr"], x_tok, rtol=1e-6)
        assert np.array_equal(it["bins"] == 0, x_tok == 0)  # bin 0 exactly for zero expression
        expressed = it["bins"][x_tok > 0]
        assert expressed.min() >= 1 and expressed.max() == ds.n_bins  # top gene is always selected
        order = np.argsort(x_tok, kind="stable")
        assert np.all(np.diff(it["bins"][order].astype(int)) >= 0)  # monotone in expression
        # bins are quantiles among ALL the cell's expressed vocab genes, not only the selected ones
        m = int((x_all > 0).sum())
        top = x_tok.max()
        assert int(it["bins"][x_tok == top][0]) == int(np.ceil(ds.n_bins * (x_all <= top)[x_all > 0].sum() / m))
        low = x_tok[x_tok > 0].min()
        assert int(it["bins"][x_tok == low][0]) == int(np.ceil(ds.n_bins * ((x_all > 0) & (x_all <= low)).sum() / m))


# --------------------------------------------------------------------------------------------------
# Gene selection and subgraphs (train cells: their type's network)
# --------------------------------------------------------------------------------------------------


def test_selection_capped_by_expression_with_neighbours(full):
    a, net, out, _ = full
    genes = vocab_genes(out)
    ds = load(out, "train")
    report = json.loads((out / "report.json").read_text())
    neighbours = {}
    for t, df in net.groupby("cell_type"):
        nb: dict[str, set] = {}
        for r, g in zip(df["source"], df["target"]):
            nb.setdefault(r, set()).add(g)
            nb.setdefault(g, set()).add(r)
        neighbours[t] = nb
    n_trunc = 0
    n_with_unexpressed_neighbour = 0
    for i in range(0, len(ds), 7):
        it = ds[i]
        x_all = cell_expression(a, ds.obs_names[i], genes[2:])
        expressed = set(genes[2:][x_all > 0])
        nb = neighbours[ds.cell_type[i]]
        cand = expressed | set().union(*(nb.get(g, set()) for g in expressed))
        sel = genes[it["gene_ids"]]
        assert len(set(sel)) == len(sel) and set(sel) <= cand
        assert np.all(np.diff(it["expr"]) <= 0)  # token order: expression, highest first
        if len(cand) <= ds.max_seq_len:
            assert set(sel) == cand
            n_with_unexpressed_neighbour += int(np.any(it["bins"] == 0))
        else:
            n_trunc += 1
            assert len(sel) == ds.max_seq_len
            left_out = np.array([x_all[np.searchsorted(genes[2:], g)] for g in cand - set(sel)])
            assert it["expr"].min() >= left_out.max()
    assert n_trunc > 0 and n_with_unexpressed_neighbour > 0  # both branches exercised
    assert report["splits"]["train"]["cells_truncated_at_max_seq_len"] >= n_trunc


def test_all_expressed_and_neighbours_when_short(small, tmp_path):
    a, net, d = small
    tk_cli.run(tokenize_args(d / "adata.h5ad", d / "networks.tsv.gz", tmp_path, max_seq_len=5000))
    genes = vocab_genes(tmp_path)
    ds = load(tmp_path, "train")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["splits"]["train"]["cells_truncated_at_max_seq_len"] == 0
    for i in range(0, len(ds), 11):
        x_all = cell_expression(a, ds.obs_names[i], genes[2:])
        sel = set(genes[ds[i]["gene_ids"]])
        expressed = set(genes[2:][x_all > 0])
        df = net[net["cell_type"] == ds.cell_type[i]]
        nbrs = set(df["target"][df["source"].isin(expressed)]) | set(df["source"][df["target"].isin(expressed)])
        assert sel == expressed | nbrs
        assert len(sel) > int((x_all > 0).sum())  # some unexpressed neighbours really were added


def test_train_subgraph_is_induced_and_symmetric(full):
    a, net, out, _ = full
    genes = vocab_genes(out)
    ds = load(out, "train")
    nets = {t: undirected(df) for t, df in net.groupby("cell_type")}
    for i in range(0, len(ds), 13):
        it = ds[i]
        n = len(it["gene_ids"])
        ei, w = it["edge_index"], it["edge_weight"]
        assert ei.min(initial=0) >= 0 and ei.max(initial=0) < n
        pairs = {(int(s), int(t)): float(x) for s, t, x in zip(ei[0], ei[1], w)}
        assert all((t, s) in pairs and pairs[(t, s)] == x for (s, t), x in pairs.items())  # symmetric
        assert all(s != t for s, t in pairs)
        sel = genes[it["gene_ids"]]
        got = {frozenset((sel[s], sel[t])): x for (s, t), x in pairs.items()}
        want = {k: v for k, v in nets[ds.cell_type[i]].items() if k <= set(sel)}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], rtol=1e-6)
        assert len(pairs) == 2 * len(want)


# --------------------------------------------------------------------------------------------------
# Bayesian graph integration (GREmLN eqs. 1-3)
# --------------------------------------------------------------------------------------------------


def test_integration_pvalues_hand_computed():
    w = np.array([[0.75, 0.25], [0.0, 1.0]])
    # edges:            e1    e2     e3   (Pr(e not in G_c): the pvalue, 1 where absent)
    absent = np.array([[0.01, 0.001, 1.0],
                       [0.02, 1.0,   0.0]])
    p = tk.integration_pvalues(w, absent)
    # cell 0: e1 0.75*0.01 + 0.25*0.02 = 0.0125; e2 0.75*0.001 + 0.25 = 0.25075; e3 0.75
    # cell 1: the B network itself
    np.testing.assert_allclose(p, [[0.0125, 0.25075, 0.75], [0.02, 1.0, 0.0]])
    assert ((p <= 0.05) == np.array([[True, False, False], [True, False, True]])).all()
    with pytest.raises(ValueError):
        tk.integration_pvalues(w, absent[:, :, None])
    with pytest.raises(ValueError):
        tk.integration_pvalues(w, absent + 0.5)


def _tiny(tmp_path) -> tuple[Path, Path]:
    """Two types, train = 3 A + 1 B cells; with --knn-k 4 every query gets w = (A 0.75, B 0.25)."""
    genes = ["G1", "G2", "G3", "G4", "G5", "G6"]
    rng = np.random.default_rng(0)
    x = rng.permuted(np.tile(np.arange(1.0, 7.0), (6, 1)), axis=1).astype(np.float32)  # distinct values
    a = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(index=[f"c{i}" for i in range(6)]),
                   var=pd.DataFrame(index=genes))
    a.obs["label"] = pd.Categorical(["A", "A", "A", "B", "A", "B"])
    a.obs["split"] = pd.Categorical(["train", "train", "train", "train", "test", "val"])
    a.layers["counts"] = a.X.copy()
    a.uns["cellgraph"] = {"label_key": "label", "heldout_types": []}
    a.write_h5ad(tmp_path / "tiny.h5ad")
    # bootstrap counts out of B = 18: Pr(e not in G_c) = 1 - (count + 1) / 20 (0.95 where absent);
    # the p-values are deliberately the opposite order, so a test passes only if the counts are used
    net = pd.DataFrame(
        [("A", "G1", "G2", 0.2, 0.04, 18), ("A", "G3", "G4", 0.3, 0.0, 9), ("A", "G5", "G6", 0.1, 0.001, 17),
         ("B", "G1", "G2", 0.4, 0.04, 17), ("B", "G4", "G5", 0.5, 0.04, 18), ("B", "G6", "G5", 0.3, 0.04, 18)],
        columns=["cell_type", "source", "target", "mi", "pvalue", "count"],
    )
    net.to_csv(tmp_path / "tiny.tsv.gz", sep="\t", index=False)
    return tmp_path / "tiny.h5ad", tmp_path / "tiny.tsv.gz"


def _edges_by_gene(ds, i, genes):
    it = ds[i]
    sel = genes[it["gene_ids"]]
    return {frozenset((sel[s], sel[t])): round(float(w), 6) for s, t, w in zip(*it["edge_index"], it["edge_weight"])}


@pytest.mark.parametrize("alpha", [0.07, 0.3])
def test_integration_end_to_end_tiny(tmp_path, alpha):
    adata_path, net_path = _tiny(tmp_path)
    out = tmp_path / "tok"
    tk_cli.run(tokenize_args(adata_path, net_path, out, knn_k=4, n_bins=5, max_seq_len=10, integration_alpha=alpha,
                         n_bootstraps=18))
    genes = vocab_genes(out)
    assert genes.tolist() == ["<pad>", "<cls>", "G1", "G2", "G3", "G4", "G5", "G6"]
    # p(e) by hand with w = (0.75, 0.25) and Pr(absent) from counts: {G1,G2} 0.75*0.05 + 0.25*0.1 = 0.0625,
    # {G5,G6} (G6->G5 in B) 0.75*0.1 + 0.25*0.05 = 0.0875, {G3,G4} 0.6125, {G4,G5} 0.725;
    # weights 0.75 mi_A + 0.25 mi_B
    want = {frozenset(("G1", "G2")): 0.25}
    if alpha == 0.3:
        want[frozenset(("G5", "G6"))] = 0.15
    for split in ("test", "val"):
        assert _edges_by_gene(load(out, split), 0, genes) == want
    # train cells use their own network: B's network for the B cell
    train = load(out, "train")
    b = int(np.flatnonzero(train.cell_type == "B")[0])
    assert _edges_by_gene(train, b, genes) == {frozenset(("G1", "G2")): 0.4, frozenset(("G4", "G5")): 0.5,
                                                frozenset(("G5", "G6")): 0.3}
    rep = json.loads((out / "report.json").read_text())
    assert rep["integration"]["candidate_edges"] == 4
    assert rep["integration"]["edges_kept_per_cell_mean"] == len(want)
    assert (rep["splits"]["val"]["knn_accuracy"], rep["splits"]["test"]["knn_accuracy"]) == (0.0, 1.0)
    assert rep["cells_per_split"] == {"train": 4, "val": 1, "test": 1, "heldout": 0, tk.INFERENCE_SHARD: 4}
    assert len(load(out, "heldout")) == 0


# --------------------------------------------------------------------------------------------------
# Library API, datasets and batches
# --------------------------------------------------------------------------------------------------


def test_tokenize_cells_reproduces_the_train_shard(full):
    a, net, out, _ = full
    vocab = read_vocab(out / "vocab.tsv")
    ds = load(out, "train")
    cells = a.obs_names.get_indexer(ds.obs_names[:300])
    tables = {t: df.rename(columns={"mi": "weight"}) for t, df in net.groupby("cell_type")}
    labels = a.obs["trueLabel"].astype(str).to_numpy()
    stats: dict = {}
    arrays = tk.tokenize_cells(a, cells, {int(c): tables[labels[c]] for c in cells}, vocab,
                               n_bins=ds.n_bins, max_seq_len=ds.max_seq_len, seed=0, stats=stats,
                               tie_break="shared", neighbours=True)
    lib = TokenDataset.from_arrays(arrays)
    assert len(lib) == 300 and stats["graph_edges_outside_vocab"] == 0
    assert np.array_equal(lib.obs_names, ds.obs_names[:300]) and np.array_equal(lib.split, ds.split[:300])
    for i in range(300):
        x, y = lib[i], ds[i]
        for k in ("gene_ids", "bins", "expr", "edge_index", "edge_weight"):
            assert np.array_equal(x[k], y[k]), k
    # one table for all cells: a graph with an edge outside the vocabulary is counted, not kept silently
    one = pd.DataFrame({"source": ["NOT_A_GENE", vocab[2]], "target": [vocab[3], vocab[4]], "weight": [1.0, 1.0]})
    stats = {}
    arrays = tk.tokenize_cells(a, cells[:5], one, vocab, n_bins=10, max_seq_len=50, seed=0, stats=stats)
    assert stats["graph_edges_outside_vocab"] == 1
    assert set(arrays) == {"obs_names", "cell_type", "split", "gene_ptr", "gene_ids", "bins", "expr",
                           "edge_ptr", "edge_index", "edge_weight", "n_bins", "max_seq_len"}
    assert arrays["gene_ids"].dtype == np.int32 and arrays["bins"].dtype == np.int16
    assert arrays["edge_index"].dtype == np.int32 and arrays["edge_weight"].dtype == np.float32
    with pytest.raises(ValueError):
        tk.tokenize_cells(a, cells[:5], one, vocab[2:], n_bins=10, max_seq_len=50, seed=0)


def _padded_laplacian(it, n, weighted):
    lap = np.zeros((n, n))
    m = len(it["gene_ids"])
    w = it["edge_weight"] if weighted else None
    lap[:m, :m] = normalized_laplacian(it["edge_index"], m, w).toarray()
    return lap


@pytest.mark.parametrize("weighted", [False, True])
def test_collate_batch(full, weighted):
    _, _, out, _ = full
    ds = load(out, "val")
    special = bin_special_ids(ds.n_bins)
    items = [ds[i] for i in range(0, 64, 2)]
    empty = {"gene_ids": np.zeros(0, np.int32), "bins": np.zeros(0, np.int16), "expr": np.zeros(0, np.float32),
             "edge_index": np.zeros((2, 0), np.int32), "edge_weight": np.zeros(0, np.float32), "cell_index": 999,
             "n_bins": ds.n_bins}
    items.append(empty)
    b = collate(items, weighted=weighted)
    lengths = np.array([len(it["gene_ids"]) for it in items])
    n, bsz = lengths.max(), len(items)
    assert set(b) == {"gene_ids", "bins", "attention_mask", "laplacian", "expr", "cell_index"}
    assert b["gene_ids"].shape == (bsz, 1 + n) and b["gene_ids"].dtype == torch.long
    assert b["bins"].shape == (bsz, 1 + n) and b["bins"].dtype == torch.long
    assert b["attention_mask"].dtype == torch.bool and b["laplacian"].shape == (bsz, n, n)
    assert b["laplacian"].dtype == torch.float32 and b["expr"].shape == (bsz, n)
    assert b["cell_index"].tolist() == [it["cell_index"] for it in items]
    assert (b["gene_ids"][:, 0] == 1).all() and (b["bins"][:, 0] == special["CLS"]).all()
    for r, it in enumerate(items):
        m = lengths[r]
        assert b["gene_ids"][r, 1 : 1 + m].tolist() == it["gene_ids"].tolist()
        assert (b["gene_ids"][r, 1 + m :] == 0).all() and (b["bins"][r, 1 + m :] == special["PAD"]).all()
        assert b["bins"][r, 1 : 1 + m].tolist() == it["bins"].tolist()
        assert b["attention_mask"][r].tolist() == [True] * (1 + m) + [False] * (n - m)
        assert (b["expr"][r, m:] == 0).all()
        np.testing.assert_allclose(b["laplacian"][r].numpy(), _padded_laplacian(it, n, weighted), atol=1e-6)
    # isolated nodes really occur and have zero rows
    lap = b["laplacian"]
    diag = lap.diagonal(dim1=1, dim2=2)
    real = torch.arange(n)[None, :] < torch.from_numpy(lengths)[:, None]
    assert ((diag == 0) & real).any() and ((diag == 1) & real).any()
    assert torch.allclose(lap, lap.transpose(1, 2))


def test_dataset_with_dataloader_and_specials(full):
    _, _, out, _ = full
    ds = load(out, "test")
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False, collate_fn=collate)
    b = next(iter(loader))
    assert b["cell_index"].tolist() == list(range(16))
    assert bin_special_ids(100) == {"MASK": 101, "PAD": 102, "CLS": 103, "size": 104}
    assert int(b["bins"][:, 1:].max()) == bin_special_ids(ds.n_bins)["PAD"]  # some padding in the batch
    assert int(b["bins"][:, 0].min()) == bin_special_ids(ds.n_bins)["CLS"]
    with pytest.raises(ValueError):
        bin_special_ids(1)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_stage_outputs_and_speed(full):
    a, _, out, _ = full
    rep = json.loads((out / "report.json").read_text())
    split = a.obs["split"].astype(str)
    assert rep["cells_per_split"] == {s: int((split == s).sum()) for s in tk.SPLITS} | {
        tk.INFERENCE_SHARD: int((split == "train").sum())}
    vocab = read_vocab(out / "vocab.tsv")
    genes = vocab[2:]
    assert genes == sorted(genes) and rep["vocab"]["hvgs"] == 1000
    assert rep["vocab"]["adata_genes_not_in_vocab"] == a.n_vars - len(genes)
    seen = set()
    for s in tk.SPLITS:
        ds = load(out, s)
        seen |= set(ds.obs_names)
        assert (ds.split == s).all()
        assert np.array_equal(ds.cell_type, a.obs.loc[ds.obs_names, "trueLabel"].astype(str).to_numpy())
        n_tok = np.diff(ds.gene_ptr)
        assert n_tok.max() <= 128 and ds.gene_ids.min() >= 2 and ds.gene_ids.max() < len(vocab)
        assert rep["splits"][s]["tokens_per_cell"]["max"] == n_tok.max()
        assert rep["splits"][s]["edges_per_cell"]["mean"] == pytest.approx(np.diff(ds.edge_ptr).mean() / 2)
    assert seen == set(a.obs_names)
    # the train cells again, with the inference-time (integration) graph instead of their own type's
    own, integrated = load(out, "train"), load(out, tk.INFERENCE_SHARD)
    assert list(integrated.obs_names) == list(own.obs_names)
    assert "integration_edges_kept_per_cell" in rep["splits"][tk.INFERENCE_SHARD]
    assert not np.array_equal(integrated.edge_ptr, own.edge_ptr)
    assert 0.5 < rep["splits"]["val"]["knn_accuracy"] <= 1.0  # sorted PBMC types are separable
    assert 0 < rep["integration"]["edges_kept_per_cell_mean"] <= rep["integration"]["candidate_edges"]


def test_same_seed_same_bytes(small, tmp_path):
    _, _, d = small
    outs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 7)):
        tk_cli.run(tokenize_args(d / "adata.h5ad", d / "networks.tsv.gz", tmp_path / name, seed=seed, max_seq_len=64))
        outs[name] = {f.name: f.read_bytes() for f in sorted((tmp_path / name).iterdir())}
    assert set(outs["a"]) == {"vocab.tsv", "train.npz", "val.npz", "test.npz", "heldout.npz",
                             "train_integrated.npz", "report.json", "graph_edges.tsv.gz"}
    assert outs["a"] == outs["b"]
    assert not (tmp_path / "a" / f"{tk.PRETRAIN_SHARD}.npz").exists()  # no corpus given, none written
    assert outs["a"]["train.npz"] != outs["c"]["train.npz"]  # the seed breaks expression ties
    assert outs["a"]["vocab.tsv"] == outs["c"]["vocab.tsv"]


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def _variant(small, tmp_path, what):
    a, net, d = small
    adata_path, net_path, extra = d / "adata.h5ad", d / "networks.tsv.gz", []
    if what == "no_split":
        b = a.copy()
        del b.obs["split"]
        adata_path = tmp_path / "nosplit.h5ad"
        b.write_h5ad(adata_path)
    elif what == "bad_split":
        b = a.copy()
        b.obs["split"] = b.obs["split"].astype(str).replace({"val": "validation"})
        adata_path = tmp_path / "badsplit.h5ad"
        b.write_h5ad(adata_path)
    elif what == "missing_column":
        net_path = tmp_path / "nopv.tsv.gz"
        net.drop(columns="pvalue").to_csv(net_path, sep="\t", index=False)
    elif what == "no_shared_gene":
        net_path = tmp_path / "renamed.tsv.gz"
        renamed = net.assign(source="X_" + net["source"], target="X_" + net["target"])
        renamed.to_csv(net_path, sep="\t", index=False)
    elif what == "bad_pvalue":
        net_path = tmp_path / "badpv.tsv.gz"
        bad = net.copy()
        bad.loc[3, "pvalue"] = 1.5
        bad.to_csv(net_path, sep="\t", index=False)
    elif what == "missing_file":
        adata_path = tmp_path / "nope.h5ad"
    elif what == "n_bins":
        extra = ["--n-bins", "1"]
    elif what == "knn_k":
        extra = ["--knn-k", "0"]
    mode = ["--graph", "aracne", "--n-top-genes", "1000"]
    return ["tokenize", "--adata", str(adata_path), "--networks", str(net_path),
            "--out-dir", str(tmp_path / "out")] + mode + extra


@pytest.mark.parametrize("what, message", [
    ("missing_file", "file not found"),
    ("no_split", "obs['split'] is missing"),
    ("bad_split", "validation"),
    ("missing_column", "missing columns ['pvalue']"),
    ("no_shared_gene", "no gene of the networks"),
    ("bad_pvalue", "line 5: field 'pvalue'"),
    ("n_bins", "--n-bins"),
    ("knn_k", "--knn-k"),
])
def test_bad_input(small, tmp_path, capsys, what, message):
    argv = _variant(small, tmp_path, what)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cellgraph tokenize: error: ") and message in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_read_vocab_rejects_bad_files(tmp_path):
    p = tmp_path / "vocab.tsv"
    p.write_text("token_id\tgene\n0\t<pad>\n1\t<cls>\n2\tCD3E\n")
    assert read_vocab(p) == ["<pad>", "<cls>", "CD3E"]
    for text in ("id\tgene\n0\t<pad>\n", "token_id\tgene\n0\t<pad>\n2\t<cls>\n",
                 "token_id\tgene\n0\tCD3E\n1\t<cls>\n", "token_id\tgene\n0\t<pad>\n1\t<cls>\n2\tA\n3\tA\n"):
        p.write_text(text)
        with pytest.raises(InputError):
            read_vocab(p)
    with pytest.raises(InputError):
        read_vocab(tmp_path / "absent.tsv")


def test_collate_laplacian_matches_scipy_on_irregular_edges():
    """One-directional, repeated and self-loop edges follow normalized_laplacian's semantics."""
    ei = np.array([[0, 1, 1, 2, 3, 0, 4], [1, 0, 0, 3, 3, 2, 2]], dtype=np.int32)
    w = np.array([0.5, 0.2, 0.4, 1.5, 9.0, 0.3, 2.0], dtype=np.float32)
    it = {"gene_ids": np.arange(2, 8, dtype=np.int32), "bins": np.ones(6, np.int16), "expr": np.ones(6, np.float32),
          "edge_index": ei, "edge_weight": w, "cell_index": 0, "n_bins": 10}
    short = dict(it, gene_ids=np.arange(2, 5, dtype=np.int32), bins=np.ones(3, np.int16),
                 expr=np.ones(3, np.float32), edge_index=np.array([[0], [1]], np.int32),
                 edge_weight=np.ones(1, np.float32), cell_index=1)
    for weighted in (False, True):
        lap = collate([it, short], weighted=weighted)["laplacian"].numpy()
        np.testing.assert_allclose(lap[0], _padded_laplacian(it, 6, weighted), atol=1e-6)
        np.testing.assert_allclose(lap[1], _padded_laplacian(short, 6, weighted), atol=1e-6)
        assert lap[0, 5].tolist() == [0.0] * 6  # node 5 is isolated


def test_leave_one_out_knn_probabilities_exclude_the_cell_itself():
    """Train cells tokenized as unseen ones: each cell's kNN vote comes from its k nearest OTHER cells."""
    from sklearn.neighbors import KNeighborsClassifier

    from cellgraph.pp.tokenize import _leave_one_out_proba

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 1, (30, 4)), rng.normal(4, 1, (30, 4))])
    labels = np.array(["a"] * 30 + ["b"] * 30)
    labels[0] = "b"  # an outlier label inside cluster a: its own vote must not count
    k = 5
    knn = KNeighborsClassifier(n_neighbors=k).fit(x, labels)
    probs = _leave_one_out_proba(knn, x, labels, ["a", "b"])
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    for i in range(len(x)):
        others = np.argsort(dist[i], kind="stable")[:k]
        expected_b = (labels[others] == "b").mean()
        assert probs[i, 1] == pytest.approx(expected_b)
        assert probs[i].sum() == pytest.approx(1.0)
    assert probs[0, 1] < 0.5  # cell 0 is labelled b but sits among a cells


# --------------------------------------------------------------------------------------------------
# Issue 12: rank bins without copyable ties, a shared prior graph, edges hidden before pretraining,
# a pretraining corpus, a vocabulary chosen on training cells only
# --------------------------------------------------------------------------------------------------

CORPUS = REPO / "resources/demo/expression/zheng2017_frozen_donorA_counts.h5ad"


def test_random_tie_break_on_real_cells(small):
    a, _, _ = small
    genes = list(a.var_names[a.var["highly_variable"].to_numpy()])
    vocab = ["<pad>", "<cls>"] + sorted(genes)
    empty = pd.DataFrame(columns=["source", "target", "weight"])
    cells = np.arange(60)
    kw = dict(n_bins=20, max_seq_len=10_000, seed=3)
    rnd = TokenDataset.from_arrays(tk.tokenize_cells(a, cells, empty, vocab, tie_break="random", **kw))
    shared = TokenDataset.from_arrays(tk.tokenize_cells(a, cells, empty, vocab, tie_break="shared", **kw))
    distinct_random, distinct_shared = [], []
    for i in range(len(cells)):
        r, s = rnd[i], shared[i]
        assert np.array_equal(r["gene_ids"], s["gene_ids"])  # same expressed genes, only the bins differ
        x, b = r["expr"], r["bins"].astype(int)
        m = x.size
        # rank-value bins: ranks 1..m (a permutation), bin = ceil(20 r / m), monotone in expression
        assert np.array_equal(np.sort(b), np.sort((20 * np.arange(1, m + 1) + m - 1) // m))
        hi, lo = np.nonzero(x[:, None] > x[None, :])
        assert (b[hi] >= b[lo]).all()
        distinct_random.append(np.unique(b).size)
        distinct_shared.append(np.unique(s["bins"]).size)
        # sparse UMI counts tie: the shared bins put the tie group in one bin, random ones spread it
        ones = x == x.min()
        if ones.sum() >= 5:
            assert np.unique(s["bins"][ones]).size == 1 and np.unique(b[ones]).size > 1
    assert np.mean(distinct_random) > 1.5 * np.mean(distinct_shared)


def _prior_edges(a, path) -> pd.DataFrame:
    d = pd.read_csv(DOROTHEA, sep="\t")
    d = d[d["confidence"].isin(["A", "B", "C"]) & d["tf"].isin(a.var_names) & d["target"].isin(a.var_names)]
    df = pd.DataFrame({"source": d["tf"].to_numpy(), "target": d["target"].to_numpy(), "graph": "dorothea"})
    df.to_parquet(path)
    return df


@pytest.fixture(scope="module")
def prior_run(small, tmp_path_factory):
    """The stage with the shared prior graph, 30% hidden edges and a 300-cell pretraining corpus."""
    a, _, d = small
    root = tmp_path_factory.mktemp("tok_prior")
    _prior_edges(a, root / "edges.parquet")
    corpus = ad.read_h5ad(CORPUS)[:300].copy()
    corpus.write_h5ad(root / "corpus.h5ad")
    args = tokenize_args(d / "adata.h5ad", d / "networks.tsv.gz", root / "tokens", graph="prior",
                         prior_edges=root / "edges.parquet", prior_graphs=["dorothea"], tie_break="random",
                         neighbours=False, edge_holdout_fraction=0.3, n_top_genes=800,
                         pretrain_adata=root / "corpus.h5ad", max_seq_len=64)
    tk_cli.run(args)
    return a, root / "tokens", corpus


def test_hidden_edges_never_reach_any_shard(prior_run):
    a, out, _ = prior_run
    genes = vocab_genes(out)
    edges = pd.read_csv(out / "graph_edges.tsv.gz", sep="\t")
    hidden = {frozenset(p) for p in edges.loc[edges["hidden"], ["source", "target"]].to_numpy()}
    visible = {frozenset(p) for p in edges.loc[~edges["hidden"], ["source", "target"]].to_numpy()}
    # (the edge count follows the 800 seurat_v3 HVGs, which move a little with scanpy / scikit-misc releases:
    # 168 edges with scanpy 1.11.5 and scikit-misc 0.5.3)
    assert len(hidden) == round(0.3 * len(edges)) and len(hidden) >= 40 and not hidden & visible
    seen_visible = 0
    for s in (*tk.SPLITS, tk.INFERENCE_SHARD, tk.PRETRAIN_SHARD):
        ds = load(out, s)
        for i in range(len(ds)):
            cell = set(_edges_by_gene(ds, i, genes))
            assert not cell & hidden, s
            assert cell <= visible, s
            seen_visible += len(cell)
    assert seen_visible > 0  # the visible edges do reach the cells
    rep = json.loads((out / "report.json").read_text())
    assert rep["graph"]["hidden_edges"] == len(hidden) and rep["graph"]["edges"] == len(edges)


def test_pretraining_corpus_shard(prior_run, small, tmp_path):
    a, out, corpus = prior_run
    ds = load(out, tk.PRETRAIN_SHARD)
    total = np.asarray(corpus.X.sum(1)).ravel()
    n_genes = np.diff(sp.csr_matrix(corpus.X).indptr)
    kept = (total >= 500) & (total <= 20000) & (n_genes >= 200)
    assert list(ds.obs_names) == list(corpus.obs_names[kept])
    assert (ds.split == "pretrain").all() and (ds.cell_type == "unlabelled").all()
    rep = json.loads((out / "report.json").read_text())
    assert rep["pretrain"]["cells_kept"] == kept.sum() and rep["pretrain"]["cells_dropped_qc"] == (~kept).sum()
    # no pretraining cell is an evaluation cell, and the labelled shards hold no corpus cell
    labelled = set().union(*(set(load(out, s).obs_names) for s in tk.SPLITS))
    assert not labelled & set(ds.obs_names)
    # tokens are the cell's expressed vocabulary genes, ranked
    genes = vocab_genes(out)
    i = 0
    row = corpus[ds.obs_names[i]]
    expressed = set(row.var_names[np.asarray(row.X.toarray()).ravel() > 0]) & set(genes[2:])
    assert set(genes[ds[i]["gene_ids"]]) <= expressed and len(ds[i]["gene_ids"]) == min(64, len(expressed))
    # a later run without a corpus into the same folder removes the stale corpus shard (train would read it)
    stale = tmp_path / "tokens"
    stale.mkdir()
    (stale / f"{tk.PRETRAIN_SHARD}.npz").write_bytes((out / f"{tk.PRETRAIN_SHARD}.npz").read_bytes())
    _, _, d = small
    tk_cli.run(tokenize_args(d / "adata.h5ad", d / "networks.tsv.gz", stale, max_seq_len=64))
    assert not (stale / f"{tk.PRETRAIN_SHARD}.npz").exists()


def test_vocabulary_is_chosen_on_training_cells_only(small, tmp_path):
    a, _, _ = small
    train = np.flatnonzero(a.obs["split"].astype(str).to_numpy() == "train")
    counts = ad.AnnData(sp.csr_matrix(a.layers["counts"][train]), var=pd.DataFrame(index=a.var_names))
    v1 = tk.choose_vocabulary([counts], 500)
    b = a.copy()  # scramble every non-train cell's counts: the vocabulary must not move
    test = np.flatnonzero(b.obs["split"].astype(str).to_numpy() != "train")
    x = b.layers["counts"].toarray()
    x[test] = np.random.default_rng(0).permuted(x[test], axis=1)
    b.layers["counts"] = sp.csr_matrix(x)
    counts_b = ad.AnnData(sp.csr_matrix(b.layers["counts"][train]), var=pd.DataFrame(index=b.var_names))
    assert tk.choose_vocabulary([counts_b], 500) == v1 and len(v1) == 500
    # and it is scanpy's seurat_v3 ranking on those counts
    ref = sc.pp.highly_variable_genes(counts.copy(), flavor="seurat_v3", n_top_genes=500, inplace=False)
    assert v1 == sorted(counts.var_names[ref["highly_variable"].to_numpy()])


def test_absent_probability_from_counts():
    np.testing.assert_allclose(tk.absent_probability(np.array([0, 9, 18]), 18), [0.95, 0.5, 0.05])
    with pytest.raises(ValueError):
        tk.absent_probability(np.array([19]), 18)


def test_concat_keeps_every_cell_of_both_shards(prior_run):
    _, out, _ = prior_run
    a, b = load(out, "train"), load(out, tk.PRETRAIN_SHARD)
    both = TokenDataset.concat([a, b])
    assert len(both) == len(a) + len(b)
    assert list(both.obs_names) == list(a.obs_names) + list(b.obs_names)
    for i, (ds, j) in enumerate([(a, 0), (a, len(a) - 1), (b, 0), (b, len(b) - 1)]):
        k = j if ds is a else len(a) + j
        x, y = both[k], ds[j]
        assert x["cell_index"] == k  # distinct per-cell seeds for the masks
        for key in ("gene_ids", "bins", "expr", "edge_index", "edge_weight"):
            assert np.array_equal(x[key], y[key]), key


def test_params_defaults_are_the_command_line_defaults_and_checked():
    """TokenizeParams() equals the parsed defaults; it is frozen and rejects bad values naming the option."""
    import dataclasses

    p = argparse.ArgumentParser()
    tk_cli.configure_parser(p)
    params = tk_cli.params_from_args(p.parse_args(["--adata", "a", "--networks", "n", "--out-dir", "o"]))
    assert params == tk.TokenizeParams()
    assert params.report()["prior_graphs"] == ["dorothea", "trrust", "huri", "string"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 1
    for kw, flag in (({"n_bins": 1}, "--n-bins"), ({"max_seq_len": 0}, "--max-seq-len"),
                     ({"edge_holdout_fraction": 1.0}, "--edge-holdout-fraction"), ({"chunk_cells": 0}, "--chunk-cells"),
                     ({"tie_break": "x"}, "--tie-break"), ({"graph": "x"}, "--graph")):
        with pytest.raises(InputError, match=flag):
            tk.TokenizeParams(**kw)
