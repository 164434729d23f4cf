"""``cellgraph spectral``: Chebyshev heat-kernel coefficients and a check of the kernel on each network.

Reads ``--networks`` (grn ``networks.tsv.gz``: ``cell_type, source, target, mi``) and, if given, ``--tokens``
(train token shard; up to 200 cell subgraphs sampled with ``--seed``,
:func:`cellgraph.graphs.spectral.cell_laplacians`). Calls :func:`cellgraph.graphs.spectral.check_heat_kernel`
(``--beta`` or ``auto``, the coefficients for ``--tol``, and the Chebyshev kernel against ``scipy.linalg.expm``
on every cell-type network and up to 20 cell subgraphs). Writes to ``--out-dir``: ``coefficients.json``
(beta, its rule, tol, K, coefficients, quadrature difference, tail bound) and ``report.tsv`` (nodes, edges,
relative and max diagonal error per graph).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..graphs.spectral import cell_laplacians, check_heat_kernel
from ..io import atomic_path, require_file, write_json

#: Cell subgraphs sampled from ``--tokens`` (for ``--beta auto``; the first 20 are also checked).
SAMPLED_CELLS = 200


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


def _read_networks(path: str) -> pd.DataFrame:
    """The grn networks table; InputError if it is missing, unreadable or lacks ``cell_type, source, target, mi``."""
    path = require_file(path, "grn networks")
    try:
        networks = pd.read_csv(path, sep="\t")
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise InputError(f"{path}: cannot be read as a tab-separated table ({err})") from err
    missing = {"cell_type", "source", "target", "mi"} - set(networks.columns)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)}")
    return networks


def _read_cells(tokens: str | None, seed: int) -> list | None:
    """Dense Laplacians of up to :data:`SAMPLED_CELLS` cells of the ``--tokens`` shard; None without one."""
    if not tokens:
        return None
    from ..io.shards import TokenDataset

    return list(cell_laplacians(TokenDataset(require_file(tokens, "train token shard")), SAMPLED_CELLS, seed))


def run(args: argparse.Namespace) -> None:
    """``cellgraph spectral``: read the inputs, :func:`~cellgraph.graphs.spectral.check_heat_kernel`, write
    ``coefficients.json`` and ``report.tsv`` (module docstring).

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`configure_parser`.

    Raises
    ------
    InputError
        If the networks table is unreadable or lacks a column, ``--beta`` is neither a number nor ``auto``,
        ``--beta auto`` has no cell subgraph with an edge (or no ``--tokens``), or the coefficients cannot be
        computed for ``--beta`` / ``--tol``.
    """
    networks = _read_networks(args.networks)
    cells = _read_cells(args.tokens, args.seed)
    record, report = check_heat_kernel(networks, cells=cells, beta=args.beta, tol=args.tol,
                                       mi_weighted=args.mi_weighted)
    out = Path(args.out_dir)
    write_json(out / "coefficients.json", record)
    with atomic_path(out / "report.tsv") as tmp:
        report.to_csv(tmp, sep="\t", index=False)
