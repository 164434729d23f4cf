# Config validation and every path of the workflow, in one place.
import os
import shlex

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results"]
MODELS = config["train"]["models"]


def res(path):
    """A path under the results folder."""
    return f"{RESULTS}/{path}"


def log_of(rule_name):
    return res(f"logs/{rule_name}.log")


def bench_of(rule_name):
    return res(f"benchmarks/{rule_name}.tsv")


def folder_of(key, of="output", up=1):
    """A params function: the folder `up` levels above the rule's output (or input, ``of="input"``) file
    `key` (a name or a position; a list takes its first file). Path params follow the rule's files instead of
    repeating them (``snakemake --lint``)."""

    def folder(wildcards, input, output):
        files = input if of == "input" else output
        path = files[key] if isinstance(key, int) else getattr(files, key)
        path = str(path if isinstance(path, str) else path[0])
        for _ in range(up):
            path = os.path.dirname(path)
        return path

    return folder


def flags(section, keys, overrides=None):
    """Command-line flags for `cellgraph <stage>` from config[section]: key a_b -> --a-b value (shell-quoted).
    ``overrides`` (a dict) replaces values of config[section] (e.g. one dataset's settings); a null value
    passes no flag (the stage's default)."""
    out = []
    overrides = overrides or {}
    for key in keys:
        value = overrides.get(key, config[section][key])
        flag = f"--{key.replace('_', '-')}"
        if value is None:  # null = the option's default: no flag
            continue
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, (list, tuple)):
            if value:
                out.append(f"{flag} {' '.join(shlex.quote(str(v)) for v in value)}")
        else:
            out.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(out)


# token shards of the tokenize stage; "pretrain" holds the unlabelled corpus (data.pretrain) when one is set
PRETRAIN = config["data"].get("pretrain")
TOKEN_SHARDS = ["train", "val", "test", "heldout", "train_integrated"] + (["pretrain"] if PRETRAIN else [])

FIGURES = ["confusion_matrices", "roc_pr_curves", "linear_probe"]
TABLES = ["table1_cell_type", "table2_ablation", "table2_paired"]


def reported_tables(names, caption):
    """``tables/{name}.csv`` (in the report, with ``caption``) and ``tables/{name}.md`` of each name."""
    return [f for name in names for f in (report(res(f"tables/{name}.csv"), caption=caption, category="Tables"),
                                          res(f"tables/{name}.md"))]


def optional_targets(rules):
    """Inputs of the target rules named in config targets_in_all (multigraph, perturbation, diffusion, ablation),
    which rule all then builds as well."""
    return [getattr(rules, name).input for name in config.get("targets_in_all", [])]


def final_outputs():
    """The main figures and tables (and the transfer table when transfer data sets are configured)."""
    return (
        [res(f"figures/{name}.{ext}") for name in FIGURES for ext in ("png", "pdf")]
        + [res(f"tables/{name}.{ext}") for name in TABLES for ext in ("csv", "md")]
        + transfer_outputs()
    )


# ---- helpers of sources.smk ----

SOURCES_CFG = config.get("sources", {"folder": "resources/downloads", "retries": 3, "timeout": 120, "files": {}})


SOURCE_FILES = SOURCES_CFG["files"]


def _url_name(entry):
    return entry.get("filename") or os.path.basename(entry["url"].split("?", 1)[0])


def download_path(key):
    """Local path of the file of config key `key` (the extracted member for zip archives)."""
    entry = SOURCE_FILES[key]
    name = entry.get("member") or _url_name(entry)
    return f"{SOURCES_CFG['folder']}/{key}/{name}"


def _archive_path(key):
    return f"{SOURCES_CFG['folder']}/archives/{_url_name(SOURCE_FILES[key])}"


_PLAIN = [k for k, e in SOURCE_FILES.items() if not e.get("member")] or ["__none__"]


_MEMBER = [k for k, e in SOURCE_FILES.items() if e.get("member")] or ["__none__"]


_ARCHIVES = {_url_name(e): k for k, e in SOURCE_FILES.items() if e.get("member")}


def _sha(entry):
    return entry["sha256"] or "null"


# ---- helpers of multigraph.smk ----
MG = config.get("multigraph", {"organisms": [], "thresholds": {}, "string_actions_modes": ["expression"],
                               "pc_physical": [], "pc_regulatory": [], "inputs": {}, "full": {}})


MG_OUTPUTS = ["multigraph.npz", "summary.tsv", "degrees.png", "degrees.pdf", "rejects.tsv.gz", "report.json"]


def _mg_inputs(organism, which):
    out = {}
    for key, value in MG[which].get(organism, {}).items():
        out[key] = download_path(value) if which == "full" and value in SOURCE_FILES else value
    if organism == "human":
        idmap = config["data"]["idmap"]
        out.update(alias_map=idmap["alias"], ensg_map=idmap["ensg"], ensp_map=idmap["ensp"])
    return out


def _mg_input_flags(wildcards, input):
    return " ".join(f"--{key.replace('_', '-')} {shlex.quote(str(input[key]))}" for key in input.keys())


def _mg_options():
    thr = [f"{src}.{col}={val}" for src, cols in MG["thresholds"].items() for col, val in cols.items()]
    lists = {
        "--threshold": thr,
        "--dorothea-confidence": config["networks"]["dorothea_confidence"],
        "--string-actions-modes": MG["string_actions_modes"],
        "--pc-physical": MG["pc_physical"],
        "--pc-regulatory": MG["pc_regulatory"],
    }
    out = [f"{flag} " + " ".join(shlex.quote(str(v)) for v in values)
           for flag, values in lists.items() if values]
    return " ".join(out)


def _mg_outputs(prefix):
    return {
        "npz": res(f"{prefix}/multigraph.npz"),
        "summary": report(res(f"{prefix}/summary.tsv"), caption="../report/multigraph.rst", category="Multigraph",
                          labels={"file": "summary"}),
        "degrees": report(res(f"{prefix}/degrees.png"), caption="../report/multigraph.rst", category="Multigraph",
                          labels={"file": "degrees"}),
        "degrees_pdf": res(f"{prefix}/degrees.pdf"),
        "rejects": res(f"{prefix}/rejects.tsv.gz"),
        "report": res(f"{prefix}/report.json"),
    }


# ---- helpers of perturbation.smk ----
PERT = config.get("perturbation", {})


FORWARD_FILES = ["metrics.tsv", "summary.tsv", "comparisons.tsv", "own_gene.tsv", "early_stopping.tsv",
                 "predictions.h5ad", "model.pt", "score_predictions.tsv", "score_summary.tsv",
                 "attention_diagnostics.tsv", "attention_heads.tsv", "report.json"]


FORWARD_OPTIONS = ["min_grna_frac", "control", "preset", "graph_reg", "n_folds", "max_epochs", "batch_size", "lr",
                   "score_weight", "diagnostics_every", "eval_every", "inner_fraction", "reliable_threshold",
                   "attend", "rwr_dim", "n_pca", "ridge", "weight_decay", "dropout", "label_scale"]


def pert_flags(keys):
    return flags("perturbation", keys)


def forward_outputs(folder):
    return {f.split(".")[0]: res(f"perturbation/{folder}/{f}") for f in FORWARD_FILES}


PERT_FIGURES = ["perturbation_forward", "perturbation_yeast", "perturbation_reverse_confusion",
                "perturbation_attention"]


PERT_TABLES = ["table_perturbation_forward", "table_perturbation_comparisons", "table_perturbation_own_gene",
               "table_perturbation_score", "table_perturbation_yeast", "table_perturbation_yeast_comparisons",
               "table3_reverse_perturbation",
               "table_attention_diagnostics", "table_attention_heads"]


# ---- helpers of ablation.smk ----
ABLATION_SEEDS = [int(s) for s in config.get("ablation", {}).get("seeds", [0, 1, 2, 3, 4])]


EVAL_FILES = ["annotation.json", "baselines.json", "masked.json", "edge_recovery.json", "edge_curves.npz",
              "edge_scores.tsv", "probe.json", "probe_scatter.npz", "embeddings.h5ad"]


def ablation_evaluate_dir(seed):
    return res("evaluate") if int(seed) == int(config["seed"]) else res(f"ablation/seed{seed}/evaluate")


# ---- helpers of diffusion.smk ----
DIFF = config.get("diffusion", {})


DIFF_MODEL_KEYS = ["preset", "n_genes", "min_grna_frac", "control", "n_folds", "folds_run", "val_fraction",
                   "max_train_cells", "n_tokens", "d_model", "n_layers", "n_heads", "ae_hidden", "conditioning",
                   "training_mode", "prediction", "schedule", "cond_dropout", "gremln_init", "likelihood",
                   "latent_dim", "kl_weight", "set_features", "rwr_dim", "feature_dropout"]


DIFF_TRAIN_KEYS = ["ae_steps", "max_steps", "batch_size", "lr", "weight_decay", "ema_decay"]


DIFF_SAMPLE_KEYS = ["sampler", "ddim_steps", "eta", "guidance_scale", "n_generate"]


DIFF_EVAL_KEYS = ["guidance_scales", "curve_cells", "curve_seen", "timing_cells", "n_pcs"]


DIFF_SCVI_KEYS = ["scvi_epochs", "scvi_latent"]


def diffusion_adata(wildcards):
    return res("expression/adata.h5ad") if wildcards.dataset == "pbmc" else DIFF["papalexi_adata"]


def diffusion_gremln(wildcards):
    """The GREmLN model whose gene embeddings initialise the set-gene embeddings (switch gremln_init)."""
    return [res("train/gremln/model.pt")] if DIFF.get("gremln_init") and wildcards.dataset == "papalexi" else []


def diffusion_multigraph(wildcards):
    """The human multigraph whose random-walk features embed the Papalexi set genes (set_features: rwr)."""
    return [res("multigraph/human/multigraph.npz")] if DIFF.get("set_features") == "rwr" and \
        wildcards.dataset == "papalexi" else []


def diffusion_flags(keys, dataset):
    """Flags of config diffusion, with diffusion.per_dataset[dataset] replacing the shared values."""
    return flags("diffusion", keys, DIFF.get("per_dataset", {}).get(dataset, {}))


def diffusion_eval_outputs(dataset, figure):
    prefix = f"diffusion/{dataset}"
    return {
        "evaluation": report(res(f"{prefix}/evaluation.tsv"), caption="../report/diffusion.rst", category="Diffusion",
                             labels={"dataset": dataset, "file": "evaluation"}),
        "summary": report(res(f"{prefix}/summary.tsv"), caption="../report/diffusion.rst", category="Diffusion",
                          labels={"dataset": dataset, "file": "summary"}),
        "guidance": report(res(f"{prefix}/guidance.tsv"), caption="../report/diffusion.rst", category="Diffusion",
                           labels={"dataset": dataset, "file": "guidance curve"}),
        "timing": report(res(f"{prefix}/sampling_time.tsv"), caption="../report/diffusion.rst", category="Diffusion",
                         labels={"dataset": dataset, "file": "sampling time"}),
        "figure": report(res(f"{prefix}/{figure}.png"), caption="../report/diffusion.rst", category="Diffusion",
                         labels={"dataset": dataset, "file": figure}),
        "guidance_figure": report(res(f"{prefix}/guidance.png"), caption="../report/diffusion.rst", category="Diffusion",
                                  labels={"dataset": dataset, "file": "guidance figure"}),
        "figure_pdf": res(f"{prefix}/{figure}.pdf"),
        "guidance_figure_pdf": res(f"{prefix}/guidance.pdf"),
        "report": res(f"{prefix}/report.json"),
    }


DIFF_EVAL_SHELL = (
    "cellgraph diffusion --task evaluate --dataset {params.dataset:q} --adata {input.adata:q}"
    " --model-path {input.model:q} --generated {input.generated:q} --seed {params.seed:q} {params.options}"
    " --threads {threads} --out-dir {params.out_dir:q} > {log:q} 2>&1"
)


# one verified download (cellgraph.io.sources: pooch, retries, sha256) for download_source, download_archive and
# download_dataset; each rule gives params name, url, sha256, retries and timeout
DOWNLOAD_SHELL = (
    "cellgraph sources --name {params.name:q} --url {params.url:q} --sha256 {params.sha256:q}"
    " --retries {params.retries:q} --timeout {params.timeout:q} --out {output:q} > {log:q} 2>&1"
)


# ---- helpers of datasets.smk (the paper's evaluation datasets) ----
DATASETS_CFG = config.get("datasets", {"folder": "resources/datasets", "retries": 3, "timeout": 600, "files": {}})


DATASET_FILES = DATASETS_CFG["files"]


DIRECT_DATASETS = [k for k, e in DATASET_FILES.items() if e.get("url")] or ["__none__"]
MANUAL_DATASETS = [k for k, e in DATASET_FILES.items() if not e.get("url")] or ["__none__"]


def dataset_download_path(key):
    """The published file of dataset `key` as downloaded (before conversion)."""
    return f"{DATASETS_CFG['folder']}/downloads/{key}/{DATASET_FILES[key]['filename']}"


def dataset_outputs(key):
    """The converted h5ad of dataset `key` and its JSON report (side by side)."""
    prefix = f"{DATASETS_CFG['folder']}/{key}/{key}"
    return {"h5ad": f"{prefix}.h5ad", "report": f"{prefix}.report.json"}


def dataset_param(name):
    """A params function: field `name` of the dataset's config entry ('' when the entry has none)."""

    def param(wildcards):
        value = DATASET_FILES[wildcards.dataset].get(name)
        return "" if value is None else str(value)

    return param


# ---- helpers of corpus.smk (the pretraining corpus from the CELLxGENE Census) ----
CORPUS_CFG = config.get("corpus", {"source": "census", "folder": "resources/corpus", "check_against": []})


def corpus_outputs():
    """The corpus h5ad and its manifest JSON."""
    folder = CORPUS_CFG["folder"]
    return {"h5ad": f"{folder}/corpus.h5ad", "manifest": f"{folder}/manifest.json"}


def corpus_source_input():
    """The local census-like h5ad when corpus.source is a path; nothing for `census` (queried online)."""
    return [] if CORPUS_CFG["source"] == "census" else [CORPUS_CFG["source"]]


HELDOUT_CFG = CORPUS_CFG.get("heldout")


def heldout_outputs():
    """The held-out cell types' h5ad (zero-shot transfer evaluation) and its manifest JSON."""
    folder = HELDOUT_CFG["folder"]
    return {"h5ad": f"{folder}/heldout.h5ad", "manifest": f"{folder}/manifest.json"}


def data_file(entry):
    """An h5ad named in config: a key of datasets.files is its converted h5ad, "heldout" the held-out cells of
    corpus.heldout, anything else a path."""
    if entry in DATASET_FILES:
        return dataset_outputs(entry)["h5ad"]
    if entry == "heldout" and HELDOUT_CFG:
        return heldout_outputs()["h5ad"]
    return entry


def corpus_check_inputs():
    """The h5ads the corpus must be disjoint from: the entries of corpus.check_against (data_file), and the
    held-out cells when corpus.heldout is set and a transfer data set uses them."""
    checks = [data_file(e) for e in CORPUS_CFG["check_against"]]
    if HELDOUT_CFG and "heldout" in [d["adata"] for d in TRANSFER_SETS.values()]:
        checks.append(heldout_outputs()["h5ad"])
    return checks


def corpus_exclude_cell_types():
    """corpus.exclude_cell_types and the held-out types of corpus.heldout (never in pretraining)."""
    extra = HELDOUT_CFG["cell_types"] if HELDOUT_CFG else []
    return list(dict.fromkeys(CORPUS_CFG.get("exclude_cell_types", []) + extra))


# ---- helpers of transfer.smk (evaluation on the data sets outside pretraining) ----
TRANSFER_CFG = config.get("transfer", {"datasets": {}, "n_splits": 5, "n_boot": 1000})


TRANSFER_SETS = TRANSFER_CFG["datasets"]


def transfer_inputs(wildcards):
    """The reference (and, for reference_query, the query) h5ad of transfer data set `name`."""
    entry = TRANSFER_SETS[wildcards.name]
    return {"adata": data_file(entry["adata"]), "query": [data_file(entry["query"])] if "query" in entry else []}


def transfer_flags(wildcards):
    """The data set's options of `cellgraph transfer --task tokens` (shell-quoted; absent keys: defaults)."""
    entry = TRANSFER_SETS[wildcards.name]
    out = []
    for key in ("label_key", "protocol", "counts_layer", "log_layer", "top_shift", "control"):
        if key in entry:
            out.append(f"--{key.replace('_', '-')} {shlex.quote(str(entry[key]))}")
    return " ".join(out)


def transfer_qc_flags(wildcards):
    """The expression section's cell QC and target_sum, with the data set's own min_counts, max_counts and
    min_genes where its entry sets them (a panel of a few hundred genes needs a lower min_genes)."""
    entry = TRANSFER_SETS[wildcards.name]
    keys = ["min_counts", "max_counts", "min_genes", "target_sum"]
    return flags("expression", keys, overrides={k: entry[k] for k in keys if k in entry})


def transfer_outputs():
    """The transfer table (CSV in the report, Markdown twin) when transfer data sets are configured."""
    return [res(f"tables/table_transfer.{ext}") for ext in ("csv", "md")] if TRANSFER_SETS else []


def corpus_in(wildcards, input):
    """A params function: the source h5ad of the rule's input ('' for the census)."""
    return str(input.source[0]) if len(input.source) else ""
