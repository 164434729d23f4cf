"""Tests of the ARACNe engine (cellgraph.grn.aracne): APMI, null threshold, DPI, consolidation, recovery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import poisson

from cellgraph.grn import aracne as A


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


def test_aracne_binomial_bh_also_recovers_and_replacement_is_refused():
    expr, genes, regs, true = A.planted_network(n_genes=120, n_samples=400, n_regulators=12, seed=4)
    df = A.aracne(expr, genes, regs, n_bootstraps=8, consolidation="binomial", correction="bh", seed=1)
    pred = _pairs(df)
    tp = len(pred & true)
    assert tp / len(pred) >= 0.9 and tp / len(true) >= 0.9
    # draws with replacement put repeated samples on adjacent ranks in both genes: refused, with the reason
    with pytest.raises(ValueError, match="adjacent ranks in both genes"):
        A.aracne(expr, genes, regs, bootstrap="replacement")
    with pytest.raises(ValueError, match="use 'subsample'"):
        A.bootstrap_columns(50, "replacement", seed=0, b=0)


def test_deterministic_across_thread_counts_and_seeds():
    expr, genes, regs, _ = A.planted_network(n_genes=90, n_samples=200, n_regulators=10, noise=1.0, seed=2)
    # zeros make ties that the seeded keys must break identically
    expr[np.random.default_rng(0).random(expr.shape) < 0.3] = 0.0
    kw = dict(n_bootstraps=5, mi_method="pvalue", mi_pvalue=1e-3)
    runs = [A.aracne(expr, genes, regs, seed=7, threads=t, **kw) for t in (1, 2, 1)]
    assert len(runs[0]) > 0
    pd.testing.assert_frame_equal(runs[0], runs[1], check_exact=True)
    pd.testing.assert_frame_equal(runs[0], runs[2], check_exact=True)
    assert runs[0].attrs["edges_above_threshold"] == runs[1].attrs["edges_above_threshold"]
    other = A.aracne(expr, genes, regs, seed=8, threads=2, **kw)
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


# --------------------------------------------------------------------------------------------------
# Issue 3: peer options, tail-fitted null, resume, scale, bad inputs
# --------------------------------------------------------------------------------------------------


def _tested_values(mi, reg_idx):
    """MI of each undirected (regulator, gene) pair once (regulator pairs in the row of the smaller index)."""
    n_reg, n_genes = mi.shape
    tested = np.ones(mi.shape, dtype=bool)
    tested[np.arange(n_reg), reg_idx] = False
    tested[np.arange(n_reg)[:, None], reg_idx[None, :]] &= np.arange(n_reg)[None, :] > np.arange(n_reg)[:, None]
    return mi[tested]


def test_false_positive_rate_on_independent_data_matches_p():
    """Independent genes: the fraction of pairs above the threshold at p is p within sampling error
    (4 binomial standard deviations), in the empirical range (p = 2e-2) and in the fitted tail (3e-3, 1e-3);
    the null p-values of those pairs are calibrated the same way."""
    rng = np.random.default_rng(21)
    n = 300
    expr = rng.standard_normal((1500, n))
    reg_idx = np.arange(20)
    vals = _tested_values(A.mi_matrix(A.rank_rows(expr, seed=1), reg_idx), reg_idx)
    m = vals.size
    null = A.null_model(n, n_pairs=100_000, seed=99)
    pv = A.null_pvalue(null, vals)
    for p in (2e-2, 3e-3, 1e-3):
        sd = np.sqrt(m * p * (1 - p))
        above = int((vals >= A.mi_threshold(null, p)).sum())
        assert abs(above - m * p) <= 4 * sd, (p, above, m * p)
        assert abs(int((pv <= p).sum()) - m * p) <= 4 * sd, p


def test_threshold_monotone_across_empirical_and_fitted_range():
    null = A.null_mi(500, n_pairs=30_000, seed=2)
    ps = [0.2, 0.05, 0.02, 0.01, 5e-3, 1e-3, 1e-5, 1e-8, 1e-12, 1e-30]
    thr = [A.mi_threshold(null, p) for p in ps]
    assert all(b > a for a, b in zip(thr, thr[1:])), thr
    # ARACNe-AP's head fit moves its threshold by < 0.1% from 1e-2 to 1e-30; the tail fit moves it a lot
    assert thr[-1] > 2 * thr[3]
    # null_pvalue inverts mi_threshold
    for p, t in zip(ps[4:], thr[4:]):
        assert A.null_pvalue(null, np.array([t]))[0] == pytest.approx(p, rel=1e-6)


def test_bh_threshold_equals_benjamini_hochberg_over_null_pvalues():
    null = A.null_mi(200, n_pairs=20_000, seed=3)
    rng = np.random.default_rng(0)
    n_tests = 5000
    mi = np.concatenate([rng.choice(null, 4900), rng.uniform(0.05, 0.3, 100)])
    for alpha in (0.01, 0.05, 0.2):
        thr = A.bh_threshold(null, mi, alpha, n_tests)
        q = A.adjust_pvalues(A.null_pvalue(null, mi), n_tests, "bh")
        np.testing.assert_array_equal(q <= alpha, mi >= thr)
        assert 0 < (mi >= thr).sum() < mi.size
    assert A.bh_threshold(null, np.zeros(3), 0.05, 10) == np.inf


def test_bootstrap_samplers():
    n = 20
    sub = [A.bootstrap_columns(n, "subsample", seed=0, b=b) for b in range(50)]
    assert all(s.size == round(n * (1 - np.exp(-1))) == np.unique(s).size for s in sub)
    assert n - 1 in np.concatenate(sub)
    np.testing.assert_array_equal(A.bootstrap_columns(n, "none", seed=0, b=3), np.arange(n))
    # a bootstrap's draw depends on (seed, b) only
    np.testing.assert_array_equal(A.bootstrap_columns(n, "subsample", 5, 7), A.bootstrap_columns(n, "subsample", 5, 7))
    assert not np.array_equal(A.bootstrap_columns(n, "subsample", 5, 7), A.bootstrap_columns(n, "subsample", 5, 8))


@pytest.fixture(scope="module")
def planted100():
    expr, genes, regs, true = A.planted_network(n_genes=200, n_samples=500, n_regulators=20, seed=0)
    # the issue-3 benchmark settings: ARACNe-AP's fixed MI p-value (the engine default then)
    return expr, genes, regs, true, A.aracne(expr, genes, regs, n_bootstraps=100, seed=0, mi_method="pvalue",
                                             mi_pvalue=1e-8)


def test_planted_recovery_at_aracne3_precision_recall(planted100):
    """Issue-3 case 1 (200 genes x 500 samples, 20 regulators, 100 bootstraps): precision >= 0.985 and
    recall >= 0.996 (ARACNe3's figures at 'count >= 10') with the Poisson/Bonferroni consolidation."""
    _, _, _, true, df = planted100
    pred = _pairs(df)
    tp = len(pred & true)
    assert tp / len(pred) >= 0.985 and tp / len(true) >= 0.996, (tp / len(pred), tp / len(true))


def test_consolidation_columns(planted100):
    from scipy.stats import spearmanr

    expr, genes, _, _, df = planted100
    lam, m = df.attrs["count_rate"], df.attrs["n_tested"]
    np.testing.assert_allclose(df["log_p"], poisson.logsf(df["count"] - 1, lam), rtol=1e-12)
    np.testing.assert_allclose(df["pvalue"], np.minimum(1, np.exp(df["log_p"]) * m), rtol=1e-9, atol=1e-300)
    pos = {g: i for i, g in enumerate(genes)}
    for row in df.sample(5, random_state=0).itertuples():
        rho = spearmanr(expr[pos[row.regulator]], expr[pos[row.target]]).statistic
        assert row.scc == pytest.approx(rho, abs=1e-12)


@pytest.mark.parametrize("options", [dict(consolidation="binomial", correction="bh"),
                                     dict(mi_method="pvalue", mi_pvalue=1e-4), dict(mi_method="fwer", mi_alpha=0.05),
                                     dict(dpi_tolerance=0.1)])
def test_peer_options_recover_planted(options):
    expr, genes, regs, true = A.planted_network(n_genes=120, n_samples=400, n_regulators=12, seed=4)
    df = A.aracne(expr, genes, regs, n_bootstraps=10, seed=1, **options)
    p, r = (lambda tp, a, b: (tp / a, tp / b))(len(_pairs(df) & true), len(_pairs(df)), len(true))
    assert p >= 0.9 and r >= 0.9, (options, p, r)
    thr = df.attrs["mi_thresholds_per_bootstrap"]
    assert len(thr) == 10 and all(np.isfinite(thr))
    if options.get("mi_method") in ("pvalue", "fwer"):
        assert len(set(thr)) == 1 and df.attrs["mi_threshold"] == thr[0]


def test_dpi_tolerance_keeps_more_edges():
    expr, genes, regs, _ = A.planted_network(n_genes=120, n_samples=400, n_regulators=12, seed=4)
    a = A.aracne(expr, genes, regs, n_bootstraps=1, bootstrap="none", seed=1)
    b = A.aracne(expr, genes, regs, n_bootstraps=1, bootstrap="none", seed=1, dpi_tolerance=0.5)
    assert _pairs(a) < _pairs(b)


def test_resumed_run_equals_uninterrupted(tmp_path):
    expr, genes, regs, _ = A.planted_network(n_genes=90, n_samples=200, n_regulators=10, seed=5)
    kw = dict(n_bootstraps=6, seed=3, n_null=20_000, mi_method="fdr", mi_alpha=0.01)
    full = A.aracne(expr, genes, regs, **kw)

    class Stop(Exception):
        pass

    def stop_after_2(b):
        if b == 2:
            raise Stop

    with pytest.raises(Stop):
        A.aracne(expr, genes, regs, checkpoint_dir=tmp_path, on_bootstrap=stop_after_2, **kw)
    assert len(list(tmp_path.glob("*.npz"))) == 3
    resumed = A.aracne(expr, genes, regs, checkpoint_dir=tmp_path, **kw)
    assert resumed.attrs["bootstraps_resumed"] == 3 and len(list(tmp_path.glob("*.npz"))) == 6
    pd.testing.assert_frame_equal(full, resumed, check_exact=True)
    assert resumed.attrs["edges_per_bootstrap"] == full.attrs["edges_per_bootstrap"]
    assert resumed.attrs["mi_thresholds_per_bootstrap"] == full.attrs["mi_thresholds_per_bootstrap"]
    # other parameters never reuse these files
    other = A.aracne(expr, genes, regs, checkpoint_dir=tmp_path, **(kw | dict(seed=4)))
    assert other.attrs["bootstraps_resumed"] == 0


def test_more_than_32767_samples():
    """ARACNe-AP stores ranks as 16-bit; here 33,000 samples run and find the planted dependence."""
    rng = np.random.default_rng(0)
    n = 33_000
    x = rng.standard_normal(n)
    expr = np.vstack([x, np.tanh(x) + 0.5 * rng.standard_normal(n), rng.standard_normal(n), rng.exponential(size=n)])
    genes = ["R", "T", "N1", "N2"]
    df = A.aracne(expr, genes, ["R"], n_bootstraps=1, bootstrap="none", mi_method="pvalue", mi_pvalue=1e-3, n_null=2000)
    assert _pairs(df) == {frozenset(("R", "T"))}
    assert df["mi"].iloc[0] == pytest.approx(A.apmi(expr[0], expr[1], seed=0), rel=0.02)


def test_bad_inputs_are_counted_and_named():
    expr, genes, regs, _ = A.planted_network(n_genes=30, n_samples=60, n_regulators=4, seed=0)
    e = expr.copy()
    e[5, :3] = np.nan
    e[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"4 non-finite values \(NaN/inf\) in 2 genes: G0005, G0007"):
        A.aracne(e, genes, regs)
    dup = list(genes)
    dup[9] = dup[8] = "X"
    with pytest.raises(ValueError, match="1 gene names are duplicated: X"):
        A.aracne(expr, dup, regs)
    with pytest.raises(ValueError, match="2 regulators are not in genes: NOPE1, NOPE2"):
        A.aracne(expr, genes, regs + ["NOPE1", "NOPE2"])
    e = expr.copy()
    e[[3, 12]] = 1.5  # a constant regulator and a constant target
    chk = A.check_input(e, genes, regs)
    assert chk["constant_genes"] == ["G0003", "G0012"] and chk["constant_regulators"] == ["G0003"]
    df = A.aracne(e, genes, regs, n_bootstraps=3, mi_pvalue=1e-3, n_null=5000)
    assert df.attrs["constant_genes"] == ["G0003", "G0012"]
    assert not ({"G0003", "G0012"} & (set(df["regulator"]) | set(df["target"])))
    with pytest.raises(ValueError, match="2 genes are constant"):
        A.aracne(e, genes, regs, drop_constant=False)


# --------------------------------------------------------------------------------------------------
# Issue 11: fresh ties per bootstrap, per-bootstrap error control, depth strata, control cuts
# --------------------------------------------------------------------------------------------------


def _sparse_independent(n_genes, n, zero_fraction, seed, library_sizes=None):
    """Independent genes with single-cell sparsity: Poisson counts of a per-gene rate chosen so that about
    ``zero_fraction`` of the samples are zero, times a per-sample library factor when given."""
    rng = np.random.default_rng(seed)
    rate = -np.log(zero_fraction) * np.exp(0.3 * rng.standard_normal((n_genes, 1)))
    lib = np.ones(n) if library_sizes is None else library_sizes / np.median(library_sizes)
    return rng.poisson(rate * lib[None, :] * np.exp(0.5 * rng.standard_normal((n_genes, n)))).astype(float)


def test_ties_are_broken_afresh_in_every_bootstrap():
    """The zero block of a sparse gene gets a new random order in each bootstrap (fixed by (seed, b))."""
    x = np.zeros((2, 40))
    x[:, :10] = np.arange(1, 11)
    cols = np.arange(40)
    r0, r1 = A.bootstrap_ranks(x, cols, seed=3, b=0), A.bootstrap_ranks(x, cols, seed=3, b=1)
    assert sorted(r0[0]) == list(range(40))
    np.testing.assert_array_equal(r0[:, :10], np.tile(np.arange(30, 40), (2, 1)))  # non-zeros: top ranks in order
    assert not np.array_equal(r0[0, 10:], r1[0, 10:])  # the zeros: a fresh order per bootstrap ...
    assert not np.array_equal(r0[0, 10:], r0[1, 10:])  # ... and per gene
    np.testing.assert_array_equal(r0, A.bootstrap_ranks(x, cols, seed=3, b=0))  # and reproducible


def test_sparse_independent_genes_give_no_edges_at_the_defaults():
    """Independent genes with 64% zeros (n 350; 40 regulators x 400 genes): no final edge at the defaults over
    three seeds; the frozen tie order the engine used before made chance dependence inside zero blocks recur."""
    genes = [f"G{i}" for i in range(400)]
    for seed in range(3):
        expr = _sparse_independent(400, 350, 0.64, seed)
        df = A.aracne(expr, genes, genes[:40], seed=seed, n_null=30_000)
        assert len(df) == 0, (seed, df)
        assert sum(df.attrs["edges_per_bootstrap"]) <= 10  # BH per bootstrap: few chance edges, none recurring


def test_defaults_are_one_set():
    """The engine signature, DEFAULTS and config/config.yaml grn agree (the grn stage test checks its flags)."""
    import inspect

    import yaml
    from pathlib import Path

    sig = inspect.signature(A.aracne).parameters
    assert {k: sig[k].default for k in A.DEFAULTS} == A.DEFAULTS
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())["grn"]
    assert {k: cfg[k] for k in A.DEFAULTS} == A.DEFAULTS
    assert A.DEFAULTS["mi_method"] == "fdr"


def test_depth_strata_remove_the_dependence_through_library_size():
    """Independent genes whose counts scale with a shared library size (PBMC-like 3x spread): without strata
    the co-detection through depth gives false edges; ranks conditional on depth blocks give none."""
    rng = np.random.default_rng(0)
    lib = np.exp(np.log(1300) + 0.45 * rng.standard_normal(600))
    expr = _sparse_independent(150, 600, 0.7, 1, library_sizes=lib)
    expr = np.log1p(expr / lib * 1e6)
    genes = [f"G{i}" for i in range(150)]
    plain = A.aracne(expr, genes, genes[:30], seed=0, n_bootstraps=20, n_null=30_000)
    strata = np.argsort(np.argsort(lib)) // 25
    cond = A.aracne(expr, genes, genes[:30], seed=0, n_bootstraps=20, n_null=30_000, strata=strata)
    assert len(plain) >= 10, len(plain)
    assert len(cond) == 0, cond
    with pytest.raises(ValueError, match="one label per sample"):
        A.aracne(expr, genes, genes[:30], strata=strata[:10])


def test_fixed_thresholds_and_cut_reproduce_the_run():
    """A run given its own per-bootstrap thresholds and recurrence cut returns the same network (the control
    path equals the rule path); the cut is the smallest count kept."""
    expr, genes, regs, _ = A.planted_network(n_genes=90, n_samples=200, n_regulators=10, noise=1.0, seed=2)
    a = A.aracne(expr, genes, regs, n_bootstraps=8, seed=5, n_null=20_000)
    b = A.aracne(expr, genes, regs, n_bootstraps=8, seed=5, n_null=20_000,
                 mi_thresholds=a.attrs["mi_thresholds_per_bootstrap"], min_count=a.attrs["min_count"])
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    cut = a.attrs["min_count"]
    assert a["count"].min() >= cut and "survives DPI in >=" in a.attrs["consolidation_rule"]
    # the cut: the smallest count whose Bonferroni-adjusted Poisson tail is below 0.05
    m, lam = a.attrs["n_tested"], a.attrs["count_rate"]
    assert poisson.sf(cut - 1, lam) * m < 0.05 <= poisson.sf(cut - 2, lam) * m
    assert ((a["pvalue"] < 0.05) == (a["count"] >= cut)).all()
    with pytest.raises(ValueError, match="mi_thresholds has 3 values for 8 bootstraps"):
        A.aracne(expr, genes, regs, n_bootstraps=8, mi_thresholds=[0.1] * 3)


def test_binomial_theta_is_aracne3_per_bootstrap_fpr():
    """consolidation='binomial' uses theta = mean over bootstraps of alpha E_dpi / (M - (1 - alpha) E_thr)
    (ARACNe3's FPR estimate), not the edge density."""
    from scipy.stats import binom

    expr, genes, regs, _ = A.planted_network(n_genes=90, n_samples=200, n_regulators=10, seed=6)
    df = A.aracne(expr, genes, regs, n_bootstraps=6, seed=0, consolidation="binomial", n_null=20_000)
    at, m, a = df.attrs, df.attrs["n_tested"], 0.05
    theta = np.mean([a * e / (m - (1 - a) * t) for e, t in zip(at["edges_per_bootstrap"], at["edges_above_threshold"])])
    assert at["count_rate"] == pytest.approx(theta, rel=1e-12)
    assert at["count_rate"] != pytest.approx(sum(at["edges_per_bootstrap"]) / m / 6, rel=1e-3)
    np.testing.assert_allclose(df["log_p"], binom.logsf(df["count"] - 1, 6, theta), rtol=1e-9)


def test_planted_counts_have_single_cell_sparsity():
    counts, log_cpm, lib, genes, regs, true = A.planted_counts(n_genes=120, n_cells=300, n_regulators=12, seed=1)
    np.testing.assert_allclose(np.expm1(log_cpm), counts / lib * 1e6, rtol=1e-9)
    zeros = (counts == 0).mean(axis=1)
    assert counts.shape == log_cpm.shape == (120, 300) and np.all(counts == np.round(counts))
    assert 0.55 <= zeros.min() and zeros.max() <= 0.80 and 0.6 <= zeros.mean() <= 0.75
    assert len(true) == 120 - 12 + 12 // 4 and set(regs) == set(genes[:12])
