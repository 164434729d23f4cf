rule networks:
    """Parse DoRothEA, TRRUST, HuRI and STRING into one edge table of HGNC symbols."""
    input:
        dorothea=config["data"]["networks"]["dorothea"],
        trrust=config["data"]["networks"]["trrust"],
        huri=config["data"]["networks"]["huri"],
        string=config["data"]["networks"]["string"],
        string_info=config["data"]["networks"]["string_info"],
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
    log:
        log_of("networks"),
    benchmark:
        bench_of("networks")
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph networks --dorothea {input.dorothea:q} --trrust {input.trrust:q} --huri {input.huri:q}"
        " --string {input.string:q} --string-info {input.string_info:q} --alias-map {input.alias:q}"
        " --ensg-map {input.ensg:q} --ensp-map {input.ensp:q} {params.options} --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"
