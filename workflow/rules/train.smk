rule train:
    """Masked expression-rank modelling: GREmLN (heat-kernel attention) or the vanilla ablation."""
    input:
        vocab=res("tokens/vocab.tsv"),
        train=res("tokens/train.npz"),
        pretrain=[res("tokens/pretrain.npz")] if PRETRAIN else [],
        val=res("tokens/val.npz"),
        coefficients=res("spectral/coefficients.json"),
    output:
        model=res("train/{model}/model.pt"),
        metrics=res("train/{model}/metrics.tsv"),
    wildcard_constraints:
        model="gremln|vanilla",
    params:
        tokens_dir=res("tokens"),
        out_dir=res("train/{model}"),
        # resumable Lightning checkpoints: not a declared output, so a failed job keeps them
        checkpoint_dir=res("checkpoints/{model}"),
        seed=config["seed"],
        options=flags("train", ["preset", "max_epochs", "batch_size", "mask_rate"]),
        # data-parallel launch: with resources `mpi` (e.g. "srun", set by the Slurm profile) the job's
        # tasks are started by `srun -n {tasks}` (explicit: the job step strips SLURM_*), one rank per
        # task; without it, Lightning starts `tasks` processes on this machine itself
        # (--ntasks-per-node: Lightning's SLURM environment requires SLURM_NTASKS_PER_NODE)
        launch=lambda wildcards, resources: (
            f"{resources.mpi} -n {resources.tasks} --ntasks-per-node={max(resources.tasks // resources.nodes, 1)} "
            if resources.get("mpi") else ""
        ),
        devices=lambda wildcards, resources: max(resources.tasks // resources.nodes, 1),
    threads: config["train"]["threads"]
    resources:
        runtime=lambda wildcards, attempt: 120 * attempt,
        tasks=1,  # ranks (GPUs, or CPU processes) of data-parallel training
        nodes=1,
    log:
        log_of("train_{model}"),
    benchmark:
        bench_of("train_{model}")
    conda:
        "../../envs/cellgraph-gpu.yaml"
    shell:
        # rule shells run with `set -u`: an unset CUDA_VISIBLE_DEVICES must be written with a default
        "echo \"train {wildcards.model}: {resources.tasks} rank(s) on {resources.nodes} node(s),"
        " CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-}}\" > {log}; "
        "{params.launch}cellgraph train --tokens-dir {params.tokens_dir} --coefficients {input.coefficients}"
        " --model {wildcards.model} --seed {params.seed} {params.options} --threads {threads}"
        " --devices {params.devices} --num-nodes {resources.nodes} --checkpoint-every-n-steps 50"
        " --checkpoint-dir {params.checkpoint_dir} --out-dir {params.out_dir} >> {log} 2>&1"


# ---- issue 5: cell graph transformers (cellgraph perturb); not part of `rule all` (target: perturbation) ----
PERT = config.get("perturbation", {})


def pert_flags(keys):
    return flags("perturbation", keys)


rule perturbation_forward:
    """Leave-perturbation-out forward prediction on Papalexi 2021 with the equivariant cell graph transformer."""
    input:
        adata=PERT.get("adata", []),
        multigraph=res("multigraph/human/multigraph.npz"),
    output:
        metrics=res("perturbation/forward/metrics.tsv"),
        summary=res("perturbation/forward/summary.tsv"),
        predictions=res("perturbation/forward/predictions.npz"),
        model=res("perturbation/forward/model.pt"),
        score_predictions=res("perturbation/forward/score_predictions.tsv"),
        score_summary=res("perturbation/forward/score_summary.tsv"),
        attention=res("perturbation/forward/attention_diagnostics.tsv"),
        attention_heads=res("perturbation/forward/attention_heads.tsv"),
        report=res("perturbation/forward/report.json"),
    params:
        out_dir=res("perturbation/forward"),
        seed=config["seed"],
        options=lambda wildcards: pert_flags(["min_grna_frac", "control", "preset", "graph_reg", "n_folds",
                                              "max_epochs", "batch_size", "lr", "score_weight",
                                              "diagnostics_every"]),
    threads: PERT.get("threads", 1)
    log:
        log_of("perturbation_forward"),
    benchmark:
        bench_of("perturbation_forward")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph perturb --task forward --adata {input.adata} --multigraph {input.multigraph}"
        " --seed {params.seed} {params.options} --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"


rule perturbation_yeast:
    """Yeast double-mutant fitness and epsilon (Costanzo 2016 fragment): both cell graph transformers, 5-fold CV."""
    input:
        pairs=PERT.get("pairs", []),
        string_info=PERT.get("string_info", []),
        multigraph=res("multigraph/yeast/multigraph.npz"),
    output:
        metrics=res("perturbation/yeast/metrics.tsv"),
        summary=res("perturbation/yeast/summary.tsv"),
        attention=res("perturbation/yeast/attention_diagnostics.tsv"),
        attention_heads=res("perturbation/yeast/attention_heads.tsv"),
        report=res("perturbation/yeast/report.json"),
    params:
        out_dir=res("perturbation/yeast"),
        seed=config["seed"],
        options=lambda wildcards: pert_flags(["preset", "head", "graph_reg", "n_folds", "yeast_max_epochs",
                                              "batch_size", "lr", "yeast_hops", "diagnostics_every"]),
    threads: PERT.get("threads", 1)
    log:
        log_of("perturbation_yeast"),
    benchmark:
        bench_of("perturbation_yeast")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph perturb --task yeast --pairs {input.pairs} --string-info {input.string_info}"
        " --multigraph {input.multigraph} --seed {params.seed} {params.options} --threads {threads}"
        " --out-dir {params.out_dir} > {log} 2>&1"
