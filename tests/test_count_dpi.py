"""The count DPI (cellgraph.grn.count_dpi): latent correlations of UMI counts, and the DPI on them."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cellgraph.grn import count_dpi as cd


def _chain(n=600, seed=0):
    """Latent chain A -> B -> C (rho 0.9 per step, so 0.81 for A-C) observed as counts; B is sparse."""
    rng = np.random.default_rng(seed)
    za = rng.standard_normal(n)
    zb = 0.9 * za + np.sqrt(1 - 0.81) * rng.standard_normal(n)
    zc = 0.9 * zb + np.sqrt(1 - 0.81) * rng.standard_normal(n)
    s = np.exp(0.4 * rng.standard_normal(n))
    y = np.stack([rng.poisson(s * m * np.exp(z - 0.5)) for z, m in ((za, 20), (zb, 0.4), (zc, 20))], axis=1)
    return y.astype(float), s


def test_chain_with_a_sparse_middle_gene_loses_only_the_indirect_edge():
    y, s = _chain()
    assert (y[:, 1] == 0).mean() > 0.6  # B is sparse
    obs = stats.spearmanr(y / s[:, None]).statistic
    # on the observed values the indirect edge is the strongest, so ARACNe's DPI would drop a direct one
    assert obs[0, 2] > max(obs[0, 1], obs[1, 2]) + 0.2
    rho = cd.latent_correlation(y, s, [(0, 1), (1, 2), (0, 2)])
    assert rho[2] < min(rho[0], rho[1])
    np.testing.assert_allclose(rho, [0.9, 0.9, 0.81], atol=0.1)
    edges = pd.DataFrame(dict(regulator=["A", "B", "A"], target=["B", "C", "C"]))
    for margin in (0.0, 0.1):
        keep = cd.count_dpi(edges, y, s, ["A", "B", "C"], ["A", "B"], margin)
        assert keep.tolist() == [True, True, False]
    # without B as a candidate mediator nothing explains A - C
    assert cd.count_dpi(edges, y, s, ["A", "B", "C"], ["A"]).tolist() == [True, True, True]


@pytest.mark.parametrize("rho", [0.0, 0.4, 0.7])
def test_latent_correlation_undoes_counting_noise_for_any_monotone_marginal(rho):
    rng = np.random.default_rng(1)
    n = 1000
    z1 = rng.standard_normal(n)
    z2 = rho * z1 + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    s = np.exp(0.4 * rng.standard_normal(n))
    # gene 1 log-normal, gene 2 a bounded (not log-normal) function of its latent value; 30-60% zeros
    y = np.stack([rng.poisson(s * 0.5 * np.exp(z1)), rng.poisson(s * 0.3 * np.exp(3 * stats.norm.cdf(z2)))], 1)
    est = cd.latent_correlation(y.astype(float), s, [(0, 1)])[0]
    obs = stats.spearmanr(y[:, 0] / s, y[:, 1] / s).statistic
    assert abs(est - rho) < 0.1
    if rho > 0:
        assert obs < rho - 0.2  # what the counts show is attenuated


def test_latent_marginals_is_a_distribution_that_explains_the_zeros():
    rng = np.random.default_rng(2)
    s = np.exp(0.3 * rng.standard_normal(800))
    y = rng.poisson(s[:, None] * np.exp(rng.normal(-1.0, 1.0, size=(800, 3)))).astype(float)
    grid, w, lik = cd.latent_marginals(y, s)
    assert grid.shape == w.shape == (3, cd.GRID) and lik.shape == (3, 800, cd.GRID)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    # expected zero fraction under the fitted marginal matches the observed one
    p0 = (np.exp(-s[None, :, None] * np.exp(grid)[:, None, :]) * w[:, None, :]).sum(axis=2).mean(axis=1)
    np.testing.assert_allclose(p0, (y == 0).mean(axis=0), atol=0.02)


def test_bad_inputs_are_refused():
    y, s = _chain(n=50)
    edges = pd.DataFrame(dict(regulator=["A"], target=["Z"]))
    with pytest.raises(ValueError, match="not among the counts' genes: Z"):
        cd.count_dpi(edges, y, s, ["A", "B", "C"], ["A"])
    with pytest.raises(ValueError, match="margin"):
        cd.count_dpi(edges.assign(target="B"), y, s, ["A", "B", "C"], ["A"], margin=1.0)
    with pytest.raises(ValueError, match="whole numbers"):
        cd.latent_correlation(y + 0.5, s, [(0, 1)])
    with pytest.raises(ValueError, match="size_factors"):
        cd.latent_correlation(y, np.zeros_like(s), [(0, 1)])
    with pytest.raises(ValueError, match="must be"):
        cd.latent_marginals(y[:, 0], s)
    empty = pd.DataFrame(dict(regulator=[], target=[]))
    assert cd.count_dpi(empty, y, s, ["A", "B", "C"], ["A"]).shape == (0,)
