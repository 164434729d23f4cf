# Download and conversion rules for the evaluation datasets of the GREmLN paper: Human Immune
# (scIB, scGPT's figshare copy) and Adamson 2016 Perturb-seq (GEARS' dataverse zip). Every entry of
# config["datasets"]["files"] has its URL, release and sha256; the transfer is `cellgraph sources`'
# (cellgraph.io.sources, pooch: retries with back-off, atomic write, checksum verified; an unpinned sha256 fails
# printing the digest to pin). `cellgraph datasets` (cellgraph.io.datasets) turns each published format into the
# project's h5ad contract, with a JSON report next to it. No rule of the default target depends on these: they
# run only for `snakemake datasets` (needs the internet).
rule download_dataset:
    """The published file of one dataset of config datasets.files."""
    output:
        f"{DATASETS_CFG['folder']}/downloads/{{dataset}}/{{filename}}",
    wildcard_constraints:
        dataset="|".join(DIRECT_DATASETS),
    params:
        name=lambda w: w.dataset,
        url=dataset_param("url"),
        sha256=lambda w: _sha(DATASET_FILES[w.dataset]),
        retries=DATASETS_CFG["retries"],
        timeout=DATASETS_CFG["timeout"],
    log:
        res("logs/datasets/{dataset}/{filename}.download.log"),
    retries: 0
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        DOWNLOAD_SHELL


rule manual_dataset:
    """A dataset with no direct download link (url null): fails, naming the page to fetch it from by hand and
    the path to put it at. A file put there by hand exists, so this rule does not run and the file is used."""
    output:
        f"{DATASETS_CFG['folder']}/downloads/{{dataset}}/{{filename}}",
    wildcard_constraints:
        dataset="|".join(MANUAL_DATASETS),
    params:
        page=dataset_param("manual"),
    log:
        res("logs/datasets/{dataset}/{filename}.manual.log"),
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "echo 'dataset {wildcards.dataset}: no direct download link; fetch {wildcards.filename} by hand from'"
        " {params.page:q} 'and put it at' {output:q} | tee {log:q} >&2; exit 1"


rule convert_dataset:
    """One published dataset in the project's h5ad contract, with its checks as JSON. Optional fields are passed
    as --flag=VALUE: a field the entry lacks becomes an empty value (the format's default)."""
    input:
        lambda w: dataset_download_path(w.dataset),
    output:
        h5ad=f"{DATASETS_CFG['folder']}/{{dataset}}/{{dataset}}.h5ad",
        report=f"{DATASETS_CFG['folder']}/{{dataset}}/{{dataset}}.report.json",
    wildcard_constraints:
        dataset="|".join(DATASET_FILES) or "__none__",
    params:
        format=dataset_param("format"),
        label_key=dataset_param("label_key"),
        batch_key=dataset_param("batch_key"),
        counts_layer=dataset_param("counts_layer"),
        perturbation_key=dataset_param("perturbation_key"),
        member=dataset_param("member"),
    log:
        res("logs/datasets/{dataset}/convert.log"),
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph datasets --format {params.format:q} --in {input:q} --out {output.h5ad:q}"
        " --report {output.report:q} --label-key={params.label_key:q} --batch-key={params.batch_key:q}"
        " --counts-layer={params.counts_layer:q} --perturbation-key={params.perturbation_key:q}"
        " --member={params.member:q} > {log:q} 2>&1"


rule datasets:
    """Every dataset of config datasets.files, downloaded and converted (needs the internet)."""
    input:
        [path for key in DATASET_FILES for path in dataset_outputs(key).values()],
