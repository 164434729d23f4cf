"""Tests of the ARACNe file formats and the standalone `cellgraph aracne` command (cellgraph.grn.aracne_io,
command line cellgraph.cli.aracne)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellgraph.grn import aracne as A
from cellgraph.grn import aracne_io as io
from cellgraph.cli import main as cli_main
from cellgraph.errors import InputError

REPO = Path(__file__).resolve().parents[1]
COUNTS = REPO / "resources" / "demo" / "expression" / "pbmc3p5k_sorted_counts.h5ad"
DOROTHEA = REPO / "resources" / "demo" / "networks" / "human" / "dorothea_hs_regulons.tsv.gz"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("aracne_io")
    expr, genes, regs, true = A.planted_network(n_genes=80, n_samples=150, n_regulators=8, seed=1)
    expr = np.round(expr, 4)
    expr[40] = 2.5  # a constant target gene
    samples = [f"S{j}" for j in range(expr.shape[1])]
    tsv = d / "expr.tsv"
    io.write_expression_tsv(tsv, expr, genes, samples)
    reg = d / "tfs.txt"
    reg.write_text("\n".join(regs + ["NOT_IN_MATRIX", "ALSO_MISSING"]) + "\n")
    return dict(dir=d, expr=expr, genes=genes, regs=regs, samples=samples, tsv=tsv, reg=reg, true=true)


def test_expression_tsv_round_trip(planted):
    expr, genes, samples = io.read_expression_tsv(planted["tsv"])
    np.testing.assert_array_equal(expr, planted["expr"])
    assert genes == planted["genes"] and samples == planted["samples"]
    assert planted["tsv"].read_text().splitlines()[0].split("\t")[:3] == ["gene", "S0", "S1"]


def test_network_round_trips(planted, tmp_path):
    df = A.aracne(planted["expr"], planted["genes"], planted["regs"], n_bootstraps=10, seed=0, n_null=20_000)
    assert len(df) > 0
    io.write_network_ap(df, tmp_path / "network.txt")
    assert (tmp_path / "network.txt").read_text().splitlines()[0] == "Regulator\tTarget\tMI\tpvalue"
    pd.testing.assert_frame_equal(io.read_network_ap(tmp_path / "network.txt"),
                                  df[["regulator", "target", "mi", "pvalue"]], check_exact=True)
    io.write_network_aracne3(df, tmp_path / "network.tsv")
    head = (tmp_path / "network.tsv").read_text().splitlines()[0].split("\t")
    assert head == ["regulator.values", "target.values", "mi.values", "scc.values", "count.values", "log.p.values"]
    pd.testing.assert_frame_equal(io.read_network_aracne3(tmp_path / "network.tsv"),
                                  df[["regulator", "target", "mi", "scc", "count", "log_p"]], check_exact=True)


def test_empty_network_reads_back(tmp_path):
    empty = pd.DataFrame(columns=["regulator", "target", "mi", "pvalue", "count", "log_p", "scc"])
    io.write_network_aracne3(empty, tmp_path / "n.tsv")
    back = io.read_network_aracne3(tmp_path / "n.tsv")
    assert len(back) == 0 and list(back.columns) == ["regulator", "target", "mi", "scc", "count", "log_p"]


def test_read_network_rejects_wrong_header(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("Regulator\tTarget\tMI\n A\tB\t0.1\n")
    with pytest.raises(InputError, match="expected"):
        io.read_network_ap(p)
    p.write_text("Regulator\tTarget\tMI\tpvalue\nA\tB\tzero\t0.1\n")
    with pytest.raises(InputError, match="line 2, column 'MI'"):
        io.read_network_ap(p)


def _run(argv):
    return cli_main(["aracne"] + [str(a) for a in argv])


def test_command_reports_missing_regulators_and_constant_genes(planted, tmp_path):
    out = tmp_path / "out"
    base = ["--expression", planted["tsv"], "--regulators", planted["reg"], "--n-bootstraps", 10, "--seed", 2,
            "--n-null", 20_000, "--mi-pvalue", 1e-6]
    assert _run(base + ["--out-dir", out, "--threads", 1]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["regulators_missing"] == dict(count=2, names=["ALSO_MISSING", "NOT_IN_MATRIX"])
    assert rep["constant_genes"] == dict(count=1, names=[planted["genes"][40]])
    assert rep["regulators_used"] == len(planted["regs"]) and rep["genes_used"] == len(planted["genes"]) - 1
    net = io.read_network_ap(out / "network.txt")
    assert rep["edges"] == len(net) > 0
    pred = {frozenset(p) for p in zip(net["regulator"], net["target"])}
    assert len(pred & planted["true"]) / len(pred) >= 0.9
    assert not (out / "bootstraps").exists()  # per-bootstrap files removed after success
    # same seed, other thread count: byte-identical network files, in both formats
    out2 = tmp_path / "out2"
    assert _run(base + ["--out-dir", out2, "--threads", 2]) == 0
    assert (out / "network.txt").read_bytes() == (out2 / "network.txt").read_bytes()
    for t, d in ((1, tmp_path / "a3_1"), (2, tmp_path / "a3_2")):
        assert _run(base + ["--out-dir", d, "--threads", t, "--format", "aracne3", "--consolidation", "binomial",
                            "--mi-method", "pvalue"]) == 0
    assert (tmp_path / "a3_1" / "network.tsv").read_bytes() == (tmp_path / "a3_2" / "network.tsv").read_bytes()
    # decoupler columns: source, target, weight (= Spearman), mi, pvalue, count; the same edges as network.txt
    assert _run(base + ["--out-dir", tmp_path / "dc", "--format", "decoupler"]) == 0
    dc = pd.read_csv(tmp_path / "dc" / "network.tsv", sep="\t")
    assert list(dc.columns) == ["source", "target", "weight", "mi", "pvalue", "count"]
    assert list(zip(dc["source"], dc["target"])) == list(zip(net["regulator"], net["target"]))
    assert dc["weight"].between(-1, 1).all() and (dc["weight"].abs() > 0).all()


def test_command_refuses_draws_with_replacement(planted, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run(["--expression", planted["tsv"], "--regulators", planted["reg"], "--out-dir", tmp_path / "o",
              "--bootstrap", "replacement"])
    assert exit_info.value.code == 2
    assert "adjacent ranks in both genes" in capsys.readouterr().err and not (tmp_path / "o").exists()


def _edit(lines, i, j, value):
    f = lines[i].split("\t")
    f[j] = value
    lines[i] = "\t".join(f)


@pytest.mark.parametrize(
    "case, message",
    [
        ("duplicate", r"2 gene names occur more than once: G0002, G0010"),
        ("missing", r"3 missing or non-finite values \(NA/NaN/inf\) in 2 genes: G0005, G0020"),
        ("text", r"line 9, sample 'S0' \(column 2\): 'foo' is not a number"),
        ("ragged", r"not a tab-separated genes x samples matrix"),
    ],
)
def test_command_rejects_bad_matrices(planted, tmp_path, capsys, case, message):
    lines = planted["tsv"].read_text().splitlines()  # lines[0] header, lines[i + 1] gene i (file line i + 2)
    if case == "duplicate":
        _edit(lines, 4, 0, "G0002")
        _edit(lines, 12, 0, "G0010")
    elif case == "missing":
        _edit(lines, 6, 3, "NA")
        _edit(lines, 6, 9, "")
        _edit(lines, 21, 1, "NaN")
    elif case == "text":
        _edit(lines, 8, 1, "foo")
    else:
        lines[5] += "\t1.0\t2.0"
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc = _run(["--expression", bad, "--regulators", planted["reg"], "--out-dir", out])
    assert rc == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not out.exists()


def test_command_rejects_no_regulator(planted, tmp_path, capsys):
    reg = tmp_path / "r.txt"
    reg.write_text("X1\nX2\n")
    assert _run(["--expression", planted["tsv"], "--regulators", reg, "--out-dir", tmp_path / "o"]) == 2
    assert "none of the 2 regulators" in capsys.readouterr().err


def test_usable_regulators_skips_missing_and_constant_and_refuses_none(planted):
    """The check behind the command: missing regulators and constant genes are skipped (regulators kept in
    input order); repeated gene names or no usable regulator are InputErrors naming the file."""
    expr, genes = planted["expr"], planted["genes"]
    regs = ["NOT_IN_MATRIX", *reversed(planted["regs"]), genes[40]]  # genes[40] is constant
    chk, present = io.usable_regulators(expr, genes, regs, "expr.tsv", "tfs.txt")
    assert present == list(reversed(planted["regs"]))
    assert chk["missing_regulators"] == ["NOT_IN_MATRIX"] and chk["constant_regulators"] == [genes[40]]
    with pytest.raises(InputError, match=r"tfs.txt: none of the 2 regulators"):
        io.usable_regulators(expr, genes, ["X1", genes[40]], "expr.tsv", "tfs.txt")
    with pytest.raises(InputError, match=r"expr.tsv: 1 gene names occur more than once"):
        io.usable_regulators(expr, [genes[1], *genes[1:]], planted["regs"], "expr.tsv", "tfs.txt")


def test_command_on_real_h5ad_aracne3_format(tmp_path):
    """Real PBMC counts (NK cells, 300 most expressed genes, DoRothEA TFs among them) from an h5ad,
    written as ARACNe3 columns; scc is the Spearman correlation of the two genes over all cells."""
    import anndata as ad
    from scipy.stats import spearmanr

    a = ad.read_h5ad(COUNTS)
    a = a[a.obs["trueLabel"].astype(str) == "NK"].copy()
    top = np.argsort(-np.asarray(a.X.sum(axis=0)).ravel(), kind="stable")[:300]
    a = a[:, np.sort(top)].copy()
    path = tmp_path / "nk.h5ad"
    a.write_h5ad(path)
    tfs = sorted(set(pd.read_csv(DOROTHEA, sep="\t")["tf"].astype(str)) & set(a.var_names))
    assert len(tfs) >= 3
    reg = tmp_path / "tfs.txt"
    reg.write_text("\n".join(tfs) + "\n")
    out = tmp_path / "out"
    assert _run(["--expression", path, "--regulators", reg, "--out-dir", out, "--format", "aracne3",
                 "--n-bootstraps", 10, "--mi-method", "pvalue", "--mi-pvalue", 1e-3, "--consolidation-alpha", 0.5,
                 "--n-null", 20_000]) == 0
    net = io.read_network_aracne3(out / "network.tsv")
    assert len(net) > 0 and set(net["regulator"]) <= set(tfs)
    assert ((net["count"] >= 1) & (net["count"] <= 10)).all() and (net["log_p"] <= 0).all()
    x = a.X.toarray()
    pos = {g: i for i, g in enumerate(a.var_names)}
    row = net.iloc[0]
    rho = spearmanr(x[:, pos[row["regulator"]]], x[:, pos[row["target"]]]).statistic
    assert row["scc"] == pytest.approx(rho, abs=1e-9)
