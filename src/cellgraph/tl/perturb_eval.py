r"""Evaluation of perturbation-effect predictions as the field does it, and its simple baselines.

- Held-out deltas are measured against control cells that never made a training label
  (:func:`split_controls`): with one shared control mean, the error of that mean is in every training delta
  and every held-out delta alike, which flatters the mean-change baseline.
- Pearson-delta on all measured genes and on the top-20 DE genes of each perturbation (Welch t of its cells
  against the evaluation controls; Roohani et al. 2024, *GEARS*, Nat. Biotechnol., "top 20 DE genes").
- Per perturbation, the split-half reliability of its observed delta (cells and controls split in halves,
  Pearson between the two half-deltas, mean over random splits) and the noise ceiling: the Spearman-Brown
  reliability of the full-data delta, :math:`\rho = 2r/(1+r)` (Spearman 1910; Brown 1910), and the highest
  expected Pearson of any prediction with the observed delta, :math:`\sqrt{\rho}` (the correlation of a
  measure with its own true score).
- Baselines: no change; the mean training change; the same with the mean own-gene drop of the measured
  training targets put at the target's own gene; the reliability-weighted mean change; the linear model of Ahlmann-Eltze et al. 2025 (*Nature
  Methods*, eq. 1: :math:`Y \approx G W P^\top + b`, ridge with :math:`\lambda`), with P the target's gene
  embedding (zero for a target that is not measured) or its graph features.
- The debiased perturbation score :math:`\lVert\delta\rVert^2 - \mathrm{tr}\,\Sigma_p/n_p -
  \mathrm{tr}\,\Sigma_0/n_0`: the plain norm grows like :math:`1/\sqrt n` with fewer cells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["split_controls", "split_half_reliability", "noise_ceiling", "top_de_genes", "pearson", "pearson_spearman",
           "linear_baseline", "weighted_mean_change", "one_standard_error_choice", "own_gene_adjusted", "debiased_score", "paired_comparison", "summarize"]


def split_controls(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions 0..n-1 of control cells split at random into (training half, evaluation half), sorted.

    The training half labels the training perturbations; the evaluation half is the reference of every
    held-out delta.

    Parameters
    ----------
    n : int
        Number of control cells.
    seed : int
        Seed of ``numpy.random.default_rng`` for the permutation.

    Returns
    -------
    tuple of np.ndarray
        (training positions int [n // 2], evaluation positions int [n - n // 2]), each sorted ascending.

    Raises
    ------
    ValueError
        When n < 2.
    """
    if n < 2:
        raise ValueError(f"need at least 2 control cells to split them, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two vectors; NaN when either is constant or shorter than 3.

    Parameters
    ----------
    a, b : np.ndarray
        Vectors of the same length [n] (cast to float).

    Returns
    -------
    float
        Pearson correlation in [-1, 1], or NaN.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def pearson_spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Pearson r, Spearman rho) of two vectors; (NaN, NaN) when either is constant or shorter than 3.

    Parameters
    ----------
    a, b : np.ndarray
        Vectors of the same length [n] (cast to float).

    Returns
    -------
    tuple of float
        (Pearson r, Spearman rho from ``scipy.stats.spearmanr``), each in [-1, 1] or NaN.
    """
    from scipy.stats import spearmanr

    r = pearson(a, b)
    return (r, float(spearmanr(np.asarray(a, float), np.asarray(b, float))[0])) if np.isfinite(r) else (r, r)


def split_half_reliability(x_p: np.ndarray, x_ctrl: np.ndarray, n_splits: int = 20, seed: int = 0) -> float:
    """Mean over ``n_splits`` random halvings of Pearson(delta_1, delta_2).

    delta_h = mean(x_p half h) - mean(x_ctrl half h).

    Parameters
    ----------
    x_p : np.ndarray
        float [n_p, G], log-expression of the cells of one perturbation.
    x_ctrl : np.ndarray
        float [n_0, G], log-expression of control cells.
    n_splits : int
        Number of random halvings (cells and controls are permuted independently each time).
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    float
        Mean split-half Pearson r (NaN splits ignored); NaN when a side has fewer than 2 cells or no split
        gives a finite r.
    """
    if len(x_p) < 2 or len(x_ctrl) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(n_splits):
        ip, ic = rng.permutation(len(x_p)), rng.permutation(len(x_ctrl))
        hp, hc = len(x_p) // 2, len(x_ctrl) // 2
        d1 = x_p[ip[:hp]].mean(0) - x_ctrl[ic[:hc]].mean(0)
        d2 = x_p[ip[hp:]].mean(0) - x_ctrl[ic[hc:]].mean(0)
        rs.append(pearson(d1, d2))
    return float(np.nanmean(rs)) if np.isfinite(rs).any() else float("nan")


def noise_ceiling(r_half: float) -> float:
    r"""Highest expected Pearson with the full-data delta: :math:`\sqrt{2r/(1+r)}`; 0 for r <= 0, NaN for NaN.

    Parameters
    ----------
    r_half : float
        Split-half reliability (Pearson r between half-deltas, e.g. from :func:`split_half_reliability`).

    Returns
    -------
    float
        Noise ceiling in [0, 1], or NaN.

    References
    ----------
    Spearman-Brown reliability :math:`\rho = 2r/(1+r)` (Spearman 1910; Brown 1910); the ceiling is
    :math:`\sqrt{\rho}`.
    """
    if not np.isfinite(r_half):
        return float("nan")
    if r_half <= 0:
        return 0.0
    return float(np.sqrt(2 * r_half / (1 + r_half)))


def top_de_genes(x_p: np.ndarray, x_ctrl: np.ndarray, k: int = 20) -> np.ndarray:
    """Indices of the genes with the largest |Welch t| of x_p against x_ctrl.

    Uses ``scipy.stats.ttest_ind(equal_var=False)``; genes constant in both groups (NaN t) rank last; ties keep
    gene order.

    Parameters
    ----------
    x_p : np.ndarray
        [n_p, G], log-expression of the cells of one perturbation.
    x_ctrl : np.ndarray
        [n_0, G], log-expression of control cells.
    k : int
        Number of genes to return.

    Returns
    -------
    np.ndarray
        int [min(k, G)] gene indices, largest |t| first.

    References
    ----------
    Roohani et al. 2024, *GEARS*, Nat. Biotechnol. ("top 20 DE genes").
    """
    from scipy.stats import ttest_ind

    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.abs(ttest_ind(x_p, x_ctrl, axis=0, equal_var=False).statistic)
    t = np.nan_to_num(t, nan=-1.0)
    return np.argsort(-t, kind="stable")[: min(k, x_p.shape[1])]


def linear_baseline(y_train: np.ndarray, gene_emb: np.ndarray, p_train: np.ndarray, p_test: np.ndarray,
                    lam: float = 0.1) -> np.ndarray:
    r"""Ahlmann-Eltze et al. 2025 linear model -> predicted deltas float [P_test, G].

    With :math:`b` the mean training delta, :math:`Y_c = Y - b` (genes x perturbations) and P centred on the
    mean training embedding :math:`\bar p` (the intercept b then fits the mean exactly),
    :math:`W = (G^\top G + \lambda I)^{-1} G^\top Y_c P_c (P_c^\top P_c + \lambda I)^{-1}` and
    :math:`\hat y = b + G W (p - \bar p)`. A test embedding equal to :math:`\bar p` predicts b, the mean
    training change.

    Parameters
    ----------
    y_train : np.ndarray
        [P_train, G] training deltas (log-expression units).
    gene_emb : np.ndarray
        G, [G, K] gene embedding.
    p_train : np.ndarray
        [P_train, K'] embeddings of the training perturbations.
    p_test : np.ndarray
        [P_test, K'] embeddings of the test perturbations.
    lam : float
        Ridge penalty :math:`\lambda` of both solves.

    Returns
    -------
    np.ndarray
        float [P_test, G] predicted deltas.

    References
    ----------
    Ahlmann-Eltze et al. 2025, *Nature Methods*, eq. 1 (:math:`Y \approx G W P^\top + b`).
    """
    b = y_train.mean(0)  # [G]
    yc = (y_train - b).T  # [G, P]
    p_bar = p_train.astype(float).mean(0)
    g, p = gene_emb.astype(float), p_train.astype(float) - p_bar
    left = np.linalg.solve(g.T @ g + lam * np.eye(g.shape[1]), g.T @ yc)  # [K, P]
    w = np.linalg.solve(p.T @ p + lam * np.eye(p.shape[1]), (left @ p).T).T  # [K, K']
    return b + (g @ w @ (p_test.astype(float) - p_bar).T).T  # [P_test, G]


def weighted_mean_change(y_train: np.ndarray, weight: np.ndarray) -> np.ndarray:
    r"""Reliability-weighted mean training change, scaled by least squares -> float [G].

    The direction :math:`d = \sum_p w_p y_p / \sum_p w_p` keeps the shared response of the targets that have
    one and drops those whose delta is sampling noise; the scale :math:`c = \sum_p y_p \cdot d / (P \lVert d
    \rVert^2)` is the least-squares fit of every training delta by :math:`c\,d`, so the MSE is not paid for a
    direction taken from the strongest targets.

    Parameters
    ----------
    y_train : np.ndarray
        [P, G] training deltas (log-expression units).
    weight : np.ndarray
        [P] weights >= 0 (e.g. split-half reliabilities on training cells).

    Returns
    -------
    np.ndarray
        float [G], :math:`c\,d` (d itself when d is all zero).

    Raises
    ------
    ValueError
        When a weight is negative or all weights are 0.
    """
    w = np.asarray(weight, float)
    if not (w >= 0).all() or w.sum() <= 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    d = w @ y_train / w.sum()
    nrm = float(d @ d)
    return d * (float((y_train @ d).sum()) / (len(y_train) * nrm)) if nrm > 0 else d


def one_standard_error_choice(curve: list[dict], key: str = "score", se_key: str = "se") -> dict:
    """The first entry whose ``key`` is within one standard error of the best entry's.

    Parameters
    ----------
    curve : list of dict
        Entries in order of model complexity (e.g. epochs), each with ``key`` and ``se_key``.
    key : str
        Score to maximise.
    se_key : str
        Standard error of the score.

    Returns
    -------
    dict
        The chosen entry of ``curve`` (the same object).

    Raises
    ------
    ValueError
        When ``curve`` is empty.

    References
    ----------
    Breiman et al. 1984, *Classification and Regression Trees*, sec. 3.4.3; Hastie, Tibshirani & Friedman
    2009, sec. 7.10 (one-standard-error rule).
    """
    if not curve:
        raise ValueError("empty curve")
    best = max(curve, key=lambda r: r[key])
    return next(r for r in curve if r[key] >= best[key] - best[se_key])


def own_gene_adjusted(mean_change: np.ndarray, own_drops: list[float], target_pos: int | None) -> np.ndarray:
    """Mean training change with the mean own-gene change of the measured training targets at the target's gene.

    Parameters
    ----------
    mean_change : np.ndarray
        [G] mean training delta (log units).
    own_drops : list of float
        Own-gene change of each measured training target (log units).
    target_pos : int or None
        Position of the held-out target's own gene; None when it is not measured.

    Returns
    -------
    np.ndarray
        float [G], a copy of ``mean_change`` with ``mean(own_drops)`` at ``target_pos`` (unchanged when
        ``target_pos`` is None or ``own_drops`` is empty).
    """
    out = np.array(mean_change, dtype=float)
    if target_pos is not None and own_drops:
        out[target_pos] = float(np.mean(own_drops))
    return out


def debiased_score(x_p: np.ndarray, x_ctrl: np.ndarray) -> float:
    r""":math:`\lVert\bar x_p - \bar x_0\rVert^2 - \mathrm{tr}\,\Sigma_p/n_p - \mathrm{tr}\,\Sigma_0/n_0`.

    Unbiased for :math:`\lVert\mu_p - \mu_0\rVert^2`; variances with ddof=1.

    Parameters
    ----------
    x_p : np.ndarray
        [n_p, G], log-expression of the cells of one perturbation (n_p >= 2).
    x_ctrl : np.ndarray
        [n_0, G], log-expression of control cells (n_0 >= 2).

    Returns
    -------
    float
        Debiased perturbation score (squared log units; may be negative).
    """
    d = x_p.mean(0) - x_ctrl.mean(0)
    noise = x_p.var(0, ddof=1).sum() / len(x_p) + x_ctrl.var(0, ddof=1).sum() / len(x_ctrl)
    return float(d @ d - noise)


def paired_comparison(metrics: pd.DataFrame, model: str, baselines: list[str], value: str = "pearson_delta",
                      by: str = "subset", tie: float = 1e-6) -> pd.DataFrame:
    """Paired one-sided Wilcoxon signed-rank tests (``scipy.stats.wilcoxon``, alternative: model greater) of
    ``value`` of ``model`` against each baseline, per ``by`` group.

    Differences smaller than ``tie`` in absolute value are exact ties (a model that returns a baseline's
    prediction differs from it only by float rounding) and are dropped by the test's "wilcox" zero method.
    ``p_value`` treats every (seed, perturbation) pair as one observation; ``p_value_perturbations`` first
    averages the seeds of each perturbation (the conservative test: perturbations, not seeds, are the
    independent units).

    Parameters
    ----------
    metrics : pd.DataFrame
        One row per (seed, perturbation, method) with columns seed, perturbation, method, ``by`` and ``value``.
    model : str
        Method name of the model.
    baselines : list of str
        Method names to compare with; those absent from a group are skipped.
    value : str
        Metric column to compare (higher is better).
    by : str
        Grouping column.
    tie : float
        Absolute difference below which a pair is a tie.

    Returns
    -------
    pd.DataFrame
        One row per (group, baseline): ``by``, baseline, n_pairs, n_ties, model_mean, baseline_mean,
        mean_difference, p_value, n_perturbations, p_value_perturbations (NaN when all differences are ties).
    """
    rows = []
    for grp, sub in metrics.groupby(by, sort=False):
        wide = sub.pivot_table(index=["seed", "perturbation"], columns="method", values=value)
        for base in baselines:
            if model not in wide or base not in wide:
                continue
            pair = wide[[model, base]].dropna()
            diff = (pair[model] - pair[base]).to_numpy()
            per = (pair[model] - pair[base]).groupby(level="perturbation").mean().to_numpy()
            rows.append({by: grp, "baseline": base, "n_pairs": len(pair), "n_ties": int((np.abs(diff) < tie).sum()),
                         "model_mean": float(pair[model].mean()), "baseline_mean": float(pair[base].mean()),
                         "mean_difference": float(diff.mean()), "p_value": _wilcoxon_greater(diff, tie),
                         "n_perturbations": len(per), "p_value_perturbations": _wilcoxon_greater(per, tie)})
    return pd.DataFrame(rows)


def _wilcoxon_greater(diff: np.ndarray, tie: float) -> float:
    from scipy.stats import wilcoxon

    d = np.where(np.abs(diff) < tie, 0.0, diff)
    if not np.any(d != 0):
        return float("nan")
    return float(wilcoxon(d, alternative="greater", zero_method="wilcox").pvalue)


def summarize(metrics: pd.DataFrame, by: list[str], n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean of each metric per ``by`` group with a 95% bootstrap CI over perturbations (seeds averaged first).

    Parameters
    ----------
    metrics : pd.DataFrame
        Columns seed, perturbation, ``by``..., pearson_delta, pearson_delta_top20, mse, noise_ceiling.
    by : list of str
        Grouping columns.
    n_boot : int
        Number of bootstrap resamples.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    pd.DataFrame
        One row per group: the ``by`` columns, n_perturbations, n_seeds, and for each metric ``<m>_mean``,
        ``<m>_ci_low``, ``<m>_ci_high`` (percentile bootstrap 2.5/97.5, resampling perturbations; NaN when the
        metric has no finite value).
    """
    rng = np.random.default_rng(seed)
    vals = ["pearson_delta", "pearson_delta_top20", "mse", "noise_ceiling"]
    rows = []
    for key, sub in metrics.groupby(by, sort=False):
        per = sub.groupby("perturbation")[vals].mean()  # seeds averaged
        rec = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        rec.update(n_perturbations=len(per), n_seeds=int(sub["seed"].nunique()))
        idx = rng.integers(0, len(per), (n_boot, len(per)))
        for v in vals:
            x = per[v].to_numpy(float)
            rec[f"{v}_mean"] = float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
            boot = np.nanmean(x[idx], 1) if np.isfinite(x).any() else np.full(n_boot, np.nan)
            rec[f"{v}_ci_low"], rec[f"{v}_ci_high"] = (float(np.nanpercentile(boot, 2.5)),
                                                       float(np.nanpercentile(boot, 97.5))) \
                if np.isfinite(boot).any() else (float("nan"), float("nan"))
        rows.append(rec)
    return pd.DataFrame(rows)
