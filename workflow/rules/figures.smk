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
        pdf=expand(res("figures/{name}.pdf"), name=FIGURES),
        tables=reported_tables(TABLES, "../report/tables.rst"),
    params:
        evaluate_dir=folder_of(0, of="input", up=2),
        models=" ".join(MODELS),
        figures_dir=folder_of("confusion"),
        tables_dir=folder_of("tables"),
    log:
        log_of("figures"),
    benchmark:
        bench_of("figures")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph figures --evaluate-dir {params.evaluate_dir:q} --models {params.models}"
        " --figures-dir {params.figures_dir:q} --tables-dir {params.tables_dir:q} > {log:q} 2>&1"
