rule train:
    """Masked expression-rank modelling: GREmLN (heat-kernel attention) or the vanilla ablation."""
    input:
        vocab=res("tokens/vocab.tsv"),
        train=res("tokens/train.npz"),
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
    threads: config["train"]["threads"]
    resources:
        runtime=lambda wildcards, attempt: 120 * attempt,
    log:
        log_of("train_{model}"),
    benchmark:
        bench_of("train_{model}")
    conda:
        "../../envs/cellgraph-gpu.yaml"
    shell:
        "cellgraph train --tokens-dir {params.tokens_dir} --coefficients {input.coefficients}"
        " --model {wildcards.model} --seed {params.seed} {params.options} --threads {threads}"
        " --checkpoint-dir {params.checkpoint_dir} --out-dir {params.out_dir} > {log} 2>&1"
