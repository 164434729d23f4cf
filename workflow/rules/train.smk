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
        tokens_dir=folder_of("vocab", of="input"),
        out_dir=folder_of("model"),
        # resumable Lightning checkpoints: not a declared output, so a failed job keeps them
        checkpoint_dir=res("checkpoints/{model}"),
        seed=config["seed"],
        options=flags("train", ["preset", "max_epochs", "batch_size", "mask_rate", "pretrain_on", "diffuse",
                                "gepc_weight"]),
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
        "echo \"train {wildcards.model:q}: {resources.tasks} rank(s) on {resources.nodes} node(s),"
        " CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-}}\" > {log:q}; "
        "{params.launch}cellgraph train --tokens-dir {params.tokens_dir:q} --coefficients {input.coefficients:q}"
        " --model {wildcards.model:q} --seed {params.seed:q} {params.options} --threads {threads}"
        " --devices {params.devices:q} --num-nodes {resources.nodes} --checkpoint-every-n-steps 50"
        " --checkpoint-dir {params.checkpoint_dir:q} --out-dir {params.out_dir:q} >> {log:q} 2>&1"
