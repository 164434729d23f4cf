rule grn:
    """ARACNe per seen cell type on its train cells, then the consensus network across types."""
    input:
        adata=res("expression/adata.h5ad"),
        regulators=res("networks/regulators.txt"),
    output:
        networks=res("grn/networks.tsv.gz"),
        consensus=res("grn/consensus.tsv"),
        report=res("grn/report.json"),
    params:
        out_dir=res("grn"),
        seed=config["seed"],
        options=flags(
            "grn",
            ["n_bootstraps", "bootstrap", "mi_method", "mi_pvalue", "mi_alpha", "dpi_tolerance", "consolidation", "correction",
             "consolidation_alpha", "metacell_k", "min_cells_expressed", "consensus_fdr",
             "permutation_control"],
        ),
    threads: config["grn"]["threads"]
    log:
        log_of("grn"),
    benchmark:
        bench_of("grn")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph grn --adata {input.adata} --regulators {input.regulators} --seed {params.seed}"
        " {params.options} --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"
