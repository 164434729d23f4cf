r"""Normalised graph Laplacians and Chebyshev approximations of the heat kernel.

The heat (graph-diffusion) kernel of a graph with symmetric normalised Laplacian

.. math:: L = I - D^{-1/2} A D^{-1/2}, \qquad \operatorname{spec}(L) \subset [0, 2]

is :math:`\exp(-\beta L)`. With :math:`\tilde L = L - I` (spectrum in :math:`[-1, 1]`) and the generating
function of the modified Bessel functions, :math:`e^{-\beta x} = I_0(\beta) + 2\sum_{k\ge1} (-1)^k I_k(\beta)
T_k(x)`, so

.. math:: \exp(-\beta L) = \sum_{k=0}^{\infty} c_k T_k(\tilde L), \qquad
          c_0 = e^{-\beta} I_0(\beta), \quad c_k = 2 (-1)^k e^{-\beta} I_k(\beta) \ (k \ge 1),

where the constant term is the *halved* Chebyshev coefficient :math:`a_0 / 2` (Mason & Handscomb,
*Chebyshev Polynomials*, 2003, eq. 5.12; GREmLN, Zhang et al. 2025, appendix A.3). Because
:math:`|T_k| \le 1` on :math:`[-1, 1]`, truncating after :math:`K` terms leaves a spectral-norm error of at
most :math:`\sum_{k > K} |c_k|`; :func:`heat_kernel_coefficients` picks the smallest :math:`K` whose tail is
below ``tol``. The kernel is applied to a block of vectors by the three-term recurrence
:math:`T_0 X = X`, :math:`T_1 X = \tilde L X`, :math:`T_k X = 2 \tilde L T_{k-1} X - T_{k-2} X`, which
needs only products with the sparse :math:`L` (Hammond, Vandergheynst & Gribonval 2011, eq. 3.8).

Isolated nodes follow the scipy ``csgraph.laplacian(normed=True)`` convention: their row of :math:`L` is
zero, so the kernel leaves them unchanged (:math:`\exp(0) = 1`). Zero-padded rows of a batched dense
Laplacian behave the same way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.special import ive

from ..errors import InputError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "normalized_laplacian",
    "heat_kernel_coefficients",
    "chebyshev_apply",
    "chebyshev_apply_dense",
    "chebyshev_recurrence",
    "heat_kernel_dense",
    "network_laplacians",
    "cell_laplacians",
    "smallest_nonzero_eigenvalue",
    "auto_beta",
    "choose_beta",
    "heat_kernel_record",
    "kernel_error_table",
    "check_heat_kernel",
]


# --------------------------------------------------------------------------------------------------
# Laplacian
# --------------------------------------------------------------------------------------------------


def normalized_laplacian(
    edge_index: np.ndarray, num_nodes: int, edge_weight: np.ndarray | None = None
) -> sp.csr_matrix:
    """Symmetric normalised Laplacian ``L = I - D^-1/2 A D^-1/2`` of a graph given by ``edge_index``.

    Parameters
    ----------
    edge_index : int array [2, E]
        Edges as (source, target) node positions in ``[0, num_nodes)``. The graph is symmetrised:
        ``A[i, j] = A[j, i] = max`` of the weights given for (i, j) and (j, i). Self-loops are ignored.
    num_nodes : int
        Number of nodes N.
    edge_weight : float array [E], optional
        Non-negative edge weights (for example mutual information); 1 when omitted.

    Returns
    -------
    scipy.sparse.csr_matrix [N, N], float64, eigenvalues in [0, 2]; rows of isolated nodes are zero.

    Raises
    ------
    ValueError
        If ``edge_index`` is not [2, E], a node id is out of range, or a weight is negative or not finite.
    """
    edge_index = np.asarray(edge_index)
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {edge_index.shape}")
    if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
        raise ValueError(f"edge_index has node ids outside [0, {num_nodes})")
    w = np.ones(edge_index.shape[1]) if edge_weight is None else np.asarray(edge_weight, dtype=np.float64)
    if w.shape != (edge_index.shape[1],):
        raise ValueError(f"edge_weight must have shape [{edge_index.shape[1]}], got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("edge_weight must be finite and non-negative")
    keep = edge_index[0] != edge_index[1]
    src, dst, w = edge_index[0][keep], edge_index[1][keep], w[keep]
    a = sp.coo_matrix((w, (src, dst)), shape=(num_nodes, num_nodes)).tocsr()
    a.sum_duplicates()
    a = a.maximum(a.T).tocsr()
    return csgraph.laplacian(a, normed=True).tocsr()


# --------------------------------------------------------------------------------------------------
# Coefficients
# --------------------------------------------------------------------------------------------------


def heat_kernel_coefficients(
    beta: float, tol: float = 1e-6, method: str = "bessel", max_terms: int = 1000
) -> np.ndarray:
    """Chebyshev coefficients of ``exp(-beta * lambda)`` on ``lambda`` in [0, 2], constant term halved.

    Parameters
    ----------
    beta : float
        Diffusion time (> 0; the paper uses 0.1).
    tol : float
        Truncation tolerance: the smallest K is chosen with ``sum_{k>K} |c_k| < tol``, a bound on the
        spectral-norm error of the truncated kernel.
    method : {"bessel", "quadrature"}
        ``"bessel"``: closed form ``c_k = 2 (-1)^k e^-beta I_k(beta)`` (scaled Bessel ``ive``);
        ``"quadrature"``: Gauss-Chebyshev quadrature ``a_k = 2/N sum_j f(cos t_j) cos(k t_j)`` on
        ``N = max_terms`` nodes (GREmLN appendix A.3), then ``c_0 = a_0 / 2``.
    max_terms : int
        Largest number of terms considered.

    Returns
    -------
    numpy.ndarray [K + 1], float64: ``exp(-beta L) ~= sum_k c[k] T_k(L - I)``.

    Raises
    ------
    ValueError
        If ``beta <= 0``, ``tol`` outside (0, 1), an unknown ``method``, or the tail does not fall below ``tol``
        within ``max_terms`` terms.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 < tol < 1:  # a tail bound of 1 or more keeps only c_0 (K = 0): no diffusion at all
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    k = np.arange(max_terms + 1)
    if method == "bessel":
        c = 2.0 * ((-1.0) ** k) * ive(k, beta)
    elif method == "quadrature":
        n = max_terms + 1
        theta = np.pi * (np.arange(n) + 0.5) / n
        f = np.exp(-beta * (np.cos(theta) + 1.0))  # lambda = x + 1
        c = (2.0 / n) * np.cos(np.outer(k, theta)) @ f
        # quadrature rounding leaves ~n*eps noise in every coefficient; below it, a term is zero
        c[np.abs(c) <= 4.0 * n * np.finfo(float).eps * np.abs(c).max()] = 0.0
    else:
        raise ValueError(f"method must be 'bessel' or 'quadrature', got {method!r}")
    c[0] /= 2.0
    tail = np.cumsum(np.abs(c)[::-1])[::-1]  # tail[j] = sum_{k >= j} |c_k|
    below = np.nonzero(tail[1:] < tol)[0]  # tail[K + 1] < tol
    if below.size == 0:
        raise ValueError(f"the coefficient tail does not fall below tol={tol} within {max_terms} terms")
    return c[: below[0] + 1].copy()


# --------------------------------------------------------------------------------------------------
# Applying the kernel
# --------------------------------------------------------------------------------------------------


def chebyshev_apply(laplacian: sp.spmatrix | np.ndarray, x: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Apply ``sum_k c_k T_k(L - I)`` to a block of vectors by the three-term recurrence.

    Parameters
    ----------
    laplacian : scipy sparse or dense [N, N]
        A normalised Laplacian (spectrum in [0, 2]).
    x : array [N] or [N, F]
    coefficients : array [K + 1] from :func:`heat_kernel_coefficients`.

    Returns
    -------
    numpy.ndarray with the shape of ``x``.
    """
    c = np.asarray(coefficients, dtype=np.float64)
    return chebyshev_recurrence(lambda y: laplacian @ y, np.asarray(x, dtype=np.float64), c)


def chebyshev_recurrence(matmul, x, coefficients):
    """``sum_k c_k T_k(L - I) x`` by the three-term recurrence ``T_k = 2 (L - I) T_{k-1} - T_{k-2}``, with
    ``T_0 = x`` and ``T_1 = (L - I) x`` (Mason & Handscomb 2003, eq. 1.3; Hammond et al. 2011, eq. 3.8).

    Parameters
    ----------
    matmul : callable
        ``y -> L y`` for arrays or tensors shaped like ``x``.
    x : numpy.ndarray or torch.Tensor
        The block of vectors (any shape ``matmul`` accepts).
    coefficients : sequence of floats, numpy.ndarray or torch.Tensor [K + 1]
        Chebyshev weights (:func:`heat_kernel_coefficients`).

    Returns
    -------
    Array or tensor of the shape and type of ``x``.
    """
    t_prev = x
    out = coefficients[0] * t_prev
    if len(coefficients) == 1:
        return out
    t_cur = matmul(t_prev) - t_prev  # (L - I) x
    out = out + coefficients[1] * t_cur
    for k in range(2, len(coefficients)):
        t_next = 2.0 * (matmul(t_cur) - t_cur) - t_prev
        out = out + coefficients[k] * t_next
        t_prev, t_cur = t_cur, t_next
    return out


def chebyshev_apply_dense(laplacian, x, coefficients):
    """Batched torch version of :func:`chebyshev_apply` on dense Laplacians.

    Only the non-zero entries of ``laplacian`` are multiplied (a scatter-add over them, ``Tensor.index_add``),
    and the recurrence runs on the rows of nodes that have an edge: a node with no edge (and a padded
    position) has a zero row, so its result is ``p(-1) x = sum_k c_k (-1)^k x`` (``T_k(-1) = (-1)^k``). A cell's
    subgraph has few edges among its ``n`` tokens, so this costs O(nnz F) per term instead of the O(n^2 F) of
    a dense ``bmm``; the result equals the dense product up to float rounding.

    Parameters
    ----------
    laplacian : torch.Tensor [B, n, n]
        Dense normalised Laplacians (padding rows/columns zero).
    x : torch.Tensor [B, n, F]
    coefficients : torch.Tensor [K + 1] or sequence of floats.

    Returns
    -------
    torch.Tensor [B, n, F]: ``exp(-beta L) x`` for each batch element (differentiable in ``x``).
    """
    import torch

    b, n, f = x.shape
    c = torch.as_tensor(coefficients, dtype=x.dtype, device=x.device)
    bi, ii, jj = laplacian.nonzero(as_tuple=True)
    weight = laplacian[bi, ii, jj].to(x.dtype)[:, None]
    active, local = torch.unique(torch.cat([bi * n + ii, bi * n + jj]), return_inverse=True)
    rows, cols = local[: bi.numel()], local[bi.numel():]
    flat = x.reshape(b * n, f)
    sign = torch.ones_like(c)
    sign[1::2] = -1.0
    isolated = flat * (c * sign).sum()

    def _matmul(y):
        return torch.zeros_like(y).index_add(0, rows, weight * y[cols])

    connected = chebyshev_recurrence(_matmul, flat[active], c)
    return isolated.index_copy(0, active, connected).view(b, n, f)


def heat_kernel_dense(laplacian, coefficients):
    """The kernel matrices ``sum_k c_k T_k(L - I)`` [B, n, n] of batched dense Laplacians [B, n, n].

    Parameters
    ----------
    laplacian : torch.Tensor [B, n, n]
        Dense normalised Laplacians (padding rows/columns zero).
    coefficients : torch.Tensor [K + 1] or sequence of floats
        From :func:`heat_kernel_coefficients`.

    Returns
    -------
    torch.Tensor [B, n, n]
        ``exp(-beta L)`` of each batch element (:func:`chebyshev_apply_dense` on the identity), dtype and
        device of ``laplacian``.

    References
    ----------
    GREmLN, Zhang et al. 2025, appendix A.3; Mason & Handscomb 2003, eq. 5.12 (module docstring).
    """
    import torch

    b, n, _ = laplacian.shape
    eye = torch.eye(n, dtype=laplacian.dtype, device=laplacian.device).expand(b, n, n)
    return chebyshev_apply_dense(laplacian, eye, coefficients)


# --------------------------------------------------------------------------------------------------
# Stage: coefficients and a check on each cell-type network
# --------------------------------------------------------------------------------------------------


def network_laplacians(networks, mi_weighted: bool = False):
    """Yield ``(cell_type, genes, L)`` for each cell type of a grn networks table, in sorted cell-type order.

    Parameters
    ----------
    networks : pandas.DataFrame
        grn ``networks.tsv.gz`` rows with columns ``cell_type, source, target, mi`` (more are ignored).
    mi_weighted : bool
        Weight each edge by its mutual information ``mi`` (nats) instead of 1.

    Yields
    ------
    cell_type : str
    genes : numpy.ndarray [n] of str, the sorted genes of the cell type's network (node order of ``L``).
    L : scipy.sparse.csr_matrix [n, n], :func:`normalized_laplacian` of the network (symmetrised).

    Raises
    ------
    ValueError
        As :func:`normalized_laplacian` (a negative or non-finite ``mi`` with ``mi_weighted``).
    """
    for cell_type, df in networks.groupby("cell_type", sort=True, observed=True):
        genes = np.unique(np.concatenate([df["source"].to_numpy(str), df["target"].to_numpy(str)]))
        pos = {g: i for i, g in enumerate(genes)}
        ei = np.array([[pos[g] for g in df["source"]], [pos[g] for g in df["target"]]], dtype=np.int64)
        w = df["mi"].to_numpy(float) if mi_weighted else None
        yield str(cell_type), genes, normalized_laplacian(ei, len(genes), w)


def cell_laplacians(shard, n_cells: int, seed: int):
    """Yield ``(obs_name, L)``: dense normalized Laplacians [n, n] of up to ``n_cells`` sampled cells' subgraphs.

    ``shard`` is a :class:`cellgraph.io.shards.TokenDataset`; cells without an edge are skipped. The sample is
    drawn with ``numpy.random.default_rng(seed)`` without replacement.

    Parameters
    ----------
    shard : cellgraph.io.shards.TokenDataset
        Token shard whose items carry ``gene_ids`` [n] and local ``edge_index`` [2, e].
    n_cells : int
        Largest number of Laplacians yielded.
    seed : int
        Seed of the random cell order.

    Yields
    ------
    obs_name : str
        The cell's name in the shard.
    L : numpy.ndarray [n, n], float64
        Unweighted normalised Laplacian over the cell's n gene tokens (:func:`cellgraph.io.shards.dense_laplacian`).
    """
    from ..io.shards import dense_laplacian

    order = np.random.default_rng(seed).permutation(len(shard))
    taken = 0
    for i in order:
        item = shard[int(i)]
        ei = item["edge_index"]
        if ei.shape[1] == 0:
            continue
        n = len(item["gene_ids"])
        lap = dense_laplacian(np.zeros(ei.shape[1], np.int64), ei[0], ei[1], np.array([n]), n)[0].numpy()
        yield str(shard.obs_names[i]), lap.astype(np.float64)
        taken += 1
        if taken >= n_cells:
            return


def smallest_nonzero_eigenvalue(lap: np.ndarray, tol: float = 1e-6) -> float:
    """Smallest eigenvalue above ``tol`` of a symmetric normalized Laplacian [n, n] (``inf`` if none).

    Its inverse is the paper's rule for the diffusion time (GREmLN appendix A.3: beta ~ 1 / lambda_min,
    the time after which the slowest non-constant mode of the graph has decayed by a factor e).

    Parameters
    ----------
    lap : numpy.ndarray [n, n]
        Dense symmetric normalised Laplacian (eigenvalues in [0, 2]).
    tol : float
        Eigenvalues at or below ``tol`` count as zero (one per connected component and isolated node).

    Returns
    -------
    float
        The smallest eigenvalue above ``tol``, or ``inf`` when there is none (no edge).

    References
    ----------
    GREmLN, Zhang et al. 2025, appendix A.3 (beta ~ 1 / lambda_min).
    """
    ev = np.linalg.eigvalsh(lap)
    ev = ev[ev > tol]
    return float(ev.min()) if ev.size else float("inf")


def auto_beta(laplacians) -> tuple[float, dict]:
    """``beta = 1 / median(lambda_min)`` over cell Laplacians (GREmLN appendix A.3).

    Parameters
    ----------
    laplacians : iterable of ``(name, L)``
        Dense normalized Laplacians [n, n], as yielded by :func:`cell_laplacians`.

    Returns
    -------
    beta : float, the diffusion time.
    summary : dict with ``cells`` (Laplacians with a non-zero eigenvalue), ``lambda_min_median``,
        ``lambda_min_q10`` and ``lambda_min_q90`` (:func:`smallest_nonzero_eigenvalue` quantiles).

    Raises
    ------
    ValueError
        If no Laplacian has a non-zero eigenvalue (no cell subgraph with an edge, or none given).
    """
    lam = np.array([smallest_nonzero_eigenvalue(lap) for _, lap in laplacians])
    lam = lam[np.isfinite(lam)]
    if lam.size == 0:
        raise ValueError("no cell subgraph has an edge, so beta cannot be chosen from lambda_min")
    return float(1.0 / np.median(lam)), {"cells": int(lam.size), "lambda_min_median": float(np.median(lam)),
                                         "lambda_min_q10": float(np.quantile(lam, 0.1)),
                                         "lambda_min_q90": float(np.quantile(lam, 0.9))}


def choose_beta(beta: float | str, cells: list | None) -> tuple[float, dict | None]:
    """The diffusion time of the ``spectral`` stage: a given number, or ``"auto"`` (:func:`auto_beta`).

    Parameters
    ----------
    beta : float or str
        A number (or its text), or ``"auto"``: ``1 / median`` over ``cells`` of the smallest non-zero eigenvalue
        of the cell subgraph's normalized Laplacian (GREmLN appendix A.3).
    cells : list of ``(obs_name, L)`` or None
        Dense cell-subgraph Laplacians [n, n] (:func:`cell_laplacians`); None when no token shard was given.

    Returns
    -------
    beta : float
    beta_rule : dict or None, the :func:`auto_beta` summary for ``"auto"``; None for a given number.

    Raises
    ------
    InputError
        If ``beta`` is neither a number nor ``"auto"``, or ``"auto"`` finds no cell subgraph with an edge
        (the message says ``--beta auto needs --tokens`` when ``cells`` is None).
    """
    if str(beta) == "auto":
        try:
            return auto_beta(cells or [])
        except ValueError as err:
            raise InputError(f"spectral: --beta auto{'' if cells is not None else ' needs --tokens'}: {err}") from err
    try:
        return float(beta), None
    except ValueError as err:
        raise InputError(f"spectral: --beta: expected a number or 'auto', got {beta!r}") from err


def _max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    m = max(a.size, b.size)
    return float(np.abs(np.pad(a, (0, m - a.size)) - np.pad(b, (0, m - b.size))).max())


def heat_kernel_record(beta: float, tol: float = 1e-6, beta_rule: dict | None = None) -> tuple[np.ndarray, dict]:
    """Chebyshev heat-kernel coefficients for ``beta`` and the record written as ``coefficients.json``.

    Parameters
    ----------
    beta : float
        Diffusion time (> 0).
    tol : float
        Chebyshev tail tolerance in (0, 1) (:func:`heat_kernel_coefficients`).
    beta_rule : dict, optional
        The :func:`auto_beta` summary when ``beta`` was chosen automatically; recorded with the rule's text.

    Returns
    -------
    coefficients : numpy.ndarray [K + 1], float64, the ``"bessel"`` coefficients (module docstring).
    record : dict with ``beta``, ``beta_rule`` (None or the rule's text and summary), ``tol``, ``K``,
        ``coefficients`` (list), ``quadrature_max_abs_difference`` (largest difference to the Gauss-Chebyshev
        quadrature coefficients) and ``tail_bound`` (``sum_{K < k < K + 201} 2 e^-beta I_k(beta)``, the bound
        on the truncation error).

    Raises
    ------
    InputError
        If the coefficients cannot be computed for ``beta`` and ``tol`` (:func:`heat_kernel_coefficients`).
    """
    try:
        coeffs = heat_kernel_coefficients(beta, tol)
        quad = heat_kernel_coefficients(beta, tol, method="quadrature")
    except ValueError as err:
        raise InputError(f"spectral: --beta {beta} --tol {tol}: {err}") from err
    record = {
        "beta": beta,
        "beta_rule": beta_rule and {"rule": "beta = 1 / median over train cells of the smallest non-zero "
                                            "eigenvalue of the cell subgraph's normalized Laplacian", **beta_rule},
        "tol": tol,
        "K": int(coeffs.size - 1),
        "coefficients": coeffs.tolist(),
        "quadrature_max_abs_difference": _max_abs_difference(coeffs, quad),
        "tail_bound": float(2.0 * ive(np.arange(coeffs.size, coeffs.size + 200), beta).sum()),
    }
    return coeffs, record


def _kernel_error(name: str, lap: sp.csr_matrix, coeffs: np.ndarray, beta: float) -> dict:
    """Row of ``report.tsv``: the Chebyshev heat kernel of Laplacian ``lap`` [n, n] against ``expm(-beta L)``
    (relative Frobenius error and largest diagonal error), with the graph's node and edge counts."""
    from scipy.linalg import expm

    n = lap.shape[0]
    approx = chebyshev_apply(lap, np.eye(n), coeffs)
    exact = expm(-beta * lap.toarray())
    rel = float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))
    diag_excess = float(np.abs(np.diag(approx - exact)).max()) if n else 0.0
    log.info("%s: %d nodes, relative error of the Chebyshev kernel %.2e", name, n, rel)
    return dict(cell_type=name, nodes=n, edges=int(lap.nnz - np.count_nonzero(lap.diagonal())) // 2,
                relative_error=rel, max_abs_diag_error=diag_excess)


def kernel_error_table(networks, cells: list | None, coefficients: np.ndarray, beta: float,
                       mi_weighted: bool = False, max_cells: int = 20) -> pd.DataFrame:
    """Compare the Chebyshev heat kernel with ``scipy.linalg.expm(-beta L)`` on every graph (``report.tsv``).

    Parameters
    ----------
    networks : pandas.DataFrame
        grn networks table (``cell_type, source, target, mi``): one graph per cell type
        (:func:`network_laplacians`).
    cells : list of ``(obs_name, L)`` or None
        Dense cell-subgraph Laplacians [n, n] (:func:`cell_laplacians`); the first ``max_cells`` are checked
        too, named ``cell <obs_name>``.
    coefficients : numpy.ndarray [K + 1]
        From :func:`heat_kernel_coefficients` for ``beta``.
    beta : float
        Diffusion time of the exact kernel.
    mi_weighted : bool
        Weight network edges by mutual information.
    max_cells : int
        Number of cell subgraphs checked.

    Returns
    -------
    pandas.DataFrame [G, 5] with columns ``cell_type, nodes, edges, relative_error, max_abs_diag_error``
    (relative Frobenius error of the kernel matrix, largest absolute error on its diagonal), cell types in
    sorted order, then the cells.

    Raises
    ------
    ValueError
        As :func:`normalized_laplacian` (a negative or non-finite ``mi`` with ``mi_weighted``).
    """
    import pandas as pd

    graphs = list(network_laplacians(networks, mi_weighted)) + [
        (f"cell {name}", None, sp.csr_matrix(lap)) for name, lap in (cells or [])[:max_cells]]
    rows = [_kernel_error(name, lap, coefficients, beta) for name, _, lap in graphs]
    return pd.DataFrame(rows, columns=["cell_type", "nodes", "edges", "relative_error", "max_abs_diag_error"])


def check_heat_kernel(networks, cells: list | None = None, beta: float | str = 0.1, tol: float = 1e-6,
                      mi_weighted: bool = False) -> tuple[dict, pd.DataFrame]:
    """The ``spectral`` stage in memory: choose beta, compute the coefficients, check the kernel on each graph.

    Chebyshev expansion of ``exp(-beta L)`` with modified Bessel coefficients (Mason & Handscomb 2003,
    eq. 5.12; GREmLN, Zhang et al. 2025, appendix A.3); beta ``"auto"`` = 1 / median smallest non-zero
    Laplacian eigenvalue of the cell subgraphs (GREmLN appendix A.3).

    Parameters
    ----------
    networks : pandas.DataFrame
        grn networks table with columns ``cell_type, source, target, mi``.
    cells : list of ``(obs_name, L)`` or None
        Dense cell-subgraph Laplacians [n, n] (:func:`cell_laplacians`; the stage samples 200); None when no
        token shard was given.
    beta : float or str
        Diffusion time, or ``"auto"`` (:func:`choose_beta`).
    tol : float
        Chebyshev tail tolerance in (0, 1).
    mi_weighted : bool
        Weight network edges by mutual information.

    Returns
    -------
    record : dict, the content of ``coefficients.json`` (:func:`heat_kernel_record`).
    report : pandas.DataFrame, the content of ``report.tsv`` (:func:`kernel_error_table`, up to 20 cells).

    Raises
    ------
    InputError
        A bad ``beta`` or ``tol`` (:func:`choose_beta`, :func:`heat_kernel_record`).
    """
    beta, rule = choose_beta(beta, cells)
    coeffs, record = heat_kernel_record(beta, tol, beta_rule=rule)
    report = kernel_error_table(networks, cells, coeffs, beta, mi_weighted=mi_weighted)
    return record, report
