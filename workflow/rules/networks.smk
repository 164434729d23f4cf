rule networks:
    """Parse DoRothEA, TRRUST, HuRI and STRING (and Pathway Commons when data.networks names it) into one edge
    table of HGNC symbols."""
    input:
        dorothea=config["data"]["networks"]["dorothea"],
        trrust=config["data"]["networks"]["trrust"],
        huri=config["data"]["networks"]["huri"],
        string=config["data"]["networks"]["string"],
        string_info=config["data"]["networks"]["string_info"],
        pathway_commons=config["data"]["networks"].get("pathway_commons") or [],
        alias=config["data"]["idmap"]["alias"],
        ensg=config["data"]["idmap"]["ensg"],
        ensp=config["data"]["idmap"]["ensp"],
    output:
        edges=res("networks/edges.parquet"),
        regulators=res("networks/regulators.txt"),
        rejects=res("networks/rejects.tsv.gz"),
        report=res("networks/report.json"),
    params:
        out_dir=folder_of("report"),
        options=flags("networks", ["dorothea_confidence"]),
        pathway_commons=(
            f"--pathway-commons {shlex.quote(config['data']['networks']['pathway_commons'])} "
            + flags("multigraph", ["pc_physical", "pc_regulatory"])
            if config["data"]["networks"].get("pathway_commons")
            else ""
        ),
    log:
        log_of("networks"),
    benchmark:
        bench_of("networks")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph networks --dorothea {input.dorothea:q} --trrust {input.trrust:q} --huri {input.huri:q}"
        " --string {input.string:q} --string-info {input.string_info:q} --alias-map {input.alias:q}"
        " --ensg-map {input.ensg:q} --ensp-map {input.ensp:q} {params.options} {params.pathway_commons}"
        " --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"
