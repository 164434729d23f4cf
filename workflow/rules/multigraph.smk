# The nine-graph gene multigraph. `snakemake multigraph` builds config multigraph.organisms from
# the vendored files of multigraph.inputs; `snakemake multigraph_full` from multigraph.full, whose values
# that are keys of sources.files come from the download rules (workflow/rules/sources.smk; needs the
# internet). Neither is part of `rule all`.
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
        out_dir=folder_of("report"),
    log:
        res("logs/multigraph/{organism}.log"),
    benchmark:
        res("benchmarks/multigraph/{organism}.tsv")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph multigraph --organism {wildcards.organism:q} {params.inputs} {params.options}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


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
        out_dir=folder_of("report"),
    log:
        res("logs/multigraph/full_{organism}.log"),
    benchmark:
        res("benchmarks/multigraph/full_{organism}.tsv")
    resources:
        mem_mb=8000,
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph multigraph --organism {wildcards.organism:q} {params.inputs} {params.options}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule multigraph:
    """Target: the multigraphs of config multigraph.organisms from vendored files."""
    input:
        [res(f"multigraph/{o}/{name}") for o in MG["organisms"] for name in MG_OUTPUTS],


rule multigraph_full:
    """Target: the multigraphs from the full downloaded releases (needs the internet)."""
    input:
        [res(f"multigraph/full/{o}/{name}") for o in MG["organisms"] for name in MG_OUTPUTS],
