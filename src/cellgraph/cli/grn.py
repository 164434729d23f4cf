"""``cellgraph grn``: ARACNe gene regulatory networks per seen cell type, beside a permutation control.

Checks the options, reads ``--regulators`` (:func:`cellgraph.grn.celltypes.read_regulators`) and ``--adata``
(:func:`cellgraph.grn.celltypes.read_adata`), builds :class:`cellgraph.grn.celltypes.GrnParameters` from the
options and calls :func:`cellgraph.grn.celltypes.networks_per_cell_type` (the method is in that module's
docstring); writes to ``--out-dir`` ``networks.tsv.gz`` (:func:`cellgraph.grn.celltypes.write_networks`),
``control.tsv`` and ``report.json``.

Also holds the ARACNe engine options shared with ``cellgraph aracne`` (:func:`add_engine_arguments`,
:func:`check_engine_args`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..grn import aracne as engine
from ..grn import celltypes
from ..io import write_json, write_tsv
from . import dataclass_from_args

__all__ = ["add_engine_arguments", "check_engine_args", "configure_parser", "run"]


def _bootstrap_arg(value: str) -> str:
    if value == "replacement":
        raise argparse.ArgumentTypeError(engine.REPLACEMENT_UNSUPPORTED)
    if value not in engine.BOOTSTRAPS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(engine.BOOTSTRAPS)}, got {value!r}")
    return value


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The ARACNe engine's options (seed, bootstraps, MI threshold, DPI, recurrence cut, threads), shared by
    ``cellgraph grn`` and ``cellgraph aracne``; defaults from :data:`cellgraph.grn.aracne.DEFAULTS`.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The (sub)command parser the options are added to.
    """
    d = engine.DEFAULTS
    p.add_argument("--seed", type=int, default=0, help="seeds bootstraps, their tie-breaking and the null model (default 0)")
    p.add_argument("--n-bootstraps", type=int, default=d["n_bootstraps"], help="bootstraps (default %(default)s)")
    p.add_argument("--bootstrap", type=_bootstrap_arg, default=d["bootstrap"],
                   help="subsample: 1-1/e of the samples without replacement (ARACNe3); none: all samples "
                        "(draws with replacement are refused: they break the null model) (default %(default)s)")
    p.add_argument("--mi-method", choices=list(engine.MI_METHODS), default=d["mi_method"],
                   help="MI threshold per bootstrap: fdr (Benjamini-Hochberg over null p-values, ARACNe3 --alpha), "
                        "pvalue (fixed null p-value, ARACNe-AP) or fwer (Bonferroni) (default %(default)s)")
    p.add_argument("--mi-alpha", type=float, default=d["mi_alpha"], help="level of --mi-method fdr/fwer (default %(default)s)")
    p.add_argument("--mi-pvalue", type=float, default=d["mi_pvalue"], help="null p-value of --mi-method pvalue (default %(default)s)")
    p.add_argument("--dpi-tolerance", type=float, default=d["dpi_tolerance"], help="DPI tolerance in [0, 1) (default %(default)s)")
    p.add_argument("--consolidation", choices=list(engine.CONSOLIDATIONS), default=d["consolidation"],
                   help="count test of the recurrence cut: poisson (ARACNe-AP lambda) or binomial (ARACNe3 theta, "
                        "the mean per-bootstrap FPR estimate) (default %(default)s)")
    p.add_argument("--correction", choices=list(engine.CORRECTIONS), default=d["correction"],
                   help="multiple-testing adjustment of the count test (default %(default)s)")
    p.add_argument("--consolidation-alpha", type=float, default=d["consolidation_alpha"],
                   help="recurrence cut: the smallest count with adjusted p below this (default %(default)s)")
    p.add_argument("--threads", type=int, default=celltypes.DEFAULTS["threads"],
                   help="numba threads (results do not depend on it) (default %(default)s)")


def check_engine_args(args: argparse.Namespace) -> None:
    """:func:`cellgraph.grn.aracne.check_options` on the parsed engine flags of :func:`add_engine_arguments`.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser` (or of ``cellgraph aracne``), with the engine flags.

    Raises
    ------
    InputError
        Naming the flag (``--mi-alpha ...``) and what was expected.
    """
    keys = celltypes.ENGINE_KEYS
    try:
        engine.check_options(**{k: getattr(args, k) for k in keys})
    except ValueError as err:
        key = str(err).split()[0]
        raise InputError(f"--{key.replace('_', '-')}{str(err)[len(key):]}" if key in keys else str(err)) from err


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``grn`` stage's command-line options (with the shared ARACNe engine options) to ``p``."""
    d = celltypes.DEFAULTS
    p.add_argument("--adata", required=True, help="expression stage output (adata.h5ad, raw counts in layers['counts'])")
    p.add_argument("--regulators", required=True, help="regulators.txt, one HGNC symbol per line")
    p.add_argument("--out-dir", required=True, help="folder for networks.tsv.gz, control.tsv, report.json")
    add_engine_arguments(p)
    p.add_argument("--min-detected-fraction", type=float, default=d["min_detected_fraction"],
                   help="skip (and report) genes detected in fewer than this fraction of a type's train cells "
                        "(default %(default)s)")
    p.add_argument("--depth-stratum-cells", type=int, default=d["depth_stratum_cells"],
                   help="samples per depth block of the depth-conditional ranks; 0 = off (default %(default)s)")
    p.add_argument("--metacells", choices=list(celltypes.METACELLS), default=d["metacells"],
                   help="none: single cells; disjoint: metacells of about --metacell-umis UMIs, every cell used once; "
                        "knn: overlapping kNN metacells of --metacell-k cells (invalid null, flagged) (default %(default)s)")
    p.add_argument("--metacell-umis", type=int, default=d["metacell_umis"], help="UMIs per disjoint metacell (default %(default)s)")
    p.add_argument("--metacell-k", type=int, default=d["metacell_k"], help="cells per kNN metacell (default %(default)s)")
    p.add_argument("--subclusters", action=argparse.BooleanOptionalAction, default=d["subclusters"],
                   help="ARACNe within Leiden sub-clusters of each type, consolidated into the type's network "
                        "(GREmLN appendix A.1) (default %(default)s)")
    p.add_argument("--subcluster-resolution", type=float, default=d["subcluster_resolution"],
                   help="Leiden resolution of the sub-clusters (default %(default)s)")
    p.add_argument("--subcluster-min-cells", type=int, default=d["subcluster_min_cells"],
                   help="smaller sub-clusters are skipped and counted (default %(default)s)")
    p.add_argument("--control-permutations", type=int, default=d["control_permutations"],
                   help="runs of the permutation control per type (0 = off) (default %(default)s)")
    p.add_argument("--count-dpi", action=argparse.BooleanOptionalAction, default=d["count_dpi"],
                   help="after ARACNe, remove edges a triangle through a regulator explains on the latent (Poisson-"
                        "deconvolved) correlations of the counts (default %(default)s)")
    p.add_argument("--count-dpi-margin", type=float, default=d["count_dpi_margin"],
                   help="margin of --count-dpi in [0, 1): an edge goes when both other sides of a triangle exceed "
                        "(1 - margin) times its |rho|; 0 = the plain DPI (default %(default)s)")
    p.add_argument("--cache-dir", default=None, help="null-model cache (default <out-dir>/../.cache/aracne_null)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="per-bootstrap networks of the real runs (one subfolder per cell type) so an interrupted run "
                        "resumes; default: none")


def _check_args(args: argparse.Namespace) -> None:
    check_engine_args(args)
    for ok, msg in ((0 <= args.min_detected_fraction <= 1, "--min-detected-fraction must be in [0, 1]"),
                    (args.depth_stratum_cells >= 0, "--depth-stratum-cells must be >= 0"),
                    (args.metacell_umis >= 1, "--metacell-umis must be >= 1"),
                    (args.metacell_k >= 2, "--metacell-k must be >= 2"),
                    (args.subcluster_resolution > 0, "--subcluster-resolution must be > 0"),
                    (args.subcluster_min_cells >= 8, "--subcluster-min-cells must be >= 8"),
                    (args.control_permutations >= 0, "--control-permutations must be >= 0"),
                    (0 <= args.count_dpi_margin < 1, "--count-dpi-margin must be in [0, 1)"),
                    (args.threads >= 1, "--threads must be >= 1")):
        if not ok:
            raise InputError(msg)


def _parameters(args: argparse.Namespace) -> celltypes.GrnParameters:
    """The stage settings from the parsed options; the null-model cache defaults to
    ``<out-dir>/../.cache/aracne_null``."""
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(args.out_dir).parent / ".cache" / "aracne_null"
    return dataclass_from_args(celltypes.GrnParameters, args, cache_dir=cache_dir,
                               checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None)


def run(args: argparse.Namespace) -> None:
    """``cellgraph grn``: ARACNe networks per seen cell type, with the permutation control.

    Reads ``--adata`` (expression stage output, raw counts in ``layers["counts"]``) and ``--regulators``;
    :func:`cellgraph.grn.celltypes.networks_per_cell_type` runs ARACNe on the train cells of every cell type
    that is not held out, and the permutation control. Writes to ``--out-dir``: ``networks.tsv.gz``
    (decoupler-style rows, columns ``cell_type, source, target, weight, mi, pvalue, count``), ``control.tsv``
    (real and false edges per type and a total) and ``report.json``. Null-model cache in ``--cache-dir``
    (default ``<out-dir>/../.cache/aracne_null``).

    Raises
    ------
    InputError
        On out-of-range options, an unreadable h5ad or regulator file, missing label or split columns, no
        regulator among the genes of the data, or no cell type with a regulator detected in at least
        ``--min-detected-fraction`` of its train cells. Nothing is written then.
    """
    _check_args(args)
    regulators = celltypes.read_regulators(args.regulators)
    adata, label_key = celltypes.read_adata(args.adata)
    result = celltypes.networks_per_cell_type(adata, label_key, regulators, _parameters(args),
                                              adata_path=args.adata, regulators_path=args.regulators)
    out = Path(args.out_dir)
    celltypes.write_networks(result.networks, out / "networks.tsv.gz")
    write_tsv(result.control, out / "control.tsv")
    write_json(out / "report.json", result.report)
