# ---- Cell graph transformers and perturbation prediction (cellgraph perturb). Not part of
# `rule all`: `snakemake perturbation` runs forward prediction (Papalexi 2021, config perturbation.seeds),
# yeast fitness/epsilon (Costanzo 2016), reverse perturbation prediction and their figures/tables;
# `snakemake perturbation_seeds` runs forward prediction over perturbation.study_seeds (the >= 5-seed study).
rule perturbation_forward:
    """Leave-perturbation-out forward prediction on Papalexi 2021: equivariant cell graph transformer on fixed
    gene features against no-change, mean-change, own-gene, weighted-mean and linear baselines."""
    input:
        adata=PERT.get("adata", []),
        multigraph=res("multigraph/human/multigraph.npz"),
        gremln=[res("train/gremln/model.pt")] if PERT.get("gremln_features") else [],
    output:
        **forward_outputs("forward"),
    params:
        out_dir=folder_of("report"),
        seeds=lambda wildcards: " ".join(shlex.quote(str(s)) for s in PERT["seeds"]),
        gremln=lambda wildcards, input: " ".join(f"--gremln-model {shlex.quote(str(p))}" for p in input.gremln),
        options=lambda wildcards: pert_flags(FORWARD_OPTIONS),
    threads: PERT.get("threads", 1)
    log:
        log_of("perturbation_forward"),
    benchmark:
        bench_of("perturbation_forward")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph perturb --task forward --adata {input.adata:q} --multigraph {input.multigraph:q}"
        " --seeds {params.seeds} {params.gremln} {params.options} --threads {threads} --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"


use rule perturbation_forward as perturbation_forward_seeds with:
    output:
        **forward_outputs("forward_seeds"),
    params:
        out_dir=folder_of("report"),
        seeds=lambda wildcards: " ".join(shlex.quote(str(s)) for s in PERT["study_seeds"]),
        gremln=lambda wildcards, input: " ".join(f"--gremln-model {shlex.quote(str(p))}" for p in input.gremln),
        options=lambda wildcards: pert_flags(FORWARD_OPTIONS),
    log:
        log_of("perturbation_forward_seeds"),
    benchmark:
        bench_of("perturbation_forward_seeds")


rule perturbation_seeds:
    """Target: forward prediction over perturbation.study_seeds (paired Wilcoxon tests over perturbations x seeds)."""
    input:
        rules.perturbation_forward_seeds.output,


rule perturbation_yeast:
    """Yeast double-mutant fitness and epsilon (Costanzo 2016 pairs and single-mutant table): both cell graph
    transformers against mean, multiplicative and additive baselines on pair folds and gene-disjoint folds."""
    input:
        pairs=PERT.get("pairs", []),
        smf=PERT.get("smf", []),
        string_info=PERT.get("string_info", []),
        multigraph=res("multigraph/yeast/multigraph.npz"),
    output:
        metrics=res("perturbation/yeast/metrics.tsv"),
        summary=res("perturbation/yeast/summary.tsv"),
        comparisons=res("perturbation/yeast/comparisons.tsv"),
        attention=res("perturbation/yeast/attention_diagnostics.tsv"),
        attention_heads=res("perturbation/yeast/attention_heads.tsv"),
        report=res("perturbation/yeast/report.json"),
    params:
        out_dir=folder_of("report"),
        seed=config["seed"],
        options=lambda wildcards: pert_flags(["preset", "head", "graph_reg", "n_folds", "yeast_max_epochs",
                                              "batch_size", "lr", "yeast_hops", "diagnostics_every", "ridge"]),
    threads: PERT.get("threads", 1)
    log:
        log_of("perturbation_yeast"),
    benchmark:
        bench_of("perturbation_yeast")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph perturb --task yeast --pairs {input.pairs:q} --smf {input.smf:q} --string-info {input.string_info:q}"
        " --multigraph {input.multigraph:q} --seed {params.seed:q} {params.options} --threads {threads}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


# ---- reverse perturbation prediction (GREmLN paper 4.5, Table 3); target: perturbation ----
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
        out_dir=folder_of("report"),
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
        "cellgraph perturb --task reverse --adata {input.adata:q} --gremln-model {input.gremln:q}"
        " --vanilla-model {input.vanilla:q} --grn-networks {input.networks:q} --seed {params.seed:q}"
        " {params.options} --threads {threads} --out-dir {params.out_dir:q} > {log:q} 2>&1"


# ---- perturbation figures and tables; `snakemake perturbation` (not part of `rule all`) ----
rule perturbation_figures:
    """Forward-prediction correlations vs baselines, yeast fitness/epsilon, reverse-prediction confusion matrix."""
    input:
        res("perturbation/forward/metrics.tsv"),
        res("perturbation/forward/summary.tsv"),
        res("perturbation/forward/comparisons.tsv"),
        res("perturbation/forward/own_gene.tsv"),
        res("perturbation/yeast/summary.tsv"),
        res("perturbation/yeast/comparisons.tsv"),
        res("perturbation/yeast/metrics.tsv"),
        res("perturbation/forward/score_summary.tsv"),
        res("perturbation/forward/attention_diagnostics.tsv"),
        res("perturbation/forward/attention_heads.tsv"),
        res("perturbation/yeast/attention_diagnostics.tsv"),
        res("perturbation/yeast/attention_heads.tsv"),
        res("perturbation/reverse/metrics.tsv"),
        res("perturbation/reverse/confusion.npz"),
    output:
        figures=[report(res(f"figures/{name}.png"), caption="../report/perturbation.rst", category="Perturbation")
                 for name in PERT_FIGURES],
        pdf=[res(f"figures/{name}.pdf") for name in PERT_FIGURES],
        tables=reported_tables(PERT_TABLES, "../report/perturbation_tables.rst"),
    params:
        forward_dir=folder_of(0, of="input"),
        yeast_dir=folder_of(4, of="input"),
        reverse_dir=folder_of(12, of="input"),
        figures_dir=folder_of("figures"),
        tables_dir=folder_of("tables"),
    log:
        log_of("perturbation_figures"),
    benchmark:
        bench_of("perturbation_figures")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph perturb --task figures --forward-dir {params.forward_dir:q} --yeast-dir {params.yeast_dir:q}"
        " --reverse-dir {params.reverse_dir:q} --figures-dir {params.figures_dir:q} --tables-dir {params.tables_dir:q}"
        " > {log:q} 2>&1"


rule perturbation:
    """Target: forward, yeast and reverse perturbation prediction with their figures and tables."""
    input:
        rules.perturbation_figures.output,
