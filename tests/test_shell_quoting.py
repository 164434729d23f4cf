"""Config values reach shell commands quoted: a rule runs with a label, a label key and paths holding a space,
`+`, `$` and `;`, and nothing they contain is executed or expanded."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LABEL = "CD4+ T $HOME x"
LABEL_KEY = "cell type $X"
DATA_DIR = "data in $HOME;touch PWNED"
RESULTS = "out dir $X;y"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.workflow
def test_expression_rule_with_shell_metacharacters_in_label_key_and_paths(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    adata = ad.read_h5ad(REPO / config["data"]["expression"])
    labels = adata.obs.pop(config["data"]["label_key"]).astype(str).replace("NK", LABEL)
    adata.obs[LABEL_KEY] = labels.astype("category")
    counts = tmp_path / DATA_DIR / "pbmc + cells.h5ad"
    counts.parent.mkdir(parents=True)
    adata.write_h5ad(counts)
    before = sha256(counts)
    config["data"]["expression"] = str(counts)
    config["data"]["label_key"] = LABEL_KEY
    config["data"]["idmap"] = {k: str(REPO / v) for k, v in config["data"]["idmap"].items()}
    config["results"] = RESULTS
    config["expression"]["heldout_types"] = [LABEL]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "X": "EXPANDED"}
    target = f"{RESULTS}/expression/adata.h5ad"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--configfile", str(path), "--cores", "2", target],
                          capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    log = tmp_path / RESULTS / "logs" / "expression.log"
    assert proc.returncode == 0, proc.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    out = ad.read_h5ad(tmp_path / target)
    held = out.obs.loc[out.obs["split"] == "heldout", LABEL_KEY].astype(str)
    assert set(held) == {LABEL} and len(held) > 0
    assert LABEL not in set(out.obs.loc[out.obs["split"] != "heldout", LABEL_KEY].astype(str))
    assert not list(tmp_path.rglob("PWNED"))
    assert not list(tmp_path.rglob("*EXPANDED*")) and not (tmp_path / "out dir").exists()
    assert sha256(counts) == before
