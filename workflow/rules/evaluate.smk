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
        tokens_dir=res("tokens"),
        out_dir=res("evaluate/{model}"),
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
        "cellgraph evaluate --model-path {input.model} --tokens-dir {params.tokens_dir}"
        " --adata {input.adata} --graph-edges {input.graph_edges} --coefficients {input.coefficients}"
        " --seed {params.seed} {params.options} --out-dir {params.out_dir} > {log} 2>&1"


# ---- issue 5: reverse perturbation prediction (GREmLN paper 4.5, Table 3); target: perturbation ----
rule perturbation_reverse:
    """Predict a Papalexi cell's perturbation from expression (lasso) and frozen GREmLN / vanilla embeddings."""
    input:
        adata=config.get("perturbation", {}).get("adata", []),
        gremln=res("train/gremln/model.pt"),
        vanilla=res("train/vanilla/model.pt"),
        networks=res("grn/networks.tsv.gz"),
    output:
        metrics=res("perturbation/reverse/metrics.tsv"),
        summary=res("perturbation/reverse/summary.tsv"),
        confusion=res("perturbation/reverse/confusion.npz"),
        report=res("perturbation/reverse/report.json"),
    params:
        out_dir=res("perturbation/reverse"),
        seed=config["seed"],
        options=lambda wildcards: flags("perturbation", ["min_grna_frac", "control", "n_top_perturbations",
                                                         "n_splits", "grn_cell_type", "finetune_epochs",
                                                         "finetune_lr"]),
    threads: config.get("perturbation", {}).get("threads", 1)
    log:
        log_of("perturbation_reverse"),
    benchmark:
        bench_of("perturbation_reverse")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph perturb --task reverse --adata {input.adata} --gremln-model {input.gremln}"
        " --vanilla-model {input.vanilla} --grn-networks {input.networks} --seed {params.seed}"
        " {params.options} --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"
