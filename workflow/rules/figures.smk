rule figures:
    """Paper figures (confusion matrices, ROC/PR curves, linear probe) and tables 1 and 2."""
    input:
        expand(
            res("evaluate/{model}/{name}"),
            model=MODELS,
            name=["annotation.json", "edge_recovery.json", "edge_curves.npz", "probe.json", "probe_scatter.npz",
                  "baselines.json", "masked.json", "edge_scores.tsv"],
        ),
    output:
        confusion=report(res("figures/confusion_matrices.png"), caption="../report/confusion.rst", category="Figures"),
        curves=report(res("figures/roc_pr_curves.png"), caption="../report/curves.rst", category="Figures"),
        probe=report(res("figures/linear_probe.png"), caption="../report/probe.rst", category="Figures"),
        tables=expand(res("tables/{name}.{ext}"), name=TABLES, ext=["csv", "md"]),
    params:
        evaluate_dir=res("evaluate"),
        models=" ".join(MODELS),
        figures_dir=res("figures"),
        tables_dir=res("tables"),
    log:
        log_of("figures"),
    benchmark:
        bench_of("figures")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph figures --evaluate-dir {params.evaluate_dir} --models {params.models}"
        " --figures-dir {params.figures_dir} --tables-dir {params.tables_dir} > {log} 2>&1"


# ---- issue 5: perturbation figures and tables; `snakemake perturbation` (not part of `rule all`) ----
PERT_FIGURES = ["perturbation_forward", "perturbation_yeast", "perturbation_reverse_confusion",
                "perturbation_attention"]
PERT_TABLES = ["table_perturbation_forward", "table_perturbation_score", "table_perturbation_yeast",
               "table3_reverse_perturbation",
               "table_attention_diagnostics", "table_attention_heads"]


rule perturbation_figures:
    """Forward-prediction correlations vs baselines, yeast fitness/epsilon, reverse-prediction confusion matrix."""
    input:
        res("perturbation/forward/metrics.tsv"),
        res("perturbation/forward/predictions.npz"),
        res("perturbation/yeast/metrics.tsv"),
        res("perturbation/forward/score_summary.tsv"),
        res("perturbation/forward/attention_diagnostics.tsv"),
        res("perturbation/forward/attention_heads.tsv"),
        res("perturbation/yeast/attention_diagnostics.tsv"),
        res("perturbation/yeast/attention_heads.tsv"),
        res("perturbation/reverse/metrics.tsv"),
        res("perturbation/reverse/confusion.npz"),
    output:
        figures=[report(res(f"figures/{name}.png"), category="Perturbation") for name in PERT_FIGURES],
        tables=expand(res("tables/{name}.{ext}"), name=PERT_TABLES, ext=["csv", "md"]),
    params:
        forward_dir=res("perturbation/forward"),
        yeast_dir=res("perturbation/yeast"),
        reverse_dir=res("perturbation/reverse"),
        figures_dir=res("figures"),
        tables_dir=res("tables"),
    log:
        log_of("perturbation_figures"),
    benchmark:
        bench_of("perturbation_figures")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph perturb --task figures --forward-dir {params.forward_dir} --yeast-dir {params.yeast_dir}"
        " --reverse-dir {params.reverse_dir} --figures-dir {params.figures_dir} --tables-dir {params.tables_dir}"
        " > {log} 2>&1"


rule perturbation:
    """Target: every output of issue 5 (forward, yeast, reverse, figures and tables)."""
    input:
        rules.perturbation_figures.output,
