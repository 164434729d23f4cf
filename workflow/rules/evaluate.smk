rule evaluate:
    """Frozen-embedding evaluation of one model: annotation and its baselines, masked tokens, hidden edges, probe."""
    input:
        model=res("train/{model}/model.pt"),
        shards=expand(res("tokens/{split}.npz"), split=["train", "val", "test", "heldout", "train_integrated"]),
        adata=res("expression/adata.h5ad"),
        graph_edges=res("tokens/graph_edges.tsv.gz"),
        coefficients=res("spectral/coefficients.json"),
    output:
        annotation=res("evaluate/{model}/annotation.json"),
        baselines=res("evaluate/{model}/baselines.json"),
        masked=res("evaluate/{model}/masked.json"),
        edge_recovery=res("evaluate/{model}/edge_recovery.json"),
        edge_curves=res("evaluate/{model}/edge_curves.npz"),
        edge_scores=res("evaluate/{model}/edge_scores.tsv"),
        probe=res("evaluate/{model}/probe.json"),
        probe_scatter=res("evaluate/{model}/probe_scatter.npz"),
        embeddings=res("evaluate/{model}/embeddings.h5ad"),
    wildcard_constraints:
        model="gremln|vanilla",
    params:
        tokens_dir=folder_of("shards", of="input"),
        out_dir=folder_of("annotation"),
        seed=config["seed"],
        options=flags("evaluate", ["n_splits", "probe_alpha"]),
    threads: config["train"]["threads"]
    log:
        log_of("evaluate_{model}"),
    benchmark:
        bench_of("evaluate_{model}")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph evaluate --model-path {input.model:q} --tokens-dir {params.tokens_dir:q}"
        " --adata {input.adata:q} --graph-edges {input.graph_edges:q} --coefficients {input.coefficients:q}"
        " --seed {params.seed:q} {params.options} --out-dir {params.out_dir:q} > {log:q} 2>&1"
