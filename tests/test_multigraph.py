"""The nine-graph multigraph (cellgraph.graphs.multigraph) and the full-release parsers of cellgraph.graphs.networks.

Real files: STRING v12 yeast physical links / info / aliases, STRING v11 yeast actions, Pathway Commons
SIF (resources/networks/) and the human DoRothEA, TRRUST, HuRI and id maps (resources/demo/networks/).
Small files written here in the documented formats (each test says which): BioGRID TAB3, TFLink simple
format, HINT hq, STRING protein.links.detailed (no real detailed file is vendored).
"""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cellgraph import cli
from cellgraph.graphs import networks as nw
from cellgraph.errors import InputError
from cellgraph.graphs.multigraph import GRAPH_TYPES, build_multigraph, load_multigraph

REPO = Path(__file__).resolve().parents[1]
YEAST = REPO / "resources" / "networks" / "yeast"
Y = {
    "string_physical": YEAST / "4932.protein.physical.links.v12.0.txt.gz",
    "string_info": YEAST / "4932.protein.info.v12.0.txt.gz",
    "string_aliases": YEAST / "4932.protein.aliases.v12.0.txt.gz",
    "string_actions": YEAST / "4932.protein.actions.v11.0.txt.gz",
}
SIF = REPO / "resources" / "networks" / "human" / "PathwayCommons9.All.hgnc.sif.gz"
DEMO = REPO / "resources" / "demo" / "networks"
IDMAP = {"alias_map": DEMO / "idmap" / "hs_alias_symbol.tsv", "ensg_map": DEMO / "idmap" / "hs_ensg_entrez_symbol.tsv",
         "ensp_map": DEMO / "idmap" / "hs_ensp_entrez_symbol.tsv"}


def _lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return fh.read().splitlines()


def _head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("\n".join(_lines(src)[:n]) + "\n")
    return dst


def _argv(organism: str, inputs: dict, out: Path, extra=()) -> list[str]:
    argv = ["multigraph", "--organism", organism]
    for k, p in inputs.items():
        argv += [f"--{k.replace('_', '-')}", str(p)]
    return argv + list(extra) + ["--out-dir", str(out)]


@pytest.fixture(scope="module")
def yeast(tmp_path_factory):
    out = tmp_path_factory.mktemp("mg_yeast")
    assert cli.main(_argv("yeast", Y, out)) == 0
    report = json.loads((out / "report.json").read_text())
    rejects = pd.read_csv(out / "rejects.tsv.gz", sep="\t", dtype=str, keep_default_na=False)
    return out, report, rejects


@pytest.fixture(scope="module")
def ymaps():
    return nw.load_yeast_maps(Y["string_aliases"], Y["string_info"])


# ------------------------------------------------------------------ parsers on real files


def test_string_links_columnar_reader_matches_pandas_on_real_yeast_file():
    links = nw.read_string_links(Y["string_physical"])
    ref = pd.read_csv(Y["string_physical"], sep=" ")
    assert len(links.a) == len(ref) == len(_lines(Y["string_physical"])) - 1
    assert list(links.ids[links.a]) == list(ref["protein1"]) and list(links.ids[links.b]) == list(ref["protein2"])
    assert np.array_equal(links.scores["combined_score"], ref["combined_score"].to_numpy())
    assert links.scores["combined_score"].dtype == np.int16


def test_malformed_string_lines_name_file_and_line(tmp_path):
    lines = _lines(Y["string_physical"])[:30]
    bad = list(lines)
    bad[6] = bad[6].rsplit(" ", 1)[0]  # line 7 loses its score
    p = tmp_path / "missing_field.txt"
    p.write_text("\n".join(bad) + "\n")
    with pytest.raises(InputError, match=r"missing_field\.txt: line 7: expected 3 space-separated fields"):
        nw.read_string_links(p)
    bad = list(lines)
    bad[4] = bad[4].rsplit(" ", 1)[0] + " high"  # line 5: a non-integer score
    p = tmp_path / "bad_score.txt"
    p.write_text("\n".join(bad) + "\n")
    with pytest.raises(InputError, match=r"bad_score\.txt: line 5: field 'combined_score' is 'high'"):
        nw.read_string_links(p)
    p = tmp_path / "bad_header.txt"
    p.write_text("\n".join(["protein1 protein2 score"] + lines[1:]) + "\n")
    with pytest.raises(InputError, match="line 1"):
        nw.read_string_links(p)


def test_yeast_ids_map_to_sgd_orf_names(ymaps):
    info = pd.read_csv(Y["string_info"], sep="\t")
    # every STRING protein has its ORF, which is the id without the taxon prefix (Ensembl_gene alias)
    orfs, routes = nw.map_yeast(info["#string_protein_id"], ymaps)
    assert (routes == "string_id").all()
    assert list(orfs) == [s.split(".", 1)[1] for s in info["#string_protein_id"]]
    # standard names and UniProt accessions through the aliases: GCN4 = YEL009C (UniProt P03069), HIS3 = YOR202W
    sym, route = nw.map_yeast(["GCN4", "P03069", "HIS3", "yel009c", "not-a-yeast-gene"], ymaps)
    assert list(sym) == ["YEL009C", "YEL009C", "YOR202W", "YEL009C", ""]
    assert list(route) == ["alias", "alias", "alias", "orf_case", "unmapped"]
    amb = [a for a in list(ymaps.alias_ambiguous)[:50] if a not in ymaps.orfs and a.upper() not in ymaps.upper]
    sym, route = nw.map_yeast(amb, ymaps)
    assert amb and (route == "ambiguous").all() and (sym == "").all()


def test_real_actions_and_sif_parse_with_line_numbers():
    acts = nw.read_string_actions(Y["string_actions"])
    assert len(acts) == len(_lines(Y["string_actions"])) - 1
    first = _lines(Y["string_actions"])[1].split("\t")
    assert [acts["item_id_a"].iat[0], acts["item_id_b"].iat[0], acts["mode"].iat[0]] == first[:3]
    assert acts["score"].iat[0] == int(first[6]) and acts["_line"].iat[0] == 2
    sif = nw.read_sif(SIF)
    raw = _lines(SIF)
    assert len(sif) == len(raw) and sif["_line"].iat[-1] == len(raw)
    assert "\t".join(sif.iloc[10][["source", "relation", "target"]]) == raw[10]


# ------------------------------------------------------------------ the yeast multigraph from real files


def test_yeast_physical_graph_equals_independent_computation(yeast):
    out, report, _ = yeast
    mg = load_multigraph(out / "multigraph.npz")
    ref = pd.read_csv(Y["string_physical"], sep=" ")
    ref = ref[ref["combined_score"] >= 400]
    a = ref["protein1"].str.split(".").str[1]
    b = ref["protein2"].str.split(".").str[1]
    pairs = pd.DataFrame({"u": np.minimum(a, b), "v": np.maximum(a, b), "w": ref["combined_score"] / 1000})
    pairs = pairs.groupby(["u", "v"])["w"].max()
    nodes = np.array(mg["nodes"])
    ei = mg["edge_index"]["physical"].numpy()
    got = pd.Series(mg["edge_weight"]["physical"].numpy(), index=pd.MultiIndex.from_arrays([nodes[ei[0]], nodes[ei[1]]]))
    assert len(got) == len(pairs)
    assert np.allclose(got.sort_index().to_numpy(), pairs.sort_index().to_numpy(), atol=1e-6)
    assert (ei[0] < ei[1]).all()  # undirected edges stored once
    # the node index is the yeast universe of STRING protein.info (6,600 ORFs)
    assert len(nodes) == len(_lines(Y["string_info"])) - 1 and list(nodes) == sorted(nodes)
    assert mg["organism"] == "yeast" and set(mg["edge_index"]) == set(GRAPH_TYPES)


def test_yeast_nothing_lost_and_rejects_written(yeast):
    out, report, rejects = yeast
    for name in ("string_physical", "string_actions"):
        src = report["sources"][name]
        n = len(_lines(Y[name])) - 1
        assert src["rows_read"] == n == src["edges_kept"] + sum(src["dropped"].values())
        written = {k: v for k, v in src["dropped"].items() if k in ("unmapped", "ambiguous", "self_loop", "duplicate") and v}
        rej = rejects[rejects["source"] == name]
        assert rej["reason"].value_counts().to_dict() == written
        assert rej["line"].astype(int).is_unique
    phys = report["sources"]["string_physical"]
    # STRING lists every pair in both orders: one of each pair is a mirror
    assert phys["dropped"]["mirror"] == phys["edges_kept"]
    acts = report["sources"]["string_actions"]
    assert acts["dropped"]["not_selected"] == int(
        (~((pd.read_csv(Y["string_actions"], sep="\t")["mode"] == "expression")
           & (pd.read_csv(Y["string_actions"], sep="\t")["a_is_acting"] == "t"))).sum())
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert list(summary["graph"]) == list(GRAPH_TYPES)
    phys_row = summary.set_index("graph").loc["physical"]
    n = phys_row["nodes"]
    assert phys_row["density"] == pytest.approx(phys_row["edges"] / (n * (n - 1) / 2), rel=1e-5)
    assert (out / "degrees.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hetero_data_has_nine_edge_types_both_directions(yeast):
    out, _, _ = yeast
    data = load_multigraph(out / "multigraph.npz", as_hetero=True)
    mg = load_multigraph(out / "multigraph.npz")
    assert len(data.edge_types) == 9 and data["gene"].num_nodes == len(mg["nodes"])
    assert data["gene", "physical", "gene"].edge_index.shape[1] == 2 * mg["edge_index"]["physical"].shape[1]
    # directed graph kept as is
    assert data["gene", "regulatory", "gene"].edge_index.shape[1] == mg["edge_index"]["regulatory"].shape[1]


def test_truncated_multigraph_file_is_an_input_error(yeast, tmp_path):
    out, _, _ = yeast
    with np.load(out / "multigraph.npz", allow_pickle=False) as z:
        kept = {k: z[k] for k in z.files if k != "edge_weight_physical"}
    np.savez(tmp_path / "cut.npz", **kept)
    with pytest.raises(InputError, match=r"graph 'physical' is listed but its key\(s\) \['edge_weight_physical'\]"):
        load_multigraph(tmp_path / "cut.npz")


def test_thresholds_and_empty_graph_error(tmp_path):
    g, _, rep = build_multigraph("yeast", Y | {"string_actions": None}, {"string_physical.combined_score": 900})
    w = g["physical"][1]
    ref = pd.read_csv(Y["string_physical"], sep=" ")
    assert w.min() >= 0.9 and len(w) == (ref["combined_score"] >= 900).sum() // 2
    small = _head(Y["string_physical"], tmp_path / "small.txt", 40)
    with pytest.raises(InputError, match=r"source string_physical .*small\.txt.*combined_score >= 1000"):
        build_multigraph("yeast", {**Y, "string_physical": small, "string_actions": None},
                         {"string_physical.combined_score": 1000})


def test_string_channel_graphs_from_detailed_file(tmp_path, ymaps):
    """A small file written in STRING's documented protein.links.detailed format (synthetic scores)."""
    p = tmp_path / "4932.protein.links.detailed.v12.0.txt"
    p.write_text(
        "protein1 protein2 neighborhood fusion cooccurence coexpression experimental database textmining combined_score\n"
        "4932.YEL009C 4932.YOR202W 0 0 0 300 900 0 500 950\n"
        "4932.YOR202W 4932.YEL009C 0 0 0 300 900 0 500 950\n"   # mirror of line 2
        "4932.YEL009C 4932.YGR222W 200 300 400 100 0 700 0 800\n"
        "4932.YGR222W 4932.Q0045 0 0 0 0 0 900 0 300\n"         # combined below 400: in no graph
        "4932.YEL009C 4932.NOPE 0 0 0 0 900 0 0 900\n"          # unmapped id
    )
    g, rej, rep = build_multigraph("yeast", {"string_links": p, "string_info": Y["string_info"],
                                             "string_aliases": Y["string_aliases"]})
    nodes = g["nodes"]

    def pairs(graph):
        ei, w = g[graph]
        return {(nodes[u], nodes[v]): round(float(x), 3) for u, v, x in zip(ei[0], ei[1], w)}

    assert pairs("experimental") == {("YEL009C", "YOR202W"): 0.9}
    assert pairs("coexpression") == {("YEL009C", "YOR202W"): 0.3}   # 100 < 150 on line 4
    assert pairs("database") == {("YEL009C", "YGR222W"): 0.7}
    assert pairs("neighborhood") == {("YEL009C", "YGR222W"): 0.2}
    assert pairs("fusion") == {("YEL009C", "YGR222W"): 0.3} and pairs("cooccurence") == {("YEL009C", "YGR222W"): 0.4}
    exp = rep["sources"]["string_links"]["experimental"]
    assert exp["dropped"]["mirror"] == 1 and exp["dropped"]["unmapped"] == 1 and exp["dropped"]["below_threshold"] == 2
    assert rej[(rej["graph"] == "experimental") & (rej["reason"] == "unmapped")]["line"].tolist() == [6]
    assert rej[(rej["graph"] == "experimental")]["value"].tolist() == ["4932.NOPE"]
    with pytest.raises(InputError, match=r"string_links .* no fusion edges left after threshold combined_score >= 400 and fusion >= 500"):
        build_multigraph("yeast", {"string_links": p, "string_info": Y["string_info"], "string_aliases": Y["string_aliases"]},
                         {"string_links.fusion": 500})


# ------------------------------------------------------------------ documented-format files (written here)

BIOGRID_HEADER = [
    "#BioGRID Interaction ID", "Entrez Gene Interactor A", "Entrez Gene Interactor B", "BioGRID ID Interactor A",
    "BioGRID ID Interactor B", "Systematic Name Interactor A", "Systematic Name Interactor B",
    "Official Symbol Interactor A", "Official Symbol Interactor B", "Synonyms Interactor A", "Synonyms Interactor B",
    "Experimental System", "Experimental System Type", "Author", "Publication Source", "Organism ID Interactor A",
    "Organism ID Interactor B", "Throughput", "Score", "Modification", "Qualifications", "Tags", "Source Database",
    "SWISS-PROT Accessions Interactor A", "TREMBL Accessions Interactor A", "REFSEQ Accessions Interactor A",
    "SWISS-PROT Accessions Interactor B", "TREMBL Accessions Interactor B", "REFSEQ Accessions Interactor B",
    "Ontology Term IDs", "Ontology Term Names", "Ontology Term Categories", "Ontology Term Qualifier IDs",
    "Ontology Term Qualifier Names", "Ontology Term Types", "Organism Name Interactor A", "Organism Name Interactor B",
]


def _biogrid_row(i, ea, eb, sa, sb, system_type, ta, tb):
    row = dict.fromkeys(BIOGRID_HEADER, "-")
    row.update({"#BioGRID Interaction ID": str(i), "Entrez Gene Interactor A": ea, "Entrez Gene Interactor B": eb,
                "Systematic Name Interactor A": sa, "Systematic Name Interactor B": sb,
                "Experimental System": "Two-hybrid" if system_type == "physical" else "Synthetic Lethality",
                "Experimental System Type": system_type, "Organism ID Interactor A": ta, "Organism ID Interactor B": tb})
    return "\t".join(row[c] for c in BIOGRID_HEADER)


@pytest.fixture()
def documented(tmp_path):
    """BioGRID TAB3 (37 columns), TFLink simple format and HINT binary hq files, small, written here."""
    biogrid = tmp_path / "BIOGRID-ORGANISM-test.tab3.txt"
    biogrid.write_text("\n".join([
        "\t".join(BIOGRID_HEADER),
        _biogrid_row(1, "7157", "4193", "-", "-", "physical", "9606", "9606"),            # TP53 - MDM2
        _biogrid_row(2, "4193", "7157", "-", "-", "physical", "9606", "9606"),            # mirror
        _biogrid_row(3, "7157", "999999999", "-", "-", "physical", "9606", "9606"),       # unmapped Entrez
        _biogrid_row(4, "7157", "4193", "-", "-", "genetic", "9606", "9606"),             # genetic: not used
        _biogrid_row(5, "856709", "855155", "YEL009C", "YOR202W", "physical", "4932", "4932"),  # yeast row
        _biogrid_row(6, "856709", "851240", "YEL009C", "YGR222W", "genetic", "4932", "4932"),
    ]) + "\n")
    tflink = tmp_path / "TFLink_test_interactions_All_simpleFormat_v1.0.tsv"
    tflink.write_text("\n".join([
        "\t".join(nw.TFLINK_COLUMNS),
        "Q9H9S0\tO94907\t79923\t22943\tNANOG\tDKK1\tchromatin immunoprecipitation assay\t19148141\tHomo sapiens\tGTRD\tYes",
        "P04637\tQ00987\t7157\t4193\tTP53\tMDM2\tinferred by curator\t1\tHomo sapiens\tTRRUST\tNo",
        "P03069\tP06633\t856709\t854377\tGCN4\tHIS3\tinferred by curator\t1\tSaccharomyces cerevisiae\tYeastract\tYes",
    ]) + "\n")
    hint = tmp_path / "HomoSapiens_binary_hq.txt"
    hint.write_text("\n".join([
        "\t".join(nw.HINT_COLUMNS),
        "P04637\tQ00987\tTP53\tMDM2\t\t\tHGNC:11998\tHGNC:6973\t8242752:0018:LC",
        "Q00987\tP04637\tMDM2\tTP53\t\t\t\t\t8242752:0018:LC",       # mirror
        "P03069\tP06633\t\t\tYEL009C\tYOR202W\t\t\t1:0018:LC",        # yeast ORFs, no human gene names
    ]) + "\n")
    return {"biogrid": biogrid, "tflink": tflink, "hint_binary": hint}


def test_documented_formats_human(documented, tmp_path):
    """Human multigraph from the written BioGRID TAB3, TFLink and HINT files plus real heads of DoRothEA,
    TRRUST, HuRI and Pathway Commons."""
    heads = {k: _head(p, tmp_path / p.name.replace(".gz", ""), 200) for k, p in {
        "dorothea": DEMO / "human" / "dorothea_hs_regulons.tsv.gz", "trrust": DEMO / "human" / "trrust_rawdata.human.tsv",
        "huri": DEMO / "human" / "HuRI_binaryPPI.tsv", "pathway_commons": SIF}.items()}
    out = tmp_path / "human"
    # the first 200 DoRothEA lines hold no A-C regulon: all letters here (A-C alone: error, tested below)
    assert cli.main(_argv("human", {**documented, **heads, **IDMAP}, out, ["--dorothea-confidence", *"ABCDE"])) == 0
    rep = json.loads((out / "report.json").read_text())
    mg = load_multigraph(out / "multigraph.npz")
    nodes = np.array(mg["nodes"])

    def pairs(graph):
        ei = mg["edge_index"][graph].numpy()
        return set(zip(nodes[ei[0]], nodes[ei[1]]))

    bg = rep["sources"]["biogrid"]
    assert bg["edges_kept"] == 1 and bg["dropped"]["mirror"] == 1 and bg["dropped"]["unmapped"] == 1
    assert bg["dropped"]["not_selected"] == 3  # the genetic row and the two yeast rows
    assert ("MDM2", "TP53") in pairs("physical")
    assert pairs("tflink") == {("NANOG", "DKK1"), ("TP53", "MDM2")}  # directed TF -> target
    tf = rep["sources"]["tflink"]
    assert tf["dropped"]["unmapped"] == 1 and tf["edges_kept"] == 2  # the yeast row: GCN4 is no HGNC symbol
    hi = rep["sources"]["hint_binary"]
    assert hi["edges_kept"] == 1 and hi["dropped"]["mirror"] == 1 and hi["dropped"]["unmapped"] == 1
    # physical merges BioGRID, HINT, HuRI and Pathway Commons; TP53-MDM2 from two sources counted once
    assert rep["graphs"]["physical"]["merged_across_sources"] >= 1
    for s in ("dorothea", "trrust", "huri"):
        assert rep["sources"][s]["rows_read"] == 200 - int(s != "trrust")
    rejects = pd.read_csv(out / "rejects.tsv.gz", sep="\t", dtype=str, keep_default_na=False)
    row = rejects[(rejects["source"] == "biogrid") & (rejects["reason"] == "unmapped")].iloc[0]
    assert (row["line"], row["field"], row["value"]) == ("4", "Entrez Gene Interactor B", "999999999")
    with pytest.raises(InputError, match=r"source dorothea .* no regulatory edges left after confidence in \['A', 'B', 'C'\]"):
        build_multigraph("human", {"dorothea": heads["dorothea"], **IDMAP})


def test_documented_formats_yeast_and_genes_restriction(documented, tmp_path, ymaps):
    g, rej, rep = build_multigraph("yeast", {**documented, "string_info": Y["string_info"],
                                             "string_aliases": Y["string_aliases"]}, genes=["YEL009C", "YOR202W"])
    assert list(g["nodes"]) == ["YEL009C", "YOR202W"]
    assert g["physical"][0].tolist() == [[0], [1]]     # BioGRID row 5 and HINT row 3, merged
    assert g["tflink"][0].tolist() == [[0], [1]]       # GCN4 -> HIS3
    assert rep["sources"]["biogrid"]["dropped"]["not_selected"] == 5
    assert rep["sources"]["tflink"]["edges_kept"] == 1 and rep["sources"]["tflink"]["dropped"]["unmapped"] == 2
    assert rep["graphs"]["physical"]["merged_across_sources"] == 1
    # refused: a human-only source for yeast, an unknown organism
    with pytest.raises(InputError, match="human-only"):
        build_multigraph("yeast", {"dorothea": DEMO / "human" / "dorothea_hs_regulons.tsv.gz", **{k: Y[k] for k in ("string_info", "string_aliases")}})
    with pytest.raises(InputError, match="mouse"):
        build_multigraph("mouse", {"string_physical": Y["string_physical"]})


# ------------------------------------------------------------------ config schema and workflow


def test_config_schema_refuses_unknown_organism_and_source():
    import jsonschema

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    jsonschema.validate(config, schema)
    for path, value in [(("multigraph", "inputs", "mouse"), {}), (("multigraph", "inputs", "yeast", "stringdb"), "x"),
                        (("multigraph", "organisms"), ["mouse"]),
                        (("sources", "files", "tflink_yeast", "sha256"), "abc"),
                        (("multigraph", "thresholds", "string_links", "combined_score"), 1001)]:
        bad = copy.deepcopy(config)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_download_rules_dry_run_and_stay_out_of_default_target(tmp_path):
    snake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(REPO), "-n", "--quiet", "rules"]
    full = subprocess.run(snake[:-2] + ["multigraph_full", "--quiet", "rules"], capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr[-2000:]
    assert "download_source" in full.stdout and "extract_source_member" in full.stdout
    default = subprocess.run(snake[:-2], capture_output=True, text=True, timeout=120)
    assert default.returncode == 0 and "download" not in default.stdout


def test_collectri_omnipath_tsv(tmp_path):
    """CollecTRI, a small file written in the OmniPath interactions TSV format (genesymbols=yes): signs from the
    consensus columns, a complex regulator split into its members, an unknown symbol rejected, a bad flag named."""
    header = "\t".join(nw.COLLECTRI_COLUMNS + ["curation_effort"])
    path = tmp_path / "collectri_human.tsv"
    path.write_text("\n".join([
        header,
        "P04637\tQ00987\tTP53\tMDM2\t1\t1\t0\t1\t1\t0\t12",                  # stimulation
        "P01106\tP38936\tMYC\tCDKN1A\t1\t0\t1\t1\t0\t1\t5",                   # inhibition
        "COMPLEX:P05412_P01100\tP14780\tJUN_FOS\tMMP9\t1\t1\t0\t1\t1\t0\t3",  # AP-1 -> MMP9: two edges
        "P04637\tQ99999\tTP53\tNOTAGENE1\t1\t0\t0\t1\t0\t0\t1",               # unmapped target, unsigned
    ]) + "\n")
    idmap = {k: str(v) for k, v in IDMAP.items()}
    graphs, rejects, rep = build_multigraph("human", {"collectri": str(path), **idmap}, {})
    nodes = np.asarray(graphs["nodes"])
    ei, w = graphs["regulatory"]
    got = {(nodes[a], nodes[b]): float(x) for a, b, x in zip(ei[0], ei[1], w)}
    assert got == {("TP53", "MDM2"): 1.0, ("MYC", "CDKN1A"): -1.0, ("JUN", "MMP9"): 1.0, ("FOS", "MMP9"): 1.0}
    src = rep["sources"]["collectri"]
    assert src["rows_in_file"] == 4 and src["complex_rows"] == 1 and src["edges_from_complex_members"] == 2
    assert src["rows_read"] == 5 and src["edges_kept"] == 4 and src["dropped"]["unmapped"] == 1
    row = rejects[rejects["source"] == "collectri"].iloc[0]
    assert (row["line"], row["value"], row["reason"]) == (5, "NOTAGENE1", "unmapped")

    bad = tmp_path / "bad.tsv"
    bad.write_text(header + "\n" + "P04637\tQ00987\tTP53\tMDM2\t1\tyes\t0\t1\t1\t0\t12\n")
    with pytest.raises(InputError, match=r"bad.tsv: line 2: field 'is_stimulation' is 'yes'"):
        build_multigraph("human", {"collectri": str(bad), **idmap}, {})
