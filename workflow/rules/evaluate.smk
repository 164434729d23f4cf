rule evaluate:
    """Frozen-embedding evaluation of one model: annotation, masked-edge recovery, linear probe."""
    input:
        model=res("train/{model}/model.pt"),
        shards=expand(res("tokens/{split}.npz"), split=["train", "val", "test", "heldout"]),
        adata=res("expression/adata.h5ad"),
        networks=res("grn/networks.tsv.gz"),
        coefficients=res("spectral/coefficients.json"),
    output:
        annotation=res("evaluate/{model}/annotation.json"),
        edge_recovery=res("evaluate/{model}/edge_recovery.json"),
        edge_curves=res("evaluate/{model}/edge_curves.npz"),
        probe=res("evaluate/{model}/probe.json"),
        probe_scatter=res("evaluate/{model}/probe_scatter.npz"),
    wildcard_constraints:
        model="gremln|vanilla",
    params:
        tokens_dir=res("tokens"),
        out_dir=res("evaluate/{model}"),
        seed=config["seed"],
        options=flags("evaluate", ["n_splits", "edge_holdout_fraction", "probe_alpha"]),
    threads: config["train"]["threads"]
    log:
        log_of("evaluate_{model}"),
    benchmark:
        bench_of("evaluate_{model}")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph evaluate --model-path {input.model} --tokens-dir {params.tokens_dir}"
        " --adata {input.adata} --networks {input.networks} --coefficients {input.coefficients}"
        " --seed {params.seed} {params.options} --out-dir {params.out_dir} > {log} 2>&1"
