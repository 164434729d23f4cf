"""Tests of cellgraph.graphs.spectral on real networks: HuRI protein interactions and DoRothEA regulons.

The grn stage's ARACNe networks are not available to these tests, so the "real networks" are subgraphs
of the vendored HuRI binary PPI map (Ensembl gene ids used as node names) and of the DoRothEA A-C
regulons (resources/demo/networks/human).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.linalg import expm
from scipy.sparse import csgraph
from scipy.special import iv

from cellgraph.cli import spectral as spectral_cli
from cellgraph.graphs import spectral as spc

REPO = Path(__file__).resolve().parents[1]
HURI = REPO / "resources/demo/networks/human/HuRI_binaryPPI.tsv"
DOROTHEA = REPO / "resources/demo/networks/human/dorothea_hs_regulons.tsv.gz"


def _edge_index(a: pd.Series, b: pd.Series, nodes: list[str]) -> np.ndarray:
    pos = {g: i for i, g in enumerate(nodes)}
    return np.array([[pos[x] for x in a], [pos[x] for x in b]], dtype=np.int64)


@pytest.fixture(scope="module")
def huri():
    """HuRI edges among the 300 highest-degree proteins, plus 5 isolated nodes at the end."""
    df = pd.read_csv(HURI, sep="\t")
    deg = pd.concat([df["protein1"], df["protein2"]]).value_counts()
    top = sorted(deg.index[:300])
    sub = df[df["protein1"].isin(top) & df["protein2"].isin(top)]
    nodes = top + [f"isolated{i}" for i in range(5)]
    return _edge_index(sub["protein1"], sub["protein2"], nodes), len(nodes)


@pytest.fixture(scope="module")
def dorothea():
    """DoRothEA A-C regulons of 10 TFs (TF -> target), with the DoRothEA mode of regulation as weight."""
    df = pd.read_csv(DOROTHEA, sep="\t")
    df = df[df["confidence"].isin(["A", "B", "C"]) & (df["tf"] != df["target"])]
    tfs = df["tf"].value_counts().index[60:70]
    sub = df[df["tf"].isin(tfs)].drop_duplicates(["tf", "target"])
    nodes = sorted(set(sub["tf"]) | set(sub["target"]))
    w = np.where(sub["mor"].to_numpy() > 0, 1.0, 0.5)
    return _edge_index(sub["tf"], sub["target"], nodes), len(nodes), w


def _spectral_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, 2))


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_chebyshev_kernel_matches_expm_on_huri(huri, beta):
    ei, n = huri
    lap = spc.normalized_laplacian(ei, n)
    assert lap.shape == (n, n) and 500 < lap.nnz
    tol = 1e-6
    c = spc.heat_kernel_coefficients(beta, tol)
    approx = spc.chebyshev_apply(lap, np.eye(n), c)
    exact = expm(-beta * lap.toarray())
    assert _spectral_error(approx, exact) <= tol  # the documented bound on the truncation error
    assert np.linalg.norm(approx - exact) <= np.sqrt(n) * tol  # Frobenius <= sqrt(N) * spectral
    # fewer terms are not enough: the chosen K is the smallest that meets the tolerance on some graph
    if c.size > 2:
        coarse = spc.chebyshev_apply(lap, np.eye(n), c[:-2])
        assert _spectral_error(coarse, exact) > _spectral_error(approx, exact)


def test_chebyshev_kernel_matches_expm_on_weighted_dorothea(dorothea):
    ei, n, w = dorothea
    lap = spc.normalized_laplacian(ei, n, w)
    evals = np.linalg.eigvalsh(lap.toarray())
    assert evals.min() > -1e-10 and evals.max() < 2 + 1e-10
    c = spc.heat_kernel_coefficients(0.1, 1e-8)
    x = np.random.default_rng(0).normal(size=(n, 4))
    exact = expm(-0.1 * lap.toarray()) @ x
    approx = spc.chebyshev_apply(lap, x, c)
    assert np.linalg.norm(approx - exact) / np.linalg.norm(exact) < 1e-8


def test_normalized_laplacian_against_definition(dorothea):
    ei, n, w = dorothea
    lap = spc.normalized_laplacian(ei, n, w).toarray()
    a = np.zeros((n, n))
    a[ei[0], ei[1]] = w
    a = np.maximum(a, a.T)
    d = a.sum(1)
    dinv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)
    want = np.diag((d > 0).astype(float)) - dinv[:, None] * a * dinv[None, :]
    np.testing.assert_allclose(lap, want, atol=1e-12)
    np.testing.assert_allclose(lap, csgraph.laplacian(sp.csr_matrix(a), normed=True).toarray(), atol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_bessel_and_quadrature_coefficients_agree(beta):
    bessel = spc.heat_kernel_coefficients(beta, 1e-6)
    quad = spc.heat_kernel_coefficients(beta, 1e-6, method="quadrature")
    assert bessel.shape == quad.shape
    np.testing.assert_allclose(quad, bessel, atol=1e-13)
    k = np.arange(bessel.size)
    want = 2 * (-1.0) ** k * np.exp(-beta) * iv(k, beta)
    want[0] /= 2
    np.testing.assert_allclose(bessel, want, rtol=1e-12)


def test_constant_term_is_halved(huri):
    beta = 1e-3
    c = spc.heat_kernel_coefficients(beta, 1e-10)
    assert c[0] == pytest.approx(np.exp(-beta) * iv(0, beta), rel=1e-12)  # a_0 / 2, close to 1
    # the series reproduces f(lambda) = exp(-beta lambda) on [0, 2], e.g. f(0) = sum_k c_k (-1)^k = 1
    lam = np.linspace(0, 2, 41)
    series = np.polynomial.chebyshev.chebval(lam - 1, c)
    np.testing.assert_allclose(series, np.exp(-beta * lam), atol=1e-10)
    ei, n = huri
    lap = spc.normalized_laplacian(ei, n)
    k = spc.chebyshev_apply(lap, np.eye(n), c)
    exact = expm(-beta * lap.toarray())
    assert _spectral_error(k, exact) < 1e-9
    # first order: I - beta L, with remainder <= beta^2 lambda_max^2 / 2 <= 2 beta^2
    assert _spectral_error(k, np.eye(n) - beta * lap.toarray()) <= 2 * beta**2
    assert _spectral_error(k, exact + c[0] / 2 * np.eye(n)) > 0.4  # an unhalved c_0 would be this far off


def test_isolated_nodes_unchanged(huri):
    ei, n = huri
    lap = spc.normalized_laplacian(ei, n)
    iso = np.arange(n - 5, n)
    assert np.abs(lap[iso].toarray()).sum() == 0
    x = np.random.default_rng(1).normal(size=(n, 3))
    y = spc.chebyshev_apply(lap, x, spc.heat_kernel_coefficients(0.5, 1e-8))
    np.testing.assert_allclose(y[iso], x[iso], atol=1e-8)
    assert np.abs(y[: n - 5] - x[: n - 5]).max() > 1e-3  # connected nodes do diffuse


def test_dense_torch_equals_sparse(huri, dorothea):
    (ei1, n1), (ei2, n2, w2) = huri, dorothea
    laps = [spc.normalized_laplacian(ei1, n1).toarray(), spc.normalized_laplacian(ei2, n2, w2).toarray()]
    n = max(n1, n2)
    batch = np.zeros((2, n, n))
    for b, lap in enumerate(laps):
        batch[b, : lap.shape[0], : lap.shape[0]] = lap
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, n, 6))
    c = spc.heat_kernel_coefficients(0.3, 1e-8)
    dense = spc.chebyshev_apply_dense(torch.from_numpy(batch), torch.from_numpy(x), torch.from_numpy(c)).numpy()
    for b, lap in enumerate(laps):
        m = lap.shape[0]
        np.testing.assert_allclose(dense[b, :m], spc.chebyshev_apply(sp.csr_matrix(lap), x[b, :m], c), atol=1e-10)
        np.testing.assert_allclose(dense[b, m:], x[b, m:], atol=1e-10)  # padding behaves as isolated nodes
    kernel = spc.heat_kernel_dense(torch.from_numpy(batch), c.tolist()).numpy()
    np.testing.assert_allclose(kernel[1, :n2, :n2], expm(-0.3 * laps[1]), atol=1e-7)
    # differentiable in x, with the gradient of the dense product (a bmm per Chebyshev term)
    lap_t, w = torch.from_numpy(batch), torch.from_numpy(rng.normal(size=x.shape))
    xt = torch.from_numpy(x).requires_grad_(True)
    (spc.chebyshev_apply_dense(lap_t, xt, c) * w).sum().backward()
    xd = torch.from_numpy(x).requires_grad_(True)
    (spc.chebyshev_recurrence(lambda y: torch.bmm(lap_t, y), xd, torch.from_numpy(c)) * w).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), xd.grad.numpy(), atol=1e-10)
    # a batch without any edge (the graph-removal check of evaluate): every node is isolated, exp(0) x = x
    zero = spc.chebyshev_apply_dense(torch.zeros_like(lap_t), torch.from_numpy(x), c).numpy()
    np.testing.assert_allclose(zero, x, atol=1e-8)
    assert np.abs(xt.grad.numpy() - w.numpy()).max() > 1e-3  # the gradient is diffused, not the identity


@pytest.mark.parametrize("kwargs", [
    dict(beta=0.0), dict(beta=-1.0), dict(beta=0.1, tol=0.0), dict(beta=0.1, method="taylor"),
    dict(beta=50.0, tol=1e-12, max_terms=10),
])
def test_bad_coefficient_arguments(kwargs):
    with pytest.raises(ValueError):
        spc.heat_kernel_coefficients(**kwargs)


@pytest.mark.parametrize("ei, n, w", [
    (np.array([0, 1, 2]), 3, None),
    (np.array([[0, 1], [1, 3]]), 3, None),
    (np.array([[0, -1], [1, 2]]), 3, None),
    (np.array([[0, 1], [1, 2]]), 3, np.array([1.0, -0.5])),
    (np.array([[0, 1], [1, 2]]), 3, np.array([1.0, np.nan])),
    (np.array([[0, 1], [1, 2]]), 3, np.array([1.0])),
])
def test_bad_laplacian_arguments(ei, n, w):
    with pytest.raises(ValueError):
        spc.normalized_laplacian(ei, n, w)


def test_spectral_stage_on_regulon_networks(dorothea, tmp_path):
    """The stage on a networks table of two real regulon subgraphs: coefficients and per-type errors."""
    df = pd.read_csv(DOROTHEA, sep="\t")
    df = df[df["confidence"].isin(["A", "B"]) & (df["tf"] != df["target"])].drop_duplicates(["tf", "target"])
    tfs = df["tf"].value_counts().index
    rows = []
    for t, sel in (("T1", tfs[30:34]), ("T2", tfs[34:40])):
        sub = df[df["tf"].isin(sel)]
        rows.append(pd.DataFrame({"cell_type": t, "source": sub["tf"], "target": sub["target"],
                                  "mi": 0.1, "pvalue": 1e-3, "count": 5}))
    path = tmp_path / "networks.tsv.gz"
    pd.concat(rows).to_csv(path, sep="\t", index=False)
    p = argparse.ArgumentParser()
    spectral_cli.configure_parser(p)
    spectral_cli.run(p.parse_args(["--networks", str(path), "--out-dir", str(tmp_path / "out")]))
    coef = json.loads((tmp_path / "out/coefficients.json").read_text())
    assert coef["K"] == len(coef["coefficients"]) - 1
    np.testing.assert_allclose(coef["coefficients"], spc.heat_kernel_coefficients(0.1, 1e-6))
    rep = pd.read_csv(tmp_path / "out/report.tsv", sep="\t")
    assert rep["cell_type"].tolist() == ["T1", "T2"]
    assert (rep["relative_error"] < 1e-6).all()
    for t, sub in zip(("T1", "T2"), rows):
        assert rep.set_index("cell_type").loc[t, "nodes"] == len(set(sub["source"]) | set(sub["target"]))


@pytest.mark.parametrize("tol", [0.0, 1.0, 2.5])
def test_tolerance_outside_open_unit_interval_is_refused(tol):
    """tol >= 1 would keep only c_0 (K = 0, no diffusion); tol <= 0 is never reached."""
    with pytest.raises(ValueError, match=r"tol must be in \(0, 1\)"):
        spc.heat_kernel_coefficients(0.1, tol)
