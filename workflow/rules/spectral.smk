rule spectral:
    """Chebyshev coefficients of the heat kernel exp(-beta L), checked against expm on each network."""
    input:
        networks=res("grn/networks.tsv.gz"),
    output:
        coefficients=res("spectral/coefficients.json"),
        report=res("spectral/report.tsv"),
    params:
        out_dir=res("spectral"),
        options=flags("spectral", ["beta", "tol", "mi_weighted"]),
    log:
        log_of("spectral"),
    benchmark:
        bench_of("spectral")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph spectral --networks {input.networks} {params.options} --out-dir {params.out_dir}"
        " > {log} 2>&1"
