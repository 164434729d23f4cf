# ---- issue 7: latent-token diffusion transformer (cellgraph diffusion); not part of `rule all` ----
# `snakemake diffusion` trains, samples and evaluates it on PBMC (conditioned on cell type) and on
# Papalexi 2021 (conditioned on the perturbation set, leave-perturbation-out). Outputs: results/diffusion/{dataset}/.
DIFF = config.get("diffusion", {})
DIFF_MODEL_KEYS = ["preset", "n_genes", "min_grna_frac", "control", "n_folds", "folds_run", "val_fraction",
                   "max_train_cells", "n_tokens", "d_model", "n_layers", "n_heads", "ae_hidden", "conditioning",
                   "training_mode", "prediction", "schedule", "cond_dropout", "gremln_init", "likelihood",
                   "latent_dim", "kl_weight", "set_features", "rwr_dim", "feature_dropout"]
DIFF_TRAIN_KEYS = ["ae_steps", "max_steps", "batch_size", "lr", "weight_decay", "ema_decay"]
DIFF_SAMPLE_KEYS = ["sampler", "ddim_steps", "eta", "guidance_scale", "n_generate"]
DIFF_EVAL_KEYS = ["guidance_scales", "curve_cells", "curve_seen", "timing_cells", "n_pcs"]
DIFF_SCVI_KEYS = ["scvi_epochs", "scvi_latent"]


def diffusion_adata(wildcards):
    return res("expression/adata.h5ad") if wildcards.dataset == "pbmc" else DIFF["papalexi_adata"]


def diffusion_gremln(wildcards):
    """The GREmLN model whose gene embeddings initialise the set-gene embeddings (switch gremln_init)."""
    return [res("train/gremln/model.pt")] if DIFF.get("gremln_init") and wildcards.dataset == "papalexi" else []


def diffusion_multigraph(wildcards):
    """The human multigraph whose random-walk features embed the Papalexi set genes (set_features: rwr)."""
    return [res("multigraph/human/multigraph.npz")] if DIFF.get("set_features") == "rwr" and \
        wildcards.dataset == "papalexi" else []


def diffusion_flags(keys, dataset):
    """Flags of config diffusion, with diffusion.per_dataset[dataset] replacing the shared values."""
    return flags("diffusion", keys, DIFF.get("per_dataset", {}).get(dataset, {}))


rule diffusion_train:
    """Train the latent diffusion model (autoencoder, then diffusion in the frozen latent; EMA; resumable)."""
    input:
        adata=diffusion_adata,
        gremln=diffusion_gremln,
        multigraph=diffusion_multigraph,
    output:
        model=res("diffusion/{dataset}/model.pt"),
        metrics=report(res("diffusion/{dataset}/metrics.tsv"), category="Diffusion",
                       labels={"dataset": "{dataset}", "file": "training curves"}),
    wildcard_constraints:
        dataset="pbmc|papalexi",
    params:
        out_dir=res("diffusion/{dataset}"),
        # resumable Lightning checkpoints: not a declared output, so a failed job keeps them
        checkpoint_dir=res("checkpoints/diffusion/{dataset}"),
        seed=config["seed"],
        gremln=lambda wildcards, input: f"--gremln-model {input.gremln[0]}" if input.gremln else "",
        multigraph=lambda wildcards, input: f"--multigraph {input.multigraph[0]}" if input.multigraph else "",
        options=lambda wildcards: diffusion_flags(DIFF_MODEL_KEYS + DIFF_TRAIN_KEYS, wildcards.dataset),
    threads: DIFF.get("threads", 2)
    resources:
        runtime=lambda wildcards, attempt: 120 * attempt,
    log:
        log_of("diffusion_train_{dataset}"),
    benchmark:
        bench_of("diffusion_train_{dataset}")
    conda:
        "../../envs/cellgraph-gpu.yaml"
    shell:
        "cellgraph diffusion --task train --dataset {wildcards.dataset} --adata {input.adata} {params.gremln}"
        " {params.multigraph}"
        " --seed {params.seed} {params.options} --threads {threads} --checkpoint-dir {params.checkpoint_dir}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule diffusion_sample:
    """Generate cells with DDIM or DDPM and classifier-free guidance; conditions in obs."""
    input:
        model=res("diffusion/{dataset}/model.pt"),
    output:
        generated=res("diffusion/{dataset}/generated.h5ad"),
    wildcard_constraints:
        dataset="pbmc|papalexi",
    params:
        out_dir=res("diffusion/{dataset}"),
        seed=config["seed"],
        options=lambda wildcards: diffusion_flags(DIFF_SAMPLE_KEYS, wildcards.dataset),
    threads: DIFF.get("threads", 2)
    log:
        log_of("diffusion_sample_{dataset}"),
    benchmark:
        bench_of("diffusion_sample_{dataset}")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph diffusion --task sample --dataset {wildcards.dataset} --model-path {input.model}"
        " --seed {params.seed} {params.options} --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"


def diffusion_eval_outputs(dataset, figure):
    prefix = f"diffusion/{dataset}"
    return {
        "evaluation": report(res(f"{prefix}/evaluation.tsv"), category="Diffusion",
                             labels={"dataset": dataset, "file": "evaluation"}),
        "summary": report(res(f"{prefix}/summary.tsv"), category="Diffusion",
                          labels={"dataset": dataset, "file": "summary"}),
        "guidance": report(res(f"{prefix}/guidance.tsv"), category="Diffusion",
                           labels={"dataset": dataset, "file": "guidance curve"}),
        "timing": report(res(f"{prefix}/sampling_time.tsv"), category="Diffusion",
                         labels={"dataset": dataset, "file": "sampling time"}),
        "figure": report(res(f"{prefix}/{figure}.png"), category="Diffusion",
                         labels={"dataset": dataset, "file": figure}),
        "guidance_figure": report(res(f"{prefix}/guidance.png"), category="Diffusion",
                                  labels={"dataset": dataset, "file": "guidance figure"}),
        "report": res(f"{prefix}/report.json"),
    }


DIFF_EVAL_SHELL = (
    "cellgraph diffusion --task evaluate --dataset {params.dataset} --adata {input.adata}"
    " --model-path {input.model} --generated {input.generated} --seed {params.seed} {params.options}"
    " --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"
)


rule diffusion_evaluate_pbmc:
    """PBMC per cell type: Pearson of means, MMD, energy distance, C2ST AUROC; UMAP; guidance curve; timing."""
    input:
        adata=res("expression/adata.h5ad"),
        model=res("diffusion/pbmc/model.pt"),
        generated=res("diffusion/pbmc/generated.h5ad"),
    output:
        **diffusion_eval_outputs("pbmc", "umap"),
        criteria=report(res("diffusion/pbmc/criteria.tsv"), category="Diffusion",
                        labels={"dataset": "pbmc", "file": "criteria per cell type"}),
        **({"scvi": res("diffusion/pbmc/baseline_scvi.h5ad")} if DIFF.get("scvi_epochs", 0) else {}),
    params:
        dataset="pbmc",
        out_dir=res("diffusion/pbmc"),
        seed=config["seed"],
        options=diffusion_flags(["n_genes", "ddim_steps", "eta", "guidance_scale"] + DIFF_EVAL_KEYS + DIFF_SCVI_KEYS,
                                "pbmc"),
    threads: DIFF.get("threads", 2)
    log:
        log_of("diffusion_evaluate_pbmc"),
    benchmark:
        bench_of("diffusion_evaluate_pbmc")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        DIFF_EVAL_SHELL


rule diffusion_evaluate_papalexi:
    """Papalexi per perturbation: Pearson of generated vs observed mean change, and both baselines."""
    input:
        adata=DIFF.get("papalexi_adata", []),
        model=res("diffusion/papalexi/model.pt"),
        generated=res("diffusion/papalexi/generated.h5ad"),
    output:
        **diffusion_eval_outputs("papalexi", "perturbation"),
        comparison=report(res("diffusion/papalexi/comparison.tsv"), category="Diffusion",
                          labels={"dataset": "papalexi", "file": "paired comparison"}),
    params:
        dataset="papalexi",
        out_dir=res("diffusion/papalexi"),
        seed=config["seed"],
        options=diffusion_flags(["min_grna_frac", "control", "ddim_steps", "eta", "guidance_scale"] + DIFF_EVAL_KEYS,
                                "papalexi"),
    threads: DIFF.get("threads", 2)
    log:
        log_of("diffusion_evaluate_papalexi"),
    benchmark:
        bench_of("diffusion_evaluate_papalexi")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        DIFF_EVAL_SHELL


rule diffusion:
    """Target: train, sample and evaluate the diffusion model on every dataset of diffusion.datasets."""
    input:
        [res(f"diffusion/{d}/report.json") for d in DIFF.get("datasets", [])],
