# The nine-graph gene multigraph (issue 4). `snakemake multigraph` builds config multigraph.organisms from
# the vendored files of multigraph.inputs; `snakemake multigraph_full` from multigraph.full, whose values
# that are keys of sources.files come from the download rules (workflow/rules/sources.smk; needs the
# internet). Neither is part of `rule all`.
MG = config.get("multigraph", {"organisms": [], "thresholds": {}, "string_actions_modes": ["expression"],
                               "pc_physical": [], "pc_regulatory": [], "inputs": {}, "full": {}})
MG_OUTPUTS = ["multigraph.npz", "summary.tsv", "degrees.png", "rejects.tsv.gz", "report.json"]


def _mg_inputs(organism, which):
    out = {}
    for key, value in MG[which].get(organism, {}).items():
        out[key] = download_path(value) if which == "full" and value in SOURCE_FILES else value
    if organism == "human":
        idmap = config["data"]["idmap"]
        out.update(alias_map=idmap["alias"], ensg_map=idmap["ensg"], ensp_map=idmap["ensp"])
    return out


def _mg_input_flags(wildcards, input):
    return " ".join(f"--{key.replace('_', '-')} {input[key]}" for key in input.keys())


def _mg_options():
    thr = [f"{src}.{col}={val}" for src, cols in MG["thresholds"].items() for col, val in cols.items()]
    out = []
    if thr:
        out.append("--threshold " + " ".join(thr))
    out.append("--dorothea-confidence " + " ".join(config["networks"]["dorothea_confidence"]))
    out.append("--string-actions-modes " + " ".join(MG["string_actions_modes"]))
    if MG["pc_physical"]:
        out.append("--pc-physical " + " ".join(MG["pc_physical"]))
    if MG["pc_regulatory"]:
        out.append("--pc-regulatory " + " ".join(MG["pc_regulatory"]))
    return " ".join(out)


def _mg_outputs(prefix):
    return {
        "npz": res(f"{prefix}/multigraph.npz"),
        "summary": report(res(f"{prefix}/summary.tsv"), category="Multigraph", labels={"file": "summary"}),
        "degrees": report(res(f"{prefix}/degrees.png"), category="Multigraph", labels={"file": "degrees"}),
        "rejects": res(f"{prefix}/rejects.tsv.gz"),
        "report": res(f"{prefix}/report.json"),
    }


rule multigraph_build:
    """One organism's multigraph from the vendored network files."""
    input:
        unpack(lambda w: _mg_inputs(w.organism, "inputs")),
    output:
        **_mg_outputs("multigraph/{organism}"),
    wildcard_constraints:
        organism="human|yeast",
    params:
        inputs=_mg_input_flags,
        options=_mg_options(),
        out_dir=lambda w: res(f"multigraph/{w.organism}"),
    log:
        res("logs/multigraph/{organism}.log"),
    benchmark:
        res("benchmarks/multigraph/{organism}.tsv")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph multigraph --organism {wildcards.organism} {params.inputs} {params.options}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule multigraph_full_build:
    """One organism's multigraph from the full releases (download rules)."""
    input:
        unpack(lambda w: _mg_inputs(w.organism, "full")),
    output:
        **_mg_outputs("multigraph/full/{organism}"),
    wildcard_constraints:
        organism="human|yeast",
    params:
        inputs=_mg_input_flags,
        options=_mg_options(),
        out_dir=lambda w: res(f"multigraph/full/{w.organism}"),
    log:
        res("logs/multigraph/full_{organism}.log"),
    benchmark:
        res("benchmarks/multigraph/full_{organism}.tsv")
    resources:
        mem_mb=8000,
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph multigraph --organism {wildcards.organism} {params.inputs} {params.options}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule multigraph:
    """Target: the multigraphs of config multigraph.organisms from vendored files."""
    input:
        [res(f"multigraph/{o}/{name}") for o in MG["organisms"] for name in MG_OUTPUTS],


rule multigraph_full:
    """Target: the multigraphs from the full downloaded releases (needs the internet)."""
    input:
        [res(f"multigraph/full/{o}/{name}") for o in MG["organisms"] for name in MG_OUTPUTS],
