# ---- GREmLN against vanilla over pretraining seeds; `snakemake ablation` (not part of `rule all`) ----
# Every seed trains both models on the main run's token shards (same vocabulary, cell graphs and hidden edges);
# the main run's own seed reuses results/train and results/evaluate.
use rule train as ablation_train with:
    output:
        model=res("ablation/seed{seed}/train/{model}/model.pt"),
        metrics=res("ablation/seed{seed}/train/{model}/metrics.tsv"),
    wildcard_constraints:
        model="gremln|vanilla",
        seed=r"\d+",
    params:
        tokens_dir=folder_of("vocab", of="input"),
        out_dir=folder_of("model"),
        checkpoint_dir=res("ablation/seed{seed}/checkpoints/{model}"),
        seed=lambda wildcards: wildcards.seed,
        options=flags("train", ["preset", "max_epochs", "batch_size", "mask_rate", "pretrain_on", "diffuse",
                                "gepc_weight"]),
        launch=lambda wildcards, resources: (
            f"{resources.mpi} -n {resources.tasks} --ntasks-per-node={max(resources.tasks // resources.nodes, 1)} "
            if resources.get("mpi") else ""
        ),
        devices=lambda wildcards, resources: max(resources.tasks // resources.nodes, 1),
    log:
        res("logs/ablation/train_{model}_seed{seed}.log"),
    benchmark:
        res("benchmarks/ablation/train_{model}_seed{seed}.tsv")


use rule evaluate as ablation_evaluate with:
    input:
        model=res("ablation/seed{seed}/train/{model}/model.pt"),
        shards=expand(res("tokens/{split}.npz"), split=["train", "val", "test", "heldout", "train_integrated"]),
        adata=res("expression/adata.h5ad"),
        graph_edges=res("tokens/graph_edges.tsv.gz"),
        coefficients=res("spectral/coefficients.json"),
    output:
        **{name.split(".")[0]: res(f"ablation/seed{{seed}}/evaluate/{{model}}/{name}") for name in EVAL_FILES},
    wildcard_constraints:
        model="gremln|vanilla",
        seed=r"\d+",
    params:
        tokens_dir=folder_of("shards", of="input"),
        out_dir=folder_of("annotation"),
        seed=config["seed"],
        options=flags("evaluate", ["n_splits", "probe_alpha"]),
    log:
        res("logs/ablation/evaluate_{model}_seed{seed}.log"),
    benchmark:
        res("benchmarks/ablation/evaluate_{model}_seed{seed}.tsv")


rule ablation:
    """GREmLN minus vanilla over pretraining seeds: paired differences with 95% t-intervals."""
    input:
        [f"{ablation_evaluate_dir(s)}/{m}/{name}" for s in ABLATION_SEEDS for m in ["gremln", "vanilla"]
         for name in EVAL_FILES],
    output:
        per_seed=report(res("ablation/ablation.tsv"), caption="../report/ablation_seeds.rst", category="Tables"),
        paired=report(res("ablation/ablation_paired.csv"), caption="../report/ablation.rst", category="Tables"),
        paired_md=res("ablation/ablation_paired.md"),
    params:
        runs=" ".join(f"{s}={shlex.quote(ablation_evaluate_dir(s))}" for s in ABLATION_SEEDS),
        out_dir=folder_of("per_seed"),
    log:
        log_of("ablation"),
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph ablation --runs {params.runs} --out-dir {params.out_dir:q} > {log:q} 2>&1"
