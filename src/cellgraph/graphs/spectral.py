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

import argparse
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.special import ive

from ..errors import InputError
from ..io import atomic_path, require_file, write_json

log = logging.getLogger(__name__)

__all__ = [
    "normalized_laplacian",
    "heat_kernel_coefficients",
    "chebyshev_apply",
    "chebyshev_apply_dense",
    "heat_kernel_dense",
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
    t_prev = np.asarray(x, dtype=np.float64)
    out = c[0] * t_prev
    if c.size == 1:
        return out
    t_cur = laplacian @ t_prev - t_prev  # (L - I) x
    out = out + c[1] * t_cur
    for ck in c[2:]:
        t_next = 2.0 * (laplacian @ t_cur - t_cur) - t_prev
        out = out + ck * t_next
        t_prev, t_cur = t_cur, t_next
    return out


def chebyshev_apply_dense(laplacian, x, coefficients):
    """Batched torch version of :func:`chebyshev_apply` on dense Laplacians.

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

    c = torch.as_tensor(coefficients, dtype=x.dtype, device=x.device)
    lap = laplacian.to(x.dtype)
    t_prev = x
    out = c[0] * t_prev
    if c.numel() == 1:
        return out
    t_cur = torch.bmm(lap, t_prev) - t_prev
    out = out + c[1] * t_cur
    for k in range(2, c.numel()):
        t_next = 2.0 * (torch.bmm(lap, t_cur) - t_cur) - t_prev
        out = out + c[k] * t_next
        t_prev, t_cur = t_cur, t_next
    return out


def heat_kernel_dense(laplacian, coefficients):
    """The kernel matrices ``sum_k c_k T_k(L - I)`` [B, n, n] of batched dense Laplacians [B, n, n]."""
    import torch

    b, n, _ = laplacian.shape
    eye = torch.eye(n, dtype=laplacian.dtype, device=laplacian.device).expand(b, n, n)
    return chebyshev_apply_dense(laplacian, eye, coefficients)


# --------------------------------------------------------------------------------------------------
# Stage: coefficients and a check on each cell-type network
# --------------------------------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``spectral`` stage's command-line options to ``p``."""
    p.add_argument("--networks", required=True, help="grn networks table (networks.tsv.gz)")
    p.add_argument("--out-dir", required=True, help="folder for coefficients.json and report.tsv")
    p.add_argument("--beta", default="0.1",
                   help="diffusion time of exp(-beta L): a number, or 'auto' = 1 / median over train cells of the "
                        "smallest non-zero eigenvalue of the cell subgraph's normalized Laplacian (default 0.1)")
    p.add_argument("--tokens", default=None,
                   help="train token shard (train.npz): cell subgraphs for --beta auto and the kernel check")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled cells (default 0)")
    p.add_argument("--tol", type=float, default=1e-6, help="Chebyshev tail tolerance (default 1e-6)")
    p.add_argument("--mi-weighted", action=argparse.BooleanOptionalAction, default=False,
                   help="weight edges by mutual information (default %(default)s)")


def network_laplacians(networks, mi_weighted: bool = False):
    """Yield ``(cell_type, genes, L)`` for each cell type of a grn networks table (pandas DataFrame)."""
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
    """
    ev = np.linalg.eigvalsh(lap)
    ev = ev[ev > tol]
    return float(ev.min()) if ev.size else float("inf")


def auto_beta(laplacians) -> tuple[float, dict]:
    """``beta = 1 / median(lambda_min)`` over cell Laplacians; (beta, summary). Raises ValueError if none."""
    lam = np.array([smallest_nonzero_eigenvalue(lap) for _, lap in laplacians])
    lam = lam[np.isfinite(lam)]
    if lam.size == 0:
        raise ValueError("no cell subgraph has an edge, so beta cannot be chosen from lambda_min")
    return float(1.0 / np.median(lam)), {"cells": int(lam.size), "lambda_min_median": float(np.median(lam)),
                                         "lambda_min_q10": float(np.quantile(lam, 0.1)),
                                         "lambda_min_q90": float(np.quantile(lam, 0.9))}


def _max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    m = max(a.size, b.size)
    return float(np.abs(np.pad(a, (0, m - a.size)) - np.pad(b, (0, m - b.size))).max())


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


def run(args: argparse.Namespace) -> None:
    """``cellgraph spectral``: Chebyshev heat-kernel coefficients and a check on each network.

    Reads ``--networks`` (grn ``networks.tsv.gz``: ``cell_type, source, target, mi``) and, if given,
    ``--tokens`` (train shard; up to 200 cell subgraphs sampled with ``--seed``). Chooses ``beta``
    (``--beta`` or ``auto`` = 1 / median smallest non-zero Laplacian eigenvalue, :func:`auto_beta`), computes
    the coefficients (:func:`heat_kernel_coefficients`), and compares the Chebyshev kernel with
    ``scipy.linalg.expm`` on every cell-type network and up to 20 cell subgraphs. Writes to ``--out-dir``:
    ``coefficients.json`` (beta, its rule, tol, K, coefficients, quadrature difference, tail bound) and
    ``report.tsv`` (nodes, edges, relative and max diagonal error per graph).

    Raises
    ------
    InputError
        If the networks table is unreadable or lacks a column, ``--beta`` is neither a number nor ``auto``,
        ``--beta auto`` has no cell subgraph with an edge (or no ``--tokens``), or the coefficients cannot be
        computed for ``--beta`` / ``--tol``.
    """
    import pandas as pd

    path = require_file(args.networks, "grn networks")
    try:
        networks = pd.read_csv(path, sep="\t")
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise InputError(f"{path}: cannot be read as a tab-separated table ({err})") from err
    missing = {"cell_type", "source", "target", "mi"} - set(networks.columns)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)}")
    cells = []
    if args.tokens:
        from ..io.shards import TokenDataset

        cells = list(cell_laplacians(TokenDataset(require_file(args.tokens, "train token shard")), 200, args.seed))
    rule = None
    if str(args.beta) == "auto":
        try:
            args.beta, rule = auto_beta(cells)
        except ValueError as err:
            raise InputError(f"spectral: --beta auto{'' if args.tokens else ' needs --tokens'}: {err}") from err
    else:
        try:
            args.beta = float(args.beta)
        except ValueError as err:
            raise InputError(f"spectral: --beta: expected a number or 'auto', got {args.beta!r}") from err
    try:
        coeffs = heat_kernel_coefficients(args.beta, args.tol)
        quad = heat_kernel_coefficients(args.beta, args.tol, method="quadrature")
    except ValueError as err:
        raise InputError(f"spectral: --beta {args.beta} --tol {args.tol}: {err}") from err
    graphs = list(network_laplacians(networks, args.mi_weighted)) + [
        (f"cell {name}", None, sp.csr_matrix(lap)) for name, lap in cells[:20]]
    rows = [_kernel_error(name, lap, coeffs, args.beta) for name, _, lap in graphs]
    out = Path(args.out_dir)
    write_json(
        out / "coefficients.json",
        {
            "beta": args.beta,
            "beta_rule": rule and {"rule": "beta = 1 / median over train cells of the smallest non-zero "
                                           "eigenvalue of the cell subgraph's normalized Laplacian", **rule},
            "tol": args.tol,
            "K": int(coeffs.size - 1),
            "coefficients": coeffs.tolist(),
            "quadrature_max_abs_difference": _max_abs_difference(coeffs, quad),
            "tail_bound": float(2.0 * ive(np.arange(coeffs.size, coeffs.size + 200), args.beta).sum()),
        },
    )
    with atomic_path(out / "report.tsv") as tmp:
        pd.DataFrame(rows, columns=["cell_type", "nodes", "edges", "relative_error", "max_abs_diag_error"]).to_csv(
            tmp, sep="\t", index=False
        )
