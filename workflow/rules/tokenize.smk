
rule tokenize:
    """Vocabulary, cell graphs with hidden edges, per-cell rank tokens in shard files (pretraining corpus too)."""
    input:
        adata=res("expression/adata.h5ad"),
        networks=res("grn/networks.tsv.gz"),
        prior=res("networks/edges.parquet"),
        pretrain=PRETRAIN or [],
    output:
        vocab=res("tokens/vocab.tsv"),
        shards=expand(res("tokens/{split}.npz"), split=TOKEN_SHARDS),
        graph_edges=res("tokens/graph_edges.tsv.gz"),
        report=res("tokens/report.json"),
    params:
        out_dir=folder_of("report"),
        seed=config["seed"],
        pretrain=f"--pretrain-adata {shlex.quote(PRETRAIN)}" if PRETRAIN else "",
        options=flags("tokenize", ["n_top_genes", "n_bins", "tie_break", "neighbours", "max_seq_len", "graph",
                                   "prior_graphs", "edge_holdout_fraction", "integration_alpha", "knn_k"]),
        qc=flags("expression", ["min_counts", "max_counts", "min_genes", "target_sum"]),
        bootstraps=flags("grn", ["n_bootstraps"]),
    log:
        log_of("tokenize"),
    benchmark:
        bench_of("tokenize")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph tokenize --adata {input.adata:q} --networks {input.networks:q} --prior-edges {input.prior:q}"
        " {params.pretrain} --seed {params.seed:q} {params.options} {params.qc} {params.bootstraps}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
