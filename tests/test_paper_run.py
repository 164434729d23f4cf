"""The paper's data protocol end to end on CPU (issue 15): config/paper.yaml's `data`, `corpus` and
`train.pretrain_on` on the tiny test sizes, with a server on 127.0.0.1 standing in for figshare and a
census-like h5ad of real vendored cells standing in for the Census query.

Evaluation set: the vendored PBMC counts in scIB's Human Immune layout (obs `final_annotation`, `batch`;
log-normalised X, raw counts in `layers["counts"]`), downloaded (sha256 pinned) and converted by the
workflow. Corpus: the vendored Zheng 2017 donor A cells (no cell shared with the PBMC set) with census obs
columns, filtered and sharded by rule `corpus`. The run must pretrain on corpus cells only and evaluate
on the converted set's own test split.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from test_datasets import _immune_file
from test_workflow import REPO, run_snakemake, tiny_config

PBMC = REPO / "resources/demo/expression/pbmc3p5k_sorted_counts.h5ad"
ZHENG = REPO / "resources/demo/expression/zheng2017_frozen_donorA_counts.h5ad"
IMMUNE = "Immune_ALL_human.h5ad"


def _immune_layout(path: Path) -> Path:
    """All 3,500 vendored PBMC cells laid out as scIB's Immune_ALL_human.h5ad (test_datasets' layout)."""
    pbmc = ad.read_h5ad(PBMC)
    pbmc.X = sp.csr_matrix(pbmc.X, dtype=np.float32)
    return _immune_file(pbmc, path)


def _census_layout(path: Path) -> Path:
    """The vendored Zheng 2017 donor A cells with census obs columns (unannotated: cell_type 'unknown')."""
    z = ad.read_h5ad(ZHENG)
    n = z.n_obs
    obs = pd.DataFrame({"soma_joinid": np.arange(n, dtype=np.int64), "dataset_id": "zheng2017-donorA",
                        "assay": "10x 3' v1", "cell_type": "unknown", "tissue_general": "blood",
                        "is_primary_data": True}, index=z.obs_names)
    ad.AnnData(X=sp.csr_matrix(z.X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=z.var_names)).write_h5ad(path)
    return path


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("figshare")
    _immune_layout(root / IMMUNE)
    handler = lambda *a, **kw: _Files(*a, directory=str(root), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{IMMUNE}", hashlib.sha256((root / IMMUNE).read_bytes()).hexdigest()
    httpd.shutdown()
    httpd.server_close()


def paper_test_config(tmp_path: Path, url: str, sha256: str, census_like: Path) -> Path:
    """The tiny config with config/paper.yaml's data protocol (its data, train.pretrain_on, corpus.check_against)."""
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["data"].update(paper["data"])  # relative paths: files the download and corpus rules make in the workdir
    config["train"]["pretrain_on"] = paper["train"]["pretrain_on"]
    config["datasets"]["files"]["human_immune"].update(url=url, sha256=sha256)
    config["corpus"].update(source=str(census_like), assays=["10x 3' v1"], cap_per_type=0, shard_cells=1000,
                            check_against=paper["corpus"]["check_against"])
    path = tmp_path / "paper_test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.workflow
def test_paper_protocol_pretrains_on_the_corpus_and_evaluates_on_the_downloaded_set(served, tmp_path):
    url, sha256 = served
    config = paper_test_config(tmp_path, url, sha256, _census_layout(tmp_path / "census_like.h5ad"))
    proc = run_snakemake(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-5000:]
    res = tmp_path / "results"
    for rule in ("download_dataset", "convert_dataset", "corpus", "expression", "tokenize", "train", "evaluate"):
        assert f"rule {rule}:" in proc.stdout + proc.stderr, rule

    # the evaluation set: downloaded, checked and converted (counts in X, scIB labels)
    converted = ad.read_h5ad(tmp_path / paper_data("expression"))
    conversion = json.loads((tmp_path / "resources/datasets/human_immune/human_immune.report.json").read_text())
    assert converted.n_obs == 3500 and "final_annotation" in converted.obs
    assert conversion["counts_from"] == "layers['counts']" and conversion["counts_integer"]
    adata = ad.read_h5ad(res / "expression/adata.h5ad")
    assert set(adata.obs["split"]) == {"train", "val", "test", "heldout"}

    # the corpus: every Zheng cell with census ids, disjoint from the evaluation set
    manifest = json.loads((tmp_path / paper_data("pretrain")).with_name("manifest.json").read_text())
    corpus = ad.read_h5ad(tmp_path / paper_data("pretrain"), backed="r")
    assert corpus.n_obs == manifest["cells_selected"] == 2896
    assert all(n.startswith("census:") for n in corpus.obs_names)

    # pretraining saw corpus cells only; evaluation used the converted set's cells
    with np.load(res / "tokens/pretrain.npz", allow_pickle=False) as z:
        pretrain_ids = set(z["obs_names"].astype(str))
    assert pretrain_ids and pretrain_ids <= set(corpus.obs_names) and not pretrain_ids & set(adata.obs_names)
    for model in ("gremln", "vanilla"):
        report = json.loads((res / f"checkpoints/{model}/report.json").read_text())
        assert report["pretrain_on"] == "corpus" and report["labelled_train_cells"] == 0
        assert report["train_cells"] == report["pretrain_cells"] == len(pretrain_ids)
        json.loads((res / f"evaluate/{model}/annotation.json").read_text())
        embedded = ad.read_h5ad(res / f"evaluate/{model}/embeddings.h5ad")
        assert embedded.n_obs > 0 and set(embedded.obs_names) <= set(adata.obs_names)


def paper_data(key: str) -> str:
    return yaml.safe_load((REPO / "config/paper.yaml").read_text())["data"][key]
