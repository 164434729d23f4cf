# Download rules for the full public network releases: STRING v12, BioGRID TAB3, TFLink, HINT,
# CollecTRI. Every file of config["sources"]["files"] has its URL, release and sha256; the transfer is
# pooch's (retries with back-off, atomic write, checksum verified; a mismatch deletes the file and fails
# naming the source and both digests). No rule of the default target depends on these: they run only
# for `snakemake multigraph_full` (or an explicit download path), which needs the internet.
rule download_source:
    """One release file of config sources.files (not a zip member)."""
    output:
        f"{SOURCES_CFG['folder']}/{{key}}/{{filename}}",
    wildcard_constraints:
        key="|".join(_PLAIN),
    params:
        name=lambda w: w.key,
        url=lambda w: SOURCE_FILES[w.key]["url"],
        sha256=lambda w: _sha(SOURCE_FILES[w.key]),
        retries=SOURCES_CFG["retries"],
        timeout=SOURCES_CFG["timeout"],
    log:
        res("logs/download/{key}/{filename}.log"),
    retries: 0
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        DOWNLOAD_SHELL


rule download_archive:
    """A zip release (BioGRID ORGANISM TAB3) shared by the entries that name one of its members."""
    output:
        f"{SOURCES_CFG['folder']}/archives/{{filename}}",
    wildcard_constraints:
        filename="|".join(_ARCHIVES) or "__none__",
    params:
        name=lambda w: _ARCHIVES[w.filename],
        url=lambda w: SOURCE_FILES[_ARCHIVES[w.filename]]["url"],
        sha256=lambda w: _sha(SOURCE_FILES[_ARCHIVES[w.filename]]),
        retries=SOURCES_CFG["retries"],
        timeout=SOURCES_CFG["timeout"],
    log:
        res("logs/download/archives/{filename}.log"),
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        DOWNLOAD_SHELL


rule extract_source_member:
    """The organism's file of a zip release."""
    input:
        lambda w: _archive_path(w.key),
    output:
        f"{SOURCES_CFG['folder']}/{{key}}/{{member}}",
    wildcard_constraints:
        key="|".join(_MEMBER),
    log:
        res("logs/download/{key}/{member}.extract.log"),
    conda:
        "../../envs/cellgraph.yaml"
    shell:
        "cellgraph sources --name {wildcards.key:q} --extract {wildcards.member:q} --archive {input:q}"
        " --out {output:q} > {log:q} 2>&1"


rule download_all_sources:
    """Every release file of config sources.files (needs the internet)."""
    input:
        [download_path(k) for k in SOURCE_FILES],
