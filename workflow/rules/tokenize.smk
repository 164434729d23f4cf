rule tokenize:
    """Per-cell rank tokens and subgraphs (Bayesian graph integration for unseen cells) in shard files."""
    input:
        adata=res("expression/adata.h5ad"),
        networks=res("grn/networks.tsv.gz"),
    output:
        vocab=res("tokens/vocab.tsv"),
        shards=expand(res("tokens/{split}.npz"), split=["train", "val", "test", "heldout", "train_integrated"]),
        report=res("tokens/report.json"),
    params:
        out_dir=res("tokens"),
        seed=config["seed"],
        options=flags("tokenize", ["n_bins", "max_seq_len", "integration_alpha", "knn_k"]),
    log:
        log_of("tokenize"),
    benchmark:
        bench_of("tokenize")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph tokenize --adata {input.adata} --networks {input.networks} --seed {params.seed}"
        " {params.options} --out-dir {params.out_dir} > {log} 2>&1"
