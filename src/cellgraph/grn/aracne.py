r"""ARACNe engine: adaptive-partitioning mutual information, null-model threshold, DPI, bootstraps.

Pure numpy/numba; no AnnData. The pipeline for one expression matrix ``expr`` [genes x samples]:

1. **Ranks** (copula transform), afresh in every bootstrap. The samples drawn for bootstrap ``b`` are
   ranked 0..m-1 per gene; ties (scRNA-seq has many zeros) are broken by random keys drawn for that
   bootstrap from ``(seed, b)`` (:func:`bootstrap_ranks`). A tie order frozen once for all bootstraps
   would let a chance dependence inside a gene's block of zeros recur in every bootstrap: on independent
   genes with 64% zeros it gave 10 edges that pass consolidation, fresh ties gave none.
2. **Mutual information** by adaptive partitioning (APMI; Darbellay & Vajda 1999, IEEE Trans. Inf.
   Theory 45:1315; ARACNe-AP, Lachmann et al. 2016, Bioinformatics 32:2233): the rank square is split
   recursively into quadrants at the midpoints while a chi-square test of equal quadrant counts rejects
   (statistic > 7.815, chi-square 3 dof at 5%; the first split is forced; cells with <= 2 points are
   not split). With terminal cells ``k`` holding ``c_k`` of ``n`` points over ``w_x x w_y`` ranks,

   .. math:: \hat I = \sum_k \frac{c_k}{n} \log \frac{c_k\, n}{w_{x,k}\, w_{y,k}} \quad\text{(nats)}.

   One regulator against all genes is one numba pass; regulators run in parallel threads (``prange``);
   each (regulator, gene) value is computed by one thread only, so results do not depend on threads.
3. **MI threshold** from a null model: APMI of ``n_null`` pairs (identity, seeded random permutation) of
   length ``m``. The upper tail (top 1%) of ``log P(MI >= x)`` is fit by a line in ``x`` (ARACNe-AP
   ``calibrateMIThreshold``/``fitNull``, but on the tail: ARACNe-AP fits the head of its sorted array, so
   its threshold barely moves with p); p-values above 1% use the empirical survival (:func:`null_pvalue`).
   The default ``mi_method="fdr"`` keeps, per bootstrap, the pairs significant by Benjamini-Hochberg at
   ``mi_alpha`` over the null p-values of all tested pairs (ARACNe3 ``--alpha``): the error control of the
   method. ``"fwer"`` uses p = ``mi_alpha`` / pairs, ``"pvalue"`` the fixed null p-value ``mi_pvalue``
   (ARACNe-AP ``--pvalue``). The null is computed once per sample size and seed and cached on disk
   (``cache_dir``) as ``apmi_null_n{m}_m{n_null}_s{seed}_v2.npy``.
4. **DPI** (Margolin et al. 2006, BMC Bioinformatics 7:S7): in every triangle regulator ``r`` --
   regulator ``q`` -- gene ``t`` whose three edges pass the threshold, the edge ``r-t`` is removed when
   ``MI(r,t) < (1 - tolerance) * min(MI(r,q), MI(q,t))``; all removals use the pre-DPI network.
5. **Bootstraps and the recurrence cut.** Each of ``B`` bootstraps draws ``round(n (1 - 1/e))`` samples
   without replacement (``"subsample"``, ARACNe3) or takes all (``"none"``); the draw of bootstrap ``b``
   depends on ``(seed, b)`` only. Draws with replacement are refused: a repeated sample sits on adjacent
   ranks in both genes, which APMI reads as dependence (per-pair false-positive rate 0.20 at p 1e-3 on
   independent data). With ``checkpoint_dir`` each bootstrap's network is written to disk as it finishes
   and an interrupted run resumes from those files. An edge's count ``k`` (bootstraps in which it survived
   DPI) gets the right tail ``P(X >= k)`` of ``"poisson"``: Poisson(``lambda``), ``lambda`` = total edge
   occurrences / tested pairs (ARACNe-AP, which computes ``P(X > k)``, off by one), or ``"binomial"``:
   Binomial(``B``, ``theta``), ``theta`` = the mean over bootstraps of ARACNe3's per-bootstrap
   false-positive-rate estimate (for ``"fdr"``: ``alpha E_dpi / (M - (1 - alpha) E_thr)``). Adjusted over
   the tested pairs (Bonferroni or Benjamini-Hochberg), this gives the smallest count ``min_count`` with
   adjusted p < ``consolidation_alpha``; edges with ``k >= min_count`` are kept, with ``mi`` the mean MI
   over the bootstraps in which they survived. The count test treats bootstraps as independent, which
   subsamples of one data set are not: it is a stability filter, not an error rate.

Memory: one bootstrap's ranks [G x m] int32 plus a few [R x G] arrays (counts, MI sum, one bootstrap's MI); never
[pairs x samples].

Edges are undirected pairs internally (a regulator-regulator pair is tested once); the output lists each
kept pair as ``regulator -> target`` rows, regulator-regulator pairs in both directions (as ARACNe-AP).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

# numba's OpenMP workers spin at every parallel-region barrier by default; on a shared or oversubscribed
# machine that made 2 threads 4x slower than 1 (7.5 s vs 2 s wall on the planted benchmark at load 6).
# Passive waiting must be chosen before the OpenMP runtime loads; an explicit setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from numba import njit, prange  # noqa: E402

log = logging.getLogger(__name__)

__all__ = [
    "apmi",
    "rank_rows",
    "mi_matrix",
    "null_mi",
    "null_model",
    "mi_threshold",
    "dpi_keep",
    "aracne",
    "planted_network",
    "planted_counts",
    "null_pvalue",
    "bh_threshold",
    "bootstrap_columns",
    "bootstrap_size",
    "check_input",
    "spearman_pairs",
]

CHI2_THRESHOLD = 7.815  # chi-square, 3 degrees of freedom, 5% (ARACNe-AP MI.java)
NULL_VERSION = 2
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


def bootstrap_ranks(expr: np.ndarray, cols: np.ndarray, seed: int, b: int, strata: np.ndarray | None = None) -> np.ndarray:
    """Ranks 0..m-1 of each gene within the samples ``cols`` of bootstrap ``b``, ties broken afresh.

    The tie-breaking keys are drawn for this bootstrap only, from ``(seed, b)``: in a sparse gene the block of
    zeros gets a new random order in every bootstrap, so a chance dependence inside it does not recur across
    bootstraps (ARACNe3 re-ranks each subsample; ARACNe-AP adds fresh noise per run). Keys come from one
    numpy generator, so ranks do not depend on the thread count.

    With ``strata`` (e.g. bins of sequencing depth) each gene is first ranked within each stratum and
    mapped to the uniform score ``(rank + 1/2) / size``, and these scores are ranked over all samples: a
    copula transform conditional on the stratum. Under independence given the stratum the result is a
    uniform random permutation per gene, independent across genes, so the null model of :func:`null_mi`
    holds; a dependence that two genes share only through the stratum (in single cells: the capture depth,
    which makes zeros co-occur in shallow cells) is removed.

    Parameters
    ----------
    expr : float array [G, n]
    cols : int array [m], distinct sample indices (see :func:`bootstrap_columns`).
    seed, b : int
        Run seed and bootstrap index.
    strata : int array [n], optional
        Stratum label of every sample.

    Returns
    -------
    int32 array [G, m], each row a permutation of 0..m-1.
    """
    cols = np.asarray(cols, dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(b), 0x4B455953])
    sub = np.asarray(expr)[:, cols]
    if strata is None:
        return rank_rows(sub, keys=rng.random(sub.shape))
    labels = np.asarray(strata)[cols]
    scores = np.empty(sub.shape, dtype=np.float64)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        scores[:, idx] = (rank_rows(sub[:, idx], keys=rng.random((sub.shape[0], idx.size))) + 0.5) / idx.size
    return rank_rows(scores, keys=rng.random(sub.shape))


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

    Raises
    ------
    ValueError
        If a row of ``ranks`` is not a permutation of 0..n-1, or ``reg_idx`` holds repeated or out-of-range
        rows.
    """
    ranks = np.ascontiguousarray(ranks, dtype=np.int32)
    reg_idx = np.asarray(reg_idx, dtype=np.int64)
    n = ranks.shape[1]
    if ranks.ndim != 2 or not np.array_equal(np.sort(ranks, axis=1), np.broadcast_to(np.arange(n), ranks.shape)):
        raise ValueError("each row of ranks must be a permutation of 0..n-1")
    if reg_idx.size and (reg_idx.min() < 0 or reg_idx.max() >= ranks.shape[0] or np.unique(reg_idx).size != reg_idx.size):
        raise ValueError("reg_idx must be distinct rows of ranks")
    return _mi_block(ranks, reg_idx, _reg_pos(ranks.shape[0], reg_idx))


@njit(parallel=True, cache=True)
def _dpi_block(m, reg_idx, tol):
    n_reg, n_genes = m.shape
    keep = np.zeros((n_reg, n_genes), dtype=np.bool_)
    factor = 1.0 - tol
    for r in prange(n_reg):
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

    Raises
    ------
    ValueError
        If ``tolerance`` is not in [0, 1).
    """
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"DPI tolerance must be in [0, 1), got {tolerance}")
    return _dpi_block(np.ascontiguousarray(mi, dtype=np.float32), np.asarray(reg_idx, dtype=np.int64), float(tolerance))


# --------------------------------------------------------------------------------------------------
# Null model and threshold
# --------------------------------------------------------------------------------------------------


_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_NULL_CHUNK = 64


@njit(cache=True, nogil=True)
def _mix64(z):
    """splitmix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit hash."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(parallel=True, cache=True)
def _null_block(n, n_pairs, key):
    """APMI of pairs (identity, random permutation) of length n; the permutation of pair i is a
    Fisher-Yates shuffle driven by splitmix64 of (key, i), so values do not depend on threads."""
    out = np.empty(n_pairs, dtype=np.float64)
    n_chunks = (n_pairs + _NULL_CHUNK - 1) // _NULL_CHUNK
    for c in prange(n_chunks):
        y = np.empty(n, dtype=np.int32)
        b0 = np.empty(n, dtype=np.int64)
        b1 = np.empty(n, dtype=np.int64)
        stack = np.empty((_STACK, 7), dtype=np.int64)
        for i in range(c * _NULL_CHUNK, min(n_pairs, (c + 1) * _NULL_CHUNK)):
            for j in range(n):
                y[j] = j
            st = _mix64(key ^ (np.uint64(i) * _GOLD))
            for j in range(n - 1, 0, -1):
                st = st + _GOLD
                k = np.int64(_mix64(st) % np.uint64(j + 1))
                tmp = y[j]
                y[j] = y[k]
                y[k] = tmp
            out[i] = _apmi_core(y, b0, b1, stack)
    return out


def null_mi(n: int, n_pairs: int = 100_000, seed: int = 0) -> np.ndarray:
    """APMI (nats) of ``n_pairs`` pairs of independent random rank vectors of length ``n``, sorted.

    Pairs are (identity, uniform random permutation), which has the law of two independent
    permutations; the permutations are seeded Fisher-Yates shuffles (splitmix64 of ``seed``, ``n`` and the
    pair index), computed in parallel and independent of the thread count.

    Parameters
    ----------
    n : int
        Length of each rank vector (samples per bootstrap), 4 <= n < 2**20.
    n_pairs : int
        Number of null pairs.
    seed : int
        Seed of the permutations.

    Returns
    -------
    float64 array [n_pairs], null MI values in nats, sorted ascending.

    Raises
    ------
    ValueError
        If ``n < 4`` or ``n >= 2**20``.
    """
    if n < 4 or n >= 1 << 20:
        raise ValueError(f"null model needs 4 <= n < 2**20 samples, got {n}")
    key = np.random.SeedSequence([int(seed), int(n), 0x4E554C4C]).generate_state(1, dtype=np.uint64)[0]
    return np.sort(_null_block(int(n), int(n_pairs), np.uint64(key)))


def null_model(n: int, n_pairs: int = 100_000, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """:func:`null_mi`, loaded from / saved to ``cache_dir`` when given (one file per n, n_pairs, seed).

    Parameters
    ----------
    n, n_pairs, seed : int
        As :func:`null_mi`.
    cache_dir : path, optional
        Folder of the cache file ``apmi_null_n{n}_m{n_pairs}_s{seed}_v2.npy`` (written atomically); a file
        that cannot be read or has another length is recomputed and overwritten. None: no cache.

    Returns
    -------
    float64 array [n_pairs], null MI values in nats (sorted ascending as :func:`null_mi` computes them).

    Raises
    ------
    ValueError
        From :func:`null_mi` when ``n`` is out of range.
    """
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
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    return arr


def _tail_fit(null: np.ndarray, tail: float):
    """Sorted null, size N, tail size k and the least-squares line ``log S(m) = a + b m`` of its top
    ``tail`` fraction (S = empirical survival ``(N - i) / N`` of the i-th smallest, ARACNe-AP ``fitNull``
    fits the head of its array instead)."""
    x = np.sort(np.asarray(null, dtype=np.float64))
    n = x.size
    k = max(10, int(round(n * tail)))
    if k >= n:
        raise ValueError(f"null model too small ({n} pairs) for a tail fit of {k}")
    i = np.arange(n - k, n)
    b, a = np.polyfit(x[n - k :], np.log((n - i) / n), 1)
    if not b < 0:
        raise ValueError("null MI tail fit is not decreasing; too few null pairs")
    return x, n, k, a, b


def mi_threshold(null: np.ndarray, pvalue: float, tail: float = 0.01) -> float:
    """MI (nats) whose null right-tail probability is ``pvalue``.

    For ``pvalue`` >= the tail fraction ``k / N`` (k = ``max(10, tail N)`` of N null values) this is the
    empirical ``1 - pvalue`` quantile of the null; below it, the exponential tail fit
    ``log S(m) = a + b m`` of the top k values (ARACNe-AP ``calibrateMIThreshold``/``fitNull``, fitted on
    the tail, not on the head of the sorted array) solved for ``S = pvalue``: ``m = (log pvalue - a) / b``.
    Smaller ``pvalue`` gives a strictly larger threshold in the fitted range.

    Parameters
    ----------
    null : float array [N]
        Null MI values in nats (:func:`null_model`), any order.
    pvalue : float
        Right-tail probability, in (0, 1).
    tail : float
        Fraction of the null in the fitted tail (at least 10 values).

    Returns
    -------
    float, the MI threshold in nats.

    Raises
    ------
    ValueError
        If ``pvalue`` is not in (0, 1), the null is too small for the tail fit, or the tail fit is not
        decreasing.
    """
    if not 0.0 < pvalue < 1.0:
        raise ValueError(f"MI p-value must be in (0, 1), got {pvalue}")
    x, n, k, a, b = _tail_fit(null, tail)
    if pvalue >= k / n:
        return float(np.quantile(x, 1.0 - pvalue))
    return float(max((math.log(pvalue) - a) / b, x[n - k]))


def null_pvalue(null: np.ndarray, mi: np.ndarray, tail: float = 0.01) -> np.ndarray:
    """Null right-tail p-value ``P(MI_null >= mi)`` of MI values, the inverse of :func:`mi_threshold`.

    Below the start of the fitted tail: the empirical survival ``#{null >= mi} / N``; in the tail:
    ``min(k / N, exp(a + b mi))``. Non-increasing in ``mi``.

    Parameters
    ----------
    null : float array [N]
        Null MI values in nats (:func:`null_model`), any order.
    mi : float array, any shape
        MI values in nats.
    tail : float
        Fraction of the null in the fitted tail, as :func:`mi_threshold`.

    Returns
    -------
    float64 array of the shape of ``mi``, p-values in [0, 1].

    Raises
    ------
    ValueError
        If the null is too small for the tail fit or the fit is not decreasing.
    """
    x, n, k, a, b = _tail_fit(null, tail)
    mi = np.asarray(mi, dtype=np.float64)
    emp = (n - np.searchsorted(x, mi, side="left")) / n
    fit = np.minimum(k / n, np.exp(a + b * mi))
    return np.where(mi >= x[n - k], fit, emp)


def bh_threshold(null: np.ndarray, mi: np.ndarray, alpha: float, n_tests: int, tail: float = 0.01) -> float:
    """MI threshold of a Benjamini-Hochberg FDR ``alpha`` over the null p-values of ``n_tests`` pairs
    (ARACNe3 ``--alpha`` with the FDR method), of which ``mi`` holds the observed values (any subset that
    includes every value with null p-value <= ``alpha``).

    Parameters
    ----------
    null : float array [N]
        Null MI values in nats (:func:`null_model`).
    mi : float array [k], k <= ``n_tests``
        Observed MI values (nats) of tested pairs.
    alpha : float
        False discovery rate, in (0, 1).
    n_tests : int
        Number of tested pairs (the Benjamini-Hochberg denominator).
    tail : float
        Fraction of the null in the fitted tail (:func:`null_pvalue`).

    Returns
    -------
    float, the smallest MI (nats) among the Benjamini-Hochberg discoveries; ``inf`` when no pair is
    significant.

    Raises
    ------
    ValueError
        If ``alpha`` is not in (0, 1).

    References
    ----------
    Benjamini & Hochberg 1995, J R Stat Soc B 57:289; ARACNe3 FDR method.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"MI FDR alpha must be in (0, 1), got {alpha}")
    mi = np.sort(np.asarray(mi, dtype=np.float64))[::-1]
    if mi.size == 0:
        return math.inf
    p = null_pvalue(null, mi, tail)
    ok = np.flatnonzero(p <= alpha * np.arange(1, mi.size + 1) / n_tests)
    return float(mi[ok[-1]]) if ok.size else math.inf


# --------------------------------------------------------------------------------------------------
# Consolidation
# --------------------------------------------------------------------------------------------------


def adjust_pvalues(p: np.ndarray, m: int, method: str) -> np.ndarray:
    """Bonferroni or Benjamini-Hochberg adjusted p-values over ``m`` tests, of which ``p`` are the observed
    ones; the other ``m - len(p)`` have p = 1 and are not materialised (exact for both methods: an unobserved
    test ranks after every observed one). ``scipy.stats.false_discovery_control`` gives the same values when
    all ``m`` p-values are passed.

    Parameters
    ----------
    p : float array [k], k <= m
    m : int, number of tests
    method : {"bonferroni", "bh"}

    Returns
    -------
    float64 array [k], adjusted p-values capped at 1.

    Raises
    ------
    ValueError
        On an unknown method.
    """
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
    raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")


def count_log_pvalues(k: np.ndarray, n_bootstraps: int, consolidation: str, rate: float) -> np.ndarray:
    """Natural log of the right-tail p-value ``P(X >= k)`` of a bootstrap count ``k``.

    ``"poisson"``: X ~ Poisson(``rate``), ``rate`` = mean count per tested pair (ARACNe-AP, with the tail
    ``P(X >= k)``; ARACNe-AP computes ``P(X > k)``); ``"binomial"``: X ~ Binomial(B, ``rate``), ``rate`` =
    theta, the mean over bootstraps of the per-bootstrap false-positive-rate estimate (ARACNe3). Both treat
    the bootstraps as independent, which subsamples of one data set are not: the value ranks edges by
    stability and sets the recurrence cut; it is not an error rate.

    Parameters
    ----------
    k : int array, any shape
        Bootstrap counts (bootstraps in which an edge survived DPI).
    n_bootstraps : int
        B, the trials of the binomial (unused for ``"poisson"``).
    consolidation : {"poisson", "binomial"}
    rate : float
        Poisson lambda or binomial theta (see above).

    Returns
    -------
    float array of the shape of ``k``: ``log P(X >= k)`` (natural log, <= 0).

    Raises
    ------
    ValueError
        On an unknown ``consolidation``.
    """
    from scipy.stats import binom, poisson

    k = np.asarray(k)
    if consolidation == "poisson":
        return poisson.logsf(k - 1, rate)
    if consolidation == "binomial":
        return binom.logsf(k - 1, n_bootstraps, rate)
    raise ValueError(f"consolidation must be one of {CONSOLIDATIONS}, got {consolidation!r}")


# --------------------------------------------------------------------------------------------------
# ARACNe
# --------------------------------------------------------------------------------------------------


BOOTSTRAPS = ("subsample", "none")
MI_METHODS = ("fdr", "pvalue", "fwer")
CONSOLIDATIONS = ("poisson", "binomial")
CORRECTIONS = ("bonferroni", "bh")

#: The one set of engine defaults: :func:`aracne`, ``cellgraph aracne`` and the ``grn`` stage read it, and
#: ``config/config.yaml`` (section ``grn``) repeats it (a test checks). Per-bootstrap error control by
#: Benjamini-Hochberg over the null p-values (ARACNe3 ``--alpha``), DPI, then the recurrence cut.
DEFAULTS = dict(
    n_bootstraps=50,
    bootstrap="subsample",
    mi_method="fdr",
    mi_alpha=0.05,
    mi_pvalue=1e-4,
    dpi_tolerance=0.0,
    consolidation="poisson",
    correction="bonferroni",
    consolidation_alpha=0.05,
)

REPLACEMENT_UNSUPPORTED = (
    "bootstrap 'replacement' is not supported: a sample drawn twice takes adjacent ranks in both genes, which "
    "adaptive partitioning reads as dependence, so the null model (computed on distinct samples) no longer "
    "holds (on independent genes 20% of pairs pass at an MI p-value of 1e-3); use 'subsample' (1 - 1/e of "
    "the samples without replacement, ARACNe3) or 'none'"
)


def check_options(n_bootstraps, bootstrap, mi_method, mi_alpha, mi_pvalue, dpi_tolerance, consolidation,
                  correction, consolidation_alpha) -> None:
    """Validate the engine options (the keys of :data:`DEFAULTS`).

    Parameters
    ----------
    n_bootstraps : int, >= 1
    bootstrap : {"subsample", "none"} (``"replacement"`` is refused, :data:`REPLACEMENT_UNSUPPORTED`)
    mi_method : {"fdr", "pvalue", "fwer"}
    mi_alpha, mi_pvalue : float, in (0, 1)
    dpi_tolerance : float, in [0, 1)
    consolidation : {"poisson", "binomial"}
    correction : {"bonferroni", "bh"}
    consolidation_alpha : float, in (0, 1]

    Raises
    ------
    ValueError
        Naming the first bad option (message starts with its name) and what was expected.
    """
    if bootstrap == "replacement":
        raise ValueError(REPLACEMENT_UNSUPPORTED)
    for name, value, allowed in (("bootstrap", bootstrap, BOOTSTRAPS), ("mi_method", mi_method, MI_METHODS),
                                 ("consolidation", consolidation, CONSOLIDATIONS),
                                 ("correction", correction, CORRECTIONS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    if int(n_bootstraps) < 1:
        raise ValueError(f"n_bootstraps must be >= 1, got {n_bootstraps}")
    for name, value in (("mi_alpha", mi_alpha), ("mi_pvalue", mi_pvalue)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if not 0.0 <= dpi_tolerance < 1.0:
        raise ValueError(f"dpi_tolerance must be in [0, 1), got {dpi_tolerance}")
    if not 0.0 < consolidation_alpha <= 1.0:
        raise ValueError(f"consolidation_alpha must be in (0, 1], got {consolidation_alpha}")


def bootstrap_size(n: int, bootstrap: str) -> int:
    """Samples per bootstrap: ``round(n (1 - 1/e))`` for ``"subsample"``, else ``n``.

    Parameters
    ----------
    n : int
        Samples in the data.
    bootstrap : str
        Bootstrap scheme (:data:`BOOTSTRAPS`).

    Returns
    -------
    int, samples per bootstrap.
    """
    return int(round(n * (1.0 - math.exp(-1.0)))) if bootstrap == "subsample" else int(n)


def bootstrap_columns(n: int, bootstrap: str, seed: int, b: int) -> np.ndarray:
    """Sample indices of bootstrap ``b`` (int64 [m]), from a generator seeded by ``(seed, b)`` only, so a
    bootstrap is the same whether computed in order, alone or after a resume.

    ``"subsample"``: ``round(n (1 - 1/e))`` distinct samples, sorted (ARACNe3); ``"none"``: all samples in
    order (ARACNe-AP ``--nobootstrap``; with B > 1 the bootstraps differ only in their tie-breaking).

    Parameters
    ----------
    n : int
        Samples in the data.
    bootstrap : {"subsample", "none"}
    seed, b : int
        Run seed and bootstrap index.

    Returns
    -------
    int64 array [m], m = :func:`bootstrap_size` ``(n, bootstrap)``: distinct sample indices, ascending.

    Raises
    ------
    ValueError
        For ``"replacement"`` (see :data:`REPLACEMENT_UNSUPPORTED`) or an unknown scheme.
    """
    if bootstrap == "none":
        return np.arange(n, dtype=np.int64)
    if bootstrap == "subsample":
        rng = np.random.default_rng([int(seed), int(b), 0x424F4F54])
        return np.sort(rng.choice(n, size=bootstrap_size(n, bootstrap), replace=False)).astype(np.int64)
    if bootstrap == "replacement":
        raise ValueError(REPLACEMENT_UNSUPPORTED)
    raise ValueError(f"bootstrap must be one of {', '.join(BOOTSTRAPS)}; got {bootstrap!r}")


def _names(xs, limit: int = 20) -> str:
    xs = [str(x) for x in xs]
    return ", ".join(xs[:limit]) + (f", ... ({len(xs) - limit} more)" if len(xs) > limit else "")


def check_input(expr: np.ndarray, genes, regulators) -> dict:
    """Bad-input census of an expression matrix [G x n] with row names ``genes`` and a regulator list.

    Parameters
    ----------
    expr : float array [G, n]
        Expression, genes x samples (may hold NaN/inf).
    genes : sequence of str [G]
        Row names.
    regulators : iterable of str
        Regulator names.

    Returns
    -------
    dict with lists (sorted names): ``duplicated_genes``, ``nonfinite_genes`` (rows with NaN/inf; with
    ``nonfinite_values``, the count of such entries), ``constant_genes`` (finite rows with one value),
    ``missing_regulators`` (regulators not among ``genes``), ``constant_regulators``.
    """
    expr = np.asarray(expr, dtype=np.float64)
    genes = [str(g) for g in genes]
    seen, dup = set(), set()
    for g in genes:
        (dup if g in seen else seen).add(g)
    bad = ~np.isfinite(expr)
    nonfinite_rows = np.flatnonzero(bad.any(axis=1))
    finite = ~bad.any(axis=1)
    const = finite & (expr.shape[1] > 0) & (np.ptp(np.where(bad, 0.0, expr), axis=1) == 0 if expr.size else True)
    regs = sorted(set(str(r) for r in regulators))
    const_names = {genes[i] for i in np.flatnonzero(const)}
    return dict(
        duplicated_genes=sorted(dup),
        nonfinite_genes=sorted({genes[i] for i in nonfinite_rows}),
        nonfinite_values=int(bad.sum()),
        constant_genes=sorted(const_names),
        missing_regulators=[r for r in regs if r not in seen],
        constant_regulators=[r for r in regs if r in const_names],
    )


def spearman_pairs(expr: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Spearman correlation (average ranks for ties, all samples) of rows ``rows_a[i]`` and ``rows_b[i]``
    of ``expr`` [G x n] (ARACNe3's ``scc.values``).

    Parameters
    ----------
    expr : float array [G, n]
        Expression, genes x samples.
    rows_a, rows_b : int arrays [E]
        Row indices of the pairs.

    Returns
    -------
    float64 array [E], correlations in [-1, 1]; 0 where a row is constant.
    """
    from scipy.stats import rankdata

    used = np.unique(np.concatenate([rows_a, rows_b])).astype(np.int64)
    if used.size == 0:
        return np.zeros(0)
    z = rankdata(expr[used], axis=1)
    z -= z.mean(axis=1, keepdims=True)
    norm = np.sqrt((z * z).sum(axis=1, keepdims=True))
    z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)
    where = np.searchsorted(used, rows_a), np.searchsorted(used, rows_b)
    return np.einsum("ij,ij->i", z[where[0]], z[where[1]])


def _validated(expr, genes, regulators, drop_constant):
    """(expr [G', n], genes [G'], sorted regulators, constant genes) after the bad-input checks."""
    expr = np.asarray(expr, dtype=np.float64)
    genes = np.asarray([str(g) for g in genes], dtype=object)
    if expr.ndim != 2 or expr.shape[0] != genes.size:
        raise ValueError(f"expr must be [genes x samples] with {genes.size} rows, got {expr.shape}")
    chk = check_input(expr, genes, regulators)
    for key, what in (("duplicated_genes", "gene names are duplicated"), ("missing_regulators", "regulators are not in genes")):
        if chk[key]:
            raise ValueError(f"{len(chk[key])} {what}: {_names(chk[key])}")
    if chk["nonfinite_genes"]:
        d = chk["nonfinite_genes"]
        raise ValueError(f"{chk['nonfinite_values']} non-finite values (NaN/inf) in {len(d)} genes: {_names(d)}")
    const = chk["constant_genes"]
    if const and not drop_constant:
        raise ValueError(f"{len(const)} genes are constant: {_names(const)}")
    if const:
        keep_rows = ~np.isin(genes, const)
        expr, genes = expr[keep_rows], genes[keep_rows]
    regs = sorted(set(str(r) for r in regulators) - set(const))
    if not regs:
        raise ValueError("no regulators" + (f" (all {len(set(const) & set(map(str, regulators)))} are constant)" if const else ""))
    if expr.shape[1] >= 1 << 20:
        raise ValueError(f"at most 2**20 - 1 samples, got {expr.shape[1]}")
    return expr, genes, regs, const


def _threshold_rule(null, opts, n_tested):
    """Callable: a bootstrap's MI [R, G] and tested mask -> its MI threshold (nats)."""
    if opts["mi_method"] == "pvalue":
        thr = mi_threshold(null, opts["mi_pvalue"])
        return lambda m, tested: thr
    if opts["mi_method"] == "fwer":
        thr = mi_threshold(null, opts["mi_alpha"] / n_tested)
        return lambda m, tested: thr
    floor = mi_threshold(null, opts["mi_alpha"])  # no pair with a larger null p-value can pass BH

    def bh(m, tested):
        """Benjamini-Hochberg MI threshold (nats) of one bootstrap at FDR ``mi_alpha`` over ``n_tested`` pairs.

        Parameters
        ----------
        m : float array [R, G]
            The bootstrap's MI (nats) of regulator rows and gene columns.
        tested : bool array [R, G]
            Pairs tested (each undirected pair once).

        Returns
        -------
        float
            :func:`bh_threshold` of the tested MIs at or above ``floor`` (the MI whose null p-value is
            ``mi_alpha``: no pair with a larger p-value can pass BH), against the null model; ``inf`` when no
            pair is significant (Benjamini & Hochberg, *J R Stat Soc B* 57:289, 1995; ARACNe3 FDR method).
        """
        return bh_threshold(null, m[tested & (m >= floor)], opts["mi_alpha"], n_tested)

    return bh


def _fpr_estimate(opts, n_tested, above, kept) -> float:
    """ARACNe3's per-bootstrap false-positive-rate estimate from the edges above threshold (``above``) and
    after DPI (``kept``) among ``n_tested`` pairs (its ``FPR_estimate_subnet``)."""
    a = opts["mi_alpha"]
    if opts["mi_method"] == "fdr":
        return a * kept / (n_tested - (1.0 - a) * above)
    base = a / n_tested if opts["mi_method"] == "fwer" else opts["mi_pvalue"]
    return base * kept / above if above else base


def _fingerprint(expr: np.ndarray, genes, regs, params: dict) -> str:
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(expr, dtype=np.float64).tobytes())
    h.update(json.dumps([list(map(str, genes)), list(regs), params], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _save_bootstrap(path: Path, keep: np.ndarray, m: np.ndarray, above: int, thr: float) -> None:
    from ..io import atomic_path

    r, t = np.nonzero(keep)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, r=r.astype(np.int32), t=t.astype(np.int32), mi=m[r, t].astype(np.float32),
                     above=np.int64(above), thr=np.float64(thr))


def _load_bootstrap(path: Path, shape):
    try:
        with np.load(path) as z:
            r, t, mi, above, thr = z["r"], z["t"], z["mi"], int(z["above"]), float(z["thr"])
    except Exception:  # noqa: BLE001 - a torn or foreign file is recomputed
        return None
    if r.shape != t.shape or r.shape != mi.shape or (r.size and (r.max() >= shape[0] or t.max() >= shape[1])):
        return None
    return r.astype(np.int64), t.astype(np.int64), mi, above, thr


class _Problem:
    """The fixed parts of one ARACNe run: ranks input, regulator layout, tested pairs, null, threshold rule."""

    def __init__(self, expr, genes, regs, opts, seed, null, null_key, strata):
        self.expr, self.genes, self.regs, self.opts, self.seed = expr, genes, regs, opts, seed
        self.null_key, self.strata = null_key, strata
        pos = {g: i for i, g in enumerate(genes)}
        self.reg_idx = np.array([pos[r] for r in regs], dtype=np.int64)
        self.reg_pos = _reg_pos(genes.size, self.reg_idx)
        n_reg = self.reg_idx.size
        # undirected pairs tested once: row r, column t with t not a regulator of index <= r
        tested = np.ones((n_reg, genes.size), dtype=bool)
        tested[np.arange(n_reg)[:, None], self.reg_idx[None, :]] = np.arange(n_reg)[None, :] > np.arange(n_reg)[:, None]
        self.tested, self.n_tested = tested, int(tested.sum())
        self.threshold = _threshold_rule(null, opts, self.n_tested)

    def bootstrap(self, b: int, thr_fixed: float | None):
        """Post-DPI network of bootstrap ``b``: (keep [R, G] bool, MI [R, G] zeroed below threshold,
        pairs above threshold, threshold)."""
        cols = bootstrap_columns(self.expr.shape[1], self.opts["bootstrap"], self.seed, b)
        m = _mi_block(bootstrap_ranks(self.expr, cols, self.seed, b, self.strata), self.reg_idx, self.reg_pos)
        thr = self.threshold(m, self.tested) if thr_fixed is None else float(thr_fixed)
        m[m < thr] = 0.0
        n_above = int(np.count_nonzero(m[self.tested]))
        return dpi_keep(m, self.reg_idx, self.opts["dpi_tolerance"]), m, n_above, thr


def _run_bootstraps(prob: _Problem, mi_thresholds, checkpoint_dir, on_bootstrap):
    """Counts [R, G], MI sums [R, G] and per-bootstrap records (thresholds, above, kept, resumed)."""
    opts, shape = prob.opts, prob.tested.shape
    ckpt = None
    if checkpoint_dir is not None:
        params = dict(opts, seed=prob.seed, null=prob.null_key, fixed=mi_thresholds, ties="fresh-per-bootstrap",
                      strata=None if prob.strata is None else prob.strata.tolist(), v=NULL_VERSION)
        ckpt = Path(checkpoint_dir)
        ckpt.mkdir(parents=True, exist_ok=True)
        fp = _fingerprint(prob.expr, prob.genes, prob.regs, params)
    counts = np.zeros(shape, dtype=np.int32)
    mi_sum = np.zeros(shape, dtype=np.float64)
    rec = dict(thresholds=[], above=[], kept=[], resumed=0)
    for b in range(opts["n_bootstraps"]):
        path = ckpt / f"{fp}_b{b:05d}.npz" if ckpt is not None else None
        loaded = _load_bootstrap(path, shape) if path is not None and path.is_file() else None
        if loaded is not None:
            r_b, t_b, mi_b, n_above, thr_b = loaded
            np.add.at(counts, (r_b, t_b), 1)
            mi_sum[r_b, t_b] += mi_b.astype(np.float64)
            n_keep = int(np.count_nonzero(prob.tested[r_b, t_b]))
            rec["resumed"] += 1
        else:
            keep, m, n_above, thr_b = prob.bootstrap(b, None if mi_thresholds is None else mi_thresholds[b])
            counts += keep
            np.add(mi_sum, m, out=mi_sum, where=keep)
            n_keep = int(np.count_nonzero(keep[prob.tested]))
            if path is not None:
                _save_bootstrap(path, keep, m, n_above, thr_b)
        rec["thresholds"].append(float(thr_b))
        rec["above"].append(n_above)
        rec["kept"].append(n_keep)
        if on_bootstrap is not None:
            on_bootstrap(b)
    return counts, mi_sum, rec


def _consolidate(k, n_tested, opts, rec, min_count):
    """Recurrence cut over the bootstrap counts ``k`` [E] of the pairs seen at least once.

    Returns (log p [E], adjusted p [E], min_count, rate). An edge is kept iff ``k >= min_count``. Without a
    given ``min_count`` the cut is the smallest count ``c`` in 1..B with ``P(X >= c) M / R < alpha`` (M tested
    pairs; R = 1 for Bonferroni, the number of Benjamini-Hochberg discoveries among ``k`` (at least 1) for
    ``"bh"``), B + 1 if none: for both corrections the edges kept are exactly those with adjusted p < alpha,
    and the cut is defined (and reusable by a control run) also when no edge reaches it.
    """
    b = opts["n_bootstraps"]
    if opts["consolidation"] == "poisson":
        rate = float(sum(rec["kept"])) / n_tested
    else:
        rate = float(np.mean([_fpr_estimate(opts, n_tested, a, e) for a, e in zip(rec["above"], rec["kept"])]))
    if b == 1:
        return np.full(k.size, np.nan), np.full(k.size, np.nan), 1 if min_count is None else int(min_count), rate
    rate = max(rate, 1e-300)
    log_p = count_log_pvalues(k, b, opts["consolidation"], rate)
    p_adj = adjust_pvalues(np.exp(log_p), n_tested, opts["correction"])
    if min_count is None:
        r = max(1, int((p_adj < opts["consolidation_alpha"]).sum())) if opts["correction"] == "bh" else 1
        c = np.arange(1, b + 1)
        ok = np.exp(count_log_pvalues(c, b, opts["consolidation"], rate)) * n_tested / r < opts["consolidation_alpha"]
        min_count = int(c[ok].min()) if ok.any() else b + 1
    return log_p, p_adj, int(min_count), rate


def _network_frame(prob: _Problem, r_i, t_i, k, mi, p_adj, log_p) -> pd.DataFrame:
    """Output rows ``regulator -> target``; regulator pairs in both directions (ARACNe-AP)."""
    scc = spearman_pairs(prob.expr, prob.reg_idx[r_i], t_i)
    reg_names = np.asarray(prob.regs, dtype=object)
    both = prob.reg_pos[t_i] >= 0
    sel = np.concatenate([np.arange(r_i.size), np.flatnonzero(both)])
    df = pd.DataFrame(
        {
            "regulator": np.concatenate([reg_names[r_i], prob.genes[t_i[both]]]).astype(str),
            "target": np.concatenate([prob.genes[t_i], reg_names[r_i[both]]]).astype(str),
            "mi": mi[sel].astype(np.float64),
            "pvalue": p_adj[sel].astype(np.float64),
            "count": k[sel].astype(np.int64),
            "log_p": log_p[sel].astype(np.float64),
            "scc": scc[sel].astype(np.float64),
        }
    )
    return df.sort_values(["regulator", "target"], kind="stable").reset_index(drop=True)


def consolidation_rule(opts: dict, min_count: int) -> str:
    """The recurrence rule of a run in words (for reports).

    Parameters
    ----------
    opts : dict
        Engine options (:data:`DEFAULTS` keys; ``n_bootstraps``, ``consolidation``, ``correction`` and
        ``consolidation_alpha`` are read).
    min_count : int
        The recurrence cut (bootstraps).

    Returns
    -------
    str, one sentence.
    """
    b, test = opts["n_bootstraps"], opts["consolidation"]
    if b == 1:
        return "one bootstrap: every post-DPI edge is kept (no recurrence filter)"
    rate = "lambda = mean count per tested pair" if test == "poisson" else "theta = mean per-bootstrap FPR estimate (ARACNe3)"
    return (f"kept iff the edge survives DPI in >= {min_count} of {b} bootstraps: the smallest count whose "
            f"{test} right tail P(X >= k) ({rate}), {opts['correction']}-adjusted over the tested pairs, is below "
            f"{opts['consolidation_alpha']:g}; a stability filter (bootstraps of one data set are not independent), "
            f"the error control is the per-bootstrap MI threshold")


def aracne(
    expr: np.ndarray, genes, regulators, n_bootstraps: int = DEFAULTS["n_bootstraps"],
    bootstrap: str = DEFAULTS["bootstrap"], mi_method: str = DEFAULTS["mi_method"],
    mi_alpha: float = DEFAULTS["mi_alpha"], mi_pvalue: float = DEFAULTS["mi_pvalue"],
    dpi_tolerance: float = DEFAULTS["dpi_tolerance"],
    consolidation: str = DEFAULTS["consolidation"], correction: str = DEFAULTS["correction"],
    consolidation_alpha: float = DEFAULTS["consolidation_alpha"], seed: int = 0, threads: int | None = None,
    cache_dir: str | os.PathLike | None = None, n_null: int = 100_000, null_seed: int | None = None, strata=None,
    mi_thresholds=None, min_count: int | None = None, checkpoint_dir: str | os.PathLike | None = None,
    drop_constant: bool = True, on_bootstrap=None,
) -> pd.DataFrame:
    """ARACNe network of regulators over genes from an expression matrix (module docstring: the method).

    Parameters
    ----------
    expr : float array [G, n]
        Expression of G genes (rows) in n samples (any monotone scale; ranks only).
    genes : sequence of str [G]
        Distinct gene names of the rows.
    regulators : sequence of str
        Regulator names; all must be in ``genes`` (at least one).
    n_bootstraps, bootstrap, mi_method, mi_alpha, mi_pvalue, dpi_tolerance, consolidation, correction,
    consolidation_alpha
        The engine options; defaults :data:`DEFAULTS`, meaning in the module docstring (steps 3-5).
    seed : int
        Seeds the bootstrap draws and their tie-breaking keys (per bootstrap, from ``(seed, b)``).
    threads : int, optional
        numba threads (results do not depend on it).
    cache_dir : path, optional
        Folder caching the null model per sample size.
    n_null : int
        Null-model pairs.
    null_seed : int, optional
        Seed of the null model (default ``seed``); one null per (sample size, null_seed) is cached.
    strata : int array [n], optional
        Stratum of each sample (e.g. bins of sequencing depth): ranks become conditional on it (see
        :func:`bootstrap_ranks`).
    mi_thresholds : sequence of B floats, optional
        Use these MI thresholds (nats) per bootstrap instead of the ``mi_method`` rule (a control run with
        the real run's thresholds: its ``attrs["mi_thresholds_per_bootstrap"]``).
    min_count : int, optional
        Keep edges seen in at least this many bootstraps instead of deriving the cut from the count test
        (a control run with the real run's cut: its ``attrs["min_count"]``).
    checkpoint_dir : path, optional
        Each bootstrap's post-DPI network is written there (``<fingerprint>_b<index>.npz``, atomically) as
        it finishes; bootstraps already there for the same input and parameters are loaded, not
        recomputed, so an interrupted run resumes. The result equals an uninterrupted run.
    drop_constant : bool
        Drop constant genes (no information; reported in ``attrs["constant_genes"]``) instead of raising.
    on_bootstrap : callable(b), optional
        Called after bootstrap ``b`` is done (progress, tests).

    Returns
    -------
    pandas.DataFrame with columns ``regulator, target, mi`` (mean MI in nats over the bootstraps where the
    edge survived), ``pvalue`` (adjusted count p-value), ``count`` (bootstraps where it survived), ``log_p``
    (natural log of the unadjusted count p-value), ``scc`` (Spearman correlation over all samples), sorted
    by regulator, target. ``df.attrs``: ``mi_thresholds_per_bootstrap``, ``mi_threshold`` (the common value
    for ``"pvalue"``/``"fwer"``, else None), ``n_per_bootstrap``, ``n_tested``, ``edges_above_threshold``
    and ``edges_per_bootstrap`` (after DPI), ``count_rate`` (Poisson lambda or binomial theta),
    ``min_count`` (the recurrence cut), ``consolidation_rule`` (in words), ``constant_genes``,
    ``bootstraps_resumed``.

    Raises
    ------
    ValueError
        On a bad shape, non-finite values, duplicate genes, regulators not in ``genes`` (each naming how
        many and which), too few samples (< 8 per bootstrap), ``mi_thresholds`` of the wrong length or a
        bad option (:func:`check_options`).
    """
    opts = dict(n_bootstraps=int(n_bootstraps), bootstrap=bootstrap, mi_method=mi_method, mi_alpha=mi_alpha,
                mi_pvalue=mi_pvalue, dpi_tolerance=dpi_tolerance, consolidation=consolidation,
                correction=correction, consolidation_alpha=consolidation_alpha)
    check_options(**opts)
    if mi_thresholds is not None and len(mi_thresholds) != opts["n_bootstraps"]:
        raise ValueError(f"mi_thresholds has {len(mi_thresholds)} values for {n_bootstraps} bootstraps")
    prob, n_b, const = _setup_problem(expr, genes, regulators, opts, seed, threads, cache_dir, n_null, null_seed,
                                      strata, drop_constant)
    counts, mi_sum, rec = _run_bootstraps(prob, mi_thresholds, checkpoint_dir, on_bootstrap)
    return _consolidated_network(prob, n_b, const, counts, mi_sum, rec, mi_thresholds, min_count)


def _setup_problem(expr, genes, regulators, opts, seed, threads, cache_dir, n_null, null_seed, strata,
                   drop_constant) -> tuple[_Problem, int, list]:
    """Validate the input of :func:`aracne`, set the numba threads, load or build the null model; return
    (the :class:`_Problem` of the run, samples per bootstrap, constant genes dropped).

    Raises ValueError: too few samples, bad ``strata`` or input (:func:`_validated`)."""
    expr, genes, regs, const = _validated(expr, genes, regulators, drop_constant)
    n_b = bootstrap_size(expr.shape[1], opts["bootstrap"])
    if n_b < 8:
        raise ValueError(f"too few samples: {expr.shape[1]} ({n_b} per bootstrap, need >= 8)")
    if threads:
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    null_key = seed if null_seed is None else null_seed
    if strata is not None:
        strata = np.asarray(strata)
        if strata.shape != (expr.shape[1],):
            raise ValueError(f"strata must have one label per sample ({expr.shape[1]}), got shape {strata.shape}")
    prob = _Problem(expr, genes, regs, opts, seed, null_model(n_b, n_null, null_key, cache_dir), (n_null, null_key),
                    strata)
    return prob, n_b, const


def _consolidated_network(prob: _Problem, n_b, const, counts, mi_sum, rec, mi_thresholds, min_count) -> pd.DataFrame:
    """The output of :func:`aracne` from the bootstraps' edge counts [R, G], MI sums [R, G] and record ``rec``
    (:func:`_run_bootstraps`): the recurrence cut (:func:`_consolidate`), the edge table and its ``attrs``."""
    opts = prob.opts
    r_i, t_i = np.nonzero(prob.tested & (counts > 0))
    k = counts[r_i, t_i]
    log_p, p_adj, cut, rate = _consolidate(k, prob.n_tested, opts, rec, min_count)
    ok = k >= cut
    r_i, t_i, k = r_i[ok], t_i[ok], k[ok]
    df = _network_frame(prob, r_i, t_i, k, mi_sum[r_i, t_i] / np.maximum(k, 1), p_adj[ok], log_p[ok])
    mi_method = opts["mi_method"]
    fixed = mi_method in ("pvalue", "fwer") and mi_thresholds is None
    df.attrs.update(
        mi_method=mi_method,
        mi_threshold=rec["thresholds"][0] if fixed else None,
        mi_thresholds_per_bootstrap=rec["thresholds"],
        n_per_bootstrap=n_b,
        n_tested=prob.n_tested,
        edges_above_threshold=rec["above"],
        edges_per_bootstrap=rec["kept"],
        count_rate=rate,
        min_count=cut,
        consolidation_rule=consolidation_rule(opts, cut),
        constant_genes=list(const),
        bootstraps_resumed=rec["resumed"],
    )
    return df


# --------------------------------------------------------------------------------------------------
# Planted networks (tests and benchmarks)
# --------------------------------------------------------------------------------------------------


EFFECTS = {
    "linear": lambda z: z,
    "sigmoid": lambda z: np.tanh(2.0 * z),
    "quadratic": lambda z: z**2,
    "exponential": lambda z: np.exp(0.5 * z),
    "repression": lambda z: -np.tanh(2.0 * z),
}
"""Effects of a parent's standardised expression ``z`` on a child in the planted networks."""


def planted_network(
    n_genes: int = 200, n_samples: int = 500, n_regulators: int = 20, noise: float = 0.5, seed: int = 0,
    effects=("linear", "sigmoid", "quadratic", "exponential"),
):
    """Expression generated from a known regulator graph, with linear and non-linear effects.

    A quarter of the regulators (rounded down) are children of an earlier regulator, the others are
    independent standard normal sources; each non-regulator gene has one regulator parent (assigned
    round-robin). With ``z`` the standardised parent, a child is ``standardise(f(z)) + noise * N(0, 1)``
    with ``f`` cycling through ``effects`` (names of :data:`EFFECTS`; by default linear ``z``, sigmoid
    ``tanh(2 z)``, quadratic (non-monotone) ``z**2`` and exponential ``exp(z / 2)``).

    Parameters
    ----------
    n_genes, n_samples : int
        Matrix size; genes are named ``G0000``, ``G0001``, ...
    n_regulators : int
        The first ``n_regulators`` genes are the regulators.
    noise : float
        Standard deviation of the Gaussian noise added to each standardised child.
    seed : int
        Seed of the generator.
    effects : sequence of str
        Names of :data:`EFFECTS`, cycled over the children.

    Returns
    -------
    expr : float array [n_genes, n_samples]; genes : list[str]; regulators : list[str];
    true_edges : set of frozenset({parent, child}) (undirected true pairs).

    Raises
    ------
    KeyError
        On an effect name not in :data:`EFFECTS`.
    """
    rng = np.random.default_rng(seed)
    genes = [f"G{i:04d}" for i in range(n_genes)]
    regs = genes[:n_regulators]
    expr = np.empty((n_genes, n_samples))
    funcs = [EFFECTS[e] for e in effects]
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
        f = funcs[j % len(funcs)]((z - z.mean()) / z.std())
        f = (f - f.mean()) / f.std()
        expr[i] = f + noise * rng.standard_normal(n_samples)
    true_edges = {frozenset((genes[p], genes[c])) for c, p in parent.items()}
    return expr, genes, regs, true_edges


def planted_counts(
    n_genes: int = 200,
    n_cells: int = 350,
    n_regulators: int = 20,
    zero_fraction: tuple[float, float] = (0.60, 0.75),
    library_sizes: np.ndarray | None = None,
    log_sd: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
    effects=("linear", "sigmoid", "exponential", "repression"),
):
    """Single-cell UMI counts from a planted regulator graph, with scRNA-seq sparsity and depth.

    The latent log-expression ``z`` [G, n] is :func:`planted_network` (standardised per gene) with monotone
    effects by default (activation and repression, as Hill-type regulation; a non-monotone effect such as
    ``"quadratic"`` is invisible through a parent whose zeros cover half its range). Cell ``c``
    has library size ``L_c`` (``library_sizes``, e.g. the total UMIs of real cells, resampled with
    replacement to ``n_cells``; default log-normal with median 2,000 and log-sd 0.5), and gene ``g`` a
    baseline ``b_g`` solved (bisection) so that its expected zero fraction
    ``mean_c exp(-b_g L_c / median(L) exp(log_sd z_gc))`` equals a target drawn uniformly from
    ``zero_fraction``. Counts are ``Poisson(b_g L_c / median(L) exp(log_sd z_gc))``.

    Parameters
    ----------
    n_genes, n_cells, n_regulators : int
        Genes, cells and regulators (the first ``n_regulators`` genes).
    zero_fraction : (float, float)
        Range (fractions 0-1) of the per-gene target zero fraction.
    library_sizes : float array, optional
        UMIs per cell to resample from; default log-normal (see above).
    log_sd : float
        Scale of the latent ``z`` in log expression.
    noise, seed, effects
        As :func:`planted_network` (``seed`` also seeds the counts).

    Returns
    -------
    counts : float array [n_genes, n_cells] of whole numbers; log_cpm : float array [n_genes, n_cells]
    (``log1p(counts / L_c * 1e6)``); library_sizes : float array [n_cells] (``L``); genes : list[str];
    regulators : list[str]; true_edges : set of frozenset({parent, child}).
    """
    latent, genes, regs, true = planted_network(n_genes, n_cells, n_regulators, noise, seed, effects)
    rng = np.random.default_rng([seed, 0x434F554E])
    z = (latent - latent.mean(axis=1, keepdims=True)) / latent.std(axis=1, keepdims=True)
    if library_sizes is None:
        lib = np.exp(np.log(2000.0) + 0.5 * rng.standard_normal(n_cells))
    else:
        lib = rng.choice(np.asarray(library_sizes, dtype=np.float64), size=n_cells, replace=True)
    rel = np.exp(log_sd * z) * (lib / np.median(lib))[None, :]  # [G, n]
    target = rng.uniform(*zero_fraction, size=n_genes)
    lo, hi = np.full(n_genes, -20.0), np.full(n_genes, 20.0)
    for _ in range(80):  # bisection on log b_g: the zero fraction decreases in b_g
        mid = (lo + hi) / 2
        frac = np.exp(-np.exp(mid)[:, None] * rel).mean(axis=1)
        lo, hi = np.where(frac > target, mid, lo), np.where(frac > target, hi, mid)
    counts = rng.poisson(np.exp((lo + hi) / 2)[:, None] * rel).astype(np.float64)
    return counts, np.log1p(counts / lib[None, :] * 1e6), lib, genes, regs, true

