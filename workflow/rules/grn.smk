rule grn:
    """ARACNe per seen cell type on its train cells, with the permutation control's false edges per type."""
    input:
        adata=res("expression/adata.h5ad"),
        regulators=res("networks/regulators.txt"),
    output:
        networks=res("grn/networks.tsv.gz"),
        control=report(res("grn/control.tsv"), caption="../report/grn_control.rst", category="GRN"),
        report=res("grn/report.json"),
    params:
        out_dir=folder_of("report"),
        seed=config["seed"],
        options=flags("grn", [key for key in config["grn"] if key != "threads"]),
    threads: config["grn"]["threads"]
    log:
        log_of("grn"),
    benchmark:
        bench_of("grn")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph grn --adata {input.adata:q} --regulators {input.regulators:q} --seed {params.seed:q}"
        " {params.options} --threads {threads} --out-dir {params.out_dir:q} > {log:q} 2>&1"
