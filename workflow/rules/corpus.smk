# The pretraining corpus of the GREmLN paper's setup: cells of one pinned CELLxGENE Census release,
# filtered (tissues, assays, cell types; primary data only), held-out cell types and data sets removed, capped
# per cell type with a seed, written as h5ad shards and assembled on disk (anndata concat_on_disk), with a
# manifest JSON. `cellgraph corpus` (cellgraph.pp.corpus) does the work. corpus.source "census" needs the
# internet and the optional package (pip install 'cellgraph[census]'); a path instead reads a local census-like
# h5ad with the same filter.
# No rule of the default target depends on it: it runs only for `snakemake corpus`.
rule corpus:
    """The corpus h5ad (raw counts, obs_names census:<soma_joinid>) and its manifest; fails when any cell is
    also a cell of an h5ad of corpus.check_against."""
    input:
        source=corpus_source_input(),
        check=corpus_check_inputs(),
    output:
        **corpus_outputs(),
    params:
        source="census" if CORPUS_CFG["source"] == "census" else "h5ad",
        source_path=corpus_in,
        census_version=CORPUS_CFG.get("census_version"),
        organism=CORPUS_CFG.get("organism"),
        tissues=CORPUS_CFG.get("tissues", []),
        assays=CORPUS_CFG.get("assays", []),
        cell_types=CORPUS_CFG.get("cell_types", []),
        exclude_cell_types=corpus_exclude_cell_types(),
        exclude_dataset_ids=CORPUS_CFG.get("exclude_dataset_ids", []),
        primary=flags("corpus", ["primary_only"]),
        cap=CORPUS_CFG.get("cap_per_type"),
        shard_cells=CORPUS_CFG.get("shard_cells"),
        seed=CORPUS_CFG.get("seed"),
    log:
        res("logs/corpus.log"),
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph corpus --source {params.source:q} --in={params.source_path:q}"
        " --census-version {params.census_version:q} --organism {params.organism:q}"
        " --tissues {params.tissues:q} --assays {params.assays:q} --cell-types {params.cell_types:q}"
        " --exclude-cell-types {params.exclude_cell_types:q} --exclude-dataset-ids {params.exclude_dataset_ids:q}"
        " {params.primary} --cap-per-type {params.cap:q} --shard-cells {params.shard_cells:q} --seed {params.seed:q}"
        " --check-against {input.check:q} --out {output.h5ad:q} --manifest {output.manifest:q} > {log:q} 2>&1"


if HELDOUT_CFG:

    use rule corpus as heldout_cells with:
        input:
            source=corpus_source_input(),
            check=[],
        output:
            **heldout_outputs(),
        params:
            source="census" if CORPUS_CFG["source"] == "census" else "h5ad",
            source_path=corpus_in,
            census_version=CORPUS_CFG.get("census_version"),
            organism=CORPUS_CFG.get("organism"),
            tissues=HELDOUT_CFG["tissues"],
            assays=CORPUS_CFG.get("assays", []),
            cell_types=HELDOUT_CFG["cell_types"],
            exclude_cell_types=[],
            exclude_dataset_ids=CORPUS_CFG.get("exclude_dataset_ids", []),
            primary=flags("corpus", ["primary_only"]),
            cap=HELDOUT_CFG["cap_per_type"],
            shard_cells=CORPUS_CFG.get("shard_cells"),
            seed=CORPUS_CFG.get("seed"),
        log:
            res("logs/heldout_cells.log"),
