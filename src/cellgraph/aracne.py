r"""ARACNe engine: adaptive-partitioning mutual information, null-model threshold, DPI, bootstraps.

Pure numpy/numba; no AnnData. The pipeline for one expression matrix ``expr`` [genes x samples]:

1. **Ranks** (copula transform). Each gene is ranked once over all samples; ties (scRNA-seq has many
   zeros) are broken by a random key per (gene, sample) drawn from ``seed``, so the order of tied values
   is a seeded random permutation. For each bootstrap the samples drawn are re-ranked 0..n-1 within the
   bootstrap from those global ranks (a sample drawn twice by ``bootstrap="replacement"`` is broken by
   its draw position). Ranks are computed once per bootstrap.
2. **Mutual information** by adaptive partitioning (APMI; Darbellay & Vajda 1999, IEEE Trans. Inf.
   Theory 45:1315; ARACNe-AP, Lachmann et al. 2016, Bioinformatics 32:2233): the rank square is split
   recursively into quadrants at the midpoints while a chi-square test of equal quadrant counts rejects
   (statistic > 7.815, chi-square 3 dof at 5%; the first split is forced; cells with <= 2 points are
   not split). With terminal cells ``k`` holding ``c_k`` of ``n`` points over ``w_x x w_y`` ranks,

   .. math:: \hat I = \sum_k \frac{c_k}{n} \log \frac{c_k\, n}{w_{x,k}\, w_{y,k}} \quad\text{(nats)}.

   One regulator against all genes is one numba pass; regulators run in parallel threads (``prange``);
   each (regulator, gene) value is computed by one thread only, so results do not depend on threads.
3. **MI threshold** from a null model: APMI of ``n_null`` pairs of independent random permutations of
   length ``n``; the upper tail (top 1%) of ``log P(MI >= m)`` is fit by a line in ``m`` (ARACNe-AP
   ``calibrateMIThreshold``/``fitNull``) and extrapolated to ``mi_pvalue``. Computed once per sample
   size and seed and cached on disk (``cache_dir``) as ``apmi_null_n{n}_m{n_null}_s{seed}_v1.npy``.
4. **DPI** (Margolin et al. 2006, BMC Bioinformatics 7:S7): in every triangle regulator ``r`` --
   regulator ``q`` -- gene ``t`` whose three edges pass the threshold, the edge ``r-t`` is removed when
   ``MI(r,t) < (1 - tolerance) * min(MI(r,q), MI(q,t))``; all removals use the pre-DPI network.
5. **Bootstraps and consolidation.** Each of ``B`` bootstraps draws ``round(n (1 - 1/e))`` samples
   without replacement (``"subsample"``, ARACNe3) or ``n`` with replacement (``"replacement"``).
   An edge's count ``k`` (bootstraps in which it survived DPI) is tested against
   ``"poisson"``: Poisson with mean ``lambda`` = total edge occurrences / tested pairs (ARACNe-AP),
   right tail ``P(X >= k)`` (ARACNe-AP computes ``P(X > k)``, off by one); or ``"binomial"``:
   Binomial(``B``, ``lambda / B``), right tail ``P(X >= k)`` (ARACNe3). P-values are corrected over all
   tested pairs (Bonferroni or Benjamini-Hochberg) and edges with corrected p < ``alpha`` are kept;
   their ``mi`` is the mean MI over the bootstraps in which they survived.

Edges are undirected pairs internally (a regulator-regulator pair is tested once); the output lists each
kept pair as ``regulator -> target`` rows, regulator-regulator pairs in both directions (as ARACNe-AP).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from numba import njit, prange

log = logging.getLogger(__name__)

__all__ = [
    "apmi",
    "rank_rows",
    "mi_matrix",
    "null_mi",
    "null_model",
    "mi_threshold",
    "dpi_keep",
    "poisson_right_tail",
    "aracne",
    "planted_network",
]

CHI2_THRESHOLD = 7.815  # chi-square, 3 degrees of freedom, 5% (ARACNe-AP MI.java)
NULL_VERSION = 1
_STACK = 256  # depth-first stack rows; depth <= log2(n) + 2, 4 pushes per level


# --------------------------------------------------------------------------------------------------
# Adaptive-partitioning mutual information
# --------------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _apmi_core(y, b0, b1, stack):
    """APMI (nats) of points (i, y[i]), i = 0..n-1, y a permutation of 0..n-1.

    Points are packed as ``x << 20 | y`` (n < 2**20). A cell at depth d holds its points in a contiguous
    range of buffer ``d % 2``; splitting scatters them, by quadrant, into the same range of the other
    buffer (ranges of pending cells are disjoint, so nothing pending is overwritten). A cell that is not
    split costs one counting pass.
    """
    n = y.shape[0]
    offs = np.empty(4, np.int64)
    for i in range(n):
        b0[i] = (i << 20) | y[i]
    stack[0, 0] = 0
    stack[0, 1] = n
    stack[0, 2] = 0
    stack[0, 3] = n
    stack[0, 4] = 0
    stack[0, 5] = n
    stack[0, 6] = 0
    top = 1
    total = 0.0
    mask = (1 << 20) - 1
    while top > 0:
        top -= 1
        s = stack[top, 0]
        e = stack[top, 1]
        x0 = stack[top, 2]
        x1 = stack[top, 3]
        y0 = stack[top, 4]
        y1 = stack[top, 5]
        d = stack[top, 6]
        src = b0 if d % 2 == 0 else b1
        dst = b1 if d % 2 == 0 else b0
        c = e - s
        xm = (x0 + x1) // 2
        ym = (y0 + y1) // 2
        c0 = 0
        c1 = 0
        c2 = 0
        c3 = 0
        for i in range(s, e):
            p = src[i]
            q = 2 * ((p >> 20) >= xm) + ((p & mask) >= ym)
            c0 += q == 0
            c1 += q == 1
            c2 += q == 2
            c3 += q == 3
        ex = c / 4.0
        chi = ((c0 - ex) ** 2 + (c1 - ex) ** 2 + (c2 - ex) ** 2 + (c3 - ex) ** 2) / ex
        if d == 0 or chi > CHI2_THRESHOLD:
            offs[0] = s
            offs[1] = s + c0
            offs[2] = s + c0 + c1
            offs[3] = s + c0 + c1 + c2
            for i in range(s, e):
                p = src[i]
                q = 2 * ((p >> 20) >= xm) + ((p & mask) >= ym)
                dst[offs[q]] = p
                offs[q] += 1
            st = s
            for k in range(4):
                if k == 0:
                    cq, a0, a1, v0, v1 = c0, x0, xm, y0, ym
                elif k == 1:
                    cq, a0, a1, v0, v1 = c1, x0, xm, ym, y1
                elif k == 2:
                    cq, a0, a1, v0, v1 = c2, xm, x1, y0, ym
                else:
                    cq, a0, a1, v0, v1 = c3, xm, x1, ym, y1
                if cq > 2:
                    stack[top, 0] = st
                    stack[top, 1] = st + cq
                    stack[top, 2] = a0
                    stack[top, 3] = a1
                    stack[top, 4] = v0
                    stack[top, 5] = v1
                    stack[top, 6] = d + 1
                    top += 1
                elif cq > 0:
                    total += cq * math.log(cq * n / ((a1 - a0) * (v1 - v0)))
                st += cq
        else:
            total += c * math.log(c * n / ((x1 - x0) * (y1 - y0)))
    return total / n


def _workspace(n):
    return np.empty(n, np.int64), np.empty(n, np.int64), np.empty((_STACK, 7), np.int64)


def apmi(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """Adaptive-partitioning mutual information of two samples, in nats.

    Parameters
    ----------
    x, y : float arrays [n]
        Paired observations (any monotone scale; only ranks are used). Ties are broken by a seeded
        random order.
    seed : int
        Seed of the tie-breaking keys.

    Returns
    -------
    float, MI in nats (Darbellay & Vajda 1999; ARACNe-AP, Lachmann et al. 2016).

    Raises
    ------
    ValueError
        If ``x`` and ``y`` are not 1-D of the same length >= 4.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 4:
        raise ValueError(f"x and y must be 1-D of equal length >= 4, got {x.shape} and {y.shape}")
    r = rank_rows(np.vstack([x, y]), seed=seed)
    inv = np.empty(x.size, dtype=np.int32)
    inv[r[0]] = np.arange(x.size, dtype=np.int32)
    yy = np.ascontiguousarray(r[1][inv])
    n = x.size
    if n >= 1 << 20:
        raise ValueError(f"at most 2**20 - 1 samples, got {n}")
    return float(_apmi_core(yy, *_workspace(n)))


# --------------------------------------------------------------------------------------------------
# Ranks
# --------------------------------------------------------------------------------------------------


def rank_rows(values: np.ndarray, seed: int = 0, keys: np.ndarray | None = None) -> np.ndarray:
    """Ranks 0..n-1 of each row, ties broken by random keys.

    Parameters
    ----------
    values : array [G, n]
    seed : int
        Seed of the tie-breaking keys (uniform [0, 1) per entry) when ``keys`` is not given.
    keys : float array [G, n], optional
        Explicit tie-breaking keys.

    Returns
    -------
    int32 array [G, n]: ``ranks[g, j]`` is the position of sample ``j`` in gene ``g``'s ordering by
    (value, key).
    """
    values = np.asarray(values)
    if keys is None:
        keys = np.random.default_rng(seed).random(values.shape)
    order = np.lexsort((keys, values), axis=-1)
    ranks = np.empty(values.shape, dtype=np.int32)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(values.shape[1], dtype=np.int32), values.shape), axis=1)
    return ranks


def _rerank(rank0: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Ranks 0..m-1 within the columns ``cols`` of global ranks ``rank0`` [G, n] (stable for repeats)."""
    sub = rank0[:, cols]
    order = np.argsort(sub, axis=1, kind="stable")
    ranks = np.empty(sub.shape, dtype=np.int32)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(sub.shape[1], dtype=np.int32), sub.shape), axis=1)
    return ranks


# --------------------------------------------------------------------------------------------------
# MI of regulators against all genes; DPI
# --------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _mi_block(ranks, reg_idx, reg_pos):
    n_reg = reg_idx.shape[0]
    n_genes, n = ranks.shape
    out = np.zeros((n_reg, n_genes), dtype=np.float32)
    for r in prange(n_reg):
        inv = np.empty(n, dtype=np.int32)
        xr = ranks[reg_idx[r]]
        for i in range(n):
            inv[xr[i]] = i
        y = np.empty(n, dtype=np.int32)
        b0 = np.empty(n, dtype=np.int64)
        b1 = np.empty(n, dtype=np.int64)
        stack = np.empty((_STACK, 7), dtype=np.int64)
        for t in range(n_genes):
            if t == reg_idx[r]:
                continue
            q = reg_pos[t]
            if q >= 0 and q < r:
                continue  # regulator pair: computed once, in the row of the smaller index
            yt = ranks[t]
            for i in range(n):
                y[i] = yt[inv[i]]
            out[r, t] = _apmi_core(y, b0, b1, stack)
    for r in range(n_reg):
        for q in range(r):
            out[r, reg_idx[q]] = out[q, reg_idx[r]]
    return out


def _reg_pos(n_genes: int, reg_idx: np.ndarray) -> np.ndarray:
    pos = np.full(n_genes, -1, dtype=np.int64)
    pos[reg_idx] = np.arange(reg_idx.size)
    return pos


def mi_matrix(ranks: np.ndarray, reg_idx: np.ndarray) -> np.ndarray:
    """APMI (nats) of each regulator against every gene.

    Parameters
    ----------
    ranks : int array [G, n]
        Per-gene ranks, each row a permutation of 0..n-1 (see :func:`rank_rows`).
    reg_idx : int array [R]
        Rows of ``ranks`` that are regulators (distinct).

    Returns
    -------
    float32 array [R, G]; entry ``[r, reg_idx[r]]`` is 0; regulator pairs are symmetric.
    """
    ranks = np.ascontiguousarray(ranks, dtype=np.int32)
    reg_idx = np.asarray(reg_idx, dtype=np.int64)
    n = ranks.shape[1]
    if ranks.ndim != 2 or not np.array_equal(np.sort(ranks, axis=1), np.broadcast_to(np.arange(n), ranks.shape)):
        raise ValueError("each row of ranks must be a permutation of 0..n-1")
    if reg_idx.size and (reg_idx.min() < 0 or reg_idx.max() >= ranks.shape[0] or np.unique(reg_idx).size != reg_idx.size):
        raise ValueError("reg_idx must be distinct rows of ranks")
    return _mi_block(ranks, reg_idx, _reg_pos(ranks.shape[0], reg_idx))


@njit(cache=True)
def _dpi_block(m, reg_idx, tol):
    n_reg, n_genes = m.shape
    keep = np.zeros((n_reg, n_genes), dtype=np.bool_)
    factor = 1.0 - tol
    for r in range(n_reg):
        nb = np.empty(n_reg, dtype=np.int64)
        n_nb = 0
        for q in range(n_reg):
            if q != r and m[r, reg_idx[q]] > 0:
                nb[n_nb] = q
                n_nb += 1
        for t in range(n_genes):
            v = m[r, t]
            if v <= 0:
                continue
            ok = True
            for k in range(n_nb):
                q = nb[k]
                if reg_idx[q] == t:
                    continue
                b = m[q, t]
                if b <= 0:
                    continue
                a = m[r, reg_idx[q]]
                if v < factor * min(a, b):
                    ok = False
                    break
            keep[r, t] = ok
    return keep


def dpi_keep(mi: np.ndarray, reg_idx: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Data processing inequality over regulator-regulator-gene triangles.

    Parameters
    ----------
    mi : float array [R, G]
        MI of regulators (rows) against genes, 0 where below the threshold (no edge).
    reg_idx : int array [R]
        Gene column of each regulator.
    tolerance : float in [0, 1)
        Edge ``r-t`` is removed when ``MI(r,t) < (1 - tolerance) min(MI(r,q), MI(q,t))`` for some
        regulator ``q`` with both edges present (Margolin et al. 2006, ARACNe DPI with tolerance).

    Returns
    -------
    bool array [R, G]: edges that are present and survive.
    """
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"DPI tolerance must be in [0, 1), got {tolerance}")
    return _dpi_block(np.ascontiguousarray(mi, dtype=np.float32), np.asarray(reg_idx, dtype=np.int64), float(tolerance))


# --------------------------------------------------------------------------------------------------
# Null model and threshold
# --------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _apmi_rows(ys):
    m, n = ys.shape
    out = np.empty(m, dtype=np.float64)
    for i in prange(m):
        b0 = np.empty(n, dtype=np.int64)
        b1 = np.empty(n, dtype=np.int64)
        stack = np.empty((_STACK, 7), dtype=np.int64)
        out[i] = _apmi_core(ys[i], b0, b1, stack)
    return out


def null_mi(n: int, n_pairs: int = 100_000, seed: int = 0) -> np.ndarray:
    """APMI (nats) of ``n_pairs`` pairs of independent random rank vectors of length ``n``, sorted.

    Pairs are (identity, random permutation), which has the law of two independent permutations.
    """
    if n < 4:
        raise ValueError(f"null model needs n >= 4 samples, got {n}")
    rng = np.random.default_rng([seed, n, 0x4E554C4C])
    out = np.empty(n_pairs, dtype=np.float64)
    batch = max(1, min(n_pairs, 2_000_000 // n))
    base = np.arange(n, dtype=np.int32)
    for s in range(0, n_pairs, batch):
        b = min(batch, n_pairs - s)
        ys = rng.permuted(np.broadcast_to(base, (b, n)), axis=1).astype(np.int32)
        out[s : s + b] = _apmi_rows(np.ascontiguousarray(ys))
    return np.sort(out)


def null_model(n: int, n_pairs: int = 100_000, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """:func:`null_mi`, loaded from / saved to ``cache_dir`` when given (one file per n, n_pairs, seed)."""
    if cache_dir is None:
        return null_mi(n, n_pairs, seed)
    path = Path(cache_dir) / f"apmi_null_n{n}_m{n_pairs}_s{seed}_v{NULL_VERSION}.npy"
    if path.is_file():
        try:
            arr = np.load(path)
            if arr.shape == (n_pairs,):
                return arr
        except (OSError, ValueError):
            pass
    arr = null_mi(n, n_pairs, seed)
    from .io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    return arr


def mi_threshold(null: np.ndarray, pvalue: float, tail: float = 0.01) -> float:
    """MI (nats) whose null right-tail probability is ``pvalue``, by an exponential tail fit.

    The empirical survival ``S(m_i) = (N - i) / N`` of the sorted null sample (ARACNe-AP ``fitNull``)
    is fit on its top ``tail`` fraction by ``log S = a + b m`` (least squares) and solved for
    ``S = pvalue``: ``m = (log pvalue - a) / b``.

    Raises
    ------
    ValueError
        If ``pvalue`` is not in (0, 1) or the tail fit is not decreasing.
    """
    if not 0.0 < pvalue < 1.0:
        raise ValueError(f"MI p-value must be in (0, 1), got {pvalue}")
    x = np.sort(np.asarray(null, dtype=np.float64))
    n = x.size
    k = max(10, int(round(n * tail)))
    i = np.arange(n - k, n)
    logs = np.log((n - i) / n)
    b, a = np.polyfit(x[n - k :], logs, 1)
    if not b < 0:
        raise ValueError("null MI tail fit is not decreasing; too few null pairs")
    return float((math.log(pvalue) - a) / b)


# --------------------------------------------------------------------------------------------------
# Consolidation
# --------------------------------------------------------------------------------------------------


def poisson_right_tail(k: np.ndarray, lam: float) -> np.ndarray:
    """``P(X >= k)`` for ``X ~ Poisson(lam)`` (the correct tail; ARACNe-AP computes ``P(X > k)``)."""
    from scipy.special import gammainc

    k = np.asarray(k, dtype=np.float64)
    # P(X >= k) = P(Gamma(k, 1) <= lam) = regularized lower incomplete gamma(k, lam), k >= 1
    return np.where(k <= 0, 1.0, gammainc(np.maximum(k, 1e-300), lam))


def _binomial_right_tail(k: np.ndarray, n: int, p: float) -> np.ndarray:
    from scipy.stats import binom

    return binom.sf(np.asarray(k) - 1, n, p)


def _correct(p: np.ndarray, m: int, method: str) -> np.ndarray:
    """Bonferroni or Benjamini-Hochberg over ``m`` tests, of which ``p`` are the observed ones (the
    other ``m - len(p)`` have p = 1)."""
    p = np.asarray(p, dtype=np.float64)
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    if method == "bh":
        if p.size == 0:
            return p
        order = np.argsort(p, kind="stable")
        ranked = p[order] * m / np.arange(1, p.size + 1)
        q = np.minimum.accumulate(ranked[::-1])[::-1]
        out = np.empty_like(q)
        out[order] = np.minimum(q, 1.0)
        return out
    raise ValueError(f"correction must be 'bonferroni' or 'bh', got {method!r}")


# --------------------------------------------------------------------------------------------------
# ARACNe
# --------------------------------------------------------------------------------------------------


def aracne(
    expr: np.ndarray,
    genes,
    regulators,
    n_bootstraps: int = 10,
    bootstrap: str = "subsample",
    mi_pvalue: float = 1e-8,
    dpi_tolerance: float = 0.0,
    consolidation: str = "poisson",
    correction: str = "bonferroni",
    alpha: float = 0.05,
    seed: int = 0,
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    n_null: int = 100_000,
    null_seed: int | None = None,
) -> pd.DataFrame:
    """ARACNe network of regulators over genes from an expression matrix.

    Parameters
    ----------
    expr : float array [G, n]
        Expression of G genes (rows) in n samples (any monotone scale; ranks only).
    genes : sequence of str [G]
        Distinct gene names of the rows.
    regulators : sequence of str
        Regulator names; all must be in ``genes`` (at least one).
    n_bootstraps : int >= 1
        Bootstraps B. With B = 1 there is no consolidation: every edge of the single network is kept,
        with ``pvalue`` NaN.
    bootstrap : {"subsample", "replacement"}
        ``round(n (1 - 1/e))`` samples without replacement (ARACNe3) or ``n`` with replacement.
    mi_pvalue : float in (0, 1)
        P-value of the MI threshold under the null model.
    dpi_tolerance : float in [0, 1)
    consolidation : {"poisson", "binomial"}
        Bootstrap-count test (ARACNe-AP Poisson / ARACNe3 binomial), right tail ``P(X >= k)``.
    correction : {"bonferroni", "bh"}
        Multiple-testing correction over all tested (regulator, gene) pairs.
    alpha : float
        Edges with corrected p-value < ``alpha`` are kept.
    seed : int
        Seeds tie-breaking keys, bootstrap draws and the null model.
    threads : int, optional
        numba threads (results do not depend on it).
    cache_dir : path, optional
        Folder caching the null model per sample size.
    n_null : int
        Null-model pairs.
    null_seed : int, optional
        Seed of the null model (default ``seed``); one null per (sample size, null_seed) is cached.

    Returns
    -------
    pandas.DataFrame with columns ``regulator, target, mi`` (mean MI in nats over the bootstraps where
    the edge survived), ``pvalue`` (corrected), ``count`` (bootstraps where it survived), sorted by
    regulator, target. ``df.attrs`` holds ``mi_threshold``, ``n_per_bootstrap``, ``n_tested``,
    ``edges_per_bootstrap`` (after DPI), ``edges_above_threshold`` (before DPI), ``lambda``.

    Raises
    ------
    ValueError
        On a bad shape, non-finite values, duplicate genes, regulators not in ``genes``, too few
        samples (< 8 per bootstrap) or an unknown option.
    """
    expr = np.asarray(expr, dtype=np.float64)
    genes = np.asarray([str(g) for g in genes], dtype=object)
    if expr.ndim != 2 or expr.shape[0] != genes.size:
        raise ValueError(f"expr must be [genes x samples] with {genes.size} rows, got {expr.shape}")
    if not np.all(np.isfinite(expr)):
        raise ValueError("expr has non-finite values")
    if len(set(genes)) != genes.size:
        raise ValueError("genes are not distinct")
    pos = {g: i for i, g in enumerate(genes)}
    regs = sorted(set(str(r) for r in regulators))
    missing = [r for r in regs if r not in pos]
    if missing:
        raise ValueError(f"{len(missing)} regulators are not in genes (first: {missing[:5]})")
    if not regs:
        raise ValueError("no regulators")
    if n_bootstraps < 1:
        raise ValueError(f"n_bootstraps must be >= 1, got {n_bootstraps}")
    if bootstrap not in ("subsample", "replacement"):
        raise ValueError(f"bootstrap must be 'subsample' or 'replacement', got {bootstrap!r}")
    if consolidation not in ("poisson", "binomial"):
        raise ValueError(f"consolidation must be 'poisson' or 'binomial', got {consolidation!r}")
    if correction not in ("bonferroni", "bh"):
        raise ValueError(f"correction must be 'bonferroni' or 'bh', got {correction!r}")
    n_genes, n = expr.shape
    n_b = int(round(n * (1.0 - math.exp(-1.0)))) if bootstrap == "subsample" else n
    if n_b < 8:
        raise ValueError(f"too few samples: {n} ({n_b} per bootstrap, need >= 8)")
    if threads:
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))

    reg_idx = np.array([pos[r] for r in regs], dtype=np.int64)
    reg_pos = _reg_pos(n_genes, reg_idx)
    rng = np.random.default_rng(seed)
    rank0 = rank_rows(expr, keys=rng.random(expr.shape))
    null = null_model(n_b, n_null, seed if null_seed is None else null_seed, cache_dir)
    thr = mi_threshold(null, mi_pvalue)

    n_reg = reg_idx.size
    counts = np.zeros((n_reg, n_genes), dtype=np.int32)
    mi_sum = np.zeros((n_reg, n_genes), dtype=np.float64)
    per_boot, above = [], []
    for b in range(n_bootstraps):
        if n_bootstraps == 1 and bootstrap == "subsample" and n_b == n:
            cols = np.arange(n)
        elif bootstrap == "subsample":
            cols = np.sort(rng.choice(n, size=n_b, replace=False))
        else:
            cols = rng.integers(0, n, size=n)
        ranks = _rerank(rank0, cols)
        m = _mi_block(ranks, reg_idx, reg_pos)
        m[m < thr] = 0.0
        keep = dpi_keep(m, reg_idx, dpi_tolerance)
        counts += keep
        mi_sum += np.where(keep, m, 0.0)
        above.append(int(np.count_nonzero(m)))
        per_boot.append(int(keep.sum()))

    # undirected pairs tested once: row r, column t with t not a regulator of index <= r
    tested = np.ones((n_reg, n_genes), dtype=bool)
    tested[np.arange(n_reg)[:, None], reg_idx[None, :]] = np.arange(n_reg)[None, :] > np.arange(n_reg)[:, None]
    n_tested = int(tested.sum())
    total = int(counts[tested].sum())
    lam = total / n_tested
    r_i, t_i = np.nonzero(tested & (counts > 0))
    k = counts[r_i, t_i]
    if n_bootstraps == 1:
        p_corr = np.full(k.size, np.nan)
        ok = np.ones(k.size, dtype=bool)
    else:
        if consolidation == "poisson":
            p = poisson_right_tail(k, lam)
        else:
            p = _binomial_right_tail(k, n_bootstraps, lam / n_bootstraps)
        p_corr = _correct(p, n_tested, correction)
        ok = p_corr < alpha
    r_i, t_i, k, p_corr = r_i[ok], t_i[ok], k[ok], p_corr[ok]
    mi = mi_sum[r_i, t_i] / k
    reg_names = np.asarray(regs, dtype=object)
    rows_reg = [reg_names[r_i]]
    rows_tgt = [genes[t_i]]
    rows = [(mi, p_corr, k)]
    both = reg_pos[t_i] >= 0  # regulator pairs: add the reverse direction
    rows_reg.append(genes[t_i[both]])
    rows_tgt.append(reg_names[r_i[both]])
    rows.append((mi[both], p_corr[both], k[both]))
    df = pd.DataFrame(
        {
            "regulator": np.concatenate(rows_reg).astype(str),
            "target": np.concatenate(rows_tgt).astype(str),
            "mi": np.concatenate([x[0] for x in rows]).astype(np.float64),
            "pvalue": np.concatenate([x[1] for x in rows]).astype(np.float64),
            "count": np.concatenate([x[2] for x in rows]).astype(np.int64),
        }
    )
    df = df.sort_values(["regulator", "target"], kind="stable").reset_index(drop=True)
    df.attrs.update(
        mi_threshold=thr,
        n_per_bootstrap=n_b,
        n_tested=n_tested,
        edges_above_threshold=above,
        edges_per_bootstrap=per_boot,
        poisson_lambda=lam,
    )
    return df


# --------------------------------------------------------------------------------------------------
# Planted networks (tests and benchmarks)
# --------------------------------------------------------------------------------------------------


def planted_network(
    n_genes: int = 200, n_samples: int = 500, n_regulators: int = 20, noise: float = 0.5, seed: int = 0
):
    """Expression generated from a known regulator graph, with linear and non-linear effects.

    A quarter of the regulators (rounded down) are children of an earlier regulator, the others are
    independent standard normal sources; each non-regulator gene has one regulator parent (assigned
    round-robin). With ``z`` the standardised parent, a child is ``standardise(f(z)) + noise * N(0, 1)``
    with ``f`` cycling through linear ``z``, sigmoid ``tanh(2 z)``, quadratic (non-monotone) ``z**2`` and
    exponential ``exp(z / 2)`` effects.

    Returns
    -------
    expr : float array [n_genes, n_samples]; genes : list[str]; regulators : list[str];
    true_edges : set of frozenset({parent, child}) (undirected true pairs).
    """
    rng = np.random.default_rng(seed)
    genes = [f"G{i:04d}" for i in range(n_genes)]
    regs = genes[:n_regulators]
    expr = np.empty((n_genes, n_samples))
    effects = [lambda z: z, lambda z: np.tanh(2.0 * z), lambda z: z**2, lambda z: np.exp(0.5 * z)]
    parent = {}
    n_child_regs = n_regulators // 4
    for i in range(n_regulators):
        if i >= n_regulators - n_child_regs:
            parent[i] = int(rng.integers(0, n_regulators - n_child_regs))
    for i in range(n_regulators, n_genes):
        parent[i] = (i - n_regulators) % n_regulators
    order = list(range(n_regulators - n_child_regs)) + [i for i in range(n_genes) if i in parent and i < n_regulators]
    order += list(range(n_regulators, n_genes))
    for j, i in enumerate(order):
        if i not in parent:
            expr[i] = rng.standard_normal(n_samples)
            continue
        z = expr[parent[i]]
        f = effects[j % len(effects)]((z - z.mean()) / z.std())
        f = (f - f.mean()) / f.std()
        expr[i] = f + noise * rng.standard_normal(n_samples)
    true_edges = {frozenset((genes[p], genes[c])) for c, p in parent.items()}
    return expr, genes, regs, true_edges
