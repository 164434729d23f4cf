rule expression:
    """QC, normalisation, highly variable genes, Leiden clusters and train/val/test/held-out splits."""
    input:
        counts=config["data"]["expression"],
        idmap=config["data"]["idmap"]["ensg"],
    output:
        adata=res("expression/adata.h5ad"),
        report=res("expression/report.json"),
    params:
        out_dir=folder_of("report"),
        label_key=config["data"]["label_key"],
        seed=config["seed"],
        options=flags(
            "expression",
            ["min_counts", "max_counts", "min_genes", "min_cells", "target_sum", "n_top_genes",
             "leiden_resolution", "n_neighbors", "n_pcs", "heldout_fraction", "heldout_types",
             "val_fraction", "test_fraction", "counts_layer", "gene_id_type", "min_mapped_fraction",
             "min_cells_per_type"],
        ),
    log:
        log_of("expression"),
    benchmark:
        bench_of("expression")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph expression --input {input.counts:q} --idmap {input.idmap:q} --label-key {params.label_key:q}"
        " --seed {params.seed:q} {params.options} --out-dir {params.out_dir:q} > {log:q} 2>&1"
