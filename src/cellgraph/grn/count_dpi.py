r"""The count DPI: ARACNe's data processing inequality on latent correlations of UMI counts.

In single cells a gene's counts are a Poisson draw around its expression, so every dependence measured on
counts (mutual information, rank correlation) is weakened by that gene's sampling noise, a sparse gene's
most. ARACNe's DPI removes the weakest edge of each triangle (Margolin et al. 2006, *BMC Bioinformatics*
7:S7); when the middle gene of a chain ``a -> b -> c``, or the parent of two siblings, is sparse, its two
direct edges are weakened more than the indirect one and the DPI keeps the indirect edge. On planted
single-cell networks (``bench/aracne.py``, case ``planted-sc``) every false edge of the grn stage was such
an indirect edge.

This module measures each edge on the expression behind the counts instead:

1. **Marginals** (:func:`latent_marginals`): for gene ``g`` and cell ``c`` with size factor ``s_c``,
   ``y_gc ~ Poisson(s_c exp(u_gc))`` with ``u_gc`` drawn from a distribution ``G_g`` on a grid of log rates,
   estimated without a parametric form by the Kiefer-Wolfowitz nonparametric maximum likelihood (EM;
   the Poisson deconvolution of DESCEND, Wang et al. 2018, *PNAS* 115:6437).
2. **Pairs** (:func:`latent_correlation`): the two genes' log rates are joined by a Gaussian copula,
   ``(Phi^-1(G_i(u_i)), Phi^-1(G_j(u_j))) ~ N(0, [[1, rho], [rho, 1]])``, and ``rho`` is the maximum
   likelihood of the pair's counts with both marginals held at step 1 (the pair likelihood sums over the
   grid of both latent values). ``rho`` is the correlation of the normal scores of the latent expression,
   free of the counting noise and unchanged by any monotone transform of either gene.
3. **DPI** (:func:`count_dpi`): an edge ``(r, t)`` is removed when a regulator ``m`` closes a triangle whose
   two other edges are both significant (likelihood-ratio test of ``rho = 0``) and stronger than
   ``(1 - margin) |rho_rt|``. For a Gaussian copula the mutual information ``-1/2 log(1 - rho^2)`` is
   monotone in ``|rho|``, so ``margin = 0`` is the DPI itself; a margin > 0 asks an edge to beat the
   alternative path by that fraction, because each ``rho`` is estimated with error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize, stats

__all__ = ["latent_marginals", "latent_correlation", "count_dpi", "GRID", "EM_ITERATIONS"]

#: Grid points of each gene's log rate (from log(mean rate) - 6 to log(mean rate) + 4, natural log).
GRID = 60
#: EM iterations of the nonparametric marginal (from the uniform distribution on the grid).
EM_ITERATIONS = 100


def _check_counts(counts, size_factors) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(counts, dtype=np.float64)
    s = np.asarray(size_factors, dtype=np.float64)
    if y.ndim != 2 or s.shape != (y.shape[0],):
        raise ValueError(f"counts must be [cells x genes] and size_factors [cells]; got {y.shape} and {s.shape}")
    if not (np.all(np.isfinite(y)) and y.min(initial=0) >= 0 and np.all(y == np.round(y))):
        raise ValueError("counts must be finite whole numbers >= 0 (raw UMI counts)")
    if not (np.all(np.isfinite(s)) and s.min(initial=1) > 0):
        raise ValueError("size_factors must be finite and > 0")
    return y, s


def latent_marginals(counts, size_factors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonparametric maximum-likelihood distribution of each gene's log rate (module docstring, step 1).

    Parameters
    ----------
    counts : float array [cells x G]
        Raw UMI counts (whole numbers >= 0).
    size_factors : float array [cells]
        ``s_c`` (e.g. total UMIs over their median), > 0.

    Returns
    -------
    grid : float array [G, GRID]
        Log rates per unit size factor (natural log).
    weights : float array [G, GRID]
        Probability of each grid point (rows sum to 1).
    likelihood : float array [G, cells, GRID]
        ``P(y_gc | u)`` at each grid point, scaled to a maximum of 1 per cell.

    Raises
    ------
    ValueError
        Shapes that do not match, counts that are not whole numbers >= 0, size factors <= 0.
    """
    y, s = _check_counts(counts, size_factors)
    mean = np.maximum(y.mean(axis=0), 1e-3) / s.mean()  # a gene without counts: a grid around 1e-3 per cell
    grid = np.log(mean)[:, None] + np.linspace(-6.0, 4.0, GRID)[None, :]
    loglam = np.log(s)[None, :, None] + grid[:, None, :]  # [G, n, GRID]
    ll = y.T[:, :, None] * loglam - np.exp(loglam)
    lik = np.exp(ll - ll.max(axis=2, keepdims=True))
    weights = np.full(grid.shape, 1.0 / GRID)
    for _ in range(EM_ITERATIONS):
        post = lik * weights[:, None, :]
        post /= post.sum(axis=2, keepdims=True)
        weights = post.mean(axis=1)
    return grid, weights, lik


class _Copula:
    """Normal scores and grid likelihoods of each gene's marginal; the pair likelihood of ``rho``."""

    def __init__(self, weights: np.ndarray, lik: np.ndarray):
        mid = np.cumsum(weights, axis=1) - weights / 2  # mid-distribution of each grid point
        self.scores = stats.norm.ppf(np.clip(mid, 1e-9, 1 - 1e-9))
        self.weights, self.lik = weights, lik

    def _nll(self, i: int, j: int):
        zi, zj = self.scores[i][:, None], self.scores[j][None, :]
        base = np.outer(self.weights[i], self.weights[j])
        a, b = self.lik[i], self.lik[j]

        def nll(r):
            """Negative log-likelihood of the pair's counts at copula correlation ``r``."""
            w = base * np.exp(-0.5 * (r * r * (zi**2 + zj**2) - 2 * r * zi * zj) / (1 - r * r))
            return -np.log(np.maximum(((a @ (w / w.sum())) * b).sum(axis=1), 1e-300)).sum()

        return nll

    def fit(self, i: int, j: int) -> tuple[float, float]:
        """(maximum-likelihood ``rho`` of genes ``i`` and ``j``, likelihood-ratio p-value of ``rho = 0``)."""
        nll = self._nll(i, j)
        best = optimize.minimize_scalar(nll, bounds=(-0.99, 0.99), method="bounded", options=dict(xatol=1e-3))
        return float(best.x), float(stats.chi2.sf(max(2 * (nll(0.0) - best.fun), 0.0), 1))


def latent_correlation(counts, size_factors, pairs) -> np.ndarray:
    """Gaussian-copula correlation ``rho`` of the latent expression of gene pairs (module docstring, step 2).

    Parameters
    ----------
    counts : float array [cells x G]
        Raw UMI counts (whole numbers >= 0).
    size_factors : float array [cells]
        ``s_c``, > 0.
    pairs : int array [P, 2]
        Column positions ``(i, j)`` of the pairs.

    Returns
    -------
    float array [P], maximum-likelihood ``rho`` in [-0.99, 0.99].

    Raises
    ------
    ValueError
        As :func:`latent_marginals`.
    """
    _, weights, lik = latent_marginals(counts, size_factors)
    cop = _Copula(weights, lik)
    return np.array([cop.fit(int(i), int(j))[0] for i, j in np.asarray(pairs, dtype=int).reshape(-1, 2)])


def count_dpi(edges: pd.DataFrame, counts, size_factors, genes, regulators, margin: float = 0.1,
              alpha: float = 0.05) -> np.ndarray:
    """Which edges survive the DPI on latent correlations (module docstring, step 3).

    An edge ``(r, t)`` is removed when some regulator ``m`` other than ``r`` and ``t`` has
    ``min(|rho_rm|, |rho_mt|) > (1 - margin) |rho_rt|`` and both of those sides are significant (likelihood-
    ratio test of ``rho = 0``, p < ``alpha``), as ARACNe applies the DPI only to triangles of significant
    edges. Every regulator among ``genes`` is a candidate mediator, whether or not its own edges passed ARACNe;
    pairs are fitted only as the rule needs them. The significance guard matters where a gene's latent
    variance is small next to its counting noise: its ``rho`` is then large and uncertain.

    Parameters
    ----------
    edges : DataFrame with columns ``regulator`` and ``target`` (gene names), E rows.
    counts : float array [cells x G], raw UMI counts of ``genes``; size_factors : float array [cells], > 0.
    genes : [G] names; regulators : names (those not in ``genes`` are ignored).
    margin : float in [0, 1).
    alpha : float in (0, 1), level of the test that a triangle's other sides are non-zero.

    Returns
    -------
    bool array [E], True where the edge is kept.

    Raises
    ------
    ValueError
        An edge gene not in ``genes``, a margin outside [0, 1), an alpha outside (0, 1), or bad counts
        (:func:`latent_marginals`).
    """
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    pos = {str(g): i for i, g in enumerate(genes)}
    missing = sorted({str(g) for g in (*edges["regulator"], *edges["target"])} - pos.keys())
    if missing:
        raise ValueError(f"edge genes not among the counts' genes: {', '.join(missing[:5])}")
    keep = np.ones(len(edges), dtype=bool)
    if not len(edges):
        return keep
    y, s = _check_counts(counts, size_factors)
    ends = [(pos[str(r)], pos[str(t)]) for r, t in zip(edges["regulator"], edges["target"])]
    mediators = sorted({pos[str(r)] for r in regulators if str(r) in pos})
    used = np.unique(np.concatenate([np.ravel(ends), mediators]).astype(int))  # marginals of these genes only
    col = {g: k for k, g in enumerate(used)}
    _, weights, lik = latent_marginals(y[:, used], s)
    cop, cache = _Copula(weights, lik), {}

    def strength(i, j):
        """(|rho|, |rho| if significant at ``alpha`` else 0) of genes ``i`` and ``j``, fitted once."""
        key = (min(i, j), max(i, j))
        if key not in cache:
            r, p = cop.fit(col[key[0]], col[key[1]])
            cache[key] = (abs(r), abs(r) if p < alpha else 0.0)
        return cache[key]

    for e, (i, j) in enumerate(ends):
        bar = (1.0 - margin) * strength(i, j)[0]
        keep[e] = not any(strength(i, m)[1] > bar and strength(m, j)[1] > bar for m in mediators if m not in (i, j))
    return keep
