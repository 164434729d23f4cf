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

from test_datasets import MEMBER, _gears_h5ad, _immune_file, _zip
from test_workflow import REPO, run_snakemake, tiny_config

PBMC = REPO / "resources/demo/expression/pbmc3p5k_sorted_counts.h5ad"
ZHENG = REPO / "resources/demo/expression/zheng2017_frozen_donorA_counts.h5ad"
IMMUNE = "Immune_ALL_human.h5ad"


def _immune_layout(path: Path) -> Path:
    """All 3,500 vendored PBMC cells laid out as scIB's Immune_ALL_human.h5ad (test_datasets' layout)."""
    pbmc = ad.read_h5ad(PBMC)
    pbmc.X = sp.csr_matrix(pbmc.X, dtype=np.float32)
    return _immune_file(pbmc, path)


HELDOUT_TYPES = ["B cell", "CD14-positive monocyte"]


def _census_layout(path: Path) -> Path:
    """The vendored Zheng 2017 donor A cells with census obs columns: unannotated (cell_type 'unknown') except
    the cells with the highest MS4A1 or CD14 counts, which stand in for two held-out types."""
    z = ad.read_h5ad(ZHENG)
    n = z.n_obs
    cell_type = np.full(n, "unknown", dtype=object)
    for gene, label in zip(["MS4A1", "CD14"], HELDOUT_TYPES):
        counts = np.asarray(z[:, gene].X.todense()).ravel()
        top = np.argsort(-counts, kind="stable")[:40]
        cell_type[top[(counts[top] > 0) & (cell_type[top] == "unknown")]] = label
    obs = pd.DataFrame({"soma_joinid": np.arange(n, dtype=np.int64), "dataset_id": "zheng2017-donorA",
                        "assay": "10x 3' v1", "cell_type": cell_type, "tissue_general": "blood",
                        "is_primary_data": True}, index=z.obs_names)
    ad.AnnData(X=sp.csr_matrix(z.X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=z.var_names)).write_h5ad(path)
    return path


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _myeloid_layout(folder: Path) -> dict[str, Path]:
    """Stand-ins for scGPT's myeloid reference and query files: vendored PBMC cells (every 4th cell, alternating
    between the two files), raw counts in X, obs cell_type and cancer_type."""
    pbmc = ad.read_h5ad(PBMC)[::4]
    out = {}
    for i, (name, cancers) in enumerate((("reference_adata.h5ad", ["ESCA", "LYM"]), ("query_adata.h5ad", ["UCEC"]))):
        part = pbmc[i::2].copy()
        part.X = sp.csr_matrix(part.X, dtype=np.float32)
        part.obs = pd.DataFrame({"cell_type": part.obs["trueLabel"].astype(str).to_numpy(),
                                 "cancer_type": np.resize(cancers, part.n_obs)}, index=part.obs_names)
        part.write_h5ad(folder / name)
        out[name] = folder / name
    return out


def _adamson_layout(folder: Path) -> Path:
    """GEARS' Adamson zip layout (test_datasets') around 600 vendored PBMC cells: log-normalised X only."""
    pbmc = ad.read_h5ad(PBMC)[::5][:600].copy()
    pbmc.X = sp.csr_matrix(pbmc.X, dtype=np.float32)
    return _zip(folder / "adamson.zip", {MEMBER: _gears_h5ad(pbmc, folder / "perturb_processed.h5ad")})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("figshare")
    files = [root / IMMUNE, *_myeloid_layout(root).values(), _adamson_layout(root)]
    _immune_layout(root / IMMUNE)
    handler = lambda *a, **kw: _Files(*a, directory=str(root), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield {f.name: (f"{base}/{f.name}", hashlib.sha256(f.read_bytes()).hexdigest()) for f in files}
    httpd.shutdown()
    httpd.server_close()


def paper_test_config(tmp_path: Path, served: dict, census_like: Path) -> Path:
    """The tiny config with config/paper.yaml's data protocol (its data, train.pretrain_on, corpus.check_against)
    and its transfer data sets (served here; the held-out types are two marker-chosen groups of corpus-like
    cells), with 3 folds and 200 bootstrap resamples."""
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["data"].update(paper["data"])  # relative paths: files the download and corpus rules make in the workdir
    config["train"]["pretrain_on"] = paper["train"]["pretrain_on"]
    files = config["datasets"]["files"]
    for key, name in (("human_immune", IMMUNE), ("myeloid_reference", "reference_adata.h5ad"),
                      ("myeloid_query", "query_adata.h5ad"), ("adamson", "adamson.zip")):
        files[key].update(url=served[name][0], sha256=served[name][1])
        files[key].pop("manual", None)
    config["corpus"].update(source=str(census_like), assays=["10x 3' v1"], cap_per_type=0, shard_cells=1000,
                            check_against=paper["corpus"]["check_against"])
    config["corpus"]["heldout"].update(cell_types=HELDOUT_TYPES, cap_per_type=0)
    config["transfer"] = {"datasets": paper["transfer"]["datasets"], "n_splits": 3, "n_boot": 200}
    config["transfer"]["datasets"]["adamson"]["top_shift"] = 2
    path = tmp_path / "paper_test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.workflow
def test_paper_protocol_pretrains_on_the_corpus_and_evaluates_on_the_downloaded_set(served, tmp_path):
    config = paper_test_config(tmp_path, served, _census_layout(tmp_path / "census_like.h5ad"))
    proc = run_snakemake(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-5000:]
    res = tmp_path / "results"
    for rule in ("download_dataset", "convert_dataset", "corpus", "heldout_cells", "expression", "tokenize", "train",
                 "evaluate", "transfer_tokens", "transfer_evaluate", "transfer_table"):
        assert f"rule {rule}:" in proc.stdout + proc.stderr, rule

    # the evaluation set: downloaded, checked and converted (counts in X, scIB labels)
    converted = ad.read_h5ad(tmp_path / paper_data("expression"))
    conversion = json.loads((tmp_path / "resources/datasets/human_immune/human_immune.report.json").read_text())
    assert converted.n_obs == 3500 and "final_annotation" in converted.obs
    assert conversion["counts_from"] == "layers['counts']" and conversion["counts_integer"]
    adata = ad.read_h5ad(res / "expression/adata.h5ad")
    assert set(adata.obs["split"]) == {"train", "val", "test", "heldout"}

    # the corpus: every Zheng cell but the held-out types' with census ids, disjoint from the evaluation set
    manifest = json.loads((tmp_path / paper_data("pretrain")).with_name("manifest.json").read_text())
    corpus = ad.read_h5ad(tmp_path / paper_data("pretrain"), backed="r")
    heldout = ad.read_h5ad(tmp_path / "resources/heldout/heldout.h5ad")
    assert 10 <= heldout.n_obs and corpus.n_obs == manifest["cells_selected"] == 2896 - heldout.n_obs
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

    # the three further evaluation sets: none of their cells was pretrained on
    assert sorted(set(heldout.obs["cell_type"])) == HELDOUT_TYPES and not set(heldout.obs_names) & set(corpus.obs_names)
    assert not set(corpus.obs["cell_type"]) & set(HELDOUT_TYPES)  # the corpus excludes the held-out types
    table = pd.read_csv(res / "tables/table_transfer.csv")
    assert sorted(set(table["dataset"])) == ["adamson", "heldout_types", "myeloid"]
    assert set(table["model"]) == {"gremln", "vanilla"}
    methods = {"model_mean_pool", "model_cls", "random_init_mean_pool", "random_init_cls", "pca_all_genes",
               "pca_vocabulary", "bag_of_genes"}
    for (name, model), rows in table.groupby(["dataset", "model"]):
        assert set(rows["method"]) == methods, (name, model)
        assert ((rows["ci_low"] <= rows["macro_f1"]) & (rows["macro_f1"] <= rows["ci_high"])).all()
    myeloid = json.loads((res / "transfer/myeloid/report.json").read_text())
    assert myeloid["tokens"]["cells_by_role"]["query"] > 0 and myeloid["tokens"]["cells_by_role"]["reference"] > 0
    preds = pd.read_csv(res / "transfer/myeloid/gremln/predictions.tsv", sep="\t")
    assert preds["obs_name"].str.startswith("query:").all()  # reference_query scores the query cells only
    adamson = json.loads((res / "transfer/adamson/report.json").read_text())
    top = [r["perturbation"] for r in adamson["top_shift"]["shifts"] if r["top"]]
    assert len(top) == 2 and set(pd.read_csv(res / "transfer/adamson/vanilla/predictions.tsv", sep="\t")["label"]) == set(top)
    for name in ("myeloid", "heldout_types", "adamson"):
        with np.load(res / f"transfer/{name}/tokens.npz", allow_pickle=False) as z:
            cells = {n.split(":", 1)[1] for n in z["obs_names"].astype(str)}  # without the role prefix
        assert cells and not cells & pretrain_ids


def paper_data(key: str) -> str:
    return yaml.safe_load((REPO / "config/paper.yaml").read_text())["data"][key]

