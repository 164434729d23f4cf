# ---- latent-token diffusion transformer (cellgraph diffusion); not part of `rule all` ----
# `snakemake diffusion` trains, samples and evaluates it on PBMC (conditioned on cell type) and on
# Papalexi 2021 (conditioned on the perturbation set, leave-perturbation-out). Outputs: results/diffusion/{dataset}/.
rule diffusion_train:
    """Train the latent diffusion model (autoencoder, then diffusion in the frozen latent; EMA; resumable)."""
    input:
        adata=diffusion_adata,
        gremln=diffusion_gremln,
        multigraph=diffusion_multigraph,
    output:
        model=res("diffusion/{dataset}/model.pt"),
        metrics=report(res("diffusion/{dataset}/metrics.tsv"), caption="../report/diffusion.rst", category="Diffusion",
                       labels={"dataset": "{dataset}", "file": "training curves"}),
    wildcard_constraints:
        dataset="pbmc|papalexi",
    params:
        out_dir=folder_of("model"),
        # resumable Lightning checkpoints: not a declared output, so a failed job keeps them
        checkpoint_dir=res("checkpoints/diffusion/{dataset}"),
        seed=config["seed"],
        gremln=lambda wildcards, input: f"--gremln-model {shlex.quote(input.gremln[0])}" if input.gremln else "",
        multigraph=lambda wildcards, input: f"--multigraph {shlex.quote(input.multigraph[0])}" if input.multigraph else "",
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
        "cellgraph diffusion --task train --dataset {wildcards.dataset:q} --adata {input.adata:q} {params.gremln}"
        " {params.multigraph}"
        " --seed {params.seed:q} {params.options} --threads {threads} --checkpoint-dir {params.checkpoint_dir:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule diffusion_sample:
    """Generate cells with DDIM or DDPM and classifier-free guidance; conditions in obs."""
    input:
        model=res("diffusion/{dataset}/model.pt"),
    output:
        generated=res("diffusion/{dataset}/generated.h5ad"),
    wildcard_constraints:
        dataset="pbmc|papalexi",
    params:
        out_dir=folder_of("generated"),
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
        "cellgraph diffusion --task sample --dataset {wildcards.dataset:q} --model-path {input.model:q}"
        " --seed {params.seed:q} {params.options} --threads {threads} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule diffusion_evaluate_pbmc:
    """PBMC per cell type: Pearson of means, MMD, energy distance, C2ST AUROC; UMAP; guidance curve; timing."""
    input:
        adata=res("expression/adata.h5ad"),
        model=res("diffusion/pbmc/model.pt"),
        generated=res("diffusion/pbmc/generated.h5ad"),
    output:
        **diffusion_eval_outputs("pbmc", "umap"),
        criteria=report(res("diffusion/pbmc/criteria.tsv"), caption="../report/diffusion.rst", category="Diffusion",
                        labels={"dataset": "pbmc", "file": "criteria per cell type"}),
        **({"scvi": res("diffusion/pbmc/baseline_scvi.h5ad")} if DIFF.get("scvi_epochs", 0) else {}),
    params:
        dataset="pbmc",
        out_dir=folder_of("report"),
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
        comparison=report(res("diffusion/papalexi/comparison.tsv"), caption="../report/diffusion.rst", category="Diffusion",
                          labels={"dataset": "papalexi", "file": "paired comparison"}),
    params:
        dataset="papalexi",
        out_dir=folder_of("report"),
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
