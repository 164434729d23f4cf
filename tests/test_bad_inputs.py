"""The bad-input corpus (issue 17): broken inputs derived from the real vendored files.

For every case of ``bad_inputs.cases``: a non-zero exit (``cellgraph <stage>`` returns 2; an invalid
config fails validation, and ``snakemake -n`` exits non-zero), one error message holding the file or
field, the line, and what was expected; no output left behind; every input byte-identical afterwards.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bad_inputs.cases import (
    ARACNE_CASES, CASES, CONFIG_CASES, EXPRESSION_CASES, METACHAR_DIR, NETWORK_CASES, read_lines, write_lines,
)
from cellgraph import cli

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo"
COUNTS = DEMO / "expression" / "pbmc3p5k_sorted_counts.h5ad"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
NETWORK_FILES = {
    "dorothea": ("human/dorothea_hs_regulons.tsv.gz", "dorothea.tsv.gz"),
    "trrust": ("human/trrust_rawdata.human.tsv", "trrust.tsv"),
    "huri": ("human/HuRI_binaryPPI.tsv", "huri.tsv"),
    "string": ("human/string_human_bionev_edges.tsv.gz", "string.tsv.gz"),
    "string_info": ("human/9606.protein.info.v12.0.txt.gz", "string_info.txt.gz"),
    "alias": ("idmap/hs_alias_symbol.tsv", "alias.tsv"),
    "ensg": ("idmap/hs_ensg_entrez_symbol.tsv", "ensg.tsv"),
    "ensp": ("idmap/hs_ensp_entrez_symbol.tsv", "ensp.tsv"),
}
NETWORK_FLAGS = {"dorothea": "--dorothea", "trrust": "--trrust", "huri": "--huri", "string": "--string",
                 "string_info": "--string-info", "alias": "--alias-map", "ensg": "--ensg-map", "ensp": "--ensp-map"}
SUBSET_LINES = 3000


# --------------------------------------------------------------------------------------------------
# Real subsets the broken files are derived from
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net_src(tmp_path_factory) -> dict:
    """The first 3,000 lines of every vendored network and id-map file."""
    d = tmp_path_factory.mktemp("net_src")
    return {key: write_lines(d / name, read_lines(DEMO / "networks" / rel)[:SUBSET_LINES])
            for key, (rel, name) in NETWORK_FILES.items()}


@pytest.fixture(scope="module")
def cells_src(tmp_path_factory) -> dict:
    """40 real cells of each type (h5ad), and an ARACNe-AP matrix of 60 genes x 40 NK cells with three
    of its genes as regulators."""
    import anndata as ad

    from cellgraph.grn.aracne_io import write_expression_tsv

    d = tmp_path_factory.mktemp("cells_src")
    raw = ad.read_h5ad(COUNTS)
    labels = raw.obs["trueLabel"].astype(str).to_numpy()
    idx = np.concatenate([np.flatnonzero(labels == t)[:40] for t in sorted(set(labels))])
    sub = raw[np.sort(idx)].copy()
    sub.write_h5ad(d / "cells.h5ad")
    nk = sub[sub.obs["trueLabel"].astype(str) == "NK"]
    top = np.sort(np.argsort(-np.asarray(nk.X.sum(axis=0)).ravel(), kind="stable")[:60])
    x = nk.X[:, top].toarray().T
    genes = [str(g) for g in nk.var_names[top]]
    write_expression_tsv(d / "matrix.tsv", x, genes, [str(c) for c in nk.obs_names])
    regs = write_lines(d / "regulators.txt", [g.encode() for g in genes[:3]])
    return {"h5ad": d / "cells.h5ad", "matrix": d / "matrix.tsv", "regulators": regs}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def hashes(paths) -> dict:
    return {str(p): sha256(p) for p in paths if Path(p).is_file()}


# --------------------------------------------------------------------------------------------------
# CLI cases: networks, aracne, expression
# --------------------------------------------------------------------------------------------------


def _argv(stage: str, inputs: dict, out: Path, flags: list[str]) -> list[str]:
    if stage == "networks":
        argv = [a for key, flag in NETWORK_FLAGS.items() for a in (flag, str(inputs[key]))]
    elif stage == "aracne":
        argv = ["--expression", str(inputs["expression"]), "--regulators", str(inputs["regulators"]),
                "--n-bootstraps", "2", "--n-null", "1000"]
    else:
        argv = ["--input", str(inputs["expression"]), "--n-top-genes", "200"]
    return [stage, *argv, "--out-dir", str(out), *flags]


def _inputs(stage: str, net_src: dict, cells_src: dict) -> dict:
    if stage == "networks":
        return dict(net_src)
    if stage == "aracne":
        return {"expression": cells_src["matrix"], "regulators": cells_src["regulators"]}
    return {"expression": cells_src["h5ad"]}


def _error_line(stage: str, stderr: str) -> str:
    """The one error line of ``cellgraph <stage>`` in ``stderr`` (no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    assert errors[0].startswith(f"cellgraph {stage}: error: "), errors[0]
    return errors[0]


CLI_CASES = NETWORK_CASES + ARACNE_CASES + EXPRESSION_CASES


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input(case, net_src, cells_src, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a shell running `touch PWNED` from a path would leave it here
    bad = tmp_path / "bad"
    bad.mkdir()
    inputs = {**_inputs(case.stage, net_src, cells_src), **case.build({**net_src, **cells_src}, bad)}
    before = hashes(inputs.values())
    out = tmp_path / "out"
    capsys.readouterr()
    rc = cli.main(_argv(case.stage, inputs, out, case.flags))
    message = _error_line(case.stage, capsys.readouterr().err)
    assert rc == 2
    for s in case.expect:
        assert s in message, (s, message)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert hashes(inputs.values()) == before
    assert not list(tmp_path.rglob("PWNED")) and not (REPO / "PWNED").exists()


# --------------------------------------------------------------------------------------------------
# Config cases: the schema validation the Snakefile runs first (workflow/rules/common.smk)
# --------------------------------------------------------------------------------------------------


def _bad_config(case, tmp_path: Path) -> Path:
    config = case.build(copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text())))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_config_bad_value(case, tmp_path):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    path = _bad_config(case, tmp_path)
    before = sha256(path)
    with pytest.raises(WorkflowError) as err:
        validate(yaml.safe_load(path.read_text()), str(SCHEMA))
    message = str(err.value)
    assert message.startswith("Error validating config file.")
    assert message.count("ValidationError:") == 1, message
    for s in case.expect:
        assert s in message, (s, message)
    assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


SNAKEMAKE_CASES = [c for c in CONFIG_CASES if c.id in
                   ("cfg_string_for_number", "cfg_unknown_key")]


@pytest.mark.parametrize("case", SNAKEMAKE_CASES, ids=[c.id for c in SNAKEMAKE_CASES])
def test_config_bad_value_stops_snakemake(case, tmp_path):
    """The same message from `snakemake -n`, which exits non-zero and writes no results folder."""
    path = _bad_config(case, tmp_path)
    before = sha256(path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--configfile", str(path), "--cores", "1", "-n"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert text.count("Error validating config file.") == 1, text[-3000:]
    for s in case.expect:
        assert s in text, (s, text[-3000:])
    assert not (tmp_path / "results").exists() and not list(tmp_path.rglob("PWNED"))
    assert sha256(path) == before


# --------------------------------------------------------------------------------------------------
# Inputs that are odd but valid: read exactly like the clean files
# --------------------------------------------------------------------------------------------------


def _edges(argv: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The edges and the rejects (without their file column) of a networks run that must succeed."""
    assert cli.main(argv) == 0
    out = Path(argv[argv.index("--out-dir") + 1])
    rejects = pd.read_csv(out / "rejects.tsv.gz", sep="\t", dtype=str, keep_default_na=False)
    return pd.read_parquet(out / "edges.parquet"), rejects.drop(columns="file")


def _bom(src: Path, dst: Path) -> dict:
    data = b"\xef\xbb\xbf" + b"\n".join(read_lines(src)) + b"\n"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(gzip.compress(data, mtime=0) if dst.name.endswith(".gz") else data)
    return dst


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


TOLERATED = [
    # a UTF-8 byte-order mark before the header (DoRothEA) or before the first row (TRRUST, no header:
    # it would otherwise turn the first TF into an unknown name)
    ("bom_dorothea_header", lambda src, d: {"dorothea": _bom(src["dorothea"], d / "dorothea_bom.tsv.gz")}),
    ("bom_trrust_first_row", lambda src, d: {"trrust": _bom(src["trrust"], d / "trrust_bom.tsv")}),
    # a path with a space, `$` and `;`: read as is, never given to a shell
    ("path_with_shell_metachars", lambda src, d: {"huri": _copy(src["huri"], d / METACHAR_DIR / "hu ri;$X.tsv")}),
]


@pytest.mark.parametrize("case", TOLERATED, ids=[c[0] for c in TOLERATED])
def test_tolerated_input_reads_like_the_clean_file(case, net_src, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clean, clean_rejects = _edges(_argv("networks", net_src, tmp_path / "clean", []))
    assert len(clean) > 0 and len(clean_rejects) > 0
    inputs = {**net_src, **case[1](net_src, tmp_path / "odd")}
    before = hashes(inputs.values())
    odd, odd_rejects = _edges(_argv("networks", inputs, tmp_path / "odd_out", []))
    pd.testing.assert_frame_equal(odd, clean)
    pd.testing.assert_frame_equal(odd_rejects, clean_rejects)  # the first names read without the mark
    assert hashes(inputs.values()) == before
    assert not list(tmp_path.rglob("PWNED"))


def test_corpus_size_and_ids():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.stage for c in CASES} == {"networks", "aracne", "expression", "config"}
