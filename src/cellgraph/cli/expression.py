"""``cellgraph expression``: QC, normalisation, highly variable genes, Leiden clusters and cell splits.

Parses the stage's options, runs :func:`cellgraph.pp.expression.preprocess` (the whole stage in memory:
read the counts, map gene ids, QC, normalise, HVGs, Leiden, splits; see :mod:`cellgraph.pp.expression`)
with the options as explicit keyword arguments, and writes ``<out-dir>/adata.h5ad`` and
``<out-dir>/report.json`` (docs/design.md section 2; ``report["seconds"]`` is the stage's wall time).
Nothing is written when an input or option is bad (:class:`cellgraph.errors.InputError`, exit code 2).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..io import atomic_path, write_json
from ..pp import expression as expr

log = logging.getLogger(expr.__name__)  # the stage's logger: log lines keep their name


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``expression`` stage's command-line options (inputs, QC thresholds, clustering, splits) to ``p``."""
    d = expr.DEFAULTS
    p.add_argument("--input", required=True, help="h5ad with raw UMI counts (X or --counts-layer) and the cell-type labels")
    p.add_argument("--idmap", default=str(expr.DEFAULT_IDMAP), help="id map TSV with columns ensg, entrez, symbol (default: the shipped hs_ensg_entrez_symbol.tsv)")
    p.add_argument("--counts-layer", default=d["counts_layer"], help="read the raw counts from layers[NAME] instead of X (default: X)")
    p.add_argument("--gene-id-type", choices=expr.GENE_ID_TYPES, default=d["gene_id_type"], help="type of var_names; auto = detect by pattern (default %(default)s)")
    p.add_argument("--min-mapped-fraction", type=float, default=d["min_mapped_fraction"], help="min fraction of var_names mapped to (or known as) HGNC symbols (default %(default)s)")
    p.add_argument("--min-cells-per-type", type=int, default=d["min_cells_per_type"], help="cell types with fewer cells after cell QC are dropped (default %(default)s)")
    p.add_argument("--label-key", default="trueLabel", help="obs column with cell-type labels (default trueLabel)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draw, splits, PCA and Leiden (default 0)")
    p.add_argument("--out-dir", required=True, help="folder for adata.h5ad and report.json")
    p.add_argument("--min-counts", type=int, default=d["min_counts"], help="min total UMI per cell (default %(default)s)")
    p.add_argument("--max-counts", type=int, default=d["max_counts"], help="max total UMI per cell (default %(default)s)")
    p.add_argument("--min-genes", type=int, default=d["min_genes"], help="min detected genes per cell (default %(default)s)")
    p.add_argument("--min-cells", type=int, default=d["min_cells"], help="min cells in which a gene is detected (default %(default)s)")
    p.add_argument("--target-sum", type=float, default=d["target_sum"], help="counts per cell after normalisation, before log1p (default %(default)s)")
    p.add_argument("--n-top-genes", type=int, default=d["n_top_genes"], help="number of highly variable genes (default %(default)s)")
    p.add_argument("--leiden-resolution", type=float, default=d["leiden_resolution"], help="Leiden resolution (default %(default)s)")
    p.add_argument("--n-neighbors", type=int, default=d["n_neighbors"], help="neighbours of the kNN graph (default %(default)s)")
    p.add_argument("--n-pcs", type=int, default=d["n_pcs"], help="principal components of the HVGs (default %(default)s)")
    p.add_argument("--heldout-fraction", type=float, default=d["heldout_fraction"], help="fraction of cell types held out, at least one (default %(default)s)")
    p.add_argument("--heldout-types", nargs="*", default=list(d["heldout_types"]), metavar="TYPE", help="explicit held-out cell types (default: draw with the seed)")
    p.add_argument("--val-fraction", type=float, default=d["val_fraction"], help="fraction of seen cells in val (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=d["test_fraction"], help="fraction of seen cells in test (default %(default)s)")


def run(args: argparse.Namespace) -> None:
    """Run the stage from parsed CLI arguments; writes ``adata.h5ad`` and ``report.json`` in ``--out-dir``.

    Raises
    ------
    InputError
        On any bad input (see :func:`cellgraph.pp.expression.preprocess`); nothing is written then.
    """
    t0 = time.perf_counter()
    adata, report = expr.preprocess(
        args.input, label_key=args.label_key, seed=args.seed, idmap=args.idmap,
        min_counts=args.min_counts, max_counts=args.max_counts, min_genes=args.min_genes, min_cells=args.min_cells,
        target_sum=args.target_sum, n_top_genes=args.n_top_genes, leiden_resolution=args.leiden_resolution,
        n_neighbors=args.n_neighbors, n_pcs=args.n_pcs, heldout_fraction=args.heldout_fraction,
        heldout_types=args.heldout_types, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        counts_layer=args.counts_layer, gene_id_type=args.gene_id_type,
        min_mapped_fraction=args.min_mapped_fraction, min_cells_per_type=args.min_cells_per_type,
    )
    report["seconds"] = round(time.perf_counter() - t0, 2)
    out = Path(args.out_dir)
    with atomic_path(out / "adata.h5ad") as tmp:
        adata.write_h5ad(tmp)
    write_json(out / "report.json", report)
    log.info(
        "expression: %d cells x %d genes kept, %d HVGs, %d Leiden clusters, held out %s -> %s",
        adata.n_obs, adata.n_vars, report["hvg"]["n_hvg"], report["leiden"]["n_clusters"],
        report["splits"]["heldout_types"], out,
    )
