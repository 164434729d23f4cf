"""The pretraining corpus (cellgraph.pp.corpus, rule corpus): real vendored PBMC cells stand in for a census result."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from cellgraph.cli import main
from cellgraph.pp import corpus
from cellgraph.pp.corpus import (CorpusFilter, CorpusJob, build_corpus, cap_per_type, check_disjoint, concat_shards,
                              obs_value_filter, query_census, query_h5ad, select_cells, write_shards)
from cellgraph.errors import InputError

REPO = Path(__file__).resolve().parents[1]
PBMC = REPO / "resources/demo/expression/pbmc3p5k_sorted_counts.h5ad"
ODD = 'CD4 "T\'reg\\'  # a type name with both quotes and a backslash
ASSAY = "10x 3' v2"


def census_like(adata) -> ad.AnnData:
    """PBMC cells with census obs columns: cell_type (trueLabel; CD4Treg renamed to ODD), tissue_general,
    assay, dataset_id (two fake ids, alternating), is_primary_data (every 10th cell False), soma_joinid."""
    n = adata.n_obs
    labels = adata.obs["trueLabel"].astype(str).replace({"CD4Treg": ODD})
    obs = pd.DataFrame({"soma_joinid": np.arange(n, dtype=np.int64) + 1000,
                        "dataset_id": np.where(np.arange(n) % 2 == 0, "ds-even", "ds-odd"),
                        "assay": ASSAY, "cell_type": pd.Categorical(labels.to_numpy()), "tissue_general": "blood",
                        "disease": "normal", "is_primary_data": np.arange(n) % 10 != 0}, index=adata.obs_names)
    return ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32), obs=obs, var=adata.var[[]].copy())


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("census") / "census_like.h5ad"
    census_like(ad.read_h5ad(PBMC)).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def obs(stand_in) -> pd.DataFrame:
    return ad.read_h5ad(stand_in, backed="r").obs.copy()


SPEC = CorpusFilter(tissues=("blood",), assays=(ASSAY,), exclude_cell_types=("B", ODD),
                    exclude_dataset_ids=("ds-odd",))


def test_filter_string_quoting_and_exclusions():
    f = obs_value_filter(["blood", "blood"], [], [ASSAY], ["B", ODD], ["ds-1"])
    assert f == ('is_primary_data == True and tissue_general in ["blood"] and assay in ["10x 3\' v2"] and '
                 'cell_type not in ["B", "CD4 \\"T\'reg\\\\"] and dataset_id not in ["ds-1"]')
    tree = ast.parse(f, mode="eval")  # what the SOMA parser does: the odd name comes back intact
    lists = [node for node in ast.walk(tree) if isinstance(node, ast.List)]
    assert [ast.literal_eval(x) for x in lists][2] == ["B", ODD]
    assert obs_value_filter(primary_only=False) == ""
    assert obs_value_filter(cell_types=["NK"], primary_only=False) == 'cell_type in ["NK"]'
    with pytest.raises(InputError, match="exclude_cell_types"):
        obs_value_filter(exclude_cell_types=["B", ""])
    with pytest.raises(InputError, match="tissues: expected a list"):
        obs_value_filter(tissues="blood")
    assert SPEC.base == 'is_primary_data == True and tissue_general in ["blood"] and assay in ["10x 3\' v2"]'


def test_the_same_filter_through_pandas_keeps_the_expected_cells(obs):
    mask = corpus._query_mask(obs, SPEC.expression, "obs")
    types_ = obs["cell_type"].astype(str)
    expected = (obs["is_primary_data"] & ~types_.isin(["B", ODD]) & (obs["dataset_id"] != "ds-odd")).to_numpy()
    assert mask.sum() > 0 and np.array_equal(mask, expected)
    assert ODD in set(types_) and not types_[mask].isin([ODD, "B"]).any()
    with pytest.raises(InputError, match="lacks a column"):
        corpus._query_mask(obs.drop(columns="assay"), SPEC.expression, "obs")


def test_the_same_filter_on_a_soma_dataframe(obs, tmp_path):
    """The identical string on a real tiledbsoma DataFrame (what the census reads) keeps the same cells."""
    soma = pytest.importorskip("tiledbsoma")
    pa = pytest.importorskip("pyarrow")
    frame = obs.reset_index(drop=True).assign(cell_type=lambda d: d["cell_type"].astype(str))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    n = int(frame["soma_joinid"].max()) + 1
    with soma.DataFrame.create(str(tmp_path / "obs"), schema=table.schema, domain=[[0, n]]) as df:
        df.write(table)
    with soma.DataFrame.open(str(tmp_path / "obs")) as df:
        got = df.read(value_filter=SPEC.expression).concat().to_pandas()["soma_joinid"].to_numpy()
    want = frame["soma_joinid"].to_numpy()[corpus._query_mask(obs, SPEC.expression, "obs")]
    assert np.array_equal(np.sort(got), np.sort(want))


def test_cap_per_type_is_exact_and_seeded(obs):
    picked = cap_per_type(obs, 120, seed=3)
    counts = obs["cell_type"].astype(str).iloc[picked].value_counts()
    assert set(counts) == {120} and len(counts) == obs["cell_type"].nunique()
    assert np.array_equal(picked, cap_per_type(obs, 120, seed=3)) and np.all(np.diff(picked) > 0)
    assert not np.array_equal(picked, cap_per_type(obs, 120, seed=4))
    assert np.array_equal(cap_per_type(obs, 0, seed=3), np.arange(len(obs)))
    assert len(cap_per_type(obs, 10_000, seed=3)) == len(obs)
    with pytest.raises(InputError, match="no cell type column"):
        cap_per_type(obs, 5, 0, label_key="nope")


def test_selection_report_counts_each_exclusion(obs):
    picked, report = select_cells(obs, SPEC, cap=100, seed=0)
    base = obs["is_primary_data"].to_numpy()
    types_ = obs["cell_type"].astype(str).to_numpy()
    removed_types = int((base & np.isin(types_, ["B", ODD])).sum())
    removed_ds = int((base & (obs["dataset_id"] == "ds-odd").to_numpy()).sum())
    assert report["cells_matching_without_exclusions"] == int(base.sum())
    assert report["cells_removed"]["exclude_cell_types"] == removed_types
    assert report["cells_removed"]["exclude_dataset_ids"] == removed_ds
    assert report["cells_removed"]["total"] == int(base.sum()) - report["cells_matching"]
    assert report["cells_per_type"] == {t: 100 for t in sorted(set(types_) - {"B", ODD})}
    assert report["cells_selected"] == len(picked) == 500


def test_shards_concat_on_disk_and_byte_stability(stand_in, tmp_path):
    adata, _ = query_h5ad(stand_in, SPEC, cap=90, seed=1)
    assert adata.n_obs == 450 and all(n.startswith("census:") for n in adata.obs_names)
    shards = write_shards(adata, tmp_path / "a", shard_cells=200)
    assert [ad.read_h5ad(s, backed="r").n_obs for s in shards] == [200, 200, 50]
    again = write_shards(adata, tmp_path / "b", shard_cells=200)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in shards]
    assert digest == [hashlib.sha256(p.read_bytes()).hexdigest() for p in again]
    out = concat_shards(shards, tmp_path / "corpus.h5ad")
    disk = ad.read_h5ad(out)
    memory = ad.concat([ad.read_h5ad(s) for s in shards], join="inner", merge="same")
    assert isinstance(disk.X, sp.csr_matrix) and disk.X.dtype == np.float32
    assert (disk.X != memory.X).nnz == 0 and (disk.X != adata.X).nnz == 0
    pd.testing.assert_frame_equal(disk.obs, memory.obs)
    pd.testing.assert_index_equal(disk.var_names, adata.var_names)
    assert list(disk.obs_names) == list(adata.obs_names)


def test_build_corpus_writes_the_manifest_and_checks_disjointness(stand_in, tmp_path):
    overlap = tmp_path / "eval_overlap.h5ad"
    other = tmp_path / "eval_other.h5ad"
    ad.AnnData(obs=pd.DataFrame(index=["census:1001", "census:1002", "x"])).write_h5ad(overlap)
    ad.AnnData(obs=pd.DataFrame(index=["AAAC-1", "1001"])).write_h5ad(other)
    job = CorpusJob(source="h5ad", input=stand_in, out=tmp_path / "c" / "corpus.h5ad",
                    manifest=tmp_path / "c" / "manifest.json", spec=CorpusFilter(primary_only=False),
                    cap_per_type=0, shard_cells=1000, check_against=(str(other),))
    manifest = build_corpus(job)
    assert json.loads(job.manifest.read_text()) == json.loads(json.dumps(manifest))
    assert manifest["cells_selected"] == 3500 and manifest["cells_per_shard"] == [1000, 1000, 1000, 500]
    assert manifest["disjoint_from"] == {str(other): 0} and manifest["cells_removed"]["total"] == 0
    assert not list(job.out.parent.glob(".corpus-shards-*"))  # the shards are gone after the concat
    job.out.unlink()
    job = dataclasses.replace(job, check_against=(str(other), str(overlap)))
    with pytest.raises(InputError, match=r"eval_overlap.h5ad: 2 shared \(e.g. census:1001, census:1002\)"):
        build_corpus(job)
    assert not job.out.exists()  # checked before anything is written


def test_check_disjoint():
    assert check_disjoint(["census:1", "census:2"], {"a": ["census:3"], "b": []}) == {"a": 0, "b": 0}
    with pytest.raises(InputError, match="b: 1 shared"):
        check_disjoint(["census:1", "census:2"], {"a": ["census:3"], "b": ["census:2"]})


def test_census_source_without_the_package(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "cellxgene_census", None)  # import fails as if not installed
    with pytest.raises(InputError, match=r"pip install 'cellgraph\[census\]'"):
        query_census("2025-01-30", "Homo sapiens", SPEC, 10, 0)
    assert main(["corpus", "--source", "census", "--out", str(tmp_path / "c.h5ad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cellgraph[census]" in err and not (tmp_path / "c.h5ad").exists()


def _fake_census(open_error=None, read_error=None, obs=None, adata=None):
    """A stand-in cellxgene_census module: open_soma/get_obs/get_anndata over a local obs and AnnData."""
    mod = types.ModuleType("cellxgene_census")
    calls = {}

    class Census:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def open_soma(census_version):
        calls["version"] = census_version
        if open_error:
            raise open_error
        return Census()

    def get_obs(census, organism, value_filter=None, column_names=None):
        if read_error:
            raise read_error
        calls["obs_filter"], calls["columns"] = value_filter, column_names
        return obs.iloc[np.flatnonzero(corpus._query_mask(obs, value_filter or "", "fake"))][column_names]

    def get_anndata(census, organism, X_name, obs_coords, obs_column_names):
        calls["coords"] = np.asarray(obs_coords)
        calls.setdefault("chunks", []).append(len(obs_coords))
        rows = np.flatnonzero(np.isin(adata.obs["soma_joinid"], obs_coords))[::-1]  # any order comes back
        out = adata[rows].copy()
        out.obs_names = [str(i) for i in range(out.n_obs)]
        return out

    mod.open_soma, mod.get_obs, mod.get_anndata = open_soma, get_obs, get_anndata
    return mod, calls


def test_census_source_without_network(monkeypatch):
    offline = OSError("HTTPSConnectionPool(host='census.cellxgene.cziscience.com'): Failed to resolve")
    mod, _ = _fake_census(open_error=ConnectionError(str(offline)))
    monkeypatch.setitem(sys.modules, "cellxgene_census", mod)
    with pytest.raises(InputError) as err:
        query_census("2025-01-30", "Homo sapiens", SPEC, 10, 0)
    msg = str(err.value)
    assert "'2025-01-30'" in msg and "needs the internet" in msg and "Failed to resolve" in msg
    mod, _ = _fake_census(read_error=TimeoutError("S3 read timed out"))
    monkeypatch.setitem(sys.modules, "cellxgene_census", mod)
    with pytest.raises(InputError, match=r"'2025-01-30': cannot read from .*S3 read timed out.*needs the internet"):
        query_census("2025-01-30", "Homo sapiens", SPEC, 10, 0)
    mod, _ = _fake_census(open_error=ValueError('The "2099-01-01" Census version is not valid'))
    monkeypatch.setitem(sys.modules, "cellxgene_census", mod)
    with pytest.raises(InputError, match="not a Census release"):
        query_census("2099-01-01", "Homo sapiens", SPEC, 10, 0)


def test_census_query_reads_obs_first_then_the_capped_cells(monkeypatch, stand_in, obs):
    full = ad.read_h5ad(stand_in)
    full.var["feature_name"] = full.var_names
    mod, calls = _fake_census(obs=obs.reset_index(drop=True), adata=full)
    monkeypatch.setitem(sys.modules, "cellxgene_census", mod)
    adata, report = query_census("2025-01-30", "Homo sapiens", SPEC, 50, 2)
    assert calls["obs_filter"] == SPEC.base and "cell_type" in calls["columns"]  # exclusions counted locally
    assert len(calls["coords"]) == 250 and np.all(np.diff(calls["coords"]) > 0)
    assert list(adata.obs_names) == [f"census:{i}" for i in calls["coords"]]
    assert report["census_version"] == "2025-01-30" and report["cells_removed"]["exclude_cell_types"] > 0
    want, _ = query_h5ad(stand_in, SPEC, 50, 2)  # the stand-in picks the same cells with the same counts
    assert list(want.obs_names) == list(adata.obs_names) and (want.X != adata.X).nnz == 0


@pytest.mark.workflow
def test_snakemake_rule_corpus_on_the_stand_in(stand_in, tmp_path):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    evaluation = tmp_path / "eval.h5ad"
    ad.AnnData(obs=pd.DataFrame(index=["census:99999"])).write_h5ad(evaluation)
    config["corpus"].update(source=str(stand_in), tissues=["blood"], assays=[ASSAY], exclude_cell_types=[ODD],
                            cap_per_type=100, shard_cells=250, folder="out corpus", check_against=[str(evaluation)])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--configfile", str(cfg), "--cores", "1", "corpus"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "out corpus/manifest.json").read_text())
    assert manifest["cells_selected"] == 600 and manifest["cells_per_shard"] == [250, 250, 100]
    # the types of corpus.heldout (zero-shot transfer evaluation) are excluded as well
    assert manifest["excluded_cell_types"] == [ODD, *config["corpus"]["heldout"]["cell_types"]]
    assert manifest["cells_removed"]["exclude_cell_types"] == 450
    assert manifest["disjoint_from"] == {str(evaluation): 0}
    out = ad.read_h5ad(tmp_path / "out corpus/corpus.h5ad", backed="r")
    assert out.n_obs == 600 and ODD not in set(out.obs["cell_type"].astype(str))


def test_census_corpus_is_read_one_shard_at_a_time(monkeypatch, stand_in, obs, tmp_path):
    """The census build reads counts one shard of cells per call (memory bounded by a shard), after the
    disjointness check; the corpus equals the local stand-in's, whose cells and counts are the same."""
    full = ad.read_h5ad(stand_in)
    full.var["feature_name"] = full.var_names
    mod, calls = _fake_census(obs=obs.reset_index(drop=True), adata=full)
    monkeypatch.setitem(sys.modules, "cellxgene_census", mod)
    job = CorpusJob(source="census", out=tmp_path / "c" / "corpus.h5ad", manifest=tmp_path / "c" / "m.json",
                    spec=SPEC, cap_per_type=50, seed=2, shard_cells=60)
    manifest = build_corpus(job)
    assert calls["chunks"] == [60, 60, 60, 60, 10] == manifest["cells_per_shard"] and manifest["chunks"] == 5
    want, _ = query_h5ad(stand_in, SPEC, 50, 2)
    got = ad.read_h5ad(job.out)
    assert list(got.obs_names) == list(want.obs_names) and (got.X != want.X).nnz == 0
    # an overlap with an evaluation set stops the build before any count is read, and writes nothing
    overlap = tmp_path / "eval.h5ad"
    ad.AnnData(obs=pd.DataFrame(index=[want.obs_names[7]])).write_h5ad(overlap)
    calls.clear()
    job2 = CorpusJob(source="census", out=tmp_path / "d" / "corpus.h5ad", manifest=tmp_path / "d" / "m.json",
                     spec=SPEC, cap_per_type=50, seed=2, shard_cells=60, check_against=(str(overlap),))
    with pytest.raises(InputError, match="not disjoint"):
        build_corpus(job2)
    assert "chunks" not in calls and not job2.out.exists() and not job2.manifest.exists()
