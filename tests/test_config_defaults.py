"""One value per parameter: a stage option has the same default in config/config.yaml, on the command line
(``cellgraph <stage> --a-b``, config key ``a_b``) and in the library's parameter dataclass of that stage.

A user who runs a stage by hand gets what the workflow runs. The schema cannot drift from config.yaml (every
section has ``additionalProperties: false`` and Snakemake validates the config at load, which every workflow
test does); the rules' flag lists name config keys, so a key missing from the config fails at parse time. The
other way round, :func:`test_rules_pass_every_option_with_the_config_value` reads the shell commands that
``snakemake -n -p`` plans and fails on a config key that no command of its stage receives (a setting a user
would change without effect). Keys that are no option of the command, and defaults that differ on purpose,
are listed here with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())

#: config section -> the stage command that reads it
SECTION_STAGE = {
    "networks": "networks", "multigraph": "multigraph", "expression": "expression", "grn": "grn",
    "spectral": "spectral", "tokenize": "tokenize", "train": "train", "evaluate": "evaluate",
    "transfer": "transfer", "perturbation": "perturb", "diffusion": "diffusion", "corpus": "corpus",
}

#: config keys that are no option of the command, with the reason
NOT_AN_OPTION = {
    "multigraph.organisms": "the rule's wildcard: one command per organism",
    "multigraph.thresholds": "passed as --threshold SOURCE.COLUMN=VALUE pairs",
    "multigraph.inputs": "input files per organism (one flag per file)",
    "multigraph.full": "input files of the full releases per organism",
    "train.models": "the rule's wildcard: one model per command",
    "transfer.datasets": "the data sets, each with its own commands",
    "perturbation.study_seeds": "seeds of the multi-seed study target, one command per seed",
    "perturbation.gremln_features": "switches the GREmLN model input (--gremln-model) of the rule on",
    "diffusion.datasets": "the rule's wildcard: one command per data set",
    "diffusion.papalexi_adata": "the input file of the Papalexi data set (--adata)",
    "diffusion.per_dataset": "per-data-set values of the options above",
    "corpus.folder": "the output folder of the corpus rule",
    "corpus.heldout": "the held-out corpus, built by its own rule",
}

#: keys whose command default is no value of its own, resolved here: (section.key) -> function of the config
RESOLVED = {
    "train.max_epochs": lambda cfg: _preset(cfg).max_epochs,  # None = the preset's
    "train.batch_size": lambda cfg: _preset(cfg).batch_size,
}

#: defaults that differ on purpose, with the reason
DIFFERENT_ON_PURPOSE = {
    "spectral.beta": "'auto' needs --tokens (the train cells' subgraphs); the command alone keeps the number 0.1",
    "perturbation.adata": "an input file (the vendored Papalexi h5ad in the workflow)",
    "perturbation.pairs": "an input file (the vendored Costanzo pairs in the workflow)",
    "perturbation.smf": "an input file (the vendored Costanzo single-mutant fitness in the workflow)",
    "perturbation.string_info": "an input file (the vendored yeast STRING protein.info in the workflow)",
    "corpus.source": "the workflow queries the census; the command needs --source named",
    "corpus.tissues": "the paper corpus's filter; the command's default is no filter",
    "corpus.assays": "the paper corpus's filter; the command's default is no filter",
    "corpus.exclude_cell_types": "the paper corpus's filter; the command's default is no filter",
    "corpus.cap_per_type": "the paper corpus's cap; the command's default is no cap (0)",
}


def _preset(cfg):
    from cellgraph.models.gremln import PRESETS

    return PRESETS[cfg["train"]["preset"]]


def _parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    importlib.import_module(f"cellgraph.cli.{stage}").configure_parser(parser)
    return parser


def _same(config_value, default) -> bool:
    if isinstance(default, tuple):
        default = list(default)
    if isinstance(config_value, (int, float)) and not isinstance(config_value, bool) \
            and isinstance(default, (int, float, str)) and not isinstance(default, bool):
        try:
            return float(config_value) == float(default)
        except ValueError:
            return False
    return config_value == default


def default_mismatches(config: dict, sections: dict[str, str]) -> list[str]:
    """``section.key: config X, --flag default Y`` for every config key whose command default differs (keys of
    :data:`NOT_AN_OPTION` and :data:`DIFFERENT_ON_PURPOSE` skipped; a null config value passes no flag, so it
    agrees with any default); ``section.key: no --flag`` for a key that is no option."""
    bad = []
    for section, stage in sections.items():
        options = {a.dest: a for a in _parser(stage)._actions}
        for key, value in (config.get(section) or {}).items():
            name = f"{section}.{key}"
            if name in NOT_AN_OPTION or name in DIFFERENT_ON_PURPOSE or value is None:
                continue
            if key not in options:
                bad.append(f"{name}: no --{key.replace('_', '-')} option of cellgraph {stage}")
                continue
            default = RESOLVED[name](config) if name in RESOLVED else options[key].default
            if not _same(value, default):
                bad.append(f"{name}: config {value!r}, cellgraph {stage} --{key.replace('_', '-')} default {default!r}")
    return bad


def test_config_defaults_are_the_command_defaults():
    bad = default_mismatches(CONFIG, SECTION_STAGE)
    assert not bad, "config/config.yaml and the stage commands disagree:\n" + "\n".join(bad)


def test_listed_exceptions_exist_and_still_differ():
    """The exception lists cannot hide a key that is gone or a default that agrees again."""
    for name in [*NOT_AN_OPTION, *DIFFERENT_ON_PURPOSE, *RESOLVED]:
        section, key = name.split(".")
        assert key in CONFIG[section], f"{name} is listed but not in config/config.yaml"
    for name in DIFFERENT_ON_PURPOSE:
        section, key = name.split(".")
        default = {a.dest: a for a in _parser(SECTION_STAGE[section])._actions}[key].default
        assert not _same(CONFIG[section][key], default), f"{name} agrees now: remove it from DIFFERENT_ON_PURPOSE"


def test_checker_finds_a_changed_default():
    changed = {**CONFIG, "tokenize": {**CONFIG["tokenize"], "n_bins": CONFIG["tokenize"]["n_bins"] + 1},
               "grn": {**CONFIG["grn"], "not_a_flag": 1}}
    bad = default_mismatches(changed, {"tokenize": "tokenize", "grn": "grn"})
    assert len(bad) == 2 and bad[0].startswith("tokenize.n_bins: config") and "grn.not_a_flag: no" in bad[1]


def _dataclasses():
    from cellgraph.grn.celltypes import GrnParameters
    from cellgraph.pp.tokenize import TokenizeParams
    from cellgraph.tl import diffusion, perturb, perturb_forward

    return {
        "grn": [GrnParameters], "tokenize": [TokenizeParams],
        "perturbation": [perturb_forward.ForwardParams, perturb.ReverseParams],
        "diffusion": [diffusion.ModelOptions, diffusion.TrainParams, diffusion.TrainSettings, diffusion.SampleParams,
                      diffusion.EvaluateParams],
    }


@pytest.mark.parametrize("section", ["grn", "tokenize", "perturbation", "diffusion"])
def test_parameter_dataclass_defaults_are_the_config_defaults(section):
    """The library's parameter dataclasses (what a Python user gets) default to config/config.yaml's values."""
    bad = []
    for cls in _dataclasses()[section]:
        for field in dataclasses.fields(cls):
            if field.name not in CONFIG[section] or f"{section}.{field.name}" in DIFFERENT_ON_PURPOSE:
                continue
            if field.default is dataclasses.MISSING:
                continue
            value = CONFIG[section][field.name]
            if value is not None and not _same(value, field.default):
                bad.append(f"{cls.__name__}.{field.name} = {field.default!r}, config {section}.{field.name} = {value!r}")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------------------
# The rules pass every option of their section, with the config's value
# --------------------------------------------------------------------------------------------------

TARGETS = ["all", "multigraph", "perturbation", "diffusion", "ablation"]


@pytest.fixture(scope="module")
def planned_commands():
    """``(stage, argv)`` of every ``cellgraph <stage>`` shell command that ``snakemake -n -p --forceall`` plans for
    the default config and every optional target."""
    import os
    import shlex
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(REPO), "-n",
                           "-p", "--forceall", *TARGETS], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if not line.startswith("Shell command: "):
            continue
        for part in re.split(r";|&&", line.removeprefix("Shell command: ")):
            argv = shlex.split(part)
            if argv[:1] == ["cellgraph"]:
                cut = next((i for i, a in enumerate(argv) if a[:1] in (">", "|") or a[:2] in ("2>", "1>")), len(argv))
                out.append((argv[1], argv[2:cut]))
    return out


def unpassed_or_changed(config: dict, commands: list[tuple[str, list[str]]], sections: dict[str, str]) -> list[str]:
    """``section.key: ...`` for every config key (not null, not ``[]``, not in :data:`NOT_AN_OPTION`) that no planned
    ``cellgraph <stage>`` command passes, or that every command passes with another value than the config's
    (for diffusion also a value of ``diffusion.per_dataset``)."""
    bad = []
    for section, stage in sections.items():
        parser = _parser(stage)
        runs = [parser.parse_args(argv) for s, argv in commands if s == stage]
        flags = [set(a.split("=")[0] for a in argv if a.startswith("--")) for s, argv in commands if s == stage]
        if not runs:
            continue
        for key, value in (config.get(section) or {}).items():
            name = f"{section}.{key}"
            if name in NOT_AN_OPTION or value is None or value == []:  # null or []: no flag, the command default
                continue
            flag = "--" + key.replace("_", "-")
            passing = [r for r, f in zip(runs, flags) if flag in f or "--no-" + flag[2:] in f]
            if not passing:
                bad.append(f"{name}: no planned cellgraph {stage} command passes {flag}")
                continue
            allowed = [value] + [d.get(key) for d in (config[section].get("per_dataset") or {}).values()
                                 if key in d]
            if not any(_same(v, getattr(r, key)) for r in passing for v in allowed):
                bad.append(f"{name}: config {value!r}, planned commands pass "
                           f"{sorted({str(getattr(r, key)) for r in passing})}")
    return bad


def test_rules_pass_every_option_with_the_config_value(planned_commands):
    stages = {s for s, _ in planned_commands}
    assert {"networks", "expression", "grn", "spectral", "tokenize", "train", "evaluate", "figures", "multigraph",
            "perturb", "diffusion", "ablation"} <= stages
    bad = unpassed_or_changed(CONFIG, planned_commands, SECTION_STAGE)
    assert not bad, "config keys the workflow does not pass to its command:\n" + "\n".join(bad)
    # the checker sees a key that no rule passes, and a value the rule does not pass on
    extra = {**CONFIG, "spectral": {**CONFIG["spectral"], "threshold": 3, "tol": 1e-3}}
    assert unpassed_or_changed(extra, planned_commands, {"spectral": "spectral"}) == [
        "spectral.tol: config 0.001, planned commands pass ['1e-06']",
        "spectral.threshold: no planned cellgraph spectral command passes --threshold"]
