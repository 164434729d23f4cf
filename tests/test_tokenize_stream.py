"""Streaming tokenization of the pretraining corpus (cellgraph.pp.tokenize.tokenize_corpus_streamed).

The corpus is read ``--chunk-cells`` cells at a time; ``pretrain.npz`` must be byte-identical to the
whole-corpus path (``read_corpus`` + ``tokenize_corpus`` + ``write_shard``) for any chunk size, with the
same report, and no temporary may be left behind. Inputs are the vendored real data (resources/demo):
PBMC counts for the labelled adata, the Zheng 2017 donor A counts as the corpus.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellgraph import cli
from cellgraph.cli import tokenize as tk_cli
from cellgraph.pp import tokenize as tk

from test_tokenize import make_adata

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "resources/demo/expression/zheng2017_frozen_donorA_counts.h5ad"
DOROTHEA = REPO / "resources/demo/networks/human/dorothea_hs_regulons.tsv.gz"
N_CORPUS = 260  # cells of the corpus (some fail QC)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok_stream")
    a = make_adata(n_per_type=40, seed=1)  # real PBMC counts as the expression stage writes them
    a.write_h5ad(d / "adata.h5ad")
    pd.DataFrame({"cell_type": ["x"], "source": ["A"], "target": ["B"], "mi": [0.1], "pvalue": [0.01],
                  "count": [1]}).to_csv(d / "networks.tsv.gz", sep="\t", index=False)
    dor = pd.read_csv(DOROTHEA, sep="\t")
    dor = dor[dor["confidence"].isin(["A", "B", "C"])]
    pd.DataFrame({"source": dor["tf"].to_numpy(), "target": dor["target"].to_numpy(),
                  "graph": "dorothea"}).to_parquet(d / "edges.parquet")
    ad.read_h5ad(CORPUS)[:N_CORPUS].copy().write_h5ad(d / "corpus.h5ad")
    return d


def _argv(d: Path, out: Path, chunk_cells: int | str, **kw) -> list[str]:
    argv = ["--adata", str(d / "adata.h5ad"), "--networks", str(d / "networks.tsv.gz"), "--out-dir", str(out),
            "--graph", "prior", "--prior-edges", str(d / "edges.parquet"), "--prior-graphs", "dorothea",
            "--pretrain-adata", str(d / "corpus.h5ad"), "--n-top-genes", "600", "--max-seq-len", "48",
            "--edge-holdout-fraction", "0.3", "--min-counts", "1500", "--max-counts", "5000",
            "--chunk-cells", str(chunk_cells)]  # QC drops cells between chunks
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    tk_cli.configure_parser(p)
    return p.parse_args(argv)


def _reference(d: Path, out: Path, args: argparse.Namespace, dest: Path) -> tuple[list[str], dict, dict]:
    """pretrain.npz by the whole-corpus path, for the vocabulary and visible prior graph of the run in ``out``."""
    params = tk_cli.params_from_args(args)
    corpus, corpus_report = tk.read_corpus(d / "corpus.h5ad", params)
    a = ad.read_h5ad(d / "adata.h5ad")
    train = np.flatnonzero(a.obs["split"].astype(str).to_numpy() == "train")
    counts = ad.AnnData(sp.csr_matrix(a.layers["counts"][train]), var=pd.DataFrame(index=a.var_names))
    hvg = tk.choose_vocabulary([counts, corpus], params.n_top_genes)
    genes = list(tk.read_vocab(out / "vocab.tsv")[2:])
    edges = pd.read_csv(out / "graph_edges.tsv.gz", sep="\t")
    edges = edges[~edges["hidden"]]
    index = {g: i for i, g in enumerate(genes)}
    prior = (edges["source"].map(index).to_numpy(np.int64), edges["target"].map(index).to_numpy(np.int64),
             edges["weight"].to_numpy(np.float64))
    arrays, rep = tk.tokenize_corpus(corpus, genes, prior, params)
    tk.write_shard(dest, arrays)
    return hvg, rep, corpus_report


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    """The stage at chunk sizes 7, 100 and beyond the corpus; the whole-corpus reference shard."""
    root = tmp_path_factory.mktemp("tok_stream_runs")
    outs = {}
    for chunk in (7, 100, 10**6):
        outs[chunk] = root / f"chunk{chunk}"
        tk_cli.run(_args(_argv(inputs, outs[chunk], chunk)))
    ref = root / "reference_pretrain.npz"
    hvg, rep, corpus_report = _reference(inputs, outs[10**6], _args(_argv(inputs, root / "x", 7)), ref)
    return outs, ref, hvg, rep, corpus_report


def test_streamed_shard_is_byte_identical_for_any_chunk_size(runs):
    outs, ref, hvg, _, _ = runs
    want = ref.read_bytes()
    for chunk, out in outs.items():
        got = (out / "pretrain.npz").read_bytes()
        assert got == want, f"--chunk-cells {chunk}: pretrain.npz differs from the whole-corpus shard"
        genes = tk.read_vocab(out / "vocab.tsv")[2:]
        assert list(genes) == hvg  # the chunked seurat_v3 vocabulary is scanpy's on the whole corpus
        for s in (*tk.SPLITS, tk.INFERENCE_SHARD):  # the labelled shards do not depend on the chunking
            assert (out / f"{s}.npz").read_bytes() == (outs[10**6] / f"{s}.npz").read_bytes(), s
    with np.load(ref) as z:  # the comparison is not vacuous: a real corpus with tokens and edges
        assert z["obs_names"].size > 200 and z["gene_ids"].size > 5000 and z["edge_index"].shape[1] > 100


def test_streamed_report_is_the_whole_corpus_report(runs):
    outs, _, _, rep, corpus_report = runs
    reports = {c: json.loads((o / "report.json").read_text()) for c, o in outs.items()}
    want = json.loads(json.dumps({"pretrain": rep, "corpus": corpus_report}))
    for chunk, r in reports.items():
        assert r["splits"]["pretrain"] == want["pretrain"], chunk
        assert r["pretrain"] == want["corpus"], chunk
        assert r["cells_per_split"]["pretrain"] == corpus_report["cells_kept"] < N_CORPUS
        assert r == reports[10**6]  # nothing in the report depends on the chunk size


def test_write_npz_streamed_matches_write_shard_on_edge_cases(tmp_path):
    rng = np.random.default_rng(0)
    for n_edges in (0, 3):
        arrays = {"obs_names": np.array(["a", "bbbbbbb", ""], dtype=str), "cell_type": np.full(3, "unlabelled"),
                  "split": np.full(3, "pretrain"), "gene_ptr": np.array([0, 2, 2, 5], np.int64),
                  "gene_ids": rng.integers(2, 50, 5).astype(np.int32), "bins": np.arange(5, dtype=np.int16),
                  "expr": rng.random(5).astype(np.float32), "edge_ptr": np.array([0, n_edges, n_edges, n_edges]),
                  "edge_index": rng.integers(0, 2, (2, n_edges)).astype(np.int32),
                  "edge_weight": rng.random(n_edges).astype(np.float32),
                  "n_bins": np.asarray(10, np.int64), "max_seq_len": np.asarray(4, np.int64)}
        tk.write_shard(tmp_path / "a.npz", arrays)
        parts = []
        for k in tk.SHARD_KEYS:
            v = np.asarray(arrays[k])
            half = v.tobytes()[: v.nbytes // 2]
            parts.append((k, v.dtype, v.shape, [half, v.tobytes()[len(half):]]))  # data in two pieces
        tk.write_npz_streamed(tmp_path / "b.npz", parts, block_bytes=3)
        assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes(), n_edges
    with pytest.raises(ValueError, match="bytes of data"):
        tk.write_npz_streamed(tmp_path / "c.npz", [("x", np.int64, (2,), [b"1234"])])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]


def test_chunk_cells_zero_is_one_clear_error(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["tokenize", *_argv(inputs, out, 0)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cellgraph tokenize: error: --chunk-cells: expected an integer >= 1")
    assert err[0].endswith("got 0")
    assert not out.exists()


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") or "spool" in p.name)


@pytest.mark.parametrize("where", ["tokenize", "assemble"])
def test_no_temporary_left_after_success_or_error(inputs, tmp_path, monkeypatch, runs, where):
    outs = runs[0]
    for out in outs.values():
        assert _leftovers(out) == []
        assert {p.name for p in out.iterdir()} >= {"pretrain.npz", "report.json", "vocab.tsv"}
    out = tmp_path / "out"
    calls = []
    if where == "tokenize":  # fail in the third corpus chunk, after spool files exist
        core = tk._tokenize_core

        def failing(*a, **kw):
            if kw.get("stream") == tk.PRETRAIN_STREAM:
                calls.append(1)
                if len(calls) == 3:
                    raise RuntimeError("injected")
            return core(*a, **kw)

        monkeypatch.setattr(tk, "_tokenize_core", failing)
    else:  # fail while the zip is half written
        entries = tk._shard_entries

        def failing(*a, **kw):
            calls.append(1)
            return entries(*a, **kw) + [("bogus", np.int64, (5,), [b"x"])]

        monkeypatch.setattr(tk, "_shard_entries", failing)
    with pytest.raises((RuntimeError, ValueError)):
        tk_cli.run(_args(_argv(inputs, out, 7)))
    assert calls and out.exists()
    assert _leftovers(out) == [] and not (out / "pretrain.npz").exists()
