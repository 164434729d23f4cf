"""Tests of the networks stage on the vendored real networks and id maps."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from cellgraph import cli
from cellgraph.errors import InputError
from cellgraph.graphs.networks import (
    EDGE_COLUMNS,
    build_networks,
    load_symbol_maps,
    map_symbols,
    read_edges,
)

REPO = Path(__file__).resolve().parents[1]
NET = REPO / "resources" / "demo" / "networks"
REAL = {
    "dorothea": NET / "human" / "dorothea_hs_regulons.tsv.gz",
    "trrust": NET / "human" / "trrust_rawdata.human.tsv",
    "huri": NET / "human" / "HuRI_binaryPPI.tsv",
    "string": NET / "human" / "string_human_bionev_edges.tsv.gz",
    "string_info": NET / "human" / "9606.protein.info.v12.0.txt.gz",
    "alias_map": NET / "idmap" / "hs_alias_symbol.tsv",
    "ensg_map": NET / "idmap" / "hs_ensg_entrez_symbol.tsv",
    "ensp_map": NET / "idmap" / "hs_ensp_entrez_symbol.tsv",
}
HAS_HEADER = {"dorothea": True, "trrust": False, "huri": True, "string": True}


def _argv(paths: dict, out: Path, extra: list[str] | None = None) -> list[str]:
    argv = ["networks"]
    for key, p in paths.items():
        argv += [f"--{key.replace('_', '-')}", str(p)]
    return argv + (extra or []) + ["--out-dir", str(out)]


def _lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return fh.read().splitlines()


def _outputs(out: Path):
    edges = read_edges(out / "edges.parquet")
    regulators = (out / "regulators.txt").read_text().splitlines()
    rejects = pd.read_csv(out / "rejects.tsv.gz", sep="\t", dtype=str, keep_default_na=False)
    report = json.loads((out / "report.json").read_text())
    return edges, regulators, rejects, report


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    out = tmp_path_factory.mktemp("networks_real")
    assert cli.main(_argv(REAL, out)) == 0
    return _outputs(out)


@pytest.fixture(scope="module")
def maps():
    return load_symbol_maps(REAL["alias_map"], REAL["ensg_map"], REAL["ensp_map"])


@pytest.fixture()
def mini(tmp_path):
    """The first 40 data lines of each real source (plus header), real protein.info and id maps."""
    paths = dict(REAL)
    for key in HAS_HEADER:
        lines = _lines(REAL[key])[:41]
        p = tmp_path / "in" / Path(REAL[key].name.replace(".gz", ""))
        p.parent.mkdir(exist_ok=True)
        p.write_text("\n".join(lines) + "\n")
        paths[key] = p
    return paths


# ------------------------------------------------------------------ real data


def test_nothing_lost_per_source(real):
    edges, _, rejects, report = real
    for graph, header in HAS_HEADER.items():
        src = report["sources"][graph]
        n_raw = len(_lines(REAL[graph])) - int(header)
        assert src["rows_read"] == n_raw
        assert src["edges_kept"] + sum(src["dropped"].values()) == n_raw
        assert (edges["graph"] == graph).sum() == src["edges_kept"]
        rej = rejects[rejects["graph"] == graph]
        assert len(rej) == src["dropped_total"]
        assert rej["reason"].value_counts().to_dict() == {k: v for k, v in src["dropped"].items() if v}
        # a row is either kept or rejected exactly once: rejected line numbers are distinct file lines
        lines = rej["line"].astype(int)
        assert lines.is_unique and lines.min() >= 1 + int(header) and lines.max() <= n_raw + int(header)
        ids = src["ids"]
        assert sum(ids["mapped_by"].values()) == ids["mapped"]
        assert ids["mapped"] + ids["ambiguous"] + ids["unmapped"] == ids["distinct"]
    totals = report["totals"]
    assert totals["edges_kept"] == len(edges)
    assert totals["rows_read"] == totals["edges_kept"] + sum(totals["dropped"].values())


def test_known_real_edges_after_mapping(real):
    edges, _, rejects, _ = real
    pairs = set(zip(edges["graph"], edges["source"], edges["target"]))
    # DoRothEA line 233474: "STAT1  A  IRF1  1.0"
    assert ("dorothea", "STAT1", "IRF1") in pairs
    # DoRothEA "ARNTL A AVP": ARNTL is an alias of BMAL1 in hs_alias_symbol.tsv
    assert ("dorothea", "BMAL1", "AVP") in pairs and ("dorothea", "ARNTL", "AVP") not in pairs
    # TRRUST line 1: "AATF  BAX  2  22909821"
    assert ("trrust", "AATF", "BAX") in pairs
    # HuRI line 2: ENSG00000000005 (TNMD) - ENSG00000061656 (SPAG4); undirected, stored sorted
    assert ("huri", "SPAG4", "TNMD") in pairs
    # STRING line 2: ENSP00000281821 (EPHA4) - ENSP00000317985 (ROCK2), both only in protein.info
    assert ("string", "EPHA4", "ROCK2") in pairs
    # DoRothEA line 2 "ADNP D ATF7IP" is below the default confidence A-C
    row = rejects[(rejects["graph"] == "dorothea") & (rejects["line"] == "2")]
    assert row[["field", "value", "reason"]].values.tolist() == [["confidence", "D", "below_confidence"]]
    assert ("dorothea", "ADNP", "ATF7IP") not in pairs
    # HuRI line 4036: ENSG00000063587 has two symbols (ZNF275, LOC105373378) -> ambiguous
    row = rejects[(rejects["graph"] == "huri") & (rejects["line"] == "4036")]
    assert row[["field", "value", "reason"]].values.tolist() == [["protein1", "ENSG00000063587", "ambiguous"]]


def test_dorothea_weights_and_confidence(real):
    edges, _, _, report = real
    dor = edges[edges["graph"] == "dorothea"]
    raw = pd.read_csv(REAL["dorothea"], sep="\t")
    kept_raw = raw[raw["confidence"].isin(["A", "B", "C"])]
    assert set(dor["weight"]) == set(kept_raw["mor"])  # mor (+1/-1) carried as weight
    # every kept edge came from an A-C row: its TF is an A-C TF of the raw file (maybe via alias)
    assert report["sources"]["dorothea"]["dropped"]["below_confidence"] == int((~raw["confidence"].isin(["A", "B", "C"])).sum())
    assert len(dor) <= len(kept_raw)
    assert (edges.loc[edges["graph"] != "dorothea", "weight"] == 1.0).all()


def test_regulators(real, maps):
    edges, regulators, _, _ = real
    assert regulators == sorted(set(regulators))
    assert set(regulators) <= maps.approved
    assert "ADNP" in regulators  # DoRothEA only, confidence D only (not a TF in TRRUST)
    assert "AATF" in regulators  # TRRUST only
    assert "BMAL1" in regulators and "ARNTL" not in regulators
    # every TF of a kept DoRothEA or TRRUST edge is a regulator
    directed = edges[edges["graph"].isin(["dorothea", "trrust"])]
    assert set(directed["source"]) <= set(regulators)


def test_graph_invariants(real):
    edges, _, _, _ = real
    assert list(edges.columns) == EDGE_COLUMNS
    assert (edges["source"] != edges["target"]).all()
    assert not edges.duplicated(["graph", "source", "target"]).any()
    flags = edges.groupby("graph")["directed"].unique().to_dict()
    assert {g: list(v) for g, v in flags.items()} == {
        "dorothea": [True], "trrust": [True], "huri": [False], "string": [False]
    }
    und = edges[~edges["directed"]]
    assert (und["source"] < und["target"]).all()
    rev = und.rename(columns={"source": "target", "target": "source"})
    assert und.merge(rev, on=["graph", "source", "target"]).empty


def test_string_routes(real):
    _, _, _, report = real
    s = report["sources"]["string"]
    assert s["ids"]["mapped_by"]["ensp_map"] > 0
    assert s["ids"]["mapped_by"]["info_approved"] > 0
    chk = s["symbol_column_check"]
    assert chk["agree"] + chk["disagree"] == chk["compared"] > 0


def test_symbol_maps(maps):
    sym, route = map_symbols(["TP53", "ARNTL", "GBA", "C12ORF76", "NOT_A_GENE_XYZ", "NA"], maps)
    assert list(route) == ["approved", "alias", "ambiguous", "case", "unmapped", "alias"]
    assert list(sym) == ["TP53", "BMAL1", "", "C12orf76", "", "XK"]
    assert maps.alias_ambiguous["GBA"] == ("GBA1", "GBAP1")
    assert maps.ensg_ambiguous["ENSG00000063587"] == ("LOC105373378", "ZNF275")
    assert maps.ensg["ENSG00000000005"] == "TNMD"


# ------------------------------------------------------------------ bad input


def test_malformed_row_reports_line_and_writes_nothing(mini, tmp_path, capsys):
    lines = _lines(REAL["dorothea"])[:6] + ["ADNP\tD\tTLK1\t1.0\textra"] + _lines(REAL["dorothea"])[6:10]
    bad = tmp_path / "dorothea_bad.tsv"
    bad.write_text("\n".join(lines) + "\n")
    paths = dict(mini, dorothea=bad)
    with pytest.raises(InputError, match=r"dorothea_bad\.tsv: line 7: expected 4 tab-separated fields.*found 5"):
        build_networks(**paths)
    out = tmp_path / "out"
    assert cli.main(_argv(paths, out)) == 2
    assert "line 7" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "key, edit, pattern",
    [
        ("dorothea", lambda L: L[:3] + ["ADNP\tD\tTLK1\tup"] + L[3:], r"line 4: field 'mor' is 'up'"),
        ("dorothea", lambda L: L[:5] + ["ADNP\tF\tTLK1\t1.0"] + L[5:], r"line 6: field 'confidence' is 'F'"),
        ("dorothea", lambda L: ["tf\tconfidence\ttarget\tsign"] + L[1:], r"line 1: header lacks column\(s\) \['mor'\]"),
        ("trrust", lambda L: L[:2] + ["AATF\tBAX\t2"] + L[2:], r"line 3: expected 4 tab-separated fields .* found 3"),
        ("trrust", lambda L: L[:2] + ["AATF\tBAX\tup\t1"] + L[2:], r"line 3: field 'mode' is 'up'"),
        ("huri", lambda L: L[:3] + [""] + L[3:], r"line 4: expected 2 tab-separated fields .* found a blank line"),
        ("string", lambda L: L[:2] + ["9606.ENSP00000281821\t\tEPHA4\tROCK2"] + L[2:], r"line 3: field 'protein2' is empty"),
    ],
)
def test_bad_rows(mini, tmp_path, key, edit, pattern):
    bad = tmp_path / f"bad_{key}.tsv"
    bad.write_text("\n".join(edit(_lines(mini[key]))) + "\n")
    with pytest.raises(InputError, match=pattern) as err:
        build_networks(**dict(mini, **{key: bad}))
    assert f"bad_{key}.tsv" in str(err.value)


def test_missing_file_and_bad_confidence_flag(mini, tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "nowhere.tsv"
    assert cli.main(_argv(dict(mini, huri=missing), out)) == 2
    assert "nowhere.tsv" in capsys.readouterr().err
    assert cli.main(_argv(mini, out, ["--dorothea-confidence", "A", "Q"])) == 2
    assert "--dorothea-confidence" in capsys.readouterr().err
    assert not out.exists()


def test_confidence_flag_and_deterministic_outputs(mini, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli.main(_argv(mini, a)) == 0
    assert cli.main(_argv(mini, b)) == 0
    for name in ["edges.parquet", "regulators.txt", "rejects.tsv.gz", "report.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the first 40 DoRothEA rows are ADNP at confidence D: kept only when D is asked for
    rows = pd.read_csv(mini["dorothea"], sep="\t")
    assert set(rows["confidence"]) == {"D"}
    assert cli.main(_argv(mini, c, ["--dorothea-confidence", "D"])) == 0
    ea, ec = read_edges(a / "edges.parquet"), read_edges(c / "edges.parquet")
    assert (ea["graph"] == "dorothea").sum() == 0
    rep = json.loads((c / "report.json").read_text())["sources"]["dorothea"]
    assert (ec["graph"] == "dorothea").sum() == rep["edges_kept"] == len(rows) - rep["dropped_total"] > 0


def test_read_edges_validates(real, tmp_path):
    edges = real[0]
    p = tmp_path / "e.parquet"
    edges.drop(columns="weight").to_parquet(p)
    with pytest.raises(InputError, match=r"missing column\(s\) \['weight'\]"):
        read_edges(p)
    bad = edges.head(5).copy()
    bad["graph"] = "biogrid"
    bad.to_parquet(p)
    with pytest.raises(InputError, match="unknown graph"):
        read_edges(p)
    with pytest.raises(InputError, match="file not found"):
        read_edges(tmp_path / "none.parquet")


# ------------------------------------------------------------------ Pathway Commons (optional source)

PC_REAL = REPO / "resources" / "networks" / "human" / "PathwayCommons9.All.hgnc.sif.gz"
SIF = [
    "STAT1\tcontrols-expression-of\tIRF1",  # line 1: regulatory, directed STAT1 -> IRF1
    "STAT1\tinteracts-with\tIRF1",  # 2: physical, stored once as IRF1 - STAT1
    "IRF1\tin-complex-with\tSTAT1",  # 3: the same undirected pair again: duplicate
    "CHEBI:15377\tchemical-affects\tSTAT1",  # 4: a relation of neither graph: counted, not rejected
    "NOTAGENE1\tinteracts-with\tSTAT1",  # 5: unmapped source
    "JAK2\tcatalysis-precedes\tSTAT1",  # 6: neither graph
    "JAK2\tinteracts-with\tJAK2",  # 7: self-loop
    "IRF1\tcontrols-expression-of\tSTAT1",  # 8: regulatory, the other direction: kept (directed)
]


def test_pathway_commons_graphs_from_a_written_sif(maps, tmp_path):
    from cellgraph.graphs.networks import read_pathway_commons

    path = tmp_path / "pc.sif"
    path.write_text("\n".join(SIF) + "\n")
    edges, rejects, rep = read_pathway_commons(path, maps)
    got = {(g, s, t, d) for g, s, t, d in edges[["graph", "source", "target", "directed"]].itertuples(index=False)}
    assert got == {("pathway_commons_physical", "IRF1", "STAT1", False),
                   ("pathway_commons_regulatory", "STAT1", "IRF1", True),
                   ("pathway_commons_regulatory", "IRF1", "STAT1", True)}
    assert sorted(zip(rejects["line"].astype(int), rejects["reason"])) == [(3, "duplicate"), (5, "unmapped"),
                                                                          (7, "self_loop")]
    phys, reg = rep["pathway_commons_physical"], rep["pathway_commons_regulatory"]
    assert (phys["rows_read"], phys["edges_kept"], phys["dropped_total"]) == (4, 1, 3)
    assert (reg["rows_read"], reg["edges_kept"], reg["dropped_total"]) == (2, 2, 0)
    assert phys["relations_not_used"] == {"chemical-affects": 1, "catalysis-precedes": 1}
    with pytest.raises(InputError, match="both physical and regulatory"):
        read_pathway_commons(path, maps, physical=["interacts-with"], regulatory=["interacts-with"])


def test_networks_stage_adds_pathway_commons_only_when_given(mini, tmp_path):
    from cellgraph.pp.tokenize import prior_graph

    assert cli.main(_argv(mini, tmp_path / "base")) == 0
    assert cli.main(_argv(mini, tmp_path / "with_pc", ["--pathway-commons", str(PC_REAL)])) == 0
    base = _outputs(tmp_path / "base")
    edges, regulators, rejects, report = _outputs(tmp_path / "with_pc")
    assert regulators == base[1]  # Pathway Commons adds no regulator
    for g in ("pathway_commons_physical", "pathway_commons_regulatory"):
        src = report["sources"][g]
        assert src["edges_kept"] == (edges["graph"] == g).sum() > 100_000
        assert src["rows_read"] == sum(src["relations"].values())
        assert src["edges_kept"] + src["dropped_total"] == src["rows_read"]
        assert (rejects["graph"] == g).sum() == src["dropped_total"]
    assert report["totals"]["rows_read"] == report["totals"]["edges_kept"] + sum(report["totals"]["dropped"].values())
    same = edges[~edges["graph"].str.startswith("pathway_commons")].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, base[0])  # the other graphs are untouched
    genes = ["IRF1", "JAK2", "STAT1", "STAT2"]
    (u, v, _), counts = prior_graph(edges, ["pathway_commons_regulatory"], {g: i for i, g in enumerate(genes)})
    assert counts["rows"]["pathway_commons_regulatory"] > 0 and (0, 2) in set(zip(u.tolist(), v.tolist()))
