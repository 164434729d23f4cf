"""The whole workflow through `snakemake` on a tiny config over the real vendored data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def tiny_config(tmp_path: Path, **overrides) -> Path:
    """The default config with absolute data paths and tiny sizes (3 cell types held out, 2 bootstraps)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())

    def absolute(node):
        if isinstance(node, dict):
            return {k: absolute(v) for k, v in node.items()}
        return None if node is None else str(REPO / node)

    config["data"] = {**config["data"], "expression": str(REPO / config["data"]["expression"]),
                      "pretrain": str(REPO / config["data"]["pretrain"]),
                      "networks": absolute(config["data"]["networks"]), "idmap": absolute(config["data"]["idmap"])}
    config["results"] = "results"
    config["expression"].update(n_top_genes=150, heldout_types=["B", "NK", "Monocyte"])
    # loose ARACNe settings (fixed MI p-value, no depth blocks) so that the later stages get edges to work on
    config["grn"].update(n_bootstraps=10, mi_method="pvalue", mi_pvalue=1e-3, depth_stratum_cells=0,
                         control_permutations=1)
    # the union graph: the shared prior graph and the ARACNe networks (Bayesian integration for unseen cells)
    config["tokenize"].update(n_bins=10, max_seq_len=32, n_top_genes=300, graph="union")
    config["train"].update(max_epochs=1)
    config["evaluate"].update(n_splits=2)
    for section, values in overrides.items():
        if isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_snakemake(tmp_path: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile", str(config),
           "--cores", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)


@pytest.mark.workflow
def test_whole_workflow_on_tiny_config(tmp_path):
    proc = run_snakemake(tmp_path, tiny_config(tmp_path))
    assert proc.returncode == 0, proc.stderr[-5000:]
    res = tmp_path / "results"

    edges = pd.read_parquet(res / "networks/edges.parquet")
    assert {"source", "target", "weight", "graph", "directed"} <= set(edges.columns)
    assert set(edges["graph"]) == {"dorothea", "trrust", "huri", "string"}

    import anndata as ad

    adata = ad.read_h5ad(res / "expression/adata.h5ad")
    assert set(adata.obs["split"]) == {"train", "val", "test", "heldout"}
    assert set(adata.obs.loc[adata.obs["split"] == "heldout", "trueLabel"]) == {"B", "NK", "Monocyte"}

    nets = pd.read_csv(res / "grn/networks.tsv.gz", sep="\t")
    assert set(nets["cell_type"]) <= {"CD4TCM", "CD4TN", "CD4Treg", "CD8TN"}
    assert len(nets) > 0 and (nets["mi"] > 0).all()
    control = pd.read_csv(res / "grn/control.tsv", sep="\t")
    assert list(control["cell_type"]) == ["CD4TCM", "CD4TN", "CD4Treg", "CD8TN", "total"]

    coefficients = json.loads((res / "spectral/coefficients.json").read_text())
    assert coefficients["K"] + 1 == len(coefficients["coefficients"])
    report = pd.read_csv(res / "spectral/report.tsv", sep="\t")
    assert (report["relative_error"] < 1e-5).all()

    for split in ("train", "val", "test", "heldout", "pretrain"):
        with np.load(res / f"tokens/{split}.npz", allow_pickle=False) as shard:
            assert len(shard["gene_ptr"]) == len(shard["obs_names"]) + 1
            assert (np.diff(shard["gene_ptr"]) <= 32).all()
    graph_edges = pd.read_csv(res / "tokens/graph_edges.tsv.gz", sep="\t")
    assert graph_edges["hidden"].sum() == round(0.15 * len(graph_edges)) > 0
    rule = coefficients["beta_rule"]  # beta: auto = 1 / median lambda_min of the train cells' subgraphs
    assert rule["cells"] > 0 and coefficients["beta"] == pytest.approx(1 / rule["lambda_min_median"])

    for model in ("gremln", "vanilla"):
        import torch

        saved = torch.load(res / f"train/{model}/model.pt", map_location="cpu", weights_only=False)
        assert {"config", "state_dict", "vocab"} <= set(saved)
        assert len(pd.read_csv(res / f"train/{model}/metrics.tsv", sep="\t")) == 1
        for name in ("annotation", "edge_recovery", "probe", "baselines", "masked"):
            json.loads((res / f"evaluate/{model}/{name}.json").read_text())
        emb = ad.read_h5ad(res / f"evaluate/{model}/embeddings.h5ad")
        assert {f"X_{model}", f"X_{model}_cls"} <= set(emb.obsm)

    import matplotlib.image

    for name in ("confusion_matrices", "roc_pr_curves", "linear_probe"):
        image = matplotlib.image.imread(res / f"figures/{name}.png")
        assert image.shape[0] > 100 and image.shape[1] > 100
    for name in ("table1_cell_type", "table2_ablation"):
        table = pd.read_csv(res / f"tables/{name}.csv")
        assert len(table) >= 2
        markdown = (res / f"tables/{name}.md").read_text()
        assert "gremln" in markdown.lower() and "vanilla" in markdown.lower()

    paired = pd.read_csv(res / "tables/table2_paired.csv")
    assert "hidden-edge AUROC" in set(paired["metric"])
    # the Snakemake report holds every figure and table with its caption
    rep = run_snakemake(tmp_path, tiny_config(tmp_path), "--report", str(tmp_path / "report.zip"))
    assert rep.returncode == 0, rep.stderr[-3000:]
    import zipfile

    with zipfile.ZipFile(tmp_path / "report.zip") as zf:
        names = zf.namelist()
        pages = "".join(zf.read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    for name in ("table1_cell_type.csv", "table2_ablation.csv", "table2_paired.csv", "confusion_matrices.png",
                 "control.tsv"):
        assert any(n.endswith(name) for n in names), name
    assert "Table 1" in pages and "Linear probe" in pages  # captions of tables.rst and probe.rst

    # the seed ablation is one target away: both models for every other seed, the main seed reused
    dry = run_snakemake(tmp_path, tiny_config(tmp_path), "-n", "ablation")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "ablation_train" in dry.stdout and "seed1/train/gremln/model.pt" in dry.stdout
    assert "results/ablation/seed0" not in dry.stdout

    # every rule declared a benchmark
    benchmarks = {p.stem for p in (res / "benchmarks").glob("*.tsv")}
    assert {"networks", "expression", "grn", "spectral", "tokenize", "train_gremln", "train_vanilla",
            "evaluate_gremln", "evaluate_vanilla", "figures"} <= benchmarks


def test_unknown_config_key_is_named(tmp_path):
    config = tiny_config(tmp_path, grn={"n_bootstrapz": 3})
    proc = run_snakemake(tmp_path, config, "-n")
    assert proc.returncode != 0
    assert "n_bootstrapz" in proc.stderr + proc.stdout


def test_out_of_range_config_value_is_named(tmp_path):
    config = tiny_config(tmp_path, tokenize={"n_bins": 1})
    proc = run_snakemake(tmp_path, config, "-n")
    assert proc.returncode != 0
    out = proc.stderr + proc.stdout
    assert "n_bins" in out and "minimum" in out


def test_missing_label_column_fails_without_outputs(tmp_path):
    config = tiny_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["label_key"] = "no_such_column"
    config.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path, config, "results/expression/adata.h5ad")
    assert proc.returncode != 0
    assert not (tmp_path / "results/expression/adata.h5ad").exists()
    log = (tmp_path / "results/logs/expression.log").read_text()
    assert "no_such_column" in log


def test_every_report_item_has_a_caption():
    """Each report() of the workflow names a caption file that exists (issue 16: figures and tables captioned)."""
    import re

    calls = 0
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        text = smk.read_text()
        # report(...) calls, and reported_tables(NAMES, "caption.rst") whose report() takes its caption argument
        for m in re.finditer(r"(?<![\w.])(?:report|reported_tables)\(", text):
            if text[max(0, m.start() - 4):m.start()] == "def ":
                continue
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            call = text[m.start():i]
            calls += 1
            if "caption=caption" in call:  # the body of reported_tables: its callers are checked
                calls -= 1
                continue
            cap = re.search(r'"([^"]+\.rst)"', call)
            assert cap, f"{smk.name}: report() without caption: {call}"
            assert (smk.parent / cap.group(1)).is_file(), f"{smk.name}: {cap.group(1)} missing"
    assert calls >= 10


@pytest.mark.workflow
def test_snakemake_lint_is_clean():
    """`snakemake --lint` has no finding (helpers in common.smk, output folders derived from outputs)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(REPO), "--lint"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Lints for" not in proc.stdout + proc.stderr


@pytest.mark.workflow
@pytest.mark.parametrize("configs", [["config/config.yaml"], ["config/config.yaml", "config/paper.yaml"],
                                     ["config/config.yaml", "config/transfer_papalexi.yaml"]])
def test_dry_run_plans_every_branch(configs):
    """A dry run of each target plans its stage's rules, with the default config and with the paper overlay."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    targets = ["all", "perturbation", "diffusion", "multigraph"]
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(REPO), "-n", "--forceall", "--cores", "2",
           "--configfile", *[str(REPO / c) for c in configs], "--", *targets]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    planned = {line.split()[1].rstrip(":") for line in proc.stdout.splitlines()
               if line.startswith(("rule ", "localrule "))}
    expected = {"grn", "train", "evaluate", "figures", "perturbation_forward", "perturbation_yeast",
                "diffusion_train", "diffusion_sample", "multigraph_build", *targets}
    if configs[-1] != "config/config.yaml":  # both overlays add transfer data sets to `rule all`
        expected |= {"transfer_tokens", "transfer_evaluate", "transfer_table"}
    assert expected <= planned, sorted(expected - planned)


@pytest.mark.workflow
def test_paper_overlay_pretrains_on_the_corpus_and_evaluates_on_a_separate_dataset():
    """The paper overlay's DAG: the census corpus feeds tokenize/train (--pretrain-on corpus) and the downloaded,
    converted Human Immune set is the expression (evaluation) input; the default config plans neither."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shells = {}
    for name, configs in (("default", ["config/config.yaml"]), ("paper", ["config/config.yaml", "config/paper.yaml"])):
        cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(REPO), "-n", "--forceall", "--cores", "2", "-p",
               "--configfile", *[str(REPO / c) for c in configs], "--", "all"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rules, lines = [], proc.stdout.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(("rule ", "localrule ")):
                rules.append(line.split()[1].rstrip(":"))
                shells.setdefault(name, {}).setdefault(rules[-1], [])
            elif line.startswith("Shell command:") and rules:
                shells[name][rules[-1]].append(line)
    jobs = {name: {rule: lines for rule, lines in s.items()} for name, s in shells.items()}
    shells = {name: {rule: " ".join(lines) for rule, lines in s.items()} for name, s in shells.items()}
    paper, default = shells["paper"], shells["default"]
    assert {"corpus", "download_dataset", "convert_dataset"} <= set(paper)
    assert not {"corpus", "download_dataset", "convert_dataset"} & set(default)
    # evaluation on each of the paper's four data sets: Human Immune (evaluate) and three transfer sets
    transfer = {"transfer_tokens", "transfer_evaluate", "transfer_table", "heldout_cells", "manual_dataset"}
    assert transfer <= set(paper) and not transfer & set(default)
    assert len(jobs["paper"]["evaluate"]) == 2 and len(jobs["paper"]["transfer_evaluate"]) == 6
    tokens = jobs["paper"]["transfer_tokens"]
    assert sorted(t.split("--name ")[1].split()[0] for t in tokens) == ["adamson", "heldout_types", "myeloid"]
    by_name = {t.split("--name ")[1].split()[0]: t for t in tokens}
    assert "--query-adata resources/datasets/myeloid_query/myeloid_query.h5ad" in by_name["myeloid"]
    assert "--adata resources/heldout/heldout.h5ad" in by_name["heldout_types"]
    assert "--log-layer log_normalized" in by_name["adamson"] and "--top-shift 20" in by_name["adamson"]
    assert "--cell-types hepatocyte" in paper["heldout_cells"]
    # the corpus leaves the held-out types out and is checked against their cells
    assert "hepatocyte" in paper["corpus"].split("--exclude-cell-types")[1].split("--exclude-dataset-ids")[0]
    assert "resources/heldout/heldout.h5ad" in paper["corpus"].split("--check-against")[1]
    assert "files/25717328" in paper["download_dataset"]
    assert "--input resources/datasets/human_immune/human_immune.h5ad" in paper["expression"]
    assert "--label-key final_annotation" in paper["expression"]
    assert "--pretrain-adata resources/corpus/corpus.h5ad" in paper["tokenize"]
    assert "--check-against resources/datasets/human_immune/human_immune.h5ad" in paper["corpus"]
    assert "--pretrain-on corpus" in paper["train"] and "--pretrain-on train+corpus" in default["train"]


@pytest.mark.workflow
def test_targets_in_all_switches_optional_branches_into_rule_all(tmp_path):
    """config targets_in_all puts the named branches into plain `snakemake`; the default builds none of them."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    overlay = tmp_path / "branches.yaml"
    overlay.write_text("targets_in_all: [multigraph, perturbation]\n")
    planned = {}
    for name, extra in (("default", []), ("branches", [str(overlay)])):
        cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(REPO), "-n", "--forceall", "--cores", "2",
               "--configfile", str(REPO / "config/config.yaml"), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        planned[name] = {line.split()[1].rstrip(":") for line in proc.stdout.splitlines()
                         if line.startswith(("rule ", "localrule "))}
    branch_rules = {"multigraph_build", "perturbation_forward", "perturbation_yeast", "perturbation_figures"}
    assert branch_rules <= planned["branches"] and not branch_rules & planned["default"]
    assert "diffusion_train" not in planned["branches"] and planned["default"] <= planned["branches"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets_in_all: [everything]\n")
    proc = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(REPO), "-n", "--cores", "1",
                           "--configfile", str(REPO / "config/config.yaml"), str(bad)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode != 0 and "everything" in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_pathway_commons_overlay_reaches_the_networks_and_tokenize_commands():
    """config/prior_pathway_commons.yaml: rule networks reads the SIF with the multigraph's relation lists and
    tokenize names both Pathway Commons graphs; the default config passes neither."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shells = {}
    for name, configs in (("default", ["config/config.yaml"]),
                          ("pc", ["config/config.yaml", "config/prior_pathway_commons.yaml"])):
        cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(REPO), "-n", "--forceall", "--cores", "2", "-p",
               "--configfile", *[str(REPO / c) for c in configs], "--", "all"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        shells[name] = [line for line in proc.stdout.splitlines()
                        if "cellgraph networks " in line or "cellgraph tokenize " in line]
    net, tok = shells["pc"]
    assert "--pathway-commons resources/networks/human/PathwayCommons9.All.hgnc.sif.gz" in net
    assert "--pc-physical in-complex-with interacts-with --pc-regulatory controls-expression-of" in net
    assert "--prior-graphs dorothea trrust huri string pathway_commons_physical pathway_commons_regulatory" in tok
    assert "results_pc/" in tok
    assert not any("pathway" in line for line in shells["default"])
