# Transfer evaluation: the pretrained models' frozen embeddings on each data set of
# config transfer.datasets (data sets outside pretraining: the paper's myeloid reference/query, held-out
# CELLxGENE types, Adamson reverse perturbation), beside PCA, bag-of-genes and untrained-encoder baselines on
# the same splits (cellgraph.tl.transfer). Nothing here runs unless transfer.datasets names a data set.
rule transfer_tokens:
    """One data set's cells (QC, log-normalised) tokenised with the pretraining vocabulary and the visible
    edges of the gene graph."""
    input:
        unpack(transfer_inputs),
        vocab=res("tokens/vocab.tsv"),
        graph_edges=res("tokens/graph_edges.tsv.gz"),
        idmap=config["data"]["idmap"]["ensg"],
    output:
        tokens=res("transfer/{name}/tokens.npz"),
        cells=res("transfer/{name}/cells.h5ad"),
        report=res("transfer/{name}/report.json"),
    wildcard_constraints:
        name="|".join(TRANSFER_SETS) or "__none__",
    params:
        query=lambda w, input: f"--query-adata {shlex.quote(str(input.query[0]))}" if len(input.query) else "",
        dataset=transfer_flags,
        options=flags("tokenize", ["n_bins", "max_seq_len"]),
        qc=transfer_qc_flags,
        out_dir=folder_of("tokens"),
        seed=config["seed"],
    log:
        res("logs/transfer_tokens_{name}.log"),
    benchmark:
        res("benchmarks/transfer_tokens_{name}.tsv")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph transfer --task tokens --name {wildcards.name:q} --adata {input.adata:q} {params.query}"
        " {params.dataset} --idmap {input.idmap:q} --vocab {input.vocab:q} --graph-edges {input.graph_edges:q}"
        " {params.options} {params.qc} --seed {params.seed:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule transfer_evaluate:
    """One model on one transfer data set: out-of-fold probe predictions, macro-F1 with bootstrap intervals."""
    input:
        model=res("train/{model}/model.pt"),
        tokens=res("transfer/{name}/tokens.npz"),
        cells=res("transfer/{name}/cells.h5ad"),
    output:
        annotation=res("transfer/{name}/{model}/annotation.tsv"),
        predictions=res("transfer/{name}/{model}/predictions.tsv"),
        embeddings=res("transfer/{name}/{model}/embeddings.h5ad"),
        report=res("transfer/{name}/{model}/report.json"),
    wildcard_constraints:
        name="|".join(TRANSFER_SETS) or "__none__",
        model="gremln|vanilla",
    params:
        protocol=lambda w: TRANSFER_SETS[w.name]["protocol"],
        options=flags("transfer", ["n_splits", "n_boot"]),
        tokens_dir=folder_of("tokens", of="input"),
        out_dir=folder_of("annotation"),
        seed=config["seed"],
    threads: config["train"]["threads"]
    log:
        res("logs/transfer_evaluate_{name}_{model}.log"),
    benchmark:
        res("benchmarks/transfer_evaluate_{name}_{model}.tsv")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph transfer --task evaluate --name {wildcards.name:q} --model-path {input.model:q}"
        " --tokens-dir {params.tokens_dir:q} --protocol {params.protocol:q} {params.options}"
        " --seed {params.seed:q} --threads {threads} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule transfer_table:
    """Every transfer data set x model x method in one table (the report's transfer table)."""
    input:
        expand(res("transfer/{name}/{model}/annotation.tsv"), name=list(TRANSFER_SETS), model=MODELS),
    output:
        csv=report(res("tables/table_transfer.csv"), caption="../report/transfer.rst", category="Tables"),
        md=res("tables/table_transfer.md"),
    log:
        res("logs/transfer_table.log"),
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph transfer --task table --inputs {input:q} --out {output.csv:q} > {log:q} 2>&1"


rule transfer:
    """Target: the transfer table (and everything it needs)."""
    input:
        rules.transfer_table.output,
