rule spectral:
    """Chebyshev coefficients of exp(-beta L) (beta auto: 1/lambda_min of cell subgraphs), checked against expm."""
    input:
        networks=res("grn/networks.tsv.gz"),
        tokens=res("tokens/train.npz"),
    output:
        coefficients=res("spectral/coefficients.json"),
        report=res("spectral/report.tsv"),
    params:
        out_dir=folder_of("report"),
        seed=config["seed"],
        options=flags("spectral", ["beta", "tol", "mi_weighted"]),
    log:
        log_of("spectral"),
    benchmark:
        bench_of("spectral")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph spectral --networks {input.networks:q} --tokens {input.tokens:q} --seed {params.seed:q}"
        " {params.options} --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"
