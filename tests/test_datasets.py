"""Evaluation datasets (issue 15): download (cellgraph.io.sources) and conversion (cellgraph.io.datasets) against a
local HTTP server on 127.0.0.1 serving small files in each published format, built here from vendored real
cells (resources/demo/expression/pbmc3p5k_sorted_counts.h5ad, obs trueLabel):

* ``Immune_ALL_human.h5ad`` shaped like the scIB / scGPT copy: ``X`` log-normalised, raw counts in
  ``layers["counts"]``, ``obs["final_annotation"]`` cell types, ``obs["batch"]``;
* ``adamson.zip`` shaped like GEARS' dataverse archive: member ``adamson/perturb_processed.h5ad`` with ``X``
  log-normalised (no counts), ``obs["condition"]`` (``ctrl`` / ``GENE+ctrl``), ``obs["cell_type"]``,
  ``var["gene_name"]``.

The batch and condition values are assigned to the real cells here (the PBMC cells were neither batched
nor perturbed); only the layout is the published one.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from cellgraph.cli import main
from cellgraph.io import datasets
from cellgraph.errors import InputError
from cellgraph.pp.expression import read_counts
from cellgraph.io.sources import DownloadError, fetch

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo" / "expression" / "pbmc3p5k_sorted_counts.h5ad"
N_CELLS, N_GENES = 300, 400
IMMUNE, GEARS = "Immune_ALL_human.h5ad", "adamson.zip"
MEMBER = "adamson/perturb_processed.h5ad"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lognorm(counts: sp.csr_matrix) -> sp.csr_matrix:
    lib = np.asarray(counts.sum(axis=1)).ravel()
    x = sp.diags(1e4 / np.maximum(lib, 1)) @ counts
    x = sp.csr_matrix(x, dtype=np.float32)
    x.data = np.log1p(x.data)
    return x


def _real_cells() -> ad.AnnData:
    """Every k-th vendored PBMC cell (all types kept) and the most often detected genes, raw counts."""
    demo = ad.read_h5ad(DEMO)
    cells = demo[:: max(1, demo.n_obs // N_CELLS)][:N_CELLS]
    detected = np.asarray((cells.X > 0).sum(axis=0)).ravel()
    genes = np.sort(np.argsort(-detected, kind="stable")[:N_GENES])
    out = cells[:, genes].copy()
    out.X = sp.csr_matrix(out.X, dtype=np.float32)
    return out


def _immune_file(real: ad.AnnData, path: Path, *, mutate=None) -> Path:
    """The scIB Human Immune layout; ``mutate(adata)`` makes a malformed variant."""
    obs = pd.DataFrame(index=real.obs_names.astype(str))
    obs["batch"] = pd.Categorical(np.where(np.arange(real.n_obs) % 3 == 0, "Oetjen_A", "10X"))
    obs["chemistry"] = "v2_10X"
    obs["final_annotation"] = pd.Categorical(real.obs["trueLabel"].astype(str).to_numpy())
    obs["study"] = obs["batch"].astype(str)
    adata = ad.AnnData(X=_lognorm(real.X), obs=obs, var=pd.DataFrame(index=real.var_names.astype(str)),
                       layers={"counts": real.X.copy()})
    if mutate:
        mutate(adata)
    adata.write_h5ad(path)
    return path


def _gears_h5ad(real: ad.AnnData, path: Path, *, mutate=None) -> Path:
    """GEARS' perturb_processed.h5ad layout: log-normalised X, no counts."""
    targets = list(real.var_names[:3].astype(str))
    cond = np.array(["ctrl"] + [f"{g}+ctrl" for g in targets])[np.arange(real.n_obs) % 4]
    obs = pd.DataFrame(index=real.obs_names.astype(str))
    obs["condition"] = pd.Categorical(cond)
    obs["cell_type"] = pd.Categorical(real.obs["trueLabel"].astype(str).to_numpy())
    obs["dose_val"] = np.where(cond == "ctrl", "1", "1+1")
    obs["control"] = (cond == "ctrl").astype(int)
    obs["condition_name"] = [f"K562_{c}_1+1" for c in cond]
    var = pd.DataFrame({"gene_name": real.var_names.astype(str)}, index=real.var_names.astype(str))
    adata = ad.AnnData(X=_lognorm(real.X), obs=obs, var=var)
    if mutate:
        mutate(adata)
    adata.write_h5ad(path)
    return path


def _zip(path: Path, members: dict[str, Path]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, src in members.items():
            zf.write(src, name)
    return path


@pytest.fixture(scope="module")
def real():
    return _real_cells()


@pytest.fixture(scope="module")
def published(real, tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    _immune_file(real, folder / IMMUNE)
    _zip(folder / GEARS, {MEMBER: _gears_h5ad(real, folder / "perturb_processed.h5ad")})
    return folder


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /NAME serves NAME of ``root``."""

    protocol_version = "HTTP/1.1"
    root: Path = Path(".")

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        path = type(self).root / self.path.strip("/")
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(published):
    _Handler.root = published
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# ---- downloads -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [IMMUNE, GEARS])
def test_pinned_download_verifies(server, published, tmp_path, name):
    dest = tmp_path / "dl" / name
    rec = fetch("dataset", f"{server}/{name}", _sha(published / name), dest, retries=0, timeout=10)
    assert dest.read_bytes() == (published / name).read_bytes()
    assert rec["sha256"] == _sha(published / name) and rec["action"] == "download"
    assert sorted(p.name for p in dest.parent.iterdir()) == [name]


def test_wrong_digest_fails_naming_both(server, published, tmp_path):
    dest = tmp_path / "dl" / IMMUNE
    wrong = _sha(published / GEARS)  # a real digest, of the other file
    with pytest.raises(DownloadError) as err:
        fetch("human_immune", f"{server}/{IMMUNE}", wrong, dest, retries=0, timeout=10)
    msg = str(err.value)
    assert "human_immune" in msg and wrong in msg and _sha(published / IMMUNE) in msg
    assert not dest.exists() and not list(dest.parent.glob("*"))


def test_unpinned_download_fails_printing_the_digest(server, published, tmp_path, capsys):
    dest = tmp_path / "dl" / GEARS
    rc = main(["sources", "--name", "adamson", "--url", f"{server}/{GEARS}", "--sha256", "null", "--retries", "0",
               "--out", str(dest)])
    err = capsys.readouterr().err
    assert rc == 2 and "adamson" in err and _sha(published / GEARS) in err and "no sha256 pinned" in err
    assert not dest.exists()


# ---- converters --------------------------------------------------------------------------------------------


def test_human_immune_to_counts_contract(published, real, tmp_path):
    out, rep_path = tmp_path / "out" / "human_immune.h5ad", tmp_path / "out" / "human_immune.report.json"
    rc = main(["datasets", "--format", "h5ad", "--in", str(published / IMMUNE), "--out", str(out), "--report",
               str(rep_path), "--label-key", "final_annotation", "--batch-key", "batch",
               "--counts-layer", "counts"])
    assert rc == 0
    conv = ad.read_h5ad(out)
    assert conv.shape == (N_CELLS, N_GENES) and not conv.layers.keys()
    assert (abs(sp.csr_matrix(conv.X) - real.X)).sum() == 0  # the counts, not the log values
    assert list(conv.obs["final_annotation"].astype(str)) == list(real.obs["trueLabel"].astype(str))
    rep = json.loads(rep_path.read_text())
    assert rep["cells"] == N_CELLS and rep["genes"] == N_GENES and rep["counts_from"] == "layers['counts']"
    assert rep["counts_integer"] is True and rep["published_X"]["integer"] is False
    assert rep["label_counts"] == real.obs["trueLabel"].astype(str).value_counts().sort_index().to_dict()
    assert rep["batch_counts"] == {"10X": 200, "Oetjen_A": 100} and "counts" in rep["found"]["layers"]
    # the expression stage reads it as is (counts in X, labels in obs)
    back = read_counts(out, "final_annotation", None)
    assert back.shape == (N_CELLS, N_GENES)


def test_non_integer_counts_are_reported_per_batch(real, tmp_path):
    def smartseq(a):  # Smart-seq2-like batch: fractional "counts" in one batch
        rows = np.flatnonzero(a.obs["batch"].astype(str) == "Oetjen_A")
        c = a.layers["counts"].tolil()
        c[rows[0], c.rows[rows[0]][0]] = 2.5
        a.layers["counts"] = c.tocsr()

    conv = datasets.convert_human_immune(_immune_file(real, tmp_path / "i.h5ad", mutate=smartseq))
    rep = json.loads(conv.uns[datasets.REPORT_KEY])
    assert rep["counts_integer"] is False and rep["non_integer_counts_by_batch"] == {"Oetjen_A": 1}
    assert any("non-integer" in n for n in rep["notes"])


def test_gears_zip_keeps_log_values_and_no_counts(published, real, tmp_path):
    out = tmp_path / "out" / "adamson.h5ad"
    assert main(["datasets", "--format", "gears_zip", "--in", str(published / GEARS), "--out", str(out),
                 "--label-key", "cell_type", "--perturbation-key", "condition", "--member", MEMBER]) == 0
    conv = ad.read_h5ad(out)
    assert conv.X is None and set(conv.layers.keys()) == {"log_normalized"}
    assert np.allclose(conv.layers["log_normalized"].toarray(), _lognorm(real.X).toarray())
    g = str(real.var_names[0])
    assert set(conv.obs["targets"].astype(str)) == {"ctrl", g, str(real.var_names[1]), str(real.var_names[2])}
    assert (conv.obs.loc[conv.obs["condition"] == f"{g}+ctrl", "targets"] == g).all()
    rep = json.loads(out.with_suffix(".report.json").read_text())
    assert rep["counts_from"] is None and rep["counts_integer"] is None and rep["member"] == MEMBER
    assert rep["control_cells"] == N_CELLS // 4 and rep["n_conditions"] == 4 and rep["n_target_genes"] == 3
    assert any("no raw counts" in n for n in rep["notes"]) and rep["gene_name_column"] is True
    with pytest.raises(InputError, match="X is missing"):  # the expression stage does not take log values
        read_counts(out, "cell_type", None)


def test_gears_counts_layer_becomes_x_and_flat_zip_is_found(real, tmp_path):
    def with_counts(a):
        a.layers["counts"] = real.X.copy()

    h5 = _gears_h5ad(real, tmp_path / "perturb_processed.h5ad", mutate=with_counts)
    conv = datasets.convert_gears(_zip(tmp_path / "norman.zip", {"perturb_processed.h5ad": h5}))
    assert (abs(sp.csr_matrix(conv.X) - real.X)).sum() == 0
    rep = json.loads(conv.uns[datasets.REPORT_KEY])
    assert rep["counts_from"] == "layers['counts']" and rep["member"] == "perturb_processed.h5ad"
    assert any("absent" in n for n in rep["notes"])


def _drop_obs(key):
    return lambda a: a.obs.drop(columns=[key], inplace=True)


def _nan_in(layer):
    def mutate(a):
        m = (a.layers[layer] if layer else a.X).copy()
        m.data[0] = np.nan if layer else np.inf
        if layer:
            a.layers[layer] = m
        else:
            a.X = m
    return mutate


def _del_counts(a):
    del a.layers["counts"]


MALFORMED = {
    # name: (format, builder(real, folder) -> input path, words the one error message must hold)
    "immune_missing_label": ("h5ad", lambda r, d: _immune_file(r, d / IMMUNE, mutate=_drop_obs("final_annotation")),
                             ["final_annotation", "obs columns present"]),
    "immune_missing_batch": ("h5ad", lambda r, d: _immune_file(r, d / IMMUNE, mutate=_drop_obs("batch")),
                             ["'batch'"]),
    "immune_no_counts": ("h5ad", lambda r, d: _immune_file(r, d / IMMUNE, mutate=_del_counts),
                         ["no layer 'counts'", "non-integer"]),
    "immune_nan_counts": ("h5ad", lambda r, d: _immune_file(r, d / IMMUNE, mutate=_nan_in("counts")),
                          ["layers['counts']", "NaN/infinite"]),
    "immune_not_h5ad": ("h5ad", lambda r, d: _write(d / IMMUNE, b"cell\tgene\n"), ["cannot be read as h5ad"]),
    "gears_not_zip": ("gears_zip", lambda r, d: _gears_h5ad(r, d / GEARS), ["not a zip file"]),
    "gears_member_missing": ("gears_zip", lambda r, d: _zip(d / GEARS, {"norman/go.csv": _write(d / "go.csv", b"x")}),
                             ["no member", MEMBER, "norman/go.csv"]),
    "gears_missing_condition": ("gears_zip", lambda r, d: _zip(d / GEARS, {MEMBER: _gears_h5ad(
        r, d / "p.h5ad", mutate=_drop_obs("condition"))}), ["'condition'", MEMBER]),
    "gears_inf_x": ("gears_zip", lambda r, d: _zip(d / GEARS, {MEMBER: _gears_h5ad(r, d / "p.h5ad",
                                                                                   mutate=_nan_in(None))}),
                    ["X has 1 NaN/infinite", MEMBER]),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_one_clear_error_nothing_written(case, real, tmp_path, capsys):
    fmt, build, words = MALFORMED[case]
    src = tmp_path / "in"
    src.mkdir()
    path = build(real, src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = main(["datasets", "--format", fmt, "--in", str(path), "--out", str(out_dir / "d.h5ad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("cellgraph datasets: error: ")
    assert str(path) in err[0] and all(w in err[0] for w in words), err[0]
    assert list(out_dir.iterdir()) == []  # nothing written, no temporary left


# ---- workflow ------------------------------------------------------------------------------------------------


def _snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           "--configfile", str(config), *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=workdir)


@pytest.mark.workflow
def test_snakemake_downloads_and_converts_from_local_server(server, published, real, tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    files = config["datasets"]["files"]
    assert set(files) == {"human_immune", "adamson", "myeloid_reference", "myeloid_query"}
    for key, name in (("human_immune", IMMUNE), ("adamson", GEARS)):
        files[key].update(url=f"{server}/{name}", sha256=_sha(published / name))
    config["datasets"]["folder"] = "data sets"
    config["datasets"]["retries"] = 0
    config["results"] = "results"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    # the myeloid files have no direct link: with none put in place by hand, the run fails naming page and path
    proc = _snakemake(tmp_path, path, "--cores", "2", "--keep-going", "datasets")
    query = tmp_path / "data sets" / "downloads" / "myeloid_query" / "query_adata.h5ad"
    message = (tmp_path / "results/logs/datasets/myeloid_query/query_adata.h5ad.manual.log").read_text()
    assert proc.returncode != 0 and files["myeloid_query"]["manual"] in message and str(query.relative_to(tmp_path)) in message
    for key in ("myeloid_reference", "myeloid_query"):  # a copy put in place by hand is then used as it is
        target = tmp_path / "data sets" / "downloads" / key / files[key]["filename"]
        target.parent.mkdir(parents=True, exist_ok=True)
        _immune_file(real, target, mutate=lambda a: a.obs.rename(columns={"final_annotation": "cell_type",
                                                                          "batch": "cancer_type"}, inplace=True))
    proc = _snakemake(tmp_path, path, "--cores", "2", "datasets")
    logs = "".join(p.read_text()[-1500:] for p in (tmp_path / "results" / "logs").rglob("*.log"))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    for key in ("human_immune", "adamson", "myeloid_reference", "myeloid_query"):
        rep = json.loads((tmp_path / "data sets" / key / f"{key}.report.json").read_text())
        assert rep["cells"] == N_CELLS and rep["genes"] == N_GENES
        assert (tmp_path / "data sets" / "downloads" / key / files[key]["filename"]).is_file()
    assert read_counts(tmp_path / "data sets" / "human_immune" / "human_immune.h5ad", "final_annotation").n_obs \
        == N_CELLS
    # the default target (default config, in the checkout: its inputs exist there) plans none of these rules
    dry = _snakemake(REPO, REPO / "config" / "config.yaml", "-n", "--forceall", "--nolock", "--cores", "1", "all")
    planned = {ln.split()[1].rstrip(":") for ln in dry.stdout.splitlines() if ln.startswith(("rule ", "localrule "))}
    assert dry.returncode == 0 and "all" in planned, dry.stderr[-2000:]
    assert not planned & {"download_dataset", "convert_dataset", "datasets"}
