"""The `cellgraph` command: one subcommand per stage, each with --help, bad input as exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pathlib import Path

from cellgraph.cli import STAGES, main

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_top_level_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "cellgraph.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for stage in STAGES:
        assert stage in out.stdout


MAIN_STAGES = ["networks", "expression", "grn", "spectral", "tokenize", "train", "evaluate", "figures"]


@pytest.mark.parametrize("stage", MAIN_STAGES)
def test_stage_help_documents_its_config_keys(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--out-dir" in text or "--figures-dir" in text
    # every key of the stage's config section (the main job's stages; see the rules' flags() calls) is a flag of the command (config key a_b -> --a-b)
    for key in CONFIG.get(stage, {}):
        if stage == "train" and key == "models":  # the rule's wildcard, one model per call
            continue
        assert "--" + key.replace("_", "-") in text, f"cellgraph {stage} has no flag for config key {stage}.{key}"


def test_missing_input_file_exits_2_and_names_it(tmp_path, capsys):
    missing = tmp_path / "nope.tsv.gz"
    code = main(["spectral", "--networks", str(missing), "--out-dir", str(tmp_path / "out")])
    assert code == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
