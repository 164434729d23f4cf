"""``cellgraph aracne``: standalone ARACNe on an ARACNe-AP expression matrix or an h5ad (a drop-in for
ARACNe-AP / ARACNe3).

Checks the options, reads ``--regulators`` (:func:`cellgraph.grn.celltypes.read_regulators`) and
``--expression`` (:func:`cellgraph.grn.aracne_io.read_expression`), keeps the usable regulators
(:func:`cellgraph.grn.aracne_io.usable_regulators`), runs :func:`cellgraph.grn.aracne.aracne` with the
engine options, and writes the network in ``--format`` (:data:`cellgraph.grn.aracne_io.FORMATS`) and
``report.json`` (:func:`cellgraph.grn.aracne_io.network_report`). File formats: :mod:`cellgraph.grn.aracne_io`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..errors import InputError
from ..grn import aracne as engine
from ..grn import aracne_io
from ..grn.celltypes import bootstrap_progress, read_regulators
from ..io import write_json
from .grn import add_engine_arguments, check_engine_args

log = logging.getLogger(__name__)

__all__ = ["configure_parser", "run"]


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``aracne`` stage's command-line options (with the shared ARACNe engine options) to ``p``."""
    p.add_argument("--expression", required=True,
                   help="ARACNe-AP expression matrix (tab-separated genes x samples, header line) or an .h5ad")
    p.add_argument("--layer", default=None, help="h5ad layer to use instead of X")
    p.add_argument("--regulators", required=True, help="regulator list, one name per line")
    p.add_argument("--out-dir", required=True, help="folder for the network file and report.json")
    p.add_argument("--format", choices=list(aracne_io.FORMATS), default="aracne-ap",
                   help="aracne-ap: network.txt (Regulator Target MI pvalue); aracne3: network.tsv with "
                        "regulator.values ... log.p.values; decoupler: network.tsv with source target weight mi "
                        "pvalue count (default %(default)s)")
    add_engine_arguments(p)
    p.add_argument("--n-null", type=int, default=100_000, help="null-model pairs (default %(default)s)")
    p.add_argument("--cache-dir", default=None, help="null-model cache (default <out-dir>/.cache)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="per-bootstrap networks for resuming an interrupted run (default <out-dir>/bootstraps)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the per-bootstrap files after success")


def _check(args: argparse.Namespace) -> None:
    check_engine_args(args)
    if args.threads < 1 or args.n_null < 1000:
        raise InputError(f"--threads must be >= 1 and --n-null >= 1000, got {args.threads} and {args.n_null}")


def _remove_checkpoints(ckpt: Path) -> None:
    """Delete the per-bootstrap ``*.npz`` files of ``ckpt`` and the folder if it is then empty."""
    for f in ckpt.glob("*.npz"):
        f.unlink()
    try:
        ckpt.rmdir()
    except OSError:
        pass


def _network(args: argparse.Namespace, expr, genes, present, cache: Path, ckpt: Path):
    """:func:`cellgraph.grn.aracne.aracne` with the parsed engine options; InputError naming
    ``--expression`` for input the engine rejects."""
    try:
        return engine.aracne(
            expr, genes, present, n_bootstraps=args.n_bootstraps, bootstrap=args.bootstrap,
            mi_method=args.mi_method, mi_alpha=args.mi_alpha, mi_pvalue=args.mi_pvalue,
            dpi_tolerance=args.dpi_tolerance, consolidation=args.consolidation, correction=args.correction,
            consolidation_alpha=args.consolidation_alpha, seed=args.seed, threads=args.threads, cache_dir=cache,
            n_null=args.n_null, checkpoint_dir=ckpt,
            on_bootstrap=bootstrap_progress(args.n_bootstraps, str(args.expression)),
        )
    except ValueError as err:
        raise InputError(f"{args.expression}: {err}") from err


def run(args: argparse.Namespace) -> None:
    """``cellgraph aracne``: standalone ARACNe on an ARACNe-AP expression matrix or an h5ad.

    Reads ``--expression`` (a genes x samples text matrix, or an h5ad transposed to genes x cells) and
    ``--regulators`` (one name per line), runs ARACNe on the regulators that are non-constant genes of the
    matrix, and writes to ``--out-dir`` the network in ``--format`` (``network.txt`` for ``aracne-ap``,
    ``network.tsv`` for ``aracne3`` and ``decoupler``) and ``report.json`` (inputs, parameters, skipped genes
    and regulators, MI thresholds, edges per bootstrap). Null-model cache in ``--cache-dir`` (default
    ``<out-dir>/.cache``); per-bootstrap checkpoints in ``--checkpoint-dir`` (default ``<out-dir>/bootstraps``,
    removed after success unless ``--keep-checkpoints``). Regulators missing from the matrix and constant
    genes are skipped with a warning.

    Raises
    ------
    InputError
        On bad engine options, ``--threads`` < 1 or ``--n-null`` < 1000, an unreadable input, gene names
        that occur more than once, missing or non-finite values, no regulator that is a non-constant gene of
        the matrix, or input the engine rejects.
    """
    _check(args)
    t0 = time.perf_counter()
    regulators = read_regulators(args.regulators)
    expr, genes, samples = aracne_io.read_expression(args.expression, args.layer)
    chk, present = aracne_io.usable_regulators(expr, genes, regulators, args.expression, args.regulators)
    out = Path(args.out_dir)
    cache = Path(args.cache_dir) if args.cache_dir else out / ".cache"
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else out / "bootstraps"
    df = _network(args, expr, genes, present, cache, ckpt)
    report = dict(
        inputs=dict(expression=str(args.expression), regulators=str(args.regulators), layer=args.layer),
        params={k: getattr(args, k) for k in ("format", "seed", *engine.DEFAULTS, "n_null", "threads")},
        **aracne_io.network_report(df, genes, samples, regulators, present, chk),
    )
    name, writer = aracne_io.FORMATS[args.format]
    writer(df, out / name)
    write_json(out / "report.json", report)
    if not args.keep_checkpoints and not args.checkpoint_dir:
        _remove_checkpoints(ckpt)
    log.info("aracne: %d genes x %d samples, %d regulators -> %d edges (%.1f s)", len(genes), len(samples),
             len(present), len(df), time.perf_counter() - t0)
