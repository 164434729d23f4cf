"""Tests of the ARACNe engine (cellgraph.aracne): APMI, null threshold, DPI, consolidation, recovery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import poisson

from cellgraph import aracne as A


def _pairs(df):
    return {frozenset((a, b)) for a, b in zip(df["regulator"], df["target"])}


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_apmi_matches_gaussian_mi(rho):
    """APMI of a bivariate Gaussian vs the analytic MI -1/2 log(1 - rho^2), in nats.

    Tolerance max(0.02, 5% of the true MI): the adaptive partition stops at the chi-square 5% level and
    never splits cells of <= 2 points, which under-resolves strong dependence (a downward bias growing
    with rho, ~0.01-0.03 nats at n = 1000-3000) and leaves a small upward bias near independence; the
    spread over repeats at n = 2000 is ~0.01 nats and is averaged over 4 repeats.
    """
    rng = np.random.default_rng(11)
    n = 2000
    true = -0.5 * np.log(1 - rho**2)
    est = []
    for rep in range(4):
        z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
        est.append(A.apmi(z[:, 0], z[:, 1], seed=rep))
    assert abs(np.mean(est) - true) <= max(0.02, 0.05 * true), (np.mean(est), true)


def test_apmi_independent_and_rank_invariant():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal(3000), rng.standard_normal(3000)
    assert A.apmi(x, y) < 0.01
    w = x + 0.5 * rng.standard_normal(3000)
    # only ranks matter: strictly monotone transforms leave the estimate unchanged
    assert A.apmi(x, w) == pytest.approx(A.apmi(np.exp(x), w**3), abs=1e-12)
    with pytest.raises(ValueError):
        A.apmi(x, y[:10])


def test_null_threshold_increases_as_pvalue_decreases():
    null = A.null_mi(200, n_pairs=20_000, seed=5)
    ps = [1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-10]
    thr = [A.mi_threshold(null, p) for p in ps]
    assert all(b > a for a, b in zip(thr, thr[1:])), thr
    # the fitted tail reproduces the empirical quantile where the sample reaches
    emp = np.quantile(null, 1 - 1e-3)
    assert A.mi_threshold(null, 1e-3) == pytest.approx(emp, rel=0.1)
    with pytest.raises(ValueError):
        A.mi_threshold(null, 0.0)


def test_null_model_cache_round_trip(tmp_path):
    a = A.null_model(60, n_pairs=2000, seed=1, cache_dir=tmp_path)
    files = list(tmp_path.glob("apmi_null_n60_m2000_s1_*.npy"))
    assert len(files) == 1
    b = A.null_model(60, n_pairs=2000, seed=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, A.null_mi(60, n_pairs=2000, seed=1))


@pytest.mark.parametrize("lam", [0.05, 1.7, 12.0])
def test_poisson_right_tail_is_p_x_ge_k(lam):
    k = np.arange(0, 40)
    np.testing.assert_allclose(A.poisson_right_tail(k, lam), poisson.sf(k - 1, lam), rtol=1e-9, atol=1e-300)
    # and it is not ARACNe-AP's P(X > k)
    assert not np.allclose(A.poisson_right_tail(k[1:6], lam), poisson.sf(k[1:6], lam))


def test_dpi_removes_weakest_edge_of_planted_triangle():
    # genes: 0 = regulator A, 1 = regulator B, 2 = target T
    reg_idx = np.array([0, 1])
    mi = np.zeros((2, 3), dtype=np.float32)
    mi[0, 1] = mi[1, 0] = 0.5  # A-B
    mi[0, 2] = 0.4  # A-T
    mi[1, 2] = 0.2  # B-T, the weakest
    keep = A.dpi_keep(mi, reg_idx, tolerance=0.0)
    assert keep[0, 1] and keep[1, 0] and keep[0, 2] and not keep[1, 2]
    # with tolerance 0.6 the weakest edge survives: 0.2 >= 0.4 * 0.4
    assert A.dpi_keep(mi, reg_idx, tolerance=0.6)[1, 2]
    # a missing side means no triangle
    mi2 = mi.copy()
    mi2[0, 2] = 0
    assert A.dpi_keep(mi2, reg_idx)[1, 2]


def test_dpi_on_chain_data_removes_indirect_edge():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1500)
    b = np.tanh(a) + 0.4 * rng.standard_normal(1500)
    t = b + 0.4 * rng.standard_normal(1500)
    ranks = A.rank_rows(np.vstack([a, b, t]))
    mi = A.mi_matrix(ranks, np.array([0, 1]))
    assert mi[0, 2] > 0.05  # the indirect A-T dependence is real ...
    keep = A.dpi_keep(mi, np.array([0, 1]))
    assert not keep[0, 2] and keep[0, 1] and keep[1, 2]  # ... and DPI removes it


def test_aracne_recovers_planted_network():
    expr, genes, regs, true = A.planted_network(n_genes=200, n_samples=500, n_regulators=20, seed=3)
    df = A.aracne(expr, genes, regs, n_bootstraps=20, seed=0)
    pred = _pairs(df)
    tp = len(pred & true)
    assert tp / len(pred) >= 0.9 and tp / len(true) >= 0.9, (tp / len(pred), tp / len(true))
    assert set(df["regulator"]) <= set(regs) and set(df["target"]) <= set(genes)
    assert (df["count"] >= 1).all() and (df["count"] <= 20).all() and (df["pvalue"] < 0.05).all()
    # regulator pairs are listed in both directions with identical values
    rr = df[df["target"].isin(regs)]
    rev = rr.rename(columns={"regulator": "target", "target": "regulator"})
    m = rr.merge(rev, on=["regulator", "target"], suffixes=("", "_r"))
    assert len(m) == len(rr) and np.allclose(m["mi"], m["mi_r"])


def test_aracne_binomial_bh_and_replacement_also_recover():
    expr, genes, regs, true = A.planted_network(n_genes=120, n_samples=400, n_regulators=12, seed=4)
    df = A.aracne(expr, genes, regs, n_bootstraps=8, bootstrap="replacement", consolidation="binomial",
                  correction="bh", seed=1)
    pred = _pairs(df)
    tp = len(pred & true)
    assert tp / len(pred) >= 0.9 and tp / len(true) >= 0.9


def test_deterministic_across_thread_counts_and_seeds():
    expr, genes, regs, _ = A.planted_network(n_genes=90, n_samples=200, n_regulators=10, noise=1.0, seed=2)
    # zeros make ties that the seeded keys must break identically
    expr[:, :40] = 0.0
    runs = [A.aracne(expr, genes, regs, n_bootstraps=5, seed=7, threads=t) for t in (1, 2, 1)]
    pd.testing.assert_frame_equal(runs[0], runs[1], check_exact=True)
    pd.testing.assert_frame_equal(runs[0], runs[2], check_exact=True)
    other = A.aracne(expr, genes, regs, n_bootstraps=5, seed=8, threads=2)
    assert not (len(other) == len(runs[0]) and np.array_equal(other["mi"], runs[0]["mi"]))


def test_aracne_rejects_bad_input():
    expr, genes, regs, _ = A.planted_network(n_genes=30, n_samples=50, n_regulators=4, seed=0)
    with pytest.raises(ValueError, match="not in genes"):
        A.aracne(expr, genes, ["NOPE"])
    with pytest.raises(ValueError, match="rows"):
        A.aracne(expr[:10], genes, regs)
    with pytest.raises(ValueError, match="consolidation"):
        A.aracne(expr, genes, regs, consolidation="fisher")
    with pytest.raises(ValueError, match="permutation"):
        A.mi_matrix(np.zeros((3, 10), dtype=np.int32), np.array([0]))
